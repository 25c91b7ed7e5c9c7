"""OCI images: media types, platforms, indexes and manifests, image layouts.

An OCI image is JSON documents pointing at blobs by digest:

  index (or docker "manifest list")   one manifest per platform (linux/amd64, linux/arm64/v8, ...)
    manifest                          the config blob + the layer blobs, in order
      config                          Entrypoint, Cmd, Env, WorkingDir, ...; rootfs.diff_ids
      layers                          tarballs, each applied on top of the previous ones

An *image layout* is that tree on disk: `oci-layout`, `index.json` and
`blobs/<algorithm>/<hex>`, as a directory or a tarball (skopeo's `oci:` and
`oci-archive:`, umoci, buildah, `docker save` from Docker 25 on).
"""

from __future__ import annotations

import functools
import json
import platform as _platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jailshell.engine.images import blobs
from jailshell.engine.images.unpack import ImageParts, Layer
from jailshell.engine.rootfs import Reader
from jailshell.errors import InvalidInput, JailshellError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
# What a registry is asked for, best first.
ACCEPT = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])

REF_NAME = "org.opencontainers.image.ref.name"
# Docker 25+ `docker save` keeps the full name here; ref.name then holds only the tag.
CONTAINERD_NAME = "io.containerd.image.name"
MAX_JSON = 16 << 20  # a manifest or config is kilobytes; refuse to buffer a hostile giant

# platform.machine() -> (OCI architecture, variant)
_MACHINES = {
    "x86_64": ("amd64", ""), "amd64": ("amd64", ""), "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "i686": ("386", ""), "i386": ("386", ""),
    "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""), "riscv64": ("riscv64", ""),
}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        """'linux/amd64', 'linux/arm64/v8', 'linux/arm/v7'."""
        parts = text.strip().lower().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise InvalidInput(f"invalid platform {text!r}", hint="write it as OS/ARCH[/VARIANT], e.g. linux/amd64")
        return cls(parts[0], parts[1], parts[2] if len(parts) == 3 else "")

    @classmethod
    def host(cls) -> Platform:
        arch, variant = _MACHINES.get(_platform.machine(), (_platform.machine(), ""))
        return cls("linux", arch, variant)

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Platform:
        return cls(str(doc.get("os", "")), str(doc.get("architecture", "")), str(doc.get("variant", "") or ""))

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, other: Platform) -> bool:
        if (self.os, self.architecture) != (other.os, other.architecture):
            return False
        # arm64 is v8 unless said otherwise (as docker normalises it).
        default = "v8" if self.architecture == "arm64" else ""
        return not self.variant or (self.variant or default) == (other.variant or default)


def parse_json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise JailshellError(f"{what} is not valid JSON ({exc})")
    if not isinstance(doc, dict):
        raise JailshellError(f"{what} is not a JSON object")
    return doc


def media_type(doc: dict[str, Any]) -> str:
    mt = doc.get("mediaType", "")
    if not mt:
        # mediaType is optional in OCI documents: an index has manifests, a manifest has layers.
        mt = OCI_INDEX if "manifests" in doc else OCI_MANIFEST if "layers" in doc else ""
    if mt in DOCKER_SCHEMA1 or doc.get("schemaVersion") == 1:
        raise JailshellError("this image uses the old docker manifest schema 1, which jailshell does not read",
                             hint="convert it: skopeo copy --format v2s2 SRC DEST")
    return str(mt)


def select_manifest(index: dict[str, Any], want: Platform | None, where: str) -> dict[str, Any]:
    """The descriptor for want (default: this machine) in an index / manifest list."""
    entries = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
    # Build attestations (SBOM, provenance) ride along as manifests of platform unknown/unknown.
    entries = [m for m in entries if (m.get("annotations") or {}).get("vnd.docker.reference.type")
               != "attestation-manifest"]
    if not entries:
        raise JailshellError(f"{where}: the image index lists no manifests")
    host = Platform.host()
    target = want or host
    with_platform = [m for m in entries if isinstance(m.get("platform"), dict)]
    if not with_platform:
        if len(entries) == 1 or want is None:
            return entries[0]
        raise JailshellError(f"{where}: the index says nothing about platforms, cannot pick {target}")
    found = [m for m in with_platform if target.matches(Platform.of(m["platform"]))]
    if not found:
        have = ", ".join(sorted({str(Platform.of(m["platform"])) for m in with_platform}))
        raise JailshellError(f"{where}: no image for {target} (it has: {have})",
                             hint="pick one with --platform OS/ARCH[/VARIANT]")
    if not target.variant:  # prefer this machine's own variant among several
        exact = [m for m in found if Platform.of(m["platform"]).variant in ("", host.variant)]
        found = exact or found
    return found[0]


BlobReader = Callable[[dict[str, Any]], bytes]  # descriptor -> verified bytes
BlobOpener = Callable[[dict[str, Any]], Reader]  # descriptor -> raw stream (checked by the caller via digest)


def descriptor_digest(desc: dict[str, Any], what: str) -> str:
    return blobs.check_digest(desc.get("digest", ""), what)


def resolve_manifest(doc: dict[str, Any], read: BlobReader, want: Platform | None, where: str,
                     digest: str = "", depth: int = 0) -> tuple[dict[str, Any], str]:
    """Follow indexes down to one image manifest: (manifest, its digest; '' for doc itself)."""
    mt = media_type(doc)
    if mt in INDEX_TYPES:
        if depth > 4:
            raise JailshellError(f"{where}: image indexes nested too deep")
        desc = select_manifest(doc, want, where)
        child_digest = descriptor_digest(desc, "manifest")
        child = parse_json(read(desc), f"{where}: manifest {blobs.short(child_digest)}")
        return resolve_manifest(child, read, want, where, child_digest, depth + 1)
    if mt not in MANIFEST_TYPES:
        raise JailshellError(f"{where}: unsupported manifest type {mt!r}")
    return doc, digest


def parts_from_manifest(manifest: dict[str, Any], read: BlobReader, opener: BlobOpener, source: str,
                        where: str, want: Platform | None = None) -> ImageParts:
    config_desc = manifest.get("config")
    if not isinstance(config_desc, dict):
        raise JailshellError(f"{where}: the manifest has no config")
    descriptor_digest(config_desc, "config")
    config = parse_json(read(config_desc), f"{where}: image config")
    layers = []
    diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
    descs = manifest.get("layers") or []
    if not isinstance(descs, list) or (diff_ids and len(diff_ids) != len(descs)):
        raise JailshellError(f"{where}: the manifest's layers do not match the config's diff_ids")
    for i, desc in enumerate(descs):
        if not isinstance(desc, dict):
            raise JailshellError(f"{where}: layer {i + 1} is not a descriptor")
        mt = str(desc.get("mediaType", ""))
        if "foreign" in mt or "nondistributable" in mt:
            raise JailshellError(f"{where}: layer {i + 1} is a foreign layer ({mt}), which must be fetched "
                                 "from elsewhere", hint="foreign layers are used by Windows images")
        digest = descriptor_digest(desc, "layer")
        layers.append(Layer(open=functools.partial(opener, desc), digest=digest,
                            diff_id=str(diff_ids[i]) if diff_ids else "", size=int(desc.get("size", -1)),
                            media_type=mt))
    parts = ImageParts(config=config, layers=layers, source=source)
    got = Platform.of(config)
    target = want or Platform.host()
    if got.architecture and not target.matches(got) and want is None:
        parts.notes.append(f"this image is for {got}, not this machine ({target}): its programs will not run here")
    return parts


def _name_of(desc: dict[str, Any]) -> str | None:
    annotations = desc.get("annotations") or {}
    name = annotations.get(CONTAINERD_NAME) or annotations.get(REF_NAME)
    return str(name) if name else None


def _default_tag(index: dict[str, Any]) -> str | None:
    for m in index.get("manifests") or []:
        name = _name_of(m)
        if name:
            return name
    return None


class Layout:
    """An OCI image layout inside an archive (a directory or a tarball)."""

    def __init__(self, archive: Any, label: str):
        self.archive = archive  # sources.Archive: read(path) -> bytes, open(path) -> Reader
        self.label = label

    def blob_path(self, desc: dict[str, Any]) -> str:
        algorithm, hexpart = descriptor_digest(desc, "blob").split(":", 1)
        return f"blobs/{algorithm}/{hexpart}"

    def read_blob(self, desc: dict[str, Any]) -> bytes:
        data = self.archive.read(self.blob_path(desc), MAX_JSON)
        got = blobs.digest_bytes(data, desc["digest"].split(":", 1)[0])
        if got != desc["digest"]:
            raise JailshellError(f"{self.label}: blob {desc['digest']} has digest {got}",
                                 hint="the archive is corrupt or was tampered with")
        return data

    def open_blob(self, desc: dict[str, Any]) -> Reader:
        reader: Reader = self.archive.open(self.blob_path(desc))
        return reader

    def parts(self, ref: str | None, want: Platform | None) -> tuple[ImageParts, str | None]:
        """The image (and the name it was saved under, if any) for ref or the only one."""
        index = parse_json(self.archive.read("index.json", MAX_JSON), f"{self.label}: index.json")
        entries = [m for m in index.get("manifests") or [] if isinstance(m, dict)]
        names = [_name_of(m) for m in entries]
        if ref is not None:
            chosen = [m for m, n in zip(entries, names, strict=True) if n == ref or (n and n.endswith(":" + ref))]
            if not chosen:
                raise JailshellError(f"{self.label}: no image named {ref!r} in this layout",
                                     hint=f"it has: {', '.join(n for n in names if n) or 'no names'}")
            index = {**index, "manifests": chosen}
        elif len({n for n in names if n}) > 1 and len(entries) > 1 and not all(
                isinstance(m.get("platform"), dict) for m in entries):
            raise JailshellError(f"{self.label}: this layout holds several images",
                                 hint=f"pick one with --ref ({', '.join(n for n in names if n)})")
        name = _default_tag(index)
        manifest, _digest = resolve_manifest(index, self.read_blob, want, self.label)
        parts = parts_from_manifest(manifest, self.read_blob, self.open_blob, f"OCI layout {self.label}",
                                    self.label, want)
        return parts, name
