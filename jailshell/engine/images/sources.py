"""Importing an image from a file: which kind of tarball (or directory) is it?

  a directory with `oci-layout`           OCI image layout (skopeo oci:, umoci)
  a tarball with `oci-layout`             OCI archive (skopeo oci-archive:, docker save >= 25)
  a tarball with `manifest.json`          docker save (skopeo docker-archive:)
  any other tarball                       a flat root filesystem (docker export), one layer
Any of these may be gzip/zstd/bzip2/xz-compressed as a whole.

Paths named inside an archive (manifest.json's "Layers", digests) are data
from the archive: they are looked up inside it and never resolved on the host.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from jailshell.engine import rootfs
from jailshell.engine.images import blobs, dockerarchive
from jailshell.engine.images.oci import Layout, Platform
from jailshell.engine.images.store import Image, ImageStore, parse_ref
from jailshell.engine.images.unpack import ImageParts, Layer, Progress, build
from jailshell.engine.rootfs import Reader
from jailshell.errors import JailshellError


def _clean(path: str, label: str) -> str:
    norm = posixpath.normpath(path)
    if norm.startswith("/") or norm == ".." or norm.startswith("../"):
        raise JailshellError(f"{label}: path {path!r} points outside the archive",
                             hint="the archive is corrupt or hostile; nothing was imported")
    return norm


class DirArchive:
    """Files of an image layout directory, never followed outside it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.real = os.path.realpath(root)
        self.label = str(root)

    def _path(self, path: str) -> str:
        full = os.path.realpath(os.path.join(self.real, _clean(path, self.label)))
        if not full.startswith(self.real + os.sep):
            raise JailshellError(f"{self.label}: {path!r} leads outside the directory",
                                 hint="the layout is corrupt or hostile; nothing was imported")
        return full

    def exists(self, path: str) -> bool:
        try:
            return os.path.isfile(self._path(path))
        except JailshellError:
            return False

    def size(self, path: str) -> int:
        return os.path.getsize(self._path(path))

    def read(self, path: str, limit: int) -> bytes:
        try:
            with open(self._path(path), "rb") as fh:
                data = fh.read(limit + 1)
        except FileNotFoundError:
            raise JailshellError(f"{self.label}: {path} is missing")
        if len(data) > limit:
            raise JailshellError(f"{self.label}: {path} is too large for what it should be")
        return data

    def open(self, path: str) -> Reader:
        try:
            return open(self._path(path), "rb")
        except FileNotFoundError:
            raise JailshellError(f"{self.label}: {path} is missing")

    def close(self) -> None:
        pass


class _Slice(io.RawIOBase):
    """One member's bytes, read in place with pread on a file descriptor of its
    own: no shared file position, so a layer read in the decompressing thread
    and a config read in the main one cannot disturb each other, and no
    extra layers of buffering (tarfile's ExFileObject has two)."""

    def __init__(self, path: Path, offset: int, size: int):
        super().__init__()
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.offset, self.size, self.pos = offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, min(self.size, base + offset))
        return self.pos

    def read(self, size: int = -1, /) -> bytes:
        left = self.size - self.pos
        n = left if size is None or size < 0 else min(size, left)
        if n <= 0:
            return b""
        data = os.pread(self.fd, n, self.offset + self.pos)
        if not data:
            raise JailshellError("the archive ends inside one of its files", hint="the archive is truncated")
        self.pos += len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        super().close()


class TarArchive:
    """Members of an (uncompressed) tarball, by path, read in place."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.label = str(path)
        try:
            self.tf = tarfile.open(path, "r:")  # noqa: SIM115 (closed by close())
        except tarfile.TarError as exc:
            raise JailshellError(f"{path}: not a tar archive ({exc})")
        self.members = {}
        for m in self.tf.getmembers():
            name = posixpath.normpath(m.name.lstrip("/"))
            self.members[name] = m

    def _member(self, path: str) -> tarfile.TarInfo:
        m = self.members.get(_clean(path, self.label))
        if m is None:
            raise JailshellError(f"{self.label}: {path} is missing from the archive")
        return m

    def exists(self, path: str) -> bool:
        m = self.members.get(posixpath.normpath(path))
        return m is not None and m.isfile()

    def size(self, path: str) -> int:
        return self._member(path).size

    def read(self, path: str, limit: int) -> bytes:
        m = self._member(path)
        if m.size > limit:
            raise JailshellError(f"{self.label}: {path} is too large for what it should be")
        fh = self.open(path)
        try:
            return fh.read()
        finally:
            fh.close()

    def open(self, path: str) -> Reader:
        m = self._member(path)
        # A symlink or hard link member is followed, but only to another member
        # (`docker save` links a layer.tar it already holds).
        for _hop in range(8):
            if not (m.issym() or m.islnk()):
                break
            target = posixpath.join(posixpath.dirname(m.name), m.linkname) if m.issym() else m.linkname
            m = self._member(target.lstrip("/"))
        if not m.isreg():
            raise JailshellError(f"{self.label}: {path} is not a file")
        if m.issparse():
            fh = self.tf.extractfile(m)
            assert fh is not None
            return fh
        return _Slice(self.path, m.offset_data, m.size)

    def close(self) -> None:
        self.tf.close()


def default_name(path: Path) -> str:
    stem = path.name
    for suffix in (".tar.gz", ".tgz", ".tar.zst", ".tar.xz", ".tar.bz2", ".tar", ".oci"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")
    return stem or "imported"


def _name_and_tag(given: str | None, saved: str | None, path: Path) -> tuple[str, str]:
    if given:
        return parse_ref(given)
    if saved:
        if "/" not in saved and ":" not in saved:  # an OCI ref.name is often just a tag
            return default_name(path), saved
        name, tag = parse_ref(saved)
        # docker.io/library/alpine -> alpine, as `docker images` shows it
        for prefix in ("docker.io/library/", "docker.io/"):
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        return name, tag
    return default_name(path), "latest"


def _flat(path: Path) -> ImageParts:
    def opener() -> Reader:
        return open(path, "rb")

    return ImageParts(config={"config": {}}, layers=[Layer(open=opener, size=path.stat().st_size)],
                      source=f"root filesystem tarball {path}")


def _identify(archive: DirArchive | TarArchive, path: Path, ref: str | None,
              platform: Platform | None) -> tuple[ImageParts, str | None] | None:
    label = str(path)
    if archive.exists("oci-layout") and archive.exists("index.json"):
        return Layout(archive, label).parts(ref, platform)
    if archive.exists("manifest.json") and dockerarchive.looks_like(archive, label):
        return dockerarchive.parts(archive, label, ref)
    return None


def import_file(path: Path, *, name: str | None = None, ref: str | None = None, platform: Platform | None = None,
                store: ImageStore | None = None, progress: Progress | None = None,
                layer_dirs: bool = False) -> Image:
    """Import a docker export / docker save / OCI layout (dir or tarball), maybe compressed."""
    store = store or ImageStore()
    path = Path(path)
    if not path.exists():
        raise JailshellError(f"{path}: no such file or directory")
    if path.is_dir():
        if not (path / "oci-layout").is_file():
            raise JailshellError(f"{path}: a directory, but not an OCI image layout (no oci-layout file)",
                                 hint="to import a root filesystem directory: tar -C DIR -cf rootfs.tar .")
        archive = DirArchive(path)
        parts, saved = Layout(archive, str(path)).parts(ref, platform)
        image_name, tag = _name_and_tag(name, saved, path)
        return build(store, parts, image_name, tag, progress=progress, layer_dirs=layer_dirs)
    with open(path, "rb") as fh:
        kind = blobs.compression_of(fh.read(6))
    scratch = None
    try:
        tar_path = path
        if kind:
            # An archive of blobs needs random access: decompress it once, next to the store.
            scratch = store.staging()
            tar_path = scratch / "archive.tar"
            with open(path, "rb") as raw, open(tar_path, "wb") as out:
                stream, _ = blobs.decompressed(raw)
                try:
                    shutil.copyfileobj(stream, out, blobs.READ_SIZE)
                finally:
                    stream.close()
        tar_archive = TarArchive(tar_path)
        try:
            found = _identify(tar_archive, path, ref, platform)
            if found is None:
                if ref is not None:
                    raise JailshellError(f"{path}: a plain root filesystem tarball has no image {ref!r} in it")
                found = (_flat(tar_path), None)
            parts, saved = found
            if kind:
                parts.source += f" ({kind})"
            image_name, tag = _name_and_tag(name, saved, path)
            return build(store, parts, image_name, tag, progress=progress, layer_dirs=layer_dirs)
        finally:
            tar_archive.close()
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def export_image(image: Image, out: IO[bytes], on_entry: Callable[[rootfs.Entry], None] | None = None) -> int:
    """The image's root filesystem as one flat tarball (`docker export` of a fresh container)."""
    return rootfs.export_tar(image.rootfs, out, on_entry=on_entry)
