"""Pulling from a real registry (Debian's docker-registry, i.e. the CNCF
distribution registry) on 127.0.0.1, with images pushed by skopeo."""

from __future__ import annotations

import http.server
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from jailshell.cli import main as cli_main
from jailshell.engine.images import blobs
from jailshell.engine.images.oci import Platform
from jailshell.engine.images.registry import Client, Offline, PullEvents, Reference, _challenge, fetch, pull
from jailshell.engine.images.store import ImageStore
from jailshell.errors import JailshellError
from tests.test_images import ROOTLESS, add_index, assert_busybox_image, build_layout, sh, skopeo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Registry:
    base: Path
    htpasswd: Path | None = None
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def storage(self) -> Path:
        return self.base / "storage"

    def start(self) -> Registry:
        self.port = free_port()
        auth = ""
        if self.htpasswd:
            auth = f"auth:\n  htpasswd:\n    realm: jailshell-test\n    path: {self.htpasswd}\n"
        config = self.base / "config.yml"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n{auth}")
        log = open(self.base / "registry.log", "wb")  # noqa: SIM115 (closed with the process)
        self.proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://{self.host}/v2/", timeout=1).close()
                return self
            except urllib.error.HTTPError:
                return self  # 401: up, and asking for credentials
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError((self.base / "registry.log").read_text()) from None
                time.sleep(0.05)
        raise RuntimeError("docker-registry did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def push(self, layout: Path, tag: str, repo: str, *extra: str) -> None:
        skopeo("--dest-tls-verify=false", *extra, f"oci:{layout}:{tag}", f"docker://{self.host}/{repo}")

    def blob_data(self, digest: str) -> Path:
        hexpart = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexpart[:2] / hexpart / "data"


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_layout(tmp_path_factory.mktemp("umoci"), ImageStore().resolve().rootfs)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, layout: Path) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("registry")).start()
    try:
        reg.push(layout, "bb", "test/bb:1")
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def own_registry(tmp_path: Path, layout: Path) -> Iterator[Registry]:
    """A registry for one test, to break or to stop."""
    (tmp_path / "reg").mkdir()
    reg = Registry(tmp_path / "reg").start()
    try:
        reg.push(layout, "bb", "test/bb:1")
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


def manifest_of(layout: Path, tag: str = "bb") -> dict:  # type: ignore[type-arg]
    from tests.test_images import _manifest

    return _manifest(layout, tag)


# -- pulling ---------------------------------------------------------------------------------------


def test_pull_from_a_loopback_registry(registry: Registry, store: ImageStore) -> None:
    seen: list[str] = []
    events = PullEvents(on_blob=lambda d, size: seen.append(d), on_status=lambda s: None)
    image = pull(f"{registry.host}/test/bb:1", store=store, events=events)
    assert image.ref == f"{registry.host}/test/bb:1"
    assert_busybox_image(image)
    assert image.source == f"registry {registry.host}/test/bb:1"
    assert sorted(seen) == sorted(image.layers)  # three layers, downloaded (in parallel)
    cache = blobs.BlobCache(store.blobs_dir)
    assert all(cache.has(d) for d in image.layers + image.meta["blobs"])
    # a second pull downloads nothing
    seen.clear()
    again = pull(f"{registry.host}/test/bb:1", store=store, events=events)
    assert seen == [] and again.layers == image.layers


def test_pull_by_digest(registry: Registry, layout: Path, store: ImageStore) -> None:
    digest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    image = pull(f"{registry.host}/test/bb@{digest}", store=store)
    assert image.ref == f"{registry.host}/test/bb@{digest}"
    assert store.get(image.ref) is not None
    assert_busybox_image(image)


def test_pull_works_offline_once_cached(own_registry: Registry, store: ImageStore) -> None:
    ref = f"{own_registry.host}/test/bb:1"
    first = pull(ref, store=store)
    store.remove(first.ref)
    own_registry.stop()
    statuses: list[str] = []
    image = pull(ref, store=store, events=PullEvents(on_status=statuses.append))
    assert_busybox_image(image)
    assert any("unreachable" in s for s in statuses)
    with pytest.raises(Offline, match="cannot reach registry") as err:
        pull(f"{own_registry.host}/test/never-pulled:1", store=store)
    assert err.value.hint and "pulled before" in err.value.hint


def test_fetch_stores_verified_blobs_only_and_a_later_pull_extracts_them_offline(
        own_registry: Registry, layout: Path, store: ImageStore, capsys: pytest.CaptureFixture[str]) -> None:
    ref = f"{own_registry.host}/test/bb:1"
    manifest = manifest_of(layout)
    fetched = fetch(ref, store=store)
    assert fetched.layers == len(manifest["layers"]) and fetched.cached == 0
    assert fetched.downloaded == sum(layer["size"] for layer in manifest["layers"])
    cache = blobs.BlobCache(store.blobs_dir)
    for desc in [manifest["config"], *manifest["layers"]]:
        assert cache.has(desc["digest"])
        assert blobs.digest_bytes(cache.path(desc["digest"]).read_bytes()) == desc["digest"]
    assert list(store.images()) == []  # nothing extracted, no image listed
    # Again: everything is cached, nothing downloaded.
    assert fetch(ref, store=store).cached == fetched.layers
    own_registry.stop()
    image = pull(ref, store=store)  # the registry is gone: extracted from the cache
    assert_busybox_image(image)


def test_fetch_refuses_a_corrupted_layer(own_registry: Registry, layout: Path, store: ImageStore) -> None:
    layer = manifest_of(layout)["layers"][0]["digest"]
    data = own_registry.blob_data(layer)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 3] ^= 0x01
    data.write_bytes(bytes(raw))
    with pytest.raises(JailshellError, match="digest mismatch"):
        fetch(f"{own_registry.host}/test/bb:1", store=store)
    assert not blobs.BlobCache(store.blobs_dir).has(layer)


def test_corrupted_layer_in_the_registry_is_refused(own_registry: Registry, layout: Path, store: ImageStore) -> None:
    layer = manifest_of(layout)["layers"][0]["digest"]
    data = own_registry.blob_data(layer)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one flipped bit in the middle of the gzip stream
    data.write_bytes(bytes(raw))
    with pytest.raises(JailshellError, match="digest mismatch"):
        pull(f"{own_registry.host}/test/bb:1", store=store)
    assert list(store.images()) == []
    cache = blobs.BlobCache(store.blobs_dir)
    assert not cache.has(layer) and not cache.partial(layer).exists()


def test_corrupted_manifest_in_the_registry_is_refused(own_registry: Registry, layout: Path,
                                                        store: ImageStore) -> None:
    index = json.loads((layout / "index.json").read_text())
    data = own_registry.blob_data(index["manifests"][0]["digest"])
    data.write_bytes(data.read_bytes().replace(b'"size":', b'"size" :', 1))
    with pytest.raises(JailshellError, match="manifest digest mismatch"):
        pull(f"{own_registry.host}/test/bb:1", store=store)
    assert list(store.images()) == []


def test_interrupted_pull_resumes_from_the_partial_blob(registry: Registry, layout: Path, store: ImageStore) -> None:
    layer = manifest_of(layout)["layers"][0]
    full = (layout / "blobs/sha256" / layer["digest"][7:]).read_bytes()
    cache = blobs.BlobCache(store.blobs_dir)
    part = cache.partial(layer["digest"])
    part.parent.mkdir(parents=True)
    # What an interrupted download leaves: the first half, completed with a Range request.
    part.write_bytes(full[: len(full) // 2])
    received: list[int] = []
    events = PullEvents(on_bytes=lambda d, n: received.append(n) if d == layer["digest"] else None)
    image = pull(f"{registry.host}/test/bb:1", store=store, events=events)
    assert_busybox_image(image)
    assert cache.read(layer["digest"]) == full
    assert received[0] == len(full) // 2  # counted as already there, not downloaded again
    assert sum(received) == len(full)


def test_manifest_list_platform_selection(registry: Registry, layout: Path, tmp_path: Path,
                                          store: ImageStore) -> None:
    import shutil

    multi = tmp_path / "multi"
    shutil.copytree(layout, multi)
    other_arch = "arm64" if Platform.host().architecture != "arm64" else "amd64"
    sh("umoci", "config", *ROOTLESS, "--image", f"{multi}:bb", "--architecture", other_arch, "--tag", "other",
       "--config.env", "ARCH=other")
    add_index(multi, "all", {"bb": Platform.host(), "other": Platform("linux", other_arch)})
    registry.push(multi, "all", "test/multi:1", "--all")
    ref = f"{registry.host}/test/multi:1"
    mine = pull(ref, store=store)
    assert "ARCH=other" not in mine.config["Env"] and mine.meta["architecture"] == Platform.host().architecture
    other = pull(ref, store=store, platform=Platform.parse(f"linux/{other_arch}"), name="multi:other")
    assert "ARCH=other" in other.config["Env"] and other.meta["architecture"] == other_arch
    with pytest.raises(JailshellError, match=r"no image for linux/s390x \(it has: .*linux/amd64"):
        pull(ref, store=store, platform=Platform.parse("linux/s390x"))


def test_missing_image_and_tag(registry: Registry, store: ImageStore) -> None:
    with pytest.raises(JailshellError, match="not found"):
        pull(f"{registry.host}/test/bb:nope", store=store)
    with pytest.raises(JailshellError, match="not found"):
        pull(f"{registry.host}/no/such:1", store=store)


# -- authentication --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory, layout: Path) -> Iterator[Registry]:
    import bcrypt

    base = tmp_path_factory.mktemp("auth-registry")
    htpasswd = base / "htpasswd"
    htpasswd.write_text("alice:" + bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode() + "\n")
    reg = Registry(base, htpasswd).start()
    try:
        reg.push(layout, "bb", "private/bb:1", "--dest-creds", "alice:s3cret")
        yield reg
    finally:
        reg.stop()


def test_basic_auth(auth_registry: Registry, store: ImageStore, tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker-config"))
    ref = f"{auth_registry.host}/private/bb:1"
    with pytest.raises(JailshellError, match="asks for a user name and password"):
        pull(ref, store=store)
    with pytest.raises(JailshellError, match="access denied"):
        pull(ref, store=store, credentials=("alice", "wrong"))
    assert_busybox_image(pull(ref, store=store, credentials=("alice", "s3cret")))
    # credentials saved by `docker login` are found too
    import base64

    config = tmp_path / "docker"
    config.mkdir()
    (config / "config.json").write_text(json.dumps(
        {"auths": {auth_registry.host: {"auth": base64.b64encode(b"alice:s3cret").decode()}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    store.remove(ref)
    assert_busybox_image(pull(ref, store=store))


@dataclass
class TokenProxy:
    """A bearer-token front for the registry, as Docker Hub works: 401 with a
    Bearer challenge, a token service, and the registry behind it."""

    upstream: str
    token: str = "tok-0123"
    token_queries: list[str] = field(default_factory=list)
    ranges: list[str] = field(default_factory=list)
    server: http.server.ThreadingHTTPServer | None = None

    def start(self) -> TokenProxy:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                host = f"127.0.0.1:{self.server.server_address[1]}"
                if self.path.startswith("/token?"):
                    proxy.token_queries.append(self.path.split("?", 1)[1])
                    self._send(200, {"Content-Type": "application/json"},
                               json.dumps({"token": proxy.token}).encode())
                    return
                if self.headers.get("Authorization") != f"Bearer {proxy.token}":
                    challenge = (f'Bearer realm="http://{host}/token",service="jailshell-test",'
                                 f'scope="repository:test/bb:pull"')
                    self._send(401, {"WWW-Authenticate": challenge}, b'{"errors":[]}')
                    return
                if self.headers.get("Range"):
                    proxy.ranges.append(self.headers["Range"])
                headers = {k: v for k, v in self.headers.items() if k in ("Accept", "Range")}
                req = urllib.request.Request(f"http://{proxy.upstream}{self.path}", headers=headers)
                try:
                    with urllib.request.urlopen(req, timeout=10) as resp:
                        body, status, rheaders = resp.read(), resp.status, resp.headers
                except urllib.error.HTTPError as exc:
                    body, status, rheaders = exc.read(), exc.code, exc.headers
                keep = ("Content-Type", "Docker-Content-Digest", "Content-Range")
                self._send(status, {k: v for k, v in rheaders.items() if k in keep}, body)

            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def host(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def token_proxy(registry: Registry) -> Iterator[TokenProxy]:
    proxy = TokenProxy(registry.host).start()
    try:
        yield proxy
    finally:
        proxy.stop()


def test_anonymous_bearer_token_from_the_challenge(token_proxy: TokenProxy, store: ImageStore,
                                                   layout: Path, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "none"))
    # half a layer already cached, to see the download resumed through the proxy
    layer = manifest_of(layout)["layers"][0]
    full = (layout / "blobs/sha256" / layer["digest"][7:]).read_bytes()
    part = blobs.BlobCache(store.blobs_dir).partial(layer["digest"])
    part.parent.mkdir(parents=True)
    part.write_bytes(full[:1000])
    image = pull(f"{token_proxy.host}/test/bb:1", store=store)
    assert_busybox_image(image)
    assert token_proxy.token_queries and all("scope=repository%3Atest%2Fbb%3Apull" in q and
                                             "service=jailshell-test" in q for q in token_proxy.token_queries)
    assert token_proxy.ranges == ["bytes=1000-"]


# -- the command line and the parts ---------------------------------------------------------------


def test_cli_pull(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("JAILSHELL_DATA_DIR", str(tmp_path / "data"))
    assert cli_main(["image", "pull", f"{registry.host}/test/bb:1"]) == 0
    out = capsys.readouterr()
    assert f"{registry.host}/test/bb:1: 3 layer(s)" in out.out
    assert f"asking {registry.host} for test/bb:1" in out.err and "downloading" in out.err
    assert cli_main(["image", "ls"]) == 0
    assert f"{registry.host}/test/bb" in capsys.readouterr().out
    assert cli_main(["image", "pull", "--platform", "linux", f"{registry.host}/test/bb:1"]) == 2
    assert "invalid platform" in capsys.readouterr().err
    assert cli_main(["image", "pull", "UPPER/case"]) == 2


def test_cli_pull_no_unpack(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("JAILSHELL_DATA_DIR", str(tmp_path / "data"))
    ref = f"{registry.host}/test/bb:1"
    assert cli_main(["image", "pull", "--no-unpack", ref]) == 0
    out = capsys.readouterr().out
    assert f"fetched {ref}" in out and "3 layer(s)" in out and "0 already cached" in out and "not extracted" in out
    assert cli_main(["image", "ls"]) == 0
    assert registry.host not in capsys.readouterr().out
    assert cli_main(["image", "pull", "--no-unpack", "--name", "x:1", ref]) == 2
    assert "--no-unpack stores blobs only" in capsys.readouterr().err
    assert cli_main(["image", "pull", "-q", ref]) == 0  # extracted from the cache
    assert cli_main(["image", "ls"]) == 0
    assert f"{registry.host}/test/bb" in capsys.readouterr().out


def test_cli_pull_draws_progress_bars_on_a_terminal(registry: Registry, layout: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from jailshell.engine.images import cli_image

    monkeypatch.setenv("JAILSHELL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(cli_image, "_is_tty", lambda stream: True)
    assert cli_main(["image", "pull", f"{registry.host}/test/bb:1"]) == 0
    err = capsys.readouterr().err
    # one bar per layer, drawn by rich (its final state, as the terminal keeps it), and the layer lines
    layers = manifest_of(layout)["layers"]
    for layer in layers:
        assert f"{layer['digest'][7:19]} done" in err
    assert "layer 3/3" in err and "━" in err


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "url"), [
    ("alpine", "docker.io", "library/alpine", "latest", "https://registry-1.docker.io/v2/library/alpine"),
    ("alpine:3.10", "docker.io", "library/alpine", "3.10", "https://registry-1.docker.io/v2/library/alpine"),
    ("user/repo:tag", "docker.io", "user/repo", "tag", "https://registry-1.docker.io/v2/user/repo"),
    ("ghcr.io/a/b/c:1.0", "ghcr.io", "a/b/c", "1.0", "https://ghcr.io/v2/a/b/c"),
    ("localhost:5000/x", "localhost:5000", "x", "latest", "http://localhost:5000/v2/x"),
    ("127.0.0.1:5000/x/y:t", "127.0.0.1:5000", "x/y", "t", "http://127.0.0.1:5000/v2/x/y"),
    ("[::1]:5000/x", "[::1]:5000", "x", "latest", "http://[::1]:5000/v2/x"),
])
def test_reference_parsing(text: str, registry: str, repository: str, tag: str, url: str) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.base_url) == (registry, repository, tag, url)


def test_reference_parsing_refuses_junk() -> None:
    for bad in ("UPPER/x", "x:", "a//b", "x@sha256:zz", "x:../../etc", "-x"):
        with pytest.raises(JailshellError):
            Reference.parse(bad)
    ref = Reference.parse("x@sha256:" + "a" * 64)
    assert ref.digest and ref.reference == ref.digest


def test_challenge_parsing() -> None:
    scheme, params = _challenge('Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull"')
    assert scheme == "bearer" and params == {"realm": "https://auth.example/token", "service": "reg",
                                             "scope": "repository:a/b:pull"}
    assert _challenge('Basic realm="x"') == ("basic", {"realm": "x"})


def test_registry_unreachable_is_a_clear_error(store: ImageStore) -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(Offline, match=f"cannot reach registry 127.0.0.1:{port}"):
        pull(f"127.0.0.1:{port}/x:1", store=store)
    assert Client(Reference.parse(f"127.0.0.1:{port}/x")).ref.is_loopback
    assert list(store.images()) == []


def test_a_layer_is_read_while_it_downloads(tmp_path: Path) -> None:
    """The reader of a growing blob waits for bytes, never reads past what the
    downloader wrote, follows the rename at the end, and fails with the download."""
    from jailshell.engine.images.registry import Growing

    data = bytes(range(256)) * 4096
    dest = tmp_path / "blob"
    growing = Growing(dest)
    reader = growing.reader()
    seen: list[int] = []

    def download() -> None:
        with open(growing.part, "wb", buffering=0) as out:
            growing.started(0)
            for i in range(0, len(data), 100_000):
                out.write(data[i:i + 100_000])
                growing.wrote(len(data[i:i + 100_000]))
                seen.append(growing.written)
                time.sleep(0.005)
        growing.finish(lambda: growing.part.rename(dest))

    thread = threading.Thread(target=download)
    thread.start()
    got = bytearray()
    while chunk := reader.read(70_000):
        assert len(got) + len(chunk) <= max(seen, default=len(data)) or growing.done
        got += chunk
    thread.join()
    reader.close()
    assert bytes(got) == data and dest.is_file() and not growing.part.exists()

    failing = Growing(tmp_path / "other")
    reader = failing.reader()
    failing.fail(JailshellError("blob digest mismatch: expected x, got y"))
    with pytest.raises(JailshellError, match="digest mismatch"):
        reader.read(10)


# -- docker pull in the REPL, and its by-hand form ---------------------------------------------------


def _gnu_tar_layout(where: Path, rootfs: Path) -> Path:
    """A two-layer OCI layout whose layers GNU tar wrote (as docker's own
    builders write them: umoci's layers end without tar's closing blocks,
    which GNU tar refuses): the busybox root, then an added /etc/motd."""
    import hashlib

    blob_dir = where / "blobs/sha256"
    blob_dir.mkdir(parents=True)

    def put(raw: bytes) -> dict[str, object]:
        digest = hashlib.sha256(raw).hexdigest()
        (blob_dir / digest).write_bytes(raw)
        return {"digest": f"sha256:{digest}", "size": len(raw)}

    extra = where / "extra"
    (extra / "etc").mkdir(parents=True)
    (extra / "etc/motd").write_text("pulled by hand\n")
    layers, diff_ids = [], []
    for src in (rootfs, extra):
        plain = subprocess.run(["tar", "-C", str(src), "--numeric-owner", "-cf", "-", "."], capture_output=True,
                               check=True).stdout
        diff_ids.append("sha256:" + hashlib.sha256(plain).hexdigest())
        gz = subprocess.run(["gzip", "-n"], input=plain, capture_output=True, check=True).stdout
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **put(gz)})
    config = put(json.dumps({"architecture": Platform.host().architecture, "os": "linux",
                             "config": {"Cmd": ["/bin/sh"]},
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode())
    manifest = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                               "layers": layers}).encode())
    (where / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (where / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
         "annotations": {"org.opencontainers.image.ref.name": "gnu"}}]}))
    return where


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib_of(path)
        else:
            out[rel] = "dir"
    return out


def hashlib_of(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_repl_docker_pull_shows_curl_commands_that_fetch_the_same_image(
        registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jailshell.commands.builtin import build_workspace
    from jailshell.commands.results import Message, Results, StepReport
    from jailshell.context import AppContext

    layout = _gnu_tar_layout(tmp_path / "gnu", ImageStore().resolve().rootfs)
    registry.push(layout, "gnu", "test/gnu:1")
    monkeypatch.setenv("JAILSHELL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    ctx = AppContext.for_streams(open(os.devnull, "w"), state_dir=tmp_path / "s")  # noqa: SIM115
    ws = build_workspace(ctx, keep_progress=False)
    ref = f"{registry.host}/test/gnu:1"
    try:
        result = ws.run_line(f"docker pull {ref}")
        assert isinstance(result, Results), result
        report = next(r for r in result.items if isinstance(r, StepReport))
        assert report.equivalents is not None and report.equivalents.docker == f"docker pull {ref}"
        assert any(isinstance(m, Message) and m.level == "ok" and ref in m.text for m in result.items)
        image = ImageStore().resolve(ref)
        # The shown commands, by hand: the manifest's sha256 is the digest the pull recorded, and
        # tar builds the same root from the same blobs (these layers hold no whiteouts).
        raw = [re.sub(r"\s{2,}#.*$", "", line) for line in report.equivalents.raw]
        got = subprocess.run(["sh", "-c", raw[0]], capture_output=True, text=True, timeout=30, check=True)
        assert "sha256:" + got.stdout.split()[0] == image.meta["blobs"][0]
        assert raw[-len(image.layers) - 1] == "mkdir root"
        for line in raw[-len(image.layers) - 1:]:
            subprocess.run(["sh", "-c", line], cwd=tmp_path, check=True, timeout=60)
        assert (tmp_path / "root/etc/motd").read_text() == "pulled by hand\n"
        assert _tree(tmp_path / "root") == _tree(image.rootfs)
        # Unknown image: a clear error, nothing stored.
        with pytest.raises(JailshellError, match="not found in the registry"):
            ws.run_line(f"docker pull {registry.host}/test/none:1")
        assert ImageStore().get(f"{registry.host}/test/none:1") is None
    finally:
        ws.close()


def test_docker_pull_and_image_prune_from_the_command_line(registry: Registry, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("JAILSHELL_DATA_DIR", str(tmp_path / "data"))
    ref = f"{registry.host}/test/bb:1"
    assert cli_main(["docker", "pull", ref]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("Digest: sha256:") and "by hand" in out.err and "| tar -z -xpf - -C root" in out.err
    assert cli_main(["docker", "image", "rm", ref]) == 2  # not a verb jailshell has: says so
    ImageStore().remove(ref)
    assert cli_main(["docker", "image", "prune", "-f"]) == 0
    out = capsys.readouterr()
    assert "deleted: " in out.out and "Total reclaimed space" in out.out
    assert not list(blobs.BlobCache(ImageStore().blobs_dir).root.glob("sha256/*"))
