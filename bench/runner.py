"""`python -m bench`: every benchmark, side by side, in one run.

  python -m bench                 the full run; writes the table into bench/README.md
  python -m bench --quick         each benchmark a couple of times (CI: proves it works)
  python -m bench --json FILE     also every row as JSON
  python -m bench --no-docker     leave docker out

Needs root (namespaces, mounts, peers' cgroups). Everything it creates lives
in one temporary directory and is removed at the end; the host is compared
before and after, and the comparison is a row of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import FAILED, OK, Context, Row, failed, repo_root

# Benchmark modules, in the order they run. Those another part of the project
# provides are run when present (bench_repl: the REPL; bench_extract: images).
MODULES = ("bench_start", "profile_run", "bench_scale", "bench_repl", "bench_extract")
OPTIONAL = {"bench_repl", "bench_extract"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a couple of runs each, no docker; for CI")
    p.add_argument("--json", type=Path, default=None, help="write every row as JSON to this file")
    p.add_argument("--readme", type=Path, default=None,
                   help="README to write the table into (default: bench/README.md, not in --quick)")
    p.add_argument("--no-docker", action="store_true", help="leave docker out")
    p.add_argument("--only", action="append", default=[], metavar="MODULE", help="run only this benchmark module")
    return p.parse_args(argv)


def _environment(work: Path) -> dict[str, str]:
    """jailshell's directories inside the run's work dir, unless the caller
    chose them (the test suite does): the benchmark never touches a learner's
    images or state."""
    for var, sub in (("JAILSHELL_RUN_DIR", "run"), ("JAILSHELL_DATA_DIR", "data"), ("JAILSHELL_STATE_DIR", "state")):
        os.environ.setdefault(var, str(work / sub))
    # An installed jailshell runs from bytecode (pip compiles it at install
    # time). With PYTHONDONTWRITEBYTECODE set (CI images, some shells) every
    # timed `jailshell run` would compile jailshell's sources again, 10-15 ms
    # that no user pays; the bytecode goes to a cache inside the work dir, so
    # the checkout is not written to. Set in os.environ: every benchmark's
    # children (the REPL's too) inherit it.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ.setdefault("PYTHONPYCACHEPREFIX", str(work / "pycache"))
    return dict(os.environ)


def _host_snapshot() -> Any:
    sys.path.insert(0, str(repo_root()))
    from tests import hoststate

    return hoststate.snapshot()


LOCK = "/run/lock/jailshell-tests.lock"


def _take_machine_lock(ctx: Context) -> int | None:
    """The lock the test suite takes (tests/conftest.py): a test session and
    a benchmark must not run at once, or each would see the other's jails as
    leaks, and the benchmark would time the tests' load. Not taken when an
    ancestor of ours holds it (the quick benchmark run by the test suite)."""
    fd = os.open(LOCK, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except BlockingIOError:
        pass
    if _held_by_ancestor(os.fstat(fd).st_ino):
        os.close(fd)
        return None
    ctx.log("waiting for a test session to finish (machine-wide lock)")
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _held_by_ancestor(inode: int) -> bool:
    holders = set()
    with open("/proc/locks") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
                holders.add(int(fields[4]))
    pid = os.getppid()
    while pid > 1:
        if pid in holders:
            return True
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                pid = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (namespaces, mounts and the peers' cgroups): sudo bench/run", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="jsh-bench-"))
    ctx = Context(quick=args.quick, work=work, env=_environment(work), docker=not (args.quick or args.no_docker))
    lock = _take_machine_lock(ctx)
    load = os.getloadavg()
    before = _host_snapshot()
    rows: list[Row] = []
    t0 = time.perf_counter()
    try:
        for name in args.only or MODULES:
            rows += _run_module(ctx, name)
            ctx.results.update({r.id: r for r in rows})
    finally:
        leaks = _host_snapshot().leaks_since(before)
        _remove_work(work)
        if lock is not None:
            os.close(lock)
    rows.append(Row("host.clean", "host", "host left as found (mounts, cgroups, interfaces, netns, processes)",
                    "", status=FAILED if leaks else OK, note="; ".join(leaks[:5])))
    ctx.log(f"done in {time.perf_counter() - t0:.1f} s")

    from bench import report

    body = report.markdown(rows, args.quick, load)
    print(body)
    if args.json:
        args.json.write_text(json.dumps([r.to_json() for r in rows], indent=2) + "\n")
    readme = args.readme or (None if args.quick else Path(__file__).with_name("README.md"))
    if readme is not None:
        report.write_readme(readme, body)
        ctx.log(f"table written to {readme}")
    return 1 if leaks or any(r.status == FAILED for r in rows) else 0


def _run_module(ctx: Context, name: str) -> list[Row]:
    if name in OPTIONAL and not Path(__file__).with_name(f"{name}.py").exists():
        return []
    ctx.log(f"running {name}")
    try:
        module = importlib.import_module(f"bench.{name}")
        result = module.run(ctx)
    except Exception as exc:
        return [failed(f"{name}.error", name, f"{name} (crashed)", f"{type(exc).__name__}: {exc}")]
    return [r if isinstance(r, Row) else Row(**r) for r in result]


def _remove_work(work: Path) -> None:
    with open("/proc/self/mountinfo") as fh:
        mounted = [line.split()[4] for line in fh if line.split()[4].startswith(str(work) + "/")]
    if mounted:
        # Never rm -r through a mount: leave it for `jailshell cleanup` and say so.
        print(f"bench: {work} still has mounts ({', '.join(mounted[:3])}); not removed", file=sys.stderr)
        return
    with contextlib.suppress(OSError):
        shutil.rmtree(work)
