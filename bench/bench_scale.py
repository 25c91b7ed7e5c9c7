"""Many live jails at once: what the REPL's `jail` costs when a class runs one
each, or an instructor keeps dozens.

For each level (1, 10, 50, 100 jails; 1 and 3 in --quick) the jails are
created one after another with Jail.create() and taken through a few steps
each (unshare uts, ipc, net, mnt, pid; sethostname), all kept alive, then
measured (unique memory of every holder process: psutil's USS, the memory
that would be freed if that process died) and torn down. After each level the
host must be clean: no holder left, no journal entry pending, no jail
directory or mount left behind.

Rows: scale.<N> (start time of all N; extra: per-jail start, teardown,
memory) and memory.jail_uss (unique memory per live jail at the largest level).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

from bench.common import Context, Row, failed, timed_row

STEPS = ("uts", "ipc", "net", "mnt", "pid")
MB = 1024 * 1024


def levels(ctx: Context) -> tuple[int, ...]:
    return (1, 3) if ctx.quick else (1, 10, 50, 100)


def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    per_jail_uss: list[float] = []
    largest = 0
    for n in levels(ctx):
        row, uss = _level(ctx, n)
        rows.append(row)
        if row.status == "ok" and n >= largest:
            largest, per_jail_uss = n, uss
    what = "unique memory (USS) per live jail: its holder processes"
    if per_jail_uss:
        mem = Row("memory.jail_uss", "memory", what, "MB", statistics.median(per_jail_uss), min(per_jail_uss),
                  max(per_jail_uss), len(per_jail_uss), "ok", f"median over the {largest} jails alive at once",
                  {"jails": largest})
    else:
        mem = failed("memory.jail_uss", "memory", what, "no scale level completed", unit="MB")
    rows.append(mem)
    return rows


def _level(ctx: Context, n: int) -> tuple[Row, list[float]]:
    import psutil

    from jailshell.engine.jail import Jail

    row_id = f"scale.{n}"
    what = f"{n} live jail{'s' if n > 1 else ''}: create + unshare {', '.join(STEPS)} + sethostname, all alive"
    jails: list[Jail] = []
    starts: list[float] = []
    error = ""
    t_all = time.perf_counter()
    try:
        for i in range(n):
            t0 = time.perf_counter()
            jail = Jail.create()
            jails.append(jail)
            for kind in STEPS:
                jail.unshare(kind)
            jail.sethostname(f"jsh-bench-{i}")
            starts.append(time.perf_counter() - t0)
    except Exception as exc:
        error = f"jail {len(jails)} of {n}: {type(exc).__name__}: {exc}"
    start_all = time.perf_counter() - t_all
    uss: list[float] = []
    holders = 0
    for jail in jails:
        total = 0
        for pid in jail.holder_pids:
            try:
                total += psutil.Process(pid).memory_full_info().uss
                holders += 1
            except psutil.Error:
                pass
        uss.append(total / MB)
    t0 = time.perf_counter()
    for jail in jails:
        try:
            jail.close()
        except Exception as exc:
            error = error or f"teardown: {exc}"
    teardown = time.perf_counter() - t0
    leftovers = _leftovers(jails)
    if leftovers:
        error = error or "host not clean after teardown: " + "; ".join(leftovers[:5])
    if error:
        return failed(row_id, "scale", what, error), []
    parent_rss = psutil.Process().memory_info().rss / MB
    row = timed_row(row_id, "scale", what, [start_all], "", jails=n, per_jail_ms=1000 * statistics.median(starts),
                    teardown_ms=1000 * teardown, total_uss_mb=sum(uss), per_jail_uss_mb=statistics.median(uss),
                    holder_processes=holders, parent_rss_mb=parent_rss, clean=True)
    ctx.log(f"{n} jails: {start_all * 1000:.0f} ms to start, {sum(uss):.1f} MB unique, "
            f"{teardown * 1000:.0f} ms to tear down")
    return row, uss


def _leftovers(jails: Sequence[object]) -> list[str]:
    """What a level left behind: holder processes, jail directories, mounts, journal entries."""
    from jailshell import paths
    from jailshell.engine import journal
    from jailshell.engine.journal import process_alive

    out = []
    for jail in jails:
        for pid in getattr(jail, "holder_pids", []):
            if process_alive(pid, None) and not _is_zombie(pid):
                out.append(f"holder {pid} still running")
        jail_dir = getattr(jail, "dir", None)
        if jail_dir is not None and jail_dir.exists():
            out.append(f"{jail_dir} still exists")
    run_dir = str(paths.run_dir())
    with open("/proc/self/mountinfo") as fh:
        out += [f"mount {line.split()[4]}" for line in fh if line.split()[4].startswith(run_dir)]
    for path in journal.journals():
        out += [f"journal: {e.describe()}" for e in journal.Journal.load(path).pending()]
    return out


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True
