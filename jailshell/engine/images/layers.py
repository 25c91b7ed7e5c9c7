"""A jail's changes as a layer, and images written as `docker save` tarballs.

A jail's root is an overlay mount: the image below (lowerdir), the jail's
writes in its own directory above (upperdir). That upper directory *is* the
jail's layer, what `docker commit` turns into a new image layer, except for
how a deletion is written down. overlayfs marks a deleted file with a 0/0
character device and a directory whose lower contents are hidden with the
`trusted.overlay.opaque` attribute; in a layer tarball the same facts are
the empty files `.wh.NAME` and `.wh..wh..opq` (OCI image spec, "whiteouts").
layer_from_upper() does that translation; save() writes the image's root
and the jail's layer as a `docker save` tarball that `docker load` and
`jailshell image import` read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from jailshell.engine import rootfs
from jailshell.engine.images.store import Image
from jailshell.engine.rootfs import OPAQUE, OVERLAY_OPAQUE_XATTR, WHITEOUT, Entry


class _Hashing(io.RawIOBase):
    """A file being written, hashed on the way: a layer's diff_id without reading it twice."""

    def __init__(self, out: IO[bytes]):
        super().__init__()
        self.out = out
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self.out.write(data)
        self.hash.update(data)
        self.size += len(data)
        return len(data)

    @property
    def digest(self) -> str:
        return f"sha256:{self.hash.hexdigest()}"


def _is_whiteout_device(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


def _opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OVERLAY_OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def layer_from_upper(upper: Path, out: IO[bytes], *, on_entry: Callable[[Entry], None] | None = None) -> int:
    """Write an overlayfs upper directory as a layer tarball, its whiteout
    devices and opaque directories turned into .wh. entries. Returns the entry count."""
    upper = Path(upper)
    count = 0

    def report(entry: Entry) -> None:
        nonlocal count
        count += 1
        if on_entry is not None:
            on_entry(entry)

    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for dirpath, dirnames, filenames in os.walk(upper):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, upper)
            prefix = "" if rel_dir == "." else rel_dir + "/"
            if prefix and _opaque(dirpath):
                ti = tarfile.TarInfo(prefix + OPAQUE)
                ti.mode, ti.mtime = 0o644, int(time.time())
                tf.addfile(ti)
                report(Entry("/" + prefix, "opaque"))
            for name in sorted(dirnames + filenames):
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                if _is_whiteout_device(st):
                    ti = tarfile.TarInfo(prefix + WHITEOUT + name)
                    ti.mode, ti.mtime = 0o644, int(st.st_mtime)
                    tf.addfile(ti)
                    report(Entry("/" + prefix + name, "whiteout"))
                    continue
                ti = tf.gettarinfo(full, arcname=prefix + name)
                if ti is None:  # a socket: tar leaves it out too
                    continue
                ti.uname = ti.gname = ""
                if ti.isreg():
                    with open(full, "rb") as fh:
                        tf.addfile(ti, fh)
                else:
                    tf.addfile(ti)
                kind = {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink",
                        tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo"}.get(ti.type, "file")
                report(Entry("/" + prefix + name, kind, ti.size, ti.mode, ti.uid, ti.gid, ti.mtime, ti.linkname))
    return count


@dataclass
class SavedLayer:
    diff_id: str
    size: int
    entries: int
    created_by: str


@dataclass
class Saved:
    path: Path
    repo_tag: str
    layers: list[SavedLayer] = field(default_factory=list)


LayerWriter = Callable[[IO[bytes]], int]  # writes one uncompressed layer tarball, returns its entry count


def write_docker_save(out: Path, repo_tag: str, config: dict[str, Any], layers: list[tuple[str, LayerWriter]],
                      *, platform: tuple[str, str] = ("linux", "")) -> Saved:
    """A `docker save` tarball (the classic form: manifest.json, <config>.json,
    <diff_id>/layer.tar) with the given layers, bottom first. Written next to
    out and renamed into place, so a failure leaves no half archive."""
    from jailshell.engine.images.oci import Platform

    out = Path(out)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        saved = Saved(out, repo_tag)
        for i, (created_by, writer) in enumerate(layers):
            path = work / f"layer{i}.tar"
            with open(path, "wb") as fh:
                hashing = _Hashing(fh)
                entries = writer(hashing)  # type: ignore[arg-type]
            saved.layers.append(SavedLayer(hashing.digest, hashing.size, entries, created_by))
        os_name, arch = platform
        doc = {
            "architecture": arch or Platform.host().architecture,
            "os": os_name,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in saved.layers]},
            "history": [{"created_by": layer.created_by} for layer in saved.layers],
        }
        body = json.dumps(doc, indent=2).encode()
        config_name = hashlib.sha256(body).hexdigest() + ".json"
        layer_names = [f"{layer.diff_id[7:]}/layer.tar" for layer in saved.layers]
        manifest = [{"Config": config_name, "RepoTags": [repo_tag], "Layers": layer_names}]
        tmp = work / "archive.tar"
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            _add_bytes(tf, config_name, body)
            for i, name in enumerate(layer_names):
                if name not in tf.getnames():  # two identical layers are stored once
                    tf.add(work / f"layer{i}.tar", arcname=name, recursive=False)
            _add_bytes(tf, "manifest.json", json.dumps(manifest).encode())
        os.replace(tmp, out)
        return saved
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), 0o644, int(time.time())
    tf.addfile(ti, io.BytesIO(data))


def save_with_upper(image: Image, upper: Path, out: Path, repo_tag: str, *,
                    on_entry: Callable[[Entry], None] | None = None) -> Saved:
    """`docker commit` + `docker save` of a jail: the image's root filesystem as
    the bottom layer, the jail's upper directory (its changes) as the top one."""

    def bottom(fh: IO[bytes]) -> int:
        return rootfs.export_tar(image.rootfs, fh)

    def top(fh: IO[bytes]) -> int:
        return layer_from_upper(upper, fh, on_entry=on_entry)

    return write_docker_save(out, repo_tag, dict(image.config),
                             [(f"the image {image.ref} (its root filesystem, flattened)", bottom),
                              ("the jail's changes: its overlay upper directory", top)],
                             platform=("linux", str(image.meta.get("architecture") or "")))
