"""The engine's in-process path, timed in a fresh Python process.

    python -m bench.engine_loop RUNS [--profile]

runs jailshell.engine.run.run(RunSpec(argv=["/bin/true"])) RUNS times (after
two warm-up runs) and prints JSON: {"samples": [seconds...], "phases": {...}}
or, with --profile, {"stages": {boundary: [ms...]}}. A fresh process, so the
fork()s inside run() cost what they cost in `jailshell run`, not what they
would cost from a benchmark process that has loaded everything else.
"""

from __future__ import annotations

import json
import sys
import time


def plain(runs: int) -> dict[str, object]:
    from jailshell.engine.images.store import ImageStore
    from jailshell.engine.run import RunSpec, run

    store = ImageStore()
    samples: list[float] = []
    phases: dict[str, list[float]] = {}
    for i in range(2 + runs):
        t0 = time.perf_counter()
        result = run(RunSpec(argv=["/bin/true"]), store=store)
        elapsed = time.perf_counter() - t0
        if result.status != 0:
            raise RuntimeError(f"/bin/true exited {result.status}")
        if i >= 2:
            samples.append(elapsed)
            for k, v in result.timings.items():
                phases.setdefault(k, []).append(v * 1000)
    return {"samples": samples, "phases": phases}


def main(argv: list[str]) -> int:
    runs = int(argv[0])
    if "--profile" in argv:
        from bench.profile_run import profile

        out: dict[str, object] = {"stages": profile(runs)}
    else:
        out = plain(runs)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
