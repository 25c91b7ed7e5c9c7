"""From an image's parts (config + ordered layers) to an image in the store.

Every source (a `docker export` or `docker save` tarball, an OCI layout, a
registry) ends here: the layers are applied one by one, in order, into a
staging directory of the store, each checked against its digest as it
streams by, and the staging directory is renamed into place only when all
of it is done. An error or Ctrl-C at any point leaves no image behind.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jailshell.engine import rootfs
from jailshell.engine.images import blobs
from jailshell.engine.images.store import Image, ImageStore
from jailshell.engine.rootfs import Reader
from jailshell.errors import JailshellError


@dataclass
class Layer:
    open: Callable[[], Reader]  # the layer as stored: a tarball, maybe compressed
    digest: str = ""  # of the bytes as stored; checked when set
    diff_id: str = ""  # of the uncompressed tarball; checked when set and digest is not
    size: int = -1
    media_type: str = ""

    @property
    def name(self) -> str:
        return blobs.short(self.digest or self.diff_id) if (self.digest or self.diff_id) else "layer"


@dataclass
class ImageParts:
    """What any image format boils down to."""

    config: dict[str, Any]  # the whole OCI/docker image config document
    layers: list[Layer]
    source: str
    blobs: list[str] = field(default_factory=list)  # cached blobs this image was made from (manifests, config)
    notes: list[str] = field(default_factory=list)

    @property
    def run_config(self) -> dict[str, Any]:
        return dict(self.config.get("config") or {})


@dataclass
class Progress:
    """Callbacks a front end can hook: each applied entry, each layer started/finished."""

    on_entry: Callable[[rootfs.Entry], None] | None = None
    on_layer: Callable[[int, int, Layer], None] | None = None  # (index from 1, count, layer)
    on_layer_done: Callable[[int, rootfs.ApplyStats, float], None] | None = None  # (index, stats, seconds)


class _OpenLayer:
    """A layer opened for applying: its bytes checked against the digest as they
    stream by, decompressed (in a thread of its own, see blobs.ReadAhead)."""

    def __init__(self, layer: Layer, label: str):
        self.label = label
        self.raw = layer.open()
        self.checked: blobs.Verified | None = None
        self.diff_check: blobs.Verified | None = None
        self.tar: Reader | None = None
        try:
            raw_in: Reader = self.raw
            if layer.digest:
                self.checked = raw_in = blobs.Verified(self.raw, layer.digest, label)
            self.tar, _kind = blobs.decompressed(raw_in)
            if layer.diff_id and not layer.digest:
                self.diff_check = blobs.Verified(self.tar, layer.diff_id, label)
        except BaseException:
            self.close()
            raise

    def apply(self, applier: rootfs.Applier) -> rootfs.ApplyStats:
        assert self.tar is not None
        try:
            stats = applier.apply(self.diff_check or self.tar, self.label)
            if self.diff_check is not None:
                self.diff_check.verify()
        except Exception as exc:
            # A layer is read while it downloads: corrupt bytes may break the
            # decompressor or the tar reader before the digest is complete.
            # The digest says what really happened, so it is checked first.
            self.tar.close()
            self.tar = None
            if self.checked is not None:
                self.checked.verify()
            if _is_corrupt_data(exc):
                raise JailshellError(f"{self.label}: corrupt compressed data ({exc})",
                                     hint="the layer is damaged; nothing was imported") from exc
            raise
        self.tar.close()
        self.tar = None
        if self.checked is not None:
            self.checked.verify()
        return stats

    def close(self) -> None:
        try:
            if self.tar is not None:
                self.tar.close()
        finally:
            self.raw.close()


def _is_corrupt_data(exc: BaseException) -> bool:
    """What a decompressor raises for bad input (zlib, lzma, bz2, zstandard, isal)."""
    import lzma
    import zlib

    return isinstance(exc, (zlib.error, lzma.LZMAError, EOFError)) or type(exc).__module__.split(".")[0] in (
        "zstandard", "isal", "gzip") or (isinstance(exc, OSError) and "compressed" in str(exc).lower())


def _apply_layer(applier: rootfs.Applier, layer: Layer, label: str) -> rootfs.ApplyStats:
    opened = _OpenLayer(layer, label)
    try:
        return opened.apply(applier)
    finally:
        opened.close()


def build(store: ImageStore, parts: ImageParts, name: str, tag: str, *, progress: Progress | None = None,
          layer_dirs: bool = False) -> Image:
    """Apply parts' layers into a new image name:tag, atomically.

    layer_dirs: also keep each layer in its own directory, in overlayfs's
    format, so the layers can be mounted as overlay lowerdirs (root only)."""
    progress = progress or Progress()
    staging = store.staging()
    try:
        root = staging / "rootfs"
        root.mkdir(mode=0o755)
        count = len(parts.layers)
        applied: list[rootfs.ApplyStats] = []
        with rootfs.Applier(root, whiteouts=True, on_entry=progress.on_entry) as applier:
            for i, layer in enumerate(parts.layers, 1):
                if progress.on_layer:
                    progress.on_layer(i, count, layer)
                start = time.monotonic()
                stats = _apply_layer(applier, layer, f"layer {i}/{count} ({layer.name})")
                applied.append(stats)
                if progress.on_layer_done:
                    progress.on_layer_done(i, stats, time.monotonic() - start)
            notes = parts.notes + applier.total.note_lines()
        dirs = []
        if layer_dirs:
            dirs = _keep_layer_dirs(store, staging, parts)
        # What each layer did, for `image inspect` and the REPL's `layers`:
        # file data, entries, and what its whiteouts took away from the layers below.
        layer_info = [
            {"digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size, "media_type": layer.media_type,
             "unpacked": stats.bytes, "entries": stats.entries, "whiteouts": stats.whiteouts,
             "removed": stats.removed}
            for layer, stats in zip(parts.layers, applied, strict=True)
        ]
        extra = {
            "architecture": parts.config.get("architecture", ""),
            "os": parts.config.get("os", ""),
            "created": parts.config.get("created", ""),
            "layer_info": layer_info,
            "blobs": parts.blobs,
            "layer_dirs": dirs,
            "notes": notes,
            "imported": time.time(),
        }
        return store.commit(staging, name, tag, source=parts.source, config=parts.run_config,
                            layers=[layer.digest or layer.diff_id for layer in parts.layers], extra=extra)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _keep_layer_dirs(store: ImageStore, staging: Path, parts: ImageParts) -> list[str]:
    """Each layer extracted alone (whiteouts as overlayfs stores them), shared by
    every image that has it, named by its digest. Returns paths relative to the store."""
    out = []
    for i, layer in enumerate(parts.layers, 1):
        key = layer.digest or layer.diff_id
        if not key:
            return []
        dest = store.layer_dir(key)
        if not dest.is_dir():
            tmp = staging / f"layer-{i}"
            tmp.mkdir(mode=0o755)
            with rootfs.Applier(tmp, overlay=True) as applier:
                _apply_layer(applier, layer, f"layer {i} ({layer.name})")
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(tmp, dest)
            except OSError:  # another import made it meanwhile
                shutil.rmtree(tmp, ignore_errors=True)
        out.append(str(dest.relative_to(store.root)))
    return out
