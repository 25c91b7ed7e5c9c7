"""Where the engine's start-to-exit time goes, stage by stage.

`jailshell run` as root is two processes: jailshell (P) and the container's
PID 1 (G), forked by P straight into a new PID namespace; G unshares the
other namespaces, mounts, pivots and execs (jailshell/engine/run.py). The
engine's functions are wrapped, for this benchmark only, so that each stage
boundary writes a CLOCK_MONOTONIC timestamp (the same clock in every
process) to a pipe; the stages are the gaps between consecutive boundaries,
whichever process they happen in.

Rows: group "profile", one per stage, medians over the runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench.common import BenchError, Context, Row, engine_loop, failed

# (boundary that ends the stage, what happened since the previous boundary)
STAGES = (
    ("fork_called", "jailshell: resolve the image, journal, make the container's directories"),
    ("child_running", "fork of jailshell into a new PID namespace (the container's PID 1 runs)"),
    ("unshare_called", "PID 1: PR_SET_PDEATHSIG, wait until jailshell has journaled it"),
    ("unshare_done", "PID 1: unshare(mnt, uts, ipc, net, cgroup) in one call"),
    ("private_done", "PID 1: make every mount private"),
    ("overlay_done", "PID 1: mount the overlay root"),
    ("mounts_done", "PID 1: mount proc, sys, tmp, dev (+ nodes), devpts, shm, mqueue"),
    ("lo_done", "PID 1: bring lo up"),
    ("pivot_done", "PID 1: sethostname, pivot_root, detach the old root"),
    ("mask_done", "PID 1: mask docker's /proc and /sys paths"),
    ("exec_called", "PID 1: environment, reset signals"),
    ("child_exited", "execve /bin/true, run it, exit: the namespaces go with PID 1"),
    ("run_returned", "jailshell: reap, remove the container's directory, close the journal"),
)


class _Probe:
    """Timestamps from every process of a run, through one pipe."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        fcntl.fcntl(self.r, fcntl.F_SETFL, os.O_NONBLOCK)
        self.parent = os.getpid()

    def mark(self, label: str) -> None:
        os.write(self.w, f"{label} {os.getpid()} {time.monotonic_ns()}\n".encode())

    def drain(self) -> list[tuple[str, int, int]]:
        data = b""
        with contextlib.suppress(BlockingIOError):
            while chunk := os.read(self.r, 1 << 16):
                data += chunk
        out = []
        for line in data.decode().splitlines():
            label, pid, ns = line.split()
            out.append((label, int(pid), int(ns)))
        return out

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


@contextlib.contextmanager
def _instrumented(probe: _Probe) -> Iterator[None]:
    from jailshell.engine import steps
    from jailshell.engine import syscalls as sc

    patches: list[tuple[Any, str, Any]] = []

    def patch(obj: Any, name: str, make: Callable[[Any], Any]) -> None:
        orig = getattr(obj, name)
        patches.append((obj, name, orig))
        setattr(obj, name, make(orig))

    def after(label: str) -> Callable[[Any], Any]:
        def make(orig: Any) -> Any:
            def wrapper(*a: Any, **kw: Any) -> Any:
                result = orig(*a, **kw)
                probe.mark(label)
                return result
            return wrapper
        return make

    def fork_wrapper(orig: Any) -> Any:
        def wrapper() -> int:
            parent = os.getpid()
            if parent == probe.parent:
                probe.mark("fork_called")
            pid = orig()
            if pid == 0:
                probe.mark("child_running" if parent == probe.parent else "init_running")
            return int(pid)
        # init_running / init_exited (a fork and a wait in a middle process) are only seen when
        # run() takes its two-fork path (a user namespace); they are not stages of the root path.
        return wrapper

    def unshare_wrapper(orig: Any) -> Any:
        def wrapper(flags: int) -> None:
            probe.mark("unshare_called")
            orig(flags)
            probe.mark("unshare_done")
        return wrapper

    def mount_wrapper(orig: Any) -> Any:
        def wrapper(source: Any, target: Any, fstype: Any = None, *a: Any, **kw: Any) -> None:
            orig(source, target, fstype, *a, **kw)
            if fstype == "overlay":
                probe.mark("overlay_done")
        return wrapper

    def exec_wrapper(orig: Any) -> Any:
        def wrapper(*a: Any) -> None:
            probe.mark("exec_called")
            orig(*a)
        return wrapper

    def waitpid_wrapper(orig: Any) -> Any:
        def wrapper(pid: int, options: int) -> tuple[int, int]:
            result = orig(pid, options)
            if os.getpid() == probe.parent:
                probe.mark("child_exited")
            else:
                probe.mark("init_exited")
            return result[0], result[1]
        return wrapper

    # run.py reaches each of these through its module's attribute, so patching the attribute is enough.
    patch(os, "fork", fork_wrapper)
    patch(os, "execvpe", exec_wrapper)
    patch(os, "waitpid", waitpid_wrapper)
    patch(sc, "unshare", unshare_wrapper)
    patch(sc, "mount", mount_wrapper)
    patch(steps, "make_mounts_private", after("private_done"))
    patch(steps, "loopback_up", after("lo_done"))
    patch(steps, "pivot_root", after("pivot_done"))
    patch(steps, "mask_paths", after("mask_done"))
    # The last special mount ends the mounts stage: mark after every one, keep the last.
    patch(steps, "mount_special", after("mounts_done"))
    try:
        yield
    finally:
        for obj, name, orig in reversed(patches):
            setattr(obj, name, orig)


def _durations(events: list[tuple[str, int, int]], start: int) -> dict[str, float] | None:
    last: dict[str, int] = {}
    for label, _pid, ns in events:
        last[label] = ns  # the last mark of a label is its boundary (mounts_done, repeated)
    if "run_returned" not in last:
        return None
    out = {}
    prev = start
    for label, _what in STAGES:
        if label not in last:
            return None
        out[label] = (last[label] - prev) / 1e6
        prev = last[label]
    return out


def profile(runs: int) -> dict[str, list[float]]:
    """Per-stage milliseconds of `runs` runs (after two warm-up runs)."""
    from jailshell.engine.images.store import ImageStore
    from jailshell.engine.run import RunSpec
    from jailshell.engine.run import run as run_container

    store = ImageStore()
    probe = _Probe()
    per_stage: dict[str, list[float]] = {label: [] for label, _ in STAGES}
    try:
        with _instrumented(probe):
            for i in range(2 + runs):
                start = time.monotonic_ns()
                run_container(RunSpec(argv=["/bin/true"]), store=store)
                probe.mark("run_returned")
                stages = _durations(probe.drain(), start)
                if stages is None:
                    raise RuntimeError("a stage boundary was not seen: the engine's run path has changed")
                if i >= 2:
                    for label, ms in stages.items():
                        per_stage[label].append(ms)
    finally:
        probe.close()
    return per_stage


def run(ctx: Context) -> list[Row]:
    try:
        per_stage = engine_loop(ctx, ctx.runs(100), profile=True)["stages"]
        rows = []
        for label, what in STAGES:
            ms = per_stage[label]
            rows.append(Row(f"profile.{label}", "profile", what, "ms", statistics.median(ms), min(ms), max(ms),
                            len(ms)))
    except (BenchError, KeyError) as exc:
        return [failed("profile.error", "profile", "engine profile", f"{type(exc).__name__}: {exc}")]
    return rows
