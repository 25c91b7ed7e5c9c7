"""Pulling an image from a registry (the Docker Registry HTTP API v2 / OCI distribution).

What `docker pull alpine:3.10` does, step by step:

  1. the name is completed: alpine -> docker.io/library/alpine, tag 3.10
  2. GET /v2/library/alpine/manifests/3.10, Accept: index, manifest list, manifests
     -> 401 with `WWW-Authenticate: Bearer realm=...,service=...,scope=...`:
        GET realm?service=...&scope=repository:library/alpine:pull gives an
        anonymous token (or one for a login), sent back as `Authorization: Bearer`;
        a registry may instead ask for `Basic` credentials
  3. an index / manifest list names one manifest per platform: pick ours, GET it by digest
  4. GET /v2/.../blobs/<config digest>, then each layer blob, several at a time
  5. every document and blob is checked against its sha256 digest
  6. layers are applied in order into a new root filesystem

Blobs are cached by digest under the store (.blobs/), and a tag remembers
the digest it last pointed to, so a pulled image can be pulled again with no
network. Downloads resume where an interrupted pull stopped (HTTP Range).
Registries on the loopback address are spoken to in plain HTTP, as docker
does for 127.0.0.0/8; every other registry over HTTPS.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jailshell import paths
from jailshell.engine.images import blobs, oci
from jailshell.engine.images.store import Image, ImageStore, parse_ref
from jailshell.engine.images.unpack import ImageParts, Layer, Progress, build
from jailshell.engine.rootfs import Reader
from jailshell.errors import InvalidInput, JailshellError

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"  # where docker.io's API actually lives
PARALLEL = 4
TIMEOUT = 30

_HOST = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:.]+\])(?::[0-9]+)?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_HOST_RE = re.compile(rf"^{_HOST}$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")


@dataclass(frozen=True)
class Reference:
    registry: str  # as written: docker.io, 127.0.0.1:5000, ghcr.io
    repository: str  # library/alpine
    tag: str = "latest"
    digest: str = ""

    @classmethod
    def parse(cls, ref: str) -> Reference:
        """docker's rules: the first component is a registry if it has a '.' or ':' or is localhost."""
        text = ref.strip()
        digest = ""
        if "@" in text:
            text, digest = text.split("@", 1)
            blobs.check_digest(digest, "reference")
        first, sep, rest = text.partition("/")
        if sep and ("." in first or ":" in first or first == "localhost"):
            registry, remainder = first, rest
        else:
            registry, remainder = DOCKER_HUB, text
        tag = "latest"
        last = remainder.rsplit("/", 1)[-1]
        if ":" in last:
            remainder, tag = remainder.rsplit(":", 1)
        if registry == DOCKER_HUB and "/" not in remainder:
            remainder = f"library/{remainder}"
        if not _HOST_RE.match(registry) or not _REPO_RE.match(remainder) or not _TAG_RE.match(tag):
            raise InvalidInput(f"invalid image reference {ref!r}",
                               hint="like alpine:3.10, user/repo:tag, host:5000/repo@sha256:...")
        return cls(registry, remainder, tag, digest)

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def is_loopback(self) -> bool:
        host = self.registry.rsplit(":", 1)[0] if not self.registry.endswith("]") else self.registry
        host = host.strip("[]")
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def base_url(self) -> str:
        return f"{'http' if self.is_loopback else 'https'}://{self.api_host}/v2/{self.repository}"

    @property
    def reference(self) -> str:
        return self.digest or self.tag

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}{'@' + self.digest if self.digest else ':' + self.tag}"


def _docker_config_auth(registry: str) -> tuple[str, str] | None:
    """Credentials `docker login` saved in ~/.docker/config.json (plain "auth" entries only)."""
    config = Path(os.environ.get("DOCKER_CONFIG") or paths.invoking_user_home() / ".docker") / "config.json"
    try:
        auths = json.loads(config.read_text()).get("auths") or {}
    except (OSError, ValueError):
        return None
    keys = [registry, f"https://{registry}", f"http://{registry}"]
    if registry == DOCKER_HUB:
        keys += ["https://index.docker.io/v1/", "index.docker.io"]
    for key in keys:
        entry = auths.get(key) or auths.get(key.rstrip("/"))
        if isinstance(entry, dict) and entry.get("auth"):
            user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            return user, password
    return None


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(re.findall(r'(\w+)="([^"]*)"', rest))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # handled by hand: credentials must not follow a blob to its CDN


@dataclass
class Client:
    ref: Reference
    credentials: tuple[str, str] | None = None
    auth_header: str | None = None
    _opener: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self._opener = urllib.request.build_opener(_NoRedirect)
        if self.credentials is None:
            self.credentials = _docker_config_auth(self.ref.registry)

    # -- HTTP -------------------------------------------------------------------------

    def _open(self, url: str, headers: dict[str, str], *, authorized: bool = True) -> Any:
        for _hop in range(6):
            req = urllib.request.Request(url, headers=headers)
            if authorized and self.auth_header:
                req.add_unredirected_header("Authorization", self.auth_header)
            try:
                return self._opener.open(req, timeout=TIMEOUT)
            except urllib.error.HTTPError as exc:
                if exc.code in (301, 302, 303, 307, 308) and exc.headers.get("Location"):
                    new = urllib.parse.urljoin(url, exc.headers["Location"])
                    # Blob storage elsewhere (a CDN) gets no registry credentials.
                    if urllib.parse.urlsplit(new).netloc != urllib.parse.urlsplit(url).netloc:
                        authorized = False
                    url = new
                    continue
                raise
        raise JailshellError(f"{self.ref.registry}: too many redirects for {url}")

    def request(self, path: str, headers: dict[str, str] | None = None) -> Any:
        url = f"{self.ref.base_url}/{path}"
        headers = dict(headers or {})
        headers.setdefault("User-Agent", "jailshell")
        for attempt in range(2):
            try:
                return self._open(url, headers)
            except urllib.error.HTTPError as exc:
                if exc.code == 401 and attempt == 0:
                    self._authenticate(exc.headers.get("WWW-Authenticate", ""))
                    continue
                raise self._http_error(exc, path)
            except (urllib.error.URLError, OSError) as exc:
                raise Offline(f"cannot reach registry {self.ref.registry}: {getattr(exc, 'reason', exc)}")
        raise JailshellError(f"{self.ref.registry}: access denied to {self.ref.repository}",
                             hint="is the image private? log in: jailshell image pull --user USER:PASSWORD ...")

    def _http_error(self, exc: urllib.error.HTTPError, path: str) -> JailshellError:
        detail = ""
        try:
            errors = json.loads(exc.read()).get("errors") or []
            detail = "; ".join(str(e.get("message", "")) for e in errors)
        except (ValueError, OSError, AttributeError):
            pass
        if exc.code == 404:
            return JailshellError(f"{self.ref}: not found in the registry ({detail or path})",
                                  hint="check the name and tag")
        if exc.code in (401, 403):
            return JailshellError(f"{self.ref.registry}: access denied to {self.ref.repository} ({detail or exc.code})",
                                  hint="is the image private? log in: jailshell image pull --user USER:PASSWORD ...")
        return JailshellError(f"{self.ref.registry}: HTTP {exc.code} for {path} {detail}".rstrip())

    def _authenticate(self, header: str) -> None:
        scheme, params = _challenge(header)
        if scheme == "basic":
            if not self.credentials:
                raise JailshellError(f"{self.ref.registry} asks for a user name and password",
                                     hint="jailshell image pull --user USER:PASSWORD REF (or `docker login` first)")
            token = base64.b64encode(":".join(self.credentials).encode()).decode()
            self.auth_header = f"Basic {token}"
            return
        if scheme != "bearer" or "realm" not in params:
            raise JailshellError(f"{self.ref.registry}: unsupported authentication challenge {header!r}")
        query = {k: v for k, v in params.items() if k in ("service", "scope")}
        query.setdefault("scope", f"repository:{self.ref.repository}:pull")
        url = params["realm"] + ("&" if "?" in params["realm"] else "?") + urllib.parse.urlencode(query)
        headers = {"User-Agent": "jailshell"}
        if self.credentials:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(self.credentials).encode()).decode()
        try:
            with self._opener.open(urllib.request.Request(url, headers=headers), timeout=TIMEOUT) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise JailshellError(f"{self.ref.registry}: the token service refused ({exc.code})",
                                 hint="wrong user name or password?" if self.credentials else None)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise Offline(f"cannot get a token from {params['realm']}: {getattr(exc, 'reason', exc)}")
        token = body.get("token") or body.get("access_token")
        if not token:
            raise JailshellError(f"{self.ref.registry}: the token service gave no token")
        self.auth_header = f"Bearer {token}"

    # -- documents and blobs -------------------------------------------------------------

    def manifest(self, reference: str) -> tuple[bytes, str]:
        """(body, digest) of a manifest or index; the digest is checked."""
        with self.request(f"manifests/{reference}", {"Accept": oci.ACCEPT}) as resp:
            body = resp.read(oci.MAX_JSON + 1)
            claimed = resp.headers.get("Docker-Content-Digest", "")
        if len(body) > oci.MAX_JSON:
            raise JailshellError(f"{self.ref}: the manifest is too large")
        expected = reference if blobs.DIGEST_RE.match(reference) else claimed
        algorithm = expected.split(":", 1)[0] if expected else "sha256"
        got = blobs.digest_bytes(body, algorithm if algorithm in ("sha256", "sha512") else "sha256")
        if expected and got != expected:
            raise JailshellError(f"{self.ref}: manifest digest mismatch: expected {expected}, got {got}",
                                 hint="the registry sent corrupt data, or something in between altered it")
        return body, got

    def download(self, digest: str, dest: Path, on_bytes: Callable[[int], None], cancel: threading.Event,
                 growing: Growing | None = None) -> None:
        """GET a blob into dest, resuming a partial download, checking its digest.
        growing: told how far the file is written, so it can be read while it grows."""
        growing = growing or Growing(dest)
        try:
            self._download(digest, dest, on_bytes, cancel, growing)
        except BaseException as exc:
            growing.fail(exc)
            raise

    def _download(self, digest: str, dest: Path, on_bytes: Callable[[int], None], cancel: threading.Event,
                  growing: Growing) -> None:
        part = dest.with_suffix(".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        hasher = hashlib.new(digest.split(":", 1)[0])
        have = 0
        if part.exists():
            with open(part, "rb") as fh:
                while chunk := fh.read(blobs.READ_SIZE):
                    hasher.update(chunk)
                    have += len(chunk)
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self.request(f"blobs/{digest}", headers) as resp:
            if have and resp.status != 206:  # the server ignored the range: start over
                hasher = hashlib.new(digest.split(":", 1)[0])
                have = 0
            if have:
                on_bytes(have)
            # Unbuffered: what write() returned is in the file for a reader to see.
            with open(part, "ab" if have else "wb", buffering=0) as out:
                growing.started(have)
                while chunk := resp.read(blobs.READ_SIZE):
                    if cancel.is_set():
                        raise KeyboardInterrupt
                    view = memoryview(chunk)
                    while view:
                        view = view[out.write(view) or 0:]
                    hasher.update(chunk)
                    growing.wrote(len(chunk))
                    on_bytes(len(chunk))
        got = f"{digest.split(':', 1)[0]}:{hasher.hexdigest()}"
        if got != digest:
            part.unlink(missing_ok=True)
            raise JailshellError(f"{self.ref}: blob digest mismatch: expected {digest}, got {got}",
                                 hint="the registry holds corrupt data; nothing was imported")
        growing.finish(lambda: os.replace(part, dest))


class Growing:
    """A blob being downloaded into its .part file, which a reader may follow
    while it grows: the bottom layer is extracted as it arrives instead of
    after it. The bytes are the blob's (its digest names them), whether the
    download resumed or started over, so a reader only has to wait until the
    file is written past where it reads; what it read is checked against the
    digest by the reader's own Verified wrapper all the same."""

    def __init__(self, dest: Path):
        self.dest = dest
        self.part = dest.with_suffix(".part")
        self.cond = threading.Condition()
        self.open = False  # the .part file exists, for this download
        self.written = 0  # bytes from the blob's start known to be in the file
        self.done = False  # complete, verified, renamed to dest
        self.error: BaseException | None = None

    def started(self, have: int) -> None:
        with self.cond:
            self.open, self.written = True, have
            self.cond.notify_all()

    def wrote(self, n: int) -> None:
        with self.cond:
            self.written += n
            self.cond.notify_all()

    def finish(self, rename: Callable[[], None]) -> None:
        with self.cond:  # a reader opens part or dest under the same lock: never between the two
            rename()
            self.done = True
            self.cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self.cond:
            self.error = exc
            self.cond.notify_all()

    def reader(self) -> _GrowingReader:
        return _GrowingReader(self)


class _GrowingReader:
    def __init__(self, growing: Growing):
        self.g = growing
        self.fd = -1
        self.pos = 0

    def _available(self) -> int:
        """Bytes readable at pos now; waits for more; 0 at the end of a finished blob."""
        g = self.g
        with g.cond:
            while True:
                if g.error is not None:
                    if isinstance(g.error, JailshellError):
                        raise g.error
                    raise JailshellError(f"the download of {g.dest.name} failed: {g.error!r}")
                if self.fd < 0 and (g.open or g.done):
                    self.fd = os.open(g.dest if g.done else g.part, os.O_RDONLY | os.O_CLOEXEC)
                if g.done:
                    return max(0, os.fstat(self.fd).st_size - self.pos)
                if self.fd >= 0 and g.written > self.pos:
                    return g.written - self.pos
                g.cond.wait()

    def read(self, size: int = -1, /) -> bytes:
        if size is None or size < 0:
            parts = []
            while chunk := self.read(blobs.READ_SIZE):
                parts.append(chunk)
            return b"".join(parts)
        avail = self._available()
        if not avail or not size:
            return b""
        data = os.pread(self.fd, min(size, avail), self.pos)
        self.pos += len(data)
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Offline(JailshellError):
    """The registry could not be reached at all."""

    def __init__(self, message: str):
        super().__init__(message, hint="no network? images pulled before still work (see `jailshell image ls`)")


@dataclass
class PullEvents:
    """What a front end may show while pulling."""

    on_status: Callable[[str], None] | None = None
    on_blob: Callable[[str, int], None] | None = None  # digest, total size: a download starts
    on_bytes: Callable[[str, int], None] | None = None  # digest, bytes just received (from worker threads)
    on_blob_done: Callable[[str, bool], None] | None = None  # digest, was cached
    progress: Progress = field(default_factory=Progress)

    def status(self, text: str) -> None:
        if self.on_status:
            self.on_status(text)


def _tag_file(cache: blobs.BlobCache, ref: Reference, platform: oci.Platform | None) -> Path:
    """Where the digest a tag pointed to is remembered, for pulling offline."""
    safe_registry = ref.registry.replace(":", "_").replace("[", "").replace("]", "")
    plat = str(platform or oci.Platform.host()).replace("/", "_")
    return cache.root / "tags" / safe_registry / ref.repository / f"{ref.tag}@{plat}"


@dataclass
class Fetched:
    """What `image pull --no-unpack` leaves: verified blobs in the cache, no root filesystem."""

    ref: str
    digest: str  # the manifest (or index) the tag pointed to
    layers: int
    downloaded: int  # layer bytes fetched now (cached ones not counted)
    cached: int  # layers already in the cache


def fetch(ref_text: str, *, platform: oci.Platform | None = None, store: ImageStore | None = None,
          credentials: tuple[str, str] | None = None, events: PullEvents | None = None) -> Fetched:
    """Download and verify an image's manifests, config and layers into the
    blob cache, and remember its tag, without extracting anything: what
    `skopeo copy` or containerd's `ctr content fetch` do. A later `pull` of
    the same reference extracts it from the cache, offline if need be (the
    way to prepare workshop machines before the network is gone)."""
    result = _transfer(ref_text, platform=platform, store=store, credentials=credentials, events=events,
                       name=None, layer_dirs=False, unpack=False)
    assert isinstance(result, Fetched)
    return result


def pull(ref_text: str, *, platform: oci.Platform | None = None, store: ImageStore | None = None,
         credentials: tuple[str, str] | None = None, events: PullEvents | None = None, name: str | None = None,
         layer_dirs: bool = False) -> Image:
    """Pull ref_text into the store and extract its root filesystem, as `docker pull` does."""
    result = _transfer(ref_text, platform=platform, store=store, credentials=credentials, events=events,
                       name=name, layer_dirs=layer_dirs, unpack=True)
    assert isinstance(result, Image)
    return result


def _transfer(ref_text: str, *, platform: oci.Platform | None, store: ImageStore | None,
              credentials: tuple[str, str] | None, events: PullEvents | None, name: str | None,
              layer_dirs: bool, unpack: bool) -> Image | Fetched:
    store = store or ImageStore()
    events = events or PullEvents()
    ref = Reference.parse(ref_text)
    cache = blobs.BlobCache(store.blobs_dir)
    client = Client(ref, credentials)
    tag_file = _tag_file(cache, ref, platform)
    offline = False

    # 1-2. the top document (index or manifest), from the registry or, offline, from the cache
    try:
        events.status(f"asking {ref.registry} for {ref.repository}:{ref.reference}")
        body, top_digest = client.manifest(ref.reference)
        cache.put(top_digest, body)
    except Offline:
        cached = ref.digest or (tag_file.read_text().strip() if tag_file.is_file() else "")
        if not cached or not cache.has(cached):
            raise
        offline = True
        top_digest = cached
        body = cache.read(cached)
        events.status(f"{ref.registry} is unreachable: using the cached {blobs.short(cached)}")

    def read_manifest(desc: dict[str, Any]) -> bytes:
        digest = oci.descriptor_digest(desc, "manifest")
        if cache.has(digest):
            return cache.read(digest)
        if offline:
            raise JailshellError(f"offline, and manifest {digest} is not cached")
        data, got = client.manifest(digest)
        cache.put(got, data)
        return data

    def read_blob(desc: dict[str, Any]) -> bytes:
        digest = oci.descriptor_digest(desc, "blob")
        if not cache.has(digest):
            if offline:
                raise JailshellError(f"offline, and blob {digest} is not cached")
            with client.request(f"blobs/{digest}") as resp:
                data = resp.read(oci.MAX_JSON + 1)
            cache.put(digest, data)  # checks the digest
        return cache.read(digest)

    # 3. one manifest for our platform
    top = oci.parse_json(body, f"{ref}: manifest")
    manifest, manifest_digest = oci.resolve_manifest(top, read_manifest, platform, str(ref))

    # 4-5. config, then layers downloaded in parallel while the first ones are applied
    downloads: dict[str, Future[None]] = {}
    growing: dict[str, Growing] = {}
    cancel = threading.Event()

    def opener(desc: dict[str, Any]) -> Reader:
        digest = oci.descriptor_digest(desc, "layer")
        future = downloads.get(digest)
        if future is not None and not future.done():
            return growing[digest].reader()  # extracted while it downloads
        if future is not None:
            future.result()
        return open(cache.path(digest), "rb")

    parts: ImageParts = oci.parts_from_manifest(manifest, read_blob, opener, f"registry {ref}", str(ref), platform)
    parts.blobs = [top_digest, *([manifest_digest] if manifest_digest else []),
                   oci.descriptor_digest(manifest["config"], "config")]
    image_name, tag = _store_name(name, ref_text, ref)
    pool = ThreadPoolExecutor(max_workers=PARALLEL, thread_name_prefix="jailshell-pull")
    try:
        for layer in parts.layers:
            if cache.has(layer.digest) or layer.digest in downloads:
                if events.on_blob_done:
                    events.on_blob_done(layer.digest, True)
                continue
            if offline:
                raise JailshellError(f"offline, and layer {layer.digest} is not cached",
                                     hint="connect to the network and pull again")
            if events.on_blob:
                events.on_blob(layer.digest, layer.size)
            growing[layer.digest] = Growing(cache.path(layer.digest))
            downloads[layer.digest] = pool.submit(_fetch, client, cache, layer, events, cancel, growing[layer.digest])
        if unpack:
            events.status(f"extracting {len(parts.layers)} layer(s)")
            image: Image | Fetched = build(store, parts, image_name, tag, progress=events.progress,
                                           layer_dirs=layer_dirs)
        else:
            for future in downloads.values():
                future.result()  # a failed or corrupt download raises here
            image = Fetched(str(ref), top_digest, len(parts.layers),
                            sum(layer.size for layer in parts.layers if layer.digest in downloads and layer.size > 0),
                            len(parts.layers) - len(downloads))
    except BaseException:
        cancel.set()  # a half-downloaded blob stays as .part, to be resumed
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    if not ref.digest:
        tag_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = tag_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(top_digest + "\n")
        os.replace(tmp, tag_file)
    return image


def by_hand(ref_text: str, image: Image, root: str = "root") -> list[str]:
    """The HTTP requests a pull makes, as curl commands to paste into a shell:
    the manifest the tag points to (its sha256 is the image's digest), then
    each layer blob, unpacked by tar into root in order. Made from the digests
    this pull recorded, so they fetch exactly what it fetched. (tar does not
    apply whiteouts, and does not check digests: the pull does both.)"""
    ref = Reference.parse(ref_text)
    auth = ""
    lines = []
    if ref.registry == DOCKER_HUB:
        # Docker Hub always asks for a token, even for public images: an anonymous one will do.
        scope = urllib.parse.quote(f"repository:{ref.repository}:pull")
        lines.append(f"TOKEN=$(curl -sf 'https://auth.docker.io/token?service=registry.docker.io&scope={scope}' "
                     "| jq -r .token)    # the anonymous token the WWW-Authenticate challenge asks for")
        auth = '-H "Authorization: Bearer $TOKEN" '
    accept = ",".join((*oci.INDEX_TYPES, *oci.MANIFEST_TYPES))
    recorded = list(image.meta.get("blobs") or [])
    top = recorded[0] if recorded else ""
    lines.append(f"curl -sf {auth}-H 'Accept: {accept}' {ref.base_url}/manifests/{ref.reference} | sha256sum"
                 f"    # {top or 'the digest of the manifest the tag names'}")
    if len(recorded) == 3:  # an index (or manifest list) first, then the manifest for this machine
        lines.append(f"curl -sf {auth}-H 'Accept: {accept}' {ref.base_url}/manifests/{recorded[1]} | sha256sum"
                     f"    # the manifest for {image.meta.get('os') or 'linux'}/{image.meta.get('architecture') or '?'}")
    lines.append(f"mkdir {root}")
    info = image.meta.get("layer_info") or [{"digest": d} for d in image.layers]
    for i, layer in enumerate(info, 1):
        media = str(layer.get("media_type") or "")
        # tar cannot guess the compression of a pipe: the media type says it.
        unzip = "--zstd " if "zstd" in media else "" if media.endswith(".tar") else "-z "
        lines.append(f"curl -sfL {auth}{ref.base_url}/blobs/{layer['digest']} | tar {unzip}-xpf - -C {root}"
                     f"    # layer {i}/{len(info)}")
    return lines


def _store_name(name: str | None, ref_text: str, ref: Reference) -> tuple[str, str]:
    """The name in the store: as the user wrote it (`alpine:3.10`, `127.0.0.1:5000/x:1`, `x@sha256:...`)."""
    if name:
        return parse_ref(name)
    if ref.digest:
        repo = ref_text.split("@", 1)[0]
        last = repo.rsplit("/", 1)[-1]
        if ":" in last:  # x:tag@sha256:... is stored by its digest
            repo = repo.rsplit(":", 1)[0]
        return repo, ref.digest
    return parse_ref(ref_text)


def _fetch(client: Client, cache: blobs.BlobCache, layer: Layer, events: PullEvents, cancel: threading.Event,
           growing: Growing) -> None:
    def on_bytes(n: int) -> None:
        if events.on_bytes:
            events.on_bytes(layer.digest, n)

    client.download(layer.digest, cache.path(layer.digest), on_bytes, cancel, growing)
    if events.on_blob_done:
        events.on_blob_done(layer.digest, False)
