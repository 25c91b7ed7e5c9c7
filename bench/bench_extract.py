"""Image extraction and pull: jailshell against GNU tar and skopeo, side by side.

The image is made from this machine's own files, so the run needs no network:
  layer 1  files from /usr/lib (a sorted walk, up to a budget of files and bytes)
  layer 2  files from /usr/share (the same way)
  layer 3  the embedded busybox root, and whiteouts of a few files and one
           directory of layer 1
each written by GNU tar, as plain tar (the form `docker save` stores) and
gzip (the form a registry serves).

Extraction: for each run, a fresh directory receives the three layers in
order, once by `tar -xf` (`tar -xzf`) per layer, once by jailshell's safe
applier (rootfs.Applier, in this process); who goes first alternates, and
the medians are compared. GNU tar runs as root, so it keeps owners and
modes too. Both on the disk the image store uses, and on tmpfs, where no
disk hides the CPU cost.

Pull: a docker-registry on 127.0.0.1 holds the same image (gzip layers,
pushed by skopeo), each peer from nothing cached. The same job twice over:
`skopeo copy docker://... oci:DIR` (download, verify, write blobs) against
`jailshell image pull --no-unpack` (the same, into jailshell's blob cache),
both as processes of their own; and `jailshell image pull` (download, verify,
extract the root filesystem) against `skopeo copy` then `umoci unpack`
(layers and whiteouts applied into a root filesystem).

Alone: python -m bench.bench_extract [--quick]   (prints the comparison)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.common import Context, Row, failed, skipped, timed_row

GROUP = "images"
TARGET_EXTRACT = 0.7  # at least 0.7x GNU tar's speed


def _budget_walk(top: str, max_files: int, max_bytes: int) -> list[str]:
    """Paths (relative to /) under top, sorted walk, regular files and symlinks, within a budget."""
    out: list[str] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if not (os.path.islink(full) or os.path.isfile(full)) or not os.access(full, os.R_OK):
                continue
            out.append(full.lstrip("/"))
            total += st.st_size if not os.path.islink(full) else 0
            if len(out) >= max_files or total >= max_bytes:
                return out
    return out


def build_layers(work: Path, quick: bool) -> tuple[list[Path], list[Path], dict[str, int]]:
    """(plain tar layers, gzip layers, sizes) in work/layers."""
    from jailshell.engine.images.store import ImageStore

    layers = work / "layers"
    layers.mkdir(parents=True, exist_ok=True)
    files, mb = (1500, 20) if quick else (9000, 150)
    plain = []
    stats = {"files": 0, "bytes": 0}
    for i, top in enumerate(("/usr/lib", "/usr/share"), 1):
        names = _budget_walk(top, files if i == 1 else files // 2, (mb if i == 1 else mb // 2) << 20)
        listing = layers / f"layer{i}.list"
        listing.write_text("\n".join(names) + "\n")
        out = layers / f"layer{i}.tar"
        subprocess.run(["tar", "-C", "/", "-cf", str(out), "--numeric-owner", "-T", str(listing)], check=True)
        plain.append(out)
        stats["files"] += len(names)
    # Layer 3: the busybox root, plus whiteouts of layer-1 files and of one of its directories.
    bb = ImageStore(work / "bench-store").resolve().rootfs
    top = work / "layers/layer3.tar"
    subprocess.run(["tar", "-C", str(bb), "-cf", str(top), "--numeric-owner", "."], check=True)
    first = (layers / "layer1.list").read_text().split()
    victims = first[:: max(1, len(first) // 20)][:20]
    victim_dir = os.path.dirname(first[len(first) // 2])
    with tarfile.open(top, "a") as tf:
        for name in [*victims, victim_dir]:
            parent, _, base = name.rpartition("/")
            ti = tarfile.TarInfo(f"{parent}/.wh.{base}" if parent else f".wh.{base}")
            tf.addfile(ti, io.BytesIO(b""))
    plain.append(top)
    gz = []
    for p in plain:
        out = p.with_suffix(".tar.gz")
        with open(p, "rb") as src, gzip.open(out, "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        gz.append(out)
        stats["bytes"] += p.stat().st_size
    return plain, gz, stats


def _ours(layers: list[Path], dest: Path) -> None:
    from jailshell.engine import rootfs
    from jailshell.engine.images import blobs

    with rootfs.Applier(dest) as applier:
        for i, layer in enumerate(layers, 1):
            with open(layer, "rb") as raw:
                stream, _ = blobs.decompressed(raw)
                try:
                    applier.apply(stream, f"layer {i}")
                finally:
                    stream.close()


def _tar(layers: list[Path], dest: Path) -> None:
    for layer in layers:
        flag = "-xzf" if layer.suffix == ".gz" else "-xf"
        subprocess.run(["tar", "-C", str(dest), flag, str(layer)], check=True)


def side_by_side(layers: list[Path], base: Path, runs: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"tar": [], "jailshell": []}
    base.mkdir(parents=True, exist_ok=True)
    for i in range(runs + 1):  # the first round warms the page cache for both, and is not counted
        order = ("tar", "jailshell") if i % 2 == 0 else ("jailshell", "tar")
        for who in order:
            dest = base / f"{who}-{i}"
            dest.mkdir()
            os.sync()
            start = time.perf_counter()
            (_tar if who == "tar" else _ours)(layers, dest)
            took = time.perf_counter() - start
            if i:
                times[who].append(took)
            subprocess.run(["rm", "-rf", str(dest)], check=True)
    return times


def _extract_rows(key: str, what: str, times: dict[str, list[float]], size_note: str) -> list[Row]:
    tar_med, ours_med = statistics.median(times["tar"]), statistics.median(times["jailshell"])
    ratio = tar_med / ours_med
    verdict = "met" if ratio >= TARGET_EXTRACT else "missed"
    return [
        timed_row(f"{key}.tar", GROUP, f"GNU tar -x, {what}", times["tar"], size_note),
        timed_row(f"{key}.jailshell", GROUP, f"jailshell safe applier, {what}", times["jailshell"], size_note),
        Row(f"{key}.ratio", GROUP, f"extraction speed vs GNU tar, {what} (target ≥ {TARGET_EXTRACT}×)", "×",
            ratio, n=len(times["tar"]), note=f"{verdict}: tar's median / jailshell's median"),
    ]


# -- pull ------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _oci_layout(gz_layers: list[Path], plain: list[Path], where: Path) -> Path:
    """An OCI layout of the gzip layers (what a registry would serve)."""
    blobs = where / "blobs/sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes | Path) -> tuple[str, int]:
        raw = data.read_bytes() if isinstance(data, Path) else data
        digest = hashlib.sha256(raw).hexdigest()
        (blobs / digest).write_bytes(raw)
        return f"sha256:{digest}", len(raw)

    diff_ids = ["sha256:" + hashlib.sha256(p.read_bytes()).hexdigest() for p in plain]
    config = json.dumps({"architecture": _arch(), "os": "linux", "config": {"Cmd": ["/bin/sh"]},
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
    cdigest, csize = put(config)
    layers = []
    for layer in gz_layers:
        d, s = put(layer)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": s})
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest,
                                      "size": csize}, "layers": layers}).encode()
    mdigest, msize = put(manifest)
    (where / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (where / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdigest, "size": msize,
         "annotations": {"org.opencontainers.image.ref.name": "bench"}}]}))
    return where


def _arch() -> str:
    from jailshell.engine.images.oci import Platform

    return Platform.host().architecture


def pull_rows(ctx: Context, plain: list[Path], gz: list[Path], runs: int) -> list[Row]:
    what_skopeo = "skopeo copy docker://127.0.0.1:PORT/bench:1 oci:DIR (download + verify + write blobs)"
    what_ours = "jailshell image pull 127.0.0.1:PORT/bench:1 (download + verify + extract the root)"
    missing = [t for t in ("docker-registry", "skopeo") if shutil.which(t) is None]
    if missing:
        why = f"{' and '.join(missing)} not installed (scripts/setup --test)"
        return [skipped("pull.skopeo", GROUP, what_skopeo, why), skipped("pull.jailshell", GROUP, what_ours, why)]
    base = ctx.work / "pull"
    base.mkdir()
    layout = _oci_layout(gz, plain, base / "layout")
    port = _free_port()
    config = base / "registry.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n"
                      f"  filesystem:\n    rootdirectory: {base / 'storage'}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen(["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).close()
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    why = "docker-registry did not start"
                    return [failed("pull.skopeo", GROUP, what_skopeo, why), failed("pull.jailshell", GROUP, what_ours,
                                                                                  why)]
                time.sleep(0.05)
        ref = f"127.0.0.1:{port}/bench:1"
        subprocess.run(["skopeo", "--insecure-policy", "copy", "-q", "--dest-tls-verify=false",
                        f"oci:{layout}:bench", f"docker://{ref}"], check=True)
        unpack = shutil.which("umoci") is not None and os.geteuid() == 0
        # "fetch": `jailshell image pull --no-unpack` as its own process, the same job as `skopeo copy`
        # (download, verify, store the blobs) started the same way, interpreter start-up included.
        peers = ("skopeo", "fetch", "jailshell", *(("skopeo+umoci",) if unpack else ()))
        times: dict[str, list[float]] = {who: [] for who in peers}
        for i in range(runs + 1):
            for who in (peers if i % 2 == 0 else peers[::-1]):
                dest = base / f"{who}-{i}"
                os.sync()
                start = time.perf_counter()
                if who.startswith("skopeo"):
                    subprocess.run(["skopeo", "--insecure-policy", "copy", "-q", "--src-tls-verify=false",
                                    f"docker://{ref}", f"oci:{dest}:bench"], check=True)
                    if who == "skopeo+umoci":
                        subprocess.run(["umoci", "unpack", "--image", f"{dest}:bench", str(dest / "bundle")],
                                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                elif who == "fetch":
                    subprocess.run([sys.executable, "-m", "jailshell", "image", "pull", "--no-unpack", "-q", ref],
                                   check=True, stdout=subprocess.DEVNULL,
                                   env={**os.environ, "JAILSHELL_DATA_DIR": str(dest)})
                else:
                    from jailshell.engine.images.registry import pull
                    from jailshell.engine.images.store import ImageStore

                    pull(ref, store=ImageStore(dest))
                took = time.perf_counter() - start
                if i:
                    times[who].append(took)
                subprocess.run(["rm", "-rf", str(dest)], check=True)
    finally:
        proc.terminate()
        proc.wait(10)
    what_fetch = ("jailshell image pull --no-unpack 127.0.0.1:PORT/bench:1 (download + verify + write blobs; "
                  "a process of its own, like skopeo)")
    ratio = statistics.median(times["skopeo"]) / statistics.median(times["fetch"])
    whole = statistics.median(times["skopeo"]) / statistics.median(times["jailshell"])
    rows = [
        timed_row("pull.skopeo", GROUP, what_skopeo, times["skopeo"]),
        timed_row("pull.fetch", GROUP, what_fetch, times["fetch"]),
        Row("pull.ratio", GROUP, "pull speed vs skopeo copy from the same loopback registry, the same job "
            "(target ≥ 1×)", "×", ratio, n=len(times["skopeo"]),
            note=f"{'met' if ratio >= 1 else 'missed'}: skopeo's median / pull --no-unpack's median"),
        timed_row("pull.jailshell", GROUP, what_ours, times["jailshell"]),
        Row("pull.ratio_with_extract", GROUP, "pull with extraction vs skopeo copy (different jobs)", "×", whole,
            n=len(times["skopeo"]), note="skopeo's median / jailshell's median; the pull also writes every file "
                                          "of the image, skopeo only the blobs"),
    ]
    what_unpack = "skopeo copy ... oci:DIR && umoci unpack --image DIR:bench BUNDLE (the same work as the pull)"
    if "skopeo+umoci" not in times:
        return [*rows, skipped("pull.skopeo_umoci", GROUP, what_unpack, "umoci not installed, or not root")]
    same = statistics.median(times["skopeo+umoci"]) / statistics.median(times["jailshell"])
    return [
        *rows,
        timed_row("pull.skopeo_umoci", GROUP, what_unpack, times["skopeo+umoci"]),
        Row("pull.ratio_unpacked", GROUP, "pull speed vs skopeo copy + umoci unpack (both extract the root)", "×",
            same, n=len(times["skopeo+umoci"]), note="skopeo+umoci's median / jailshell's median"),
    ]


def run(ctx: Context) -> list[Row]:
    if shutil.which("tar") is None:
        return [skipped("extract.ratio", GROUP, "extraction vs GNU tar", "GNU tar is not installed")]
    runs = ctx.runs(5, 1)
    ctx.log("building the benchmark image's layers")
    plain, gz, stats = build_layers(ctx.work, ctx.quick)
    note = f"3 layers, {stats['files']} files, {stats['bytes'] >> 20} MiB of tar"
    rows = []
    ctx.log("extracting: plain tar layers, on the store's disk")
    rows += _extract_rows("extract", "plain tar layers on disk", side_by_side(plain, ctx.work / "x", runs), note)
    ctx.log("extracting: gzip layers, on the store's disk")
    rows += _extract_rows("extract.gz", "gzip layers on disk", side_by_side(gz, ctx.work / "xz", runs), note)
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        tmp = Path(tempfile.mkdtemp(prefix="jsh-bench-", dir=shm))
        try:
            ctx.log("extracting: plain tar layers, on tmpfs")
            rows += _extract_rows("extract.tmpfs", "plain tar layers on tmpfs", side_by_side(plain, tmp, runs), note)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    ctx.log("pulling from a loopback registry")
    rows += pull_rows(ctx, plain, gz, runs)
    return rows


def main(argv: list[str] | None = None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    quick = "--quick" in args
    work = Path(tempfile.mkdtemp(prefix="jsh-bench-extract-", dir=os.environ.get("TMPDIR", "/var/tmp")))
    env = dict(os.environ, JAILSHELL_DATA_DIR=str(work / "data"), JAILSHELL_RUN_DIR=str(work / "run"),
               JAILSHELL_STATE_DIR=str(work / "state"))
    os.environ.update({k: v for k, v in env.items() if k.startswith("JAILSHELL_")})
    try:
        rows = run(Context(quick=quick, work=work, env=env, docker=False))
    finally:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    for r in rows:
        if r.unit == "×":
            print(f"{r.what:<95} {r.value:6.2f}×   {r.note}")
        elif r.value is not None:
            print(f"{r.what:<95} {r.value:8.1f} ms (p10 {r.p10:.1f}, p90 {r.p90:.1f}, n={r.n})")
        else:
            print(f"{r.what:<95} {r.status}: {r.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
