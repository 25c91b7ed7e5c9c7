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


def _apply_layer(applier: rootfs.Applier, layer: Layer, label: str) -> rootfs.ApplyStats:
    raw = layer.open()
    try:
        checked: blobs.Verified | None = None
        if layer.digest:
            checked = blobs.Verified(raw, layer.digest, label)
            raw_in: Reader = checked
        else:
            raw_in = raw
        tar, _kind = blobs.decompressed(raw_in)
        try:
            diff_check: blobs.Verified | None = None
            if layer.diff_id and not layer.digest:
                diff_check = blobs.Verified(tar, layer.diff_id, label)
                tar = diff_check
            stats = applier.apply(tar, label)
            if diff_check is not None:
                diff_check.verify()
        finally:
            tar.close()
        if checked is not None:
            checked.verify()
        return stats
    finally:
        raw.close()


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
        sizes = []
        with rootfs.Applier(root, whiteouts=True, on_entry=progress.on_entry) as applier:
            for i, layer in enumerate(parts.layers, 1):
                if progress.on_layer:
                    progress.on_layer(i, count, layer)
                start = time.monotonic()
                label = f"layer {i}/{count} ({layer.name})"
                stats = _apply_layer(applier, layer, label)
                sizes.append(stats.bytes)
                if progress.on_layer_done:
                    progress.on_layer_done(i, stats, time.monotonic() - start)
            notes = parts.notes + applier.total.note_lines()
        dirs = []
        if layer_dirs:
            dirs = _keep_layer_dirs(store, staging, parts)
        layer_info = [
            {"digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size, "media_type": layer.media_type,
             "unpacked": size}
            for layer, size in zip(parts.layers, sizes, strict=True)
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
