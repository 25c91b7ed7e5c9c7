"""`docker save` tarballs in their classic form.

  manifest.json        [{"Config": "<id>.json", "RepoTags": ["alpine:3.10"], "Layers": ["<id>/layer.tar", ...]}]
  <id>.json            the image config (Entrypoint, Cmd, Env, ...; rootfs.diff_ids)
  <id>/layer.tar       each layer, uncompressed, bottom first

Layer files are not named by their digest here, so each one is checked
against the config's diff_ids (the digest of the uncompressed tarball).
Docker 25 and later save an OCI layout with a manifest.json beside it;
sources.py reads that form as an OCI layout.
"""

from __future__ import annotations

import functools
from typing import Any

from jailshell.engine.images import blobs
from jailshell.engine.images.oci import MAX_JSON, parse_json
from jailshell.engine.images.unpack import ImageParts, Layer
from jailshell.errors import JailshellError


def _entries(archive: Any, label: str) -> list[dict[str, Any]]:
    import json

    try:
        doc = json.loads(archive.read("manifest.json", MAX_JSON))
    except ValueError as exc:
        raise JailshellError(f"{label}: manifest.json is not valid JSON ({exc})")
    if not isinstance(doc, list) or not doc or not all(isinstance(e, dict) for e in doc):
        raise JailshellError(f"{label}: manifest.json is not a list of images")
    return doc


def looks_like(archive: Any, label: str) -> bool:
    try:
        entries = _entries(archive, label)
    except JailshellError:
        return False
    return all("Config" in e and "Layers" in e for e in entries)


def parts(archive: Any, label: str, ref: str | None) -> tuple[ImageParts, str | None]:
    entries = _entries(archive, label)
    tags = [t for e in entries for t in (e.get("RepoTags") or [])]
    if ref is not None:
        chosen = [e for e in entries if ref in (e.get("RepoTags") or [])
                  or any(t.rsplit(":", 1)[0] == ref for t in e.get("RepoTags") or [])]
        if not chosen:
            raise JailshellError(f"{label}: no image {ref!r} in this archive", hint=f"it has: {', '.join(tags) or 'no tags'}")
        entry = chosen[0]
    elif len(entries) > 1:
        raise JailshellError(f"{label}: this archive holds {len(entries)} images",
                             hint=f"pick one with --ref ({', '.join(tags) or 'they have no tags'})")
    else:
        entry = entries[0]
    config_path = str(entry["Config"])
    config = parse_json(archive.read(config_path, MAX_JSON), f"{label}: {config_path}")
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    paths = entry.get("Layers") or []
    if not isinstance(paths, list) or len(paths) != len(diff_ids):
        raise JailshellError(f"{label}: manifest.json lists {len(paths)} layers, the config {len(diff_ids)}")
    layers = []
    for path, diff_id in zip(paths, diff_ids, strict=True):
        blobs.check_digest(diff_id, "layer diff_id")
        layers.append(Layer(open=functools.partial(archive.open, str(path)), diff_id=diff_id,
                            size=archive.size(str(path))))
    name = (entry.get("RepoTags") or [None])[0]
    return ImageParts(config=config, layers=layers, source=f"docker save archive {label}"), name
