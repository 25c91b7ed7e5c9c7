"""The local image store.

Layout under DATA_DIR/images/<name with / as %2F>/<tag>/:
  rootfs/      the flattened root filesystem (what `docker export` would give)
  image.json   {"name", "tag", "source", "config": OCI image config "config"
               object (Env, Cmd, Entrypoint, WorkingDir, ...), "layers": [...],
               and what the importer knew: "layer_info", "architecture", ...}
and, shared by all images, named by digest:
  .blobs/sha256/<hex>    registry downloads (manifests, configs, layers)
  .layers/sha256/<hex>/  one layer alone, for overlayfs lowerdirs (optional)

An image appears atomically: it is built in a temporary sibling directory and
renamed into place, so an interrupted import never leaves half an image.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jailshell import paths
from jailshell.errors import InvalidInput, JailshellError

DEFAULT_IMAGE = "busybox"
# docker's tag grammar, or a digest (an image pulled by digest is stored under it)
_TAG_RE = re.compile(r"^([\w][\w.-]{0,127}|sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")


def parse_ref(ref: str) -> tuple[str, str]:
    """'alpine:3.10' -> ('alpine', '3.10'); 'busybox' -> ('busybox', 'latest').
    A registry host with a port ('127.0.0.1:5000/x:1') keeps its colon."""
    if not ref or ref.strip() != ref or any(c in ref for c in " \t\n"):
        raise InvalidInput(f"invalid image reference {ref!r}")
    name, tag = ref, "latest"
    if "@" in ref:
        name, tag = ref.split("@", 1)
    else:
        last = ref.rsplit("/", 1)[-1]
        if ":" in last:
            name, tag = ref.rsplit(":", 1)
    if not name or name.startswith((".", "/")) or ".." in name or not _TAG_RE.match(tag):
        raise InvalidInput(f"invalid image reference {ref!r}")
    return name, tag


def _ref(name: str, tag: str) -> str:
    # An image pulled by digest is stored with the digest as its tag: name@sha256:...
    return f"{name}@{tag}" if ":" in tag else f"{name}:{tag}"


def _dirname(name: str) -> str:
    return name.replace("%", "%25").replace("/", "%2F")


@dataclass
class Image:
    name: str
    tag: str
    path: Path
    source: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    layers: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # all of image.json

    @property
    def ref(self) -> str:
        return _ref(self.name, self.tag)

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    def command(self, args: list[str] | None = None, entrypoint: str | None = None) -> list[str]:
        """What a container of this image runs, by docker's rule: Entrypoint +
        (args, or Cmd without any); an entrypoint given replaces the image's and
        drops its Cmd. Every run path (run, the plain run, docker run/create) uses it."""
        from jailshell.engine.runfast import image_command  # the plain run's copy-free home of the rule

        return image_command(self.config, list(args or []), entrypoint)

    def default_command(self) -> list[str]:
        return self.command()

    def env(self) -> list[str]:
        return list(self.config.get("Env") or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])


class ImageStore:
    def __init__(self, root: Path | None = None):
        self.root = root or paths.data_dir() / "images"

    def _path(self, name: str, tag: str) -> Path:
        return self.root / _dirname(name) / tag

    def get(self, ref: str) -> Image | None:
        name, tag = parse_ref(ref)
        path = self._path(name, tag)
        meta = path / "image.json"
        if not meta.is_file():
            return None
        data = json.loads(meta.read_text())
        return Image(name, tag, path, data.get("source", ""), data.get("config") or {}, data.get("layers") or [],
                     data)

    def resolve(self, ref: str | None = None) -> Image:
        """The image for ref, building the embedded default on first use."""
        ref = ref or DEFAULT_IMAGE
        image = self.get(ref)
        if image is not None:
            return image
        if parse_ref(ref) == parse_ref(DEFAULT_IMAGE):
            from jailshell.engine.images.embedded import build_default

            return build_default(self)
        raise JailshellError(
            f"unknown image '{ref}'",
            hint="see `jailshell image ls`; import one with `jailshell image import FILE --name NAME:TAG`",
        )

    def images(self) -> Iterator[Image]:
        if not self.root.is_dir():
            return
        for name_dir in sorted(self.root.iterdir()):
            if name_dir.name.startswith("."):
                continue
            for tag_dir in sorted(name_dir.iterdir()):
                name = name_dir.name.replace("%2F", "/").replace("%25", "%")
                image = self.get(_ref(name, tag_dir.name)) if not tag_dir.name.startswith(".") else None
                if image:
                    yield image

    def staging(self) -> Path:
        """A fresh temporary directory on the same filesystem as the store.
        Its name holds our PID, so `image prune` can tell a dead import's leftovers."""
        paths.ensure_dir(self.root)
        return Path(tempfile.mkdtemp(prefix=f".staging-{os.getpid()}-", dir=self.root))

    @property
    def blobs_dir(self) -> Path:
        return self.root / ".blobs"

    def layer_dir(self, digest: str) -> Path:
        algorithm, _, hexpart = digest.partition(":")
        return self.root / ".layers" / algorithm / hexpart

    def commit(self, staging: Path, name: str, tag: str, *, source: str, config: dict[str, Any] | None = None,
               layers: list[str] | None = None, extra: dict[str, Any] | None = None) -> Image:
        """Move a fully built staging dir (holding rootfs/) into place, atomically."""
        meta = {**(extra or {}), "name": name, "tag": tag, "source": source, "config": config or {},
                "layers": layers or []}
        (staging / "image.json").write_text(json.dumps(meta, indent=2) + "\n")
        dest = self._path(name, tag)
        paths.ensure_dir(dest.parent)
        old = None
        if dest.exists():
            old = dest.with_name(f".old-{tag}-{os.getpid()}")
            os.rename(dest, old)
        os.rename(staging, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        image = self.get(_ref(name, tag))
        assert image is not None
        return image

    def remove(self, ref: str) -> None:
        name, tag = parse_ref(ref)
        path = self._path(name, tag)
        if not (path / "image.json").exists():
            raise JailshellError(f"unknown image '{ref}'", hint="see `jailshell image ls`")
        # As docker refuses to remove an image a container uses: a mounted root
        # would lose its files. (Layer directories stay until prune, which keeps
        # mounted ones, so an image mounted layer by layer can go.)
        if str(path / "rootfs") in overlay_lowerdirs():
            raise JailshellError(f"image '{ref}' is in use: a jail or container has its files mounted as its root",
                                 hint="exit that jail or remove that container first")
        trash = path.with_name(f".rm-{tag}-{os.getpid()}")
        os.rename(path, trash)
        shutil.rmtree(trash)
        if not any(path.parent.iterdir()):
            path.parent.rmdir()

    def lowerdirs(self, image: Image, upper: Path | None = None, work: Path | None = None) -> list[Path]:
        """The image's layer directories as overlayfs wants them in lowerdir=:
        the top layer first. Empty when the image was stored flattened only (or
        its layers would not fit in the mount options beside upper and work)."""
        from jailshell.engine.runfast import layer_lowers

        return [Path(d) for d in layer_lowers(str(self.root), image.meta, str(upper or ""), str(work or ""))]

    def overlay_lowers(self, image: Image, upper: Path | None = None, work: Path | None = None) -> list[Path]:
        """The lowerdirs of a container's overlay root: the layers when they were
        kept (`--layers`), else the flattened root alone."""
        return self.lowerdirs(image, upper, work) or [image.rootfs]

    def overlay_data(self, image: Image, upper: Path, work: Path) -> str:
        """The mount options of an overlay root for image with a writable upper:
        its layers as lowerdirs when they were kept (`--layers`), the top one
        first, as docker's overlay2 mounts them; else its flattened root as the
        one lowerdir (where the layers were not kept, or overlayfs whiteouts
        could not be made)."""
        from jailshell.engine.runfast import overlay_data

        return overlay_data([str(d) for d in self.overlay_lowers(image, upper, work)], str(upper), str(work))

    def prune(self, *, min_age: float = 600.0) -> PruneReport:
        """Remove what no image uses: cached blobs and layer directories, tags
        pointing at removed blobs, and the leftovers of imports that died
        (staging directories of processes that are gone). Partial downloads
        are kept for min_age seconds, so a pull running now can resume them."""
        report = PruneReport()
        used: set[str] = set()
        layer_dirs: set[Path] = set()
        for image in self.images():
            used.update(image.layers)
            used.update(image.meta.get("blobs") or [])
            used.update(info.get("digest", "") for info in image.meta.get("layer_info") or [])
            layer_dirs.update(self.root / rel for rel in image.meta.get("layer_dirs") or [])
        now = time.time()
        blob_root = self.blobs_dir
        for algo_dir in sorted(blob_root.glob("sha*")):
            for f in algo_dir.iterdir():
                digest = f"{algo_dir.name}:{f.name}"
                if f.suffix == ".part" or ".tmp" in f.name:
                    if now - f.stat().st_mtime < min_age:
                        continue
                elif digest in used:
                    continue
                report.add(f"blob {digest}" if "." not in f.name else f"partial download {f.name}", f)
        tags = blob_root / "tags"
        if tags.is_dir():
            for f in sorted(tags.rglob("*")):
                if f.is_file():
                    digest = f.read_text().strip()
                    algorithm, _, hexpart = digest.partition(":")
                    if not (blob_root / algorithm / hexpart).is_file():
                        report.add(f"tag {f.relative_to(tags)}", f)
        layers_root = self.root / ".layers"
        unused = [d for d in sorted(layers_root.glob("*/*")) if d not in layer_dirs]
        # An import running now has put its layers there before its image.json
        # names them; a jail or container of a removed image may still have
        # them mounted as lowerdirs: both keep them.
        stagers = (re.match(r"^\.staging-(\d+)-", d.name) for d in self.root.glob(".staging-*"))
        importing = any(m and _pid_alive(int(m.group(1))) for m in stagers)
        if unused and not importing:
            mounted = overlay_lowerdirs()
            for d in unused:
                if str(d) not in mounted:
                    report.add(f"layer directory {d.parent.name}:{d.name}", d)
        # commit() and remove() leave .old-TAG-PID / .rm-TAG-PID beside the tag
        # for an instant; staging() makes .staging-PID-* at the top.
        for d in sorted(self.root.glob(".staging-*")) if self.root.is_dir() else []:
            m = re.match(r"^\.staging-(\d+)-", d.name)
            if m and not _pid_alive(int(m.group(1))):
                report.add(f"leftover {d.name} of an import that died", d)
        for d in sorted(self.root.glob("*/.*-*")) if self.root.is_dir() else []:
            m = re.match(r"^\.(?:old|rm)-.*-(\d+)$", d.name)
            if m and not d.parent.name.startswith(".") and not _pid_alive(int(m.group(1))):
                report.add(f"leftover {d.parent.name}/{d.name}", d)
        return report


def overlay_lowerdirs() -> set[str]:
    """Every lowerdir of every overlay mounted now, in any mount namespace (a
    `jailshell run` container mounts its root in its own): read from the
    mountinfo of one process of each."""
    seen: set[int] = set()
    found: set[str] = set()
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            ns = os.stat(f"/proc/{pid}/ns/mnt").st_ino
            if ns in seen:
                continue
            with open(f"/proc/{pid}/mountinfo") as fh:
                lines = fh.read().splitlines()
        except OSError:
            continue  # gone, or not ours to read
        seen.add(ns)
        for line in lines:
            _, _, rest = line.partition(" - ")
            fields = rest.split(" ")
            if len(fields) < 3 or fields[0] != "overlay":
                continue
            for opt in fields[2].split(","):
                if opt.startswith("lowerdir="):
                    # mountinfo writes space, tab, newline and backslash as octal escapes
                    text = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), opt[len("lowerdir="):])
                    found.update(text.split(":"))
    return found


def _pid_alive(pid: int) -> bool:
    return pid == os.getpid() or os.path.exists(f"/proc/{pid}")


@dataclass
class PruneReport:
    removed: list[str] = field(default_factory=list)
    freed: int = 0

    def add(self, what: str, path: Path) -> None:
        """Remove path (file or tree), counting its bytes."""
        size = 0
        if path.is_dir() and not path.is_symlink():
            for dirpath, _dirs, files in os.walk(path):
                for name in files:
                    try:
                        size += os.lstat(os.path.join(dirpath, name)).st_size
                    except OSError:
                        pass
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                size = path.lstat().st_size
                path.unlink()
            except FileNotFoundError:
                return
        self.removed.append(what)
        self.freed += size
