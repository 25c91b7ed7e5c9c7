"""The physical floor (bench/floor.c), compiled with the machine's C compiler
when the benchmark runs, so it is always built for this kernel and libc."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from bench.common import BenchError

SOURCE = Path(__file__).with_name("floor.c")


def build(work: Path) -> Path:
    """cc -O2 -static floor.c; a dynamic build where no static libc is installed."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise BenchError("no C compiler to build floor.c (apt-get install gcc libc6-dev)")
    out = work / "floor"
    errors = []
    for extra in (["-static"], []):
        res = subprocess.run([cc, "-O2", "-Wall", *extra, "-o", str(out), str(SOURCE)],
                             capture_output=True, text=True, check=False)
        if res.returncode == 0:
            return out
        errors.append(res.stderr.strip().splitlines()[-1:] or ["?"])
    raise BenchError(f"cc could not build floor.c: {errors[-1][0]}")


def loop(binary: Path, root: Path, runs: int, *, plain: bool = False) -> list[float]:
    """Per-container seconds, timed inside the C program (no exec of it per run)."""
    argv = [str(binary), *(["-p"] if plain else []), "-n", str(runs), str(root)]
    res = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    if res.returncode != 0:
        raise BenchError(f"floor failed: {res.stderr.strip()[-200:]}")
    return [int(line) / 1e9 for line in res.stdout.split()]
