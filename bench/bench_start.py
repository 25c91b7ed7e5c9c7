"""Container start-to-exit for /bin/true, every tool on the same busybox root.

Rows (group "start"), in the table's order:
  floor_plain    fork+execve of /bin/true, no namespaces (C loop)
  floor          clone(all of jailshell's namespaces)+chroot+execve (C loop)
  floor_process  the same as a whole process (`floor ROOT`)
  unshare        unshare --mount --uts --ipc --net --pid --fork chroot ROOT /bin/true
  bwrap          bwrap --unshare-all --bind ROOT / --proc --dev --tmpfs /tmp
  crun, runc     `run` of an OCI bundle made by `runc spec`
  docker         docker run --rm --network none
  jailshell_run  jailshell run --rm -- /bin/true, the whole process
  jailshell_run_full  the same with --image busybox: run.run()'s path, not the plain one
  engine         jailshell.engine.run.run() in a loop in one Python process
  engine_plain   jailshell.engine.runfast.run_plain(), what `jailshell run --rm` runs, the same way
and (group "python") what a Python program pays before it does anything:
  python_bare    python -I -S -c pass: the interpreter alone
  python_start   the venv's python -c pass
  python_imports python -c 'import <what `jailshell run` imports>'
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import floor, peers
from bench.common import (
    OK,
    BenchError,
    Context,
    Row,
    engine_loop,
    failed,
    measure,
    measure_side_by_side,
    skipped,
    timed_row,
)

G = "start"
# What `jailshell run --rm -- /bin/true` imports (tests/engine/test_runfast.py keeps it to these).
RUN_IMPORTS = "import jailshell.cli, jailshell.engine.cli_run, jailshell.engine.runfast"


def run(ctx: Context) -> list[Row]:
    from jailshell.engine.images.store import ImageStore

    image = ImageStore().resolve()
    root = peers.make_rootfs_copy(image.rootfs, ctx.work / "rootfs")
    rows: dict[str, Row] = {}
    commands: dict[str, tuple[Callable[[int], Sequence[str]], int]] = {}
    whats: dict[str, str] = {}

    def add(row_id: str, what: str, argv_for: Callable[[int], Sequence[str]] | None, runs: int,
            missing: str = "", version_of: str | None = None) -> None:
        whats[row_id] = what
        if argv_for is None:
            rows[row_id] = skipped(row_id, G if row_id.startswith(G) else "python", what, missing)
            return
        commands[row_id] = (argv_for, runs)
        if version_of:
            versions[row_id] = peers.version([version_of, "--version"])

    versions: dict[str, str] = {}
    floor_rows, binary = _floor_loops(ctx, root)
    rows.update({r.id: r for r in floor_rows})
    what = "floor.c as a whole process: `floor ROOT`"
    if binary is None:
        rows[f"{G}.floor_process"] = failed(f"{G}.floor_process", G, what, rows[f"{G}.floor"].note)
    else:
        add(f"{G}.floor_process", what, lambda i: [str(binary), str(root)], ctx.runs(200))

    exe = peers.which("unshare")
    add(f"{G}.unshare", "unshare --mount --uts --ipc --net --pid --fork chroot ROOT /bin/true",
        (lambda i: [exe, "--mount", "--uts", "--ipc", "--net", "--pid", "--fork", "chroot", str(root), "/bin/true"])
        if exe else None, ctx.runs(100), "unshare not installed (apt-get install util-linux)", exe)
    bwrap = _find(ctx, "bwrap", "bubblewrap")
    add(f"{G}.bwrap", "bwrap --unshare-all --bind ROOT / --proc /proc --dev /dev --tmpfs /tmp /bin/true",
        (lambda i: [bwrap, "--unshare-all", "--bind", str(root), "/", "--proc", "/proc", "--dev", "/dev",
                    "--tmpfs", "/tmp", "/bin/true"]) if bwrap else None, ctx.runs(100),
        "bwrap not installed (apt-get install bubblewrap)", bwrap)
    runc = _find(ctx, "runc", "runc")
    runc_what = "runc run (bundle from `runc spec`: terminal off, args /bin/true)"
    runc_argv = None
    if runc:
        try:
            bundle = peers.make_bundle(runc, root, ctx.work / "bundle-runc")
            state = ctx.work / "runc-state"
            runc_argv = lambda i: [runc, "--root", str(state), "run", "--bundle", str(bundle),  # noqa: E731
                                   f"jsh-bench-runc-{os.getpid()}-{i}"]
        except BenchError as exc:
            rows[f"{G}.runc"] = failed(f"{G}.runc", G, runc_what, str(exc))
    if f"{G}.runc" not in rows:
        add(f"{G}.runc", runc_what, runc_argv, ctx.runs(50), "runc not installed (apt-get install runc)", runc)
    py = sys.executable
    add("python.bare", "python -I -S -c pass (the interpreter alone: no site, no .pth files)",
        lambda i: [py, "-I", "-S", "-c", "pass"], ctx.runs(50))
    add("python.start", "python -c pass (the venv's interpreter, site included)", lambda i: [py, "-c", "pass"],
        ctx.runs(50))
    add("python.imports", f"python -c '{RUN_IMPORTS}'", lambda i: [py, "-c", RUN_IMPORTS], ctx.runs(50))
    argv = [*jailshell_argv(), "run", "--rm", "--", "/bin/true"]
    add(f"{G}.jailshell_run", "jailshell run --rm -- /bin/true (whole process)", lambda i: argv, ctx.runs(50))
    # Any option beyond the plain path's (here --image) goes through run.run() and its imports.
    argv_full = [*jailshell_argv(), "run", "--rm", "--image", "busybox", "--", "/bin/true"]
    add(f"{G}.jailshell_run_full", "jailshell run --rm --image busybox -- /bin/true (whole process, `run()`'s path)",
        lambda i: argv_full, ctx.runs(50))

    ctx.log(f"measuring {', '.join(k.split('.', 1)[1] for k in commands)} side by side")
    for row_id, result in measure_side_by_side(commands, ctx.env).items():
        group = G if row_id.startswith(G) else "python"
        if isinstance(result, BenchError):
            rows[row_id] = failed(row_id, group, whats[row_id], str(result))
        else:
            extra = {"version": versions[row_id]} if row_id in versions else {}
            rows[row_id] = timed_row(row_id, group, whats[row_id], result, **extra)
    rows[f"{G}.crun"] = _crun_row(ctx, root, runc)
    rows[f"{G}.docker"] = _docker_row(ctx, image.rootfs)
    # The engine's rows take turns with bwrap, the target's yardstick, when bwrap ran here.
    bwrap_ok = bwrap is not None and rows[f"{G}.bwrap"].status == OK
    bwrap_argv = [str(bwrap), "--unshare-all", "--bind", str(root), "/", "--proc", "/proc", "--dev", "/dev",
                  "--tmpfs", "/tmp", "/bin/true"] if bwrap_ok else None
    rows[f"{G}.engine"] = _engine_row(ctx, peer=bwrap_argv)
    rows[f"{G}.engine_plain"] = _engine_row(ctx, plain=True, peer=bwrap_argv)
    order = [f"{G}.floor_plain", f"{G}.floor", f"{G}.floor_process", f"{G}.unshare", f"{G}.bwrap", f"{G}.crun",
             f"{G}.runc", f"{G}.docker", "python.bare", "python.start", "python.imports", f"{G}.jailshell_run",
             f"{G}.jailshell_run_full", f"{G}.engine", f"{G}.engine_plain"]
    return [rows[k] for k in order]


def _find(ctx: Context, program: str, package: str) -> str | None:
    exe = peers.which(program)
    if not exe and peers.apt_install(ctx, package):
        exe = peers.which(program)
    return exe


# -- the floor ------------------------------------------------------------------------


def _floor_loops(ctx: Context, root: Path) -> tuple[list[Row], Path | None]:
    what_plain = "floor.c: fork+execve /bin/true, no namespaces (C loop)"
    what_ns = "floor.c: clone(mnt,uts,ipc,net,pid,cgroup)+chroot+execve (C loop)"
    try:
        binary = floor.build(ctx.work)
    except BenchError as exc:
        return [failed(f"{G}.floor_plain", G, what_plain, str(exc)), failed(f"{G}.floor", G, what_ns, str(exc))], None
    rows = []
    for row_id, what, plain in ((f"{G}.floor_plain", what_plain, True), (f"{G}.floor", what_ns, False)):
        try:
            samples = floor.loop(binary, root, ctx.runs(500, 3), plain=plain)
            rows.append(timed_row(row_id, G, what, samples if ctx.quick else samples[5:]))
        except BenchError as exc:
            rows.append(failed(row_id, G, what, str(exc)))
    return rows, binary


# -- peers ----------------------------------------------------------------------------


def _crun_row(ctx: Context, root: Path, runc: str | None) -> Row:
    what = "crun run (the same bundle)"
    exe = _find(ctx, "crun", "crun")
    if not exe:
        return skipped(f"{G}.crun", G, what, "crun not installed (apt-get install crun)")
    try:
        bundle = peers.make_bundle(runc or exe, root, ctx.work / "bundle-crun")
    except BenchError as exc:
        return failed(f"{G}.crun", G, what, str(exc))
    state = ctx.work / "crun-state"

    def argv(i: int) -> list[str]:
        return [exe, "--root", str(state), "run", "--bundle", str(bundle), f"jsh-bench-crun-{os.getpid()}-{i}"]

    runs = ctx.runs(50)
    note = ""
    try:
        samples = measure(argv, runs, ctx.env)
    except BenchError as exc:
        if peers.CRUN_HYBRID_REFUSAL not in str(exc) or not peers.is_hybrid_with_v2_controllers():
            return failed(f"{G}.crun", G, what, str(exc))
        # This host is a v1/v2 hybrid whose v2 hierarchy holds a controller
        # (hugetlb): crun refuses it. Measured from a mount namespace where that
        # hierarchy is not mounted, crun sees cgroup v1 only and runs.
        note = ("crun refuses this hybrid host (`cgroups in hybrid mode not supported`); measured from a private "
                "mount namespace without /sys/fs/cgroup/unified, where crun sees plain cgroup v1")
        try:
            samples = _in_child(peers.hidden_v2_hierarchy, lambda: measure(argv, runs, ctx.env))
        except BenchError as exc2:
            return failed(f"{G}.crun", G, what, f"refused on this hybrid cgroup host ({exc2})")
    return timed_row(f"{G}.crun", G, what, samples, note, version=peers.version([exe, "--version"]))


def _in_child(setup: Callable[[], None], work: Callable[[], list[float]]) -> list[float]:
    """Run setup() then work() in a forked child; its samples come back as JSON."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        out: dict[str, object]
        try:
            setup()
            out = {"samples": work()}
        except BaseException as exc:
            out = {"error": str(exc)}
            code = 1
        os.write(w, json.dumps(out).encode())
        os._exit(code)
    os.close(w)
    data = b""
    while chunk := os.read(r, 1 << 16):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    result = json.loads(data or b'{"error": "child died"}')
    if "error" in result:
        raise BenchError(result["error"])
    return [float(s) for s in result["samples"]]


def _docker_row(ctx: Context, image_rootfs: Path) -> Row:
    what = "docker run --rm --network none (image: the same root, `docker import`)"
    row_id = f"{G}.docker"
    if not ctx.docker:
        return skipped(row_id, G, what, "skipped in --quick (no daemon is started or installed)" if ctx.quick
                       else "skipped (--no-docker)")
    import subprocess

    tag = f"jsh-bench-{os.getpid()}:1"
    try:
        with peers.docker_daemon(ctx) as docker:
            tar = subprocess.run(["tar", "-C", str(image_rootfs), "-c", "."], capture_output=True, check=True)
            res = docker.run("import", "-", tag, input=tar.stdout)
            if res.returncode != 0:
                raise BenchError(f"docker import failed: {res.stderr.decode(errors='replace').strip()[-200:]}")
            try:
                env = {**ctx.env, **{k: v for k, v in docker.env.items() if k == "DOCKER_HOST"}}
                samples = measure(lambda i: docker.cmd("run", "--rm", "--network", "none", tag,
                                                       "/bin/true"), ctx.runs(20), env)
            finally:
                docker.run("rmi", "-f", tag)
            note = "dockerd started for this run (private data root, no bridge)" if docker.started_by_us else ""
            return timed_row(row_id, G, what, samples, note, version=f"docker {docker.server_version}")
    except BenchError as exc:
        return failed(row_id, G, what, str(exc)) if ctx.docker else skipped(row_id, G, what, str(exc))
    except (OSError, subprocess.SubprocessError) as exc:
        return failed(row_id, G, what, f"{type(exc).__name__}: {exc}")


# -- jailshell ------------------------------------------------------------------------


def jailshell_argv() -> list[str]:
    script = Path(sys.executable).with_name("jailshell")
    return [str(script)] if script.exists() else [sys.executable, "-m", "jailshell"]


def _engine_row(ctx: Context, *, plain: bool = False, peer: Sequence[str] | None = None) -> Row:
    """run() (or run_plain()) in a loop in one fresh Python process: the
    engine's own work, no Python start-up; taking turns with bwrap (peer),
    whose median from the same minutes is kept as extra["peer_ms"]."""
    row_id = f"{G}.engine_plain" if plain else f"{G}.engine"
    what = ("engine in-process, `jailshell run`'s path: runfast.run_plain(['/bin/true']) in a loop" if plain
            else "engine in-process: run(RunSpec(argv=['/bin/true'])) in a loop")
    try:
        result = engine_loop(ctx, ctx.runs(200), plain=plain, peer=peer)
    except BenchError as exc:
        return failed(row_id, G, what, str(exc))
    phases = {k: round(statistics.median(v), 2) for k, v in result["phases"].items()}
    extra: dict[str, object] = {"phases": phases}
    note = ""
    if result.get("peer"):
        extra["peer_ms"] = round(statistics.median(result["peer"]) * 1000, 3)
        note = f"taking turns with bwrap, which took {extra['peer_ms']:.2f} ms in the same minutes"
    return timed_row(row_id, G, what, result["samples"], note, **extra)
