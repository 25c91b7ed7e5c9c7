"""What every benchmark shares: the result row, the run context, timing.

A benchmark module exposes `run(ctx: Context) -> list[Row]`. The runner
(bench/runner.py) calls each one, in one process, on one machine, and turns
the rows into the table in bench/README.md. Rows are never dropped: a peer
that is missing or refuses to run here still gets its row, with the reason.

Whole-process timings start a program with posix_spawn and wait for it, the
same way for every tool, so the launcher's own cost (a fraction of a
millisecond) is the same in every row.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

OK, SKIPPED, FAILED = "ok", "skipped", "failed"


@dataclass
class Row:
    id: str  # stable key, e.g. "start.runc"; the quick test checks these
    group: str  # start | python | scale | memory | repl | images
    what: str  # what was run, as a person would type it
    unit: str = "ms"
    value: float | None = None  # the median (or the one measurement)
    p10: float | None = None
    p90: float | None = None
    n: int = 0
    status: str = OK
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def timed_row(row_id: str, group: str, what: str, seconds: Sequence[float], note: str = "",
              **extra: Any) -> Row:
    """A row of durations, reported in milliseconds."""
    ms = sorted(s * 1000 for s in seconds)
    if not ms:
        return Row(row_id, group, what, status=FAILED, note=note or "no measurement")
    return Row(row_id, group, what, "ms", statistics.median(ms), _quantile(ms, 0.1), _quantile(ms, 0.9),
               len(ms), OK, note, dict(extra))


def skipped(row_id: str, group: str, what: str, why: str, unit: str = "ms") -> Row:
    return Row(row_id, group, what, unit, status=SKIPPED, note=why)


def failed(row_id: str, group: str, what: str, why: str, unit: str = "ms") -> Row:
    return Row(row_id, group, what, unit, status=FAILED, note=why)


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


@dataclass
class Context:
    quick: bool
    work: Path  # a private temporary directory, removed when the run ends
    env: dict[str, str]  # the environment for jailshell and the peers (JAILSHELL_*_DIR point into work)
    docker: bool = True  # whether the docker benchmark may run (never in --quick)
    results: dict[str, Row] = field(default_factory=dict)  # rows so far, for benchmarks that build on others

    def runs(self, full: int, quick: int = 2) -> int:
        return quick if self.quick else full

    def log(self, msg: str) -> None:
        print(f"bench: {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A benchmark could not run; the message goes into its row."""


def _devnull_actions() -> list[tuple[Any, ...]]:
    return [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
    ]


def spawn_once(argv: Sequence[str], env: dict[str, str]) -> tuple[float, int]:
    """Start argv (argv[0] an absolute path), wait for it: (seconds, exit code)."""
    t0 = time.perf_counter()
    pid = os.posix_spawn(argv[0], list(argv), env, file_actions=_devnull_actions())
    _, status = os.waitpid(pid, 0)
    elapsed = time.perf_counter() - t0
    return elapsed, os.waitstatus_to_exitcode(status)


def why_it_failed(argv: Sequence[str], env: dict[str, str]) -> str:
    """Run argv once more with its output captured, for the row's note."""
    res = subprocess.run(list(argv), env=env, capture_output=True, text=True, check=False, timeout=60)
    text = (res.stderr or res.stdout).strip().splitlines()
    return f"exit {res.returncode}: " + (text[-1][:200] if text else "no output")


def measure(argv_for: Callable[[int], Sequence[str]], runs: int, env: dict[str, str], warmup: int = 2) -> list[float]:
    """Durations of `runs` runs of argv_for(i), after `warmup` unmeasured ones
    (the first runs pay for cold page cache and lazy kernel set-up)."""
    samples = []
    for i in range(warmup + runs):
        argv = argv_for(i)
        elapsed, code = spawn_once(argv, env)
        if code != 0:
            raise BenchError(why_it_failed(argv_for(warmup + runs + i), env))
        if i >= warmup:
            samples.append(elapsed)
    return samples


def measure_side_by_side(commands: dict[str, tuple[Callable[[int], Sequence[str]], int]], env: dict[str, str],
                         warmup: int = 2) -> dict[str, list[float] | BenchError]:
    """Like measure(), for several commands taking turns: run i of each, then
    run i+1 of each... so a slow minute of the machine (other work, a noisy
    neighbour) hits every tool alike instead of one. commands: key ->
    (argv_for, runs). A command that fails leaves the rotation with its error."""
    results: dict[str, list[float] | BenchError] = {key: [] for key in commands}
    for i in range(warmup + max((runs for _, runs in commands.values()), default=0)):
        for key, (argv_for, runs) in commands.items():
            samples = results[key]
            if isinstance(samples, BenchError) or i >= warmup + runs:
                continue
            elapsed, code = spawn_once(argv_for(i), env)
            if code != 0:
                results[key] = BenchError(why_it_failed(argv_for(warmup + runs + i), env))
            elif i >= warmup:
                samples.append(elapsed)
    return results


def engine_loop(ctx: Context, runs: int, *, profile: bool = False, plain: bool = False,
                peer: Sequence[str] | None = None) -> dict[str, Any]:
    """bench/engine_loop.py in a fresh Python process: its JSON result. With
    peer, each run takes turns with one run of that command."""
    argv = [sys.executable, "-m", "bench.engine_loop", str(runs), *(["--profile"] if profile else []),
            *(["--plain"] if plain else []), *(["--peer", json.dumps(list(peer))] if peer else [])]
    res = subprocess.run(argv, env=ctx.env, cwd=repo_root(), capture_output=True, text=True, check=False,
                         timeout=600)
    if res.returncode != 0:
        lines = res.stderr.strip().splitlines()
        raise BenchError("engine loop failed: " + (lines[-1][:300] if lines else f"exit {res.returncode}"))
    result: dict[str, Any] = json.loads(res.stdout)
    return result


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
