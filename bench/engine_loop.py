"""The engine's in-process path, timed in a fresh Python process.

    python -m bench.engine_loop RUNS [--profile | --plain] [--peer JSON_ARGV]

runs jailshell.engine.run.run(RunSpec(argv=["/bin/true"])) RUNS times (after
two warm-up runs) and prints JSON: {"samples": [seconds...], "phases": {...}}
or, with --profile, {"stages": {boundary: [ms...]}}. With --plain it runs
jailshell.engine.runfast.run_plain(["/bin/true"]) instead: what `jailshell
run --rm -- /bin/true` runs, in a process that has imported only what that
command imports. A fresh process, so the fork()s inside cost what they cost
in `jailshell run`, not what they would cost from a benchmark process that
has loaded everything else.

With --peer, each run of the engine takes turns with one run of that
command (bwrap), started with posix_spawn as the whole-process rows are, and
the JSON has its durations as "peer": the ratio of the two then compares
the same minutes of the machine.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable

# Not `from typing import ...`: typing would make this process (and every fork
# the engine does from it) heavier than `jailshell run`'s.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def peer_timer(argv: list[str] | None) -> Callable[[], float] | None:
    """Runs argv once (stdio on /dev/null) and returns its duration. Only os
    and time: this process must stay as light as `jailshell run`."""
    if not argv:
        return None
    actions = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY, 0) for fd in (0, 1, 2)]

    def once() -> float:
        t0 = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, dict(os.environ), file_actions=actions)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise RuntimeError(f"{argv[0]} failed: wait status {status}")
        return time.perf_counter() - t0

    return once


def _timed(start: Callable[[], Any], runs: int, peer: Callable[[], float] | None) -> dict[str, object]:
    """start() RUNS times after two warm-ups, each taking turns with one peer
    run; start returns the engine's result (status, timings) or None."""
    samples: list[float] = []
    peer_samples: list[float] = []
    phases: dict[str, list[float]] = {}
    for i in range(2 + runs):
        t0 = time.perf_counter()
        result = start()
        elapsed = time.perf_counter() - t0
        if result is None:
            raise RuntimeError("the default image is not built")
        if result.status != 0:
            raise RuntimeError(f"/bin/true exited {result.status}")
        peer_elapsed = peer() if peer else None
        if i >= 2:
            samples.append(elapsed)
            if peer_elapsed is not None:
                peer_samples.append(peer_elapsed)
            for k, v in result.timings.items():
                phases.setdefault(k, []).append(v * 1000)
    return {"samples": samples, "phases": phases, "peer": peer_samples}


def plain(runs: int, peer: Callable[[], float] | None = None) -> dict[str, object]:
    from jailshell.engine.images.store import ImageStore
    from jailshell.engine.run import RunSpec, run

    store = ImageStore()
    return _timed(lambda: run(RunSpec(argv=["/bin/true"]), store=store), runs, peer)


def fast_path_loop(runs: int, peer: Callable[[], float] | None = None) -> dict[str, object]:
    from jailshell.engine import runfast

    return _timed(lambda: runfast.run_plain(["/bin/true"], env=[], workdir=None, hostname=None, name=None), runs,
                  peer)


def main(argv: list[str]) -> int:
    runs = int(argv[0])
    peer = peer_timer(json.loads(argv[argv.index("--peer") + 1]) if "--peer" in argv else None)
    if "--plain" in argv:
        out: dict[str, object] = fast_path_loop(runs, peer)
    elif "--profile" in argv:
        from bench.profile_run import profile

        out = {"stages": profile(runs)}
    else:
        out = plain(runs, peer)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
