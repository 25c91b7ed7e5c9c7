"""Targets and the results table.

The targets are the ones the project set itself (engine speed against
bwrap, the whole command against runc and docker, memory and scale of live
jails, the REPL's responsiveness). Each is checked against this run's rows;
a target that is missed says so, with the measured numbers that explain it.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.common import OK, Row

BEGIN = "<!-- results:begin (written by `python -m bench`; edit outside these markers) -->"
END = "<!-- results:end -->"


@dataclass
class Target:
    name: str
    status: str  # met | missed | not measured
    measured: str
    why: str = ""


def _v(rows: dict[str, Row], key: str) -> float | None:
    row = rows.get(key)
    return row.value if row is not None and row.status == OK else None


def _fmt(x: float | None, unit: str = "ms") -> str:
    if x is None:
        return "–"
    return f"{x:.2f} {unit}" if x < 10 else f"{x:.1f} {unit}" if x < 100 else f"{x:.0f} {unit}"


def targets(rows: dict[str, Row]) -> list[Target]:
    out: list[Target] = []
    engine, bwrap, runc = _v(rows, "start.engine"), _v(rows, "start.bwrap"), _v(rows, "start.runc")
    whole, docker = _v(rows, "start.jailshell_run"), _v(rows, "start.docker")
    py_bare, py_start, py_imports = _v(rows, "python.bare"), _v(rows, "python.start"), _v(rows, "python.imports")
    floor = _v(rows, "start.floor")

    def ratio_target(name: str, num: float | None, den: float | None, limit: float,
                     why: Callable[[], str], *, faster: bool = False) -> None:
        if num is None or den is None:
            out.append(Target(name, "not measured", "a row it needs did not run"))
            return
        ratio = den / num if faster else num / den
        met = ratio >= limit if faster else ratio <= limit
        shown = f"{ratio:.1f}× faster" if faster else f"{ratio:.2f}×"
        out.append(Target(name, "met" if met else "missed", f"{_fmt(num)} vs {_fmt(den)}: {shown}",
                          "" if met else why()))

    def why_engine() -> str:
        stages = sorted((r for r in rows.values() if r.group == "profile" and r.status == OK),
                        key=lambda r: -(r.value or 0))
        text = (f"the floor (one clone with all namespaces + chroot + exec, in C) is {_fmt(floor)}; the engine "
                f"also mounts an overlay root, proc, sys, tmp, dev, devpts, shm, mqueue and docker's masks, and "
                f"does it from Python")
        if stages:
            text += "; its largest stages: " + ", ".join(f"{r.what} {_fmt(r.value)}" for r in stages[:4])
        return text

    def why_whole() -> str:
        parts = []
        if py_start is not None:
            parts.append(f"the Python interpreter starts in {_fmt(py_start)}"
                         + (f" ({_fmt(py_bare)} bare, the rest is site and the .pth files of the install)"
                            if py_bare is not None else ""))
        if py_start is not None and py_imports is not None:
            parts.append(f"importing the `run` path adds {_fmt(py_imports - py_start)}")
        if engine is not None:
            parts.append(f"the engine's own work is {_fmt(engine)}")
        return ("; ".join(parts) + f"; 1.5× runc is {_fmt(1.5 * runc if runc else None)}. Start-up and "
                "imports are most of it: see the notes below the table for what would close the gap")

    def turns(key: str) -> float | None:
        """bwrap's median from the minutes it took turns with this engine row, else bwrap's own row."""
        row = rows.get(key)
        peer = row.extra.get("peer_ms") if row is not None and row.status == OK else None
        return float(peer) if peer else bwrap

    ratio_target("engine in-process start-to-exit within 2× bwrap", engine, turns("start.engine"), 2.0, why_engine)
    plain, plain_bwrap = _v(rows, "start.engine_plain"), turns("start.engine_plain")
    if plain is not None and plain_bwrap:
        # run.run() is the target's row; `jailshell run`'s own path does the same work with fewer Python objects.
        out[-1].measured += (f" (`jailshell run`'s path, runfast.run_plain: {_fmt(plain)} vs {_fmt(plain_bwrap)}, "
                             f"{plain / plain_bwrap:.2f}×); bwrap timed taking turns with the engine")
    if engine is None:
        out.append(Target("engine's own work under 10 ms per container", "not measured", ""))
    else:
        out.append(Target("engine's own work under 10 ms per container", "met" if engine <= 10 else "missed",
                          _fmt(engine), "" if engine <= 10 else why_engine()))
    ratio_target("`jailshell run --rm -- /bin/true` within 1.5× `runc run`", whole, runc, 1.5, why_whole)
    ratio_target("`jailshell run` at least 5× faster than `docker run`", whole, docker, 5.0,
                 lambda: f"docker needs {_fmt(docker)}; 5× faster means {_fmt(docker / 5 if docker else None)} "
                         f"for jailshell, whose Python start-up and imports alone take "
                         f"{_fmt(py_imports)} of its {_fmt(whole)}", faster=True)
    uss = _v(rows, "memory.jail_uss")
    if uss is None:
        out.append(Target("unique memory per live jail under 10 MB", "not measured", ""))
    else:
        out.append(Target("unique memory per live jail under 10 MB", "met" if uss < 10 else "missed", _fmt(uss, "MB"),
                          "" if uss < 10 else "each holder is a fork of the Python process that made it; pages "
                          "it writes (reference counts, the garbage collector's passes) stop being shared"))
    big = rows.get("scale.100")
    if big is None:
        out.append(Target("100 live jails at once without error", "not measured", "(--quick runs fewer)"))
    else:
        out.append(Target("100 live jails at once without error", "met" if big.status == OK else "missed",
                          "100 started, torn down, host clean" if big.status == OK else big.note,
                          "" if big.status == OK else big.note))
    for key, name, limit in (("repl.first_prompt", "REPL: first prompt under 300 ms", 300.0),
                             ("repl.step", "REPL: a lesson step under 100 ms", 100.0)):
        value = _v(rows, key)
        if value is None:
            out.append(Target(name, "not measured", rows[key].note if key in rows else "no REPL benchmark yet"))
        else:
            out.append(Target(name, "met" if value <= limit else "missed", _fmt(value)))
    clean = rows.get("host.clean")
    if clean is not None:
        out.append(Target("host left as found", "met" if clean.status == OK else "missed",
                          clean.note or "same mounts, cgroups, interfaces, netns, processes"))
    return out


# -- machine --------------------------------------------------------------------------


def machine() -> dict[str, str]:
    def first(path: str, key: str) -> str:
        try:
            with open(path) as fh:
                for line in fh:
                    if line.startswith(key):
                        return line.split(":", 1)[1].strip() if ":" in line else line.split("=", 1)[1].strip('"\n')
        except OSError:
            pass
        return "?"

    mem_kb = first("/proc/meminfo", "MemTotal").split()[0]
    return {
        "date": time.strftime("%Y-%m-%d"),
        "kernel": platform.release(),
        "os": first("/etc/os-release", "PRETTY_NAME"),
        "cpu": f"{first('/proc/cpuinfo', 'model name')}, {os.cpu_count()} cores",
        "memory": f"{int(mem_kb) / 1024 / 1024:.0f} GiB" if mem_kb.isdigit() else "?",
        "cgroups": _cgroup_mode(),
        "python": platform.python_version(),
    }


def _cgroup_mode() -> str:
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():
        return "v2 (unified)"
    if (root / "unified" / "cgroup.controllers").exists():
        ctrls = (root / "unified" / "cgroup.controllers").read_text().split()
        return f"v1/v2 hybrid (v2 controllers: {' '.join(ctrls) or 'none'})"
    return "v1"


# -- markdown -------------------------------------------------------------------------


def _cell(row: Row, key: str) -> str:
    if row.status != OK:
        return "–"
    value = getattr(row, key)
    return _fmt(value, "").strip() if value is not None else "–"


def _ratio(row: Row, base: Row | None) -> str:
    if row.status != OK or base is None or base.status != OK or not base.value or row.value is None:
        return "–"
    return f"{row.value / base.value:.2f}"


def _status_note(row: Row) -> str:
    if row.status == OK:
        return row.note
    return f"**{row.status}**: {row.note}"


def markdown(rows: list[Row], quick: bool, load: tuple[float, float, float]) -> str:
    """The results as markdown; load: the load average when the run began
    (other work on the machine shows in the spread of every row)."""
    by_id = {r.id: r for r in rows}
    m = machine()
    lines = [f"Measured {m['date']} on {m['os']}, kernel {m['kernel']}, {m['cpu']}, {m['memory']}, "
             f"cgroups {m['cgroups']}, Python {m['python']}; load average at the start {load[0]:.2f}" + (" (`--quick`: a few runs each, not for quoting)"
                                                               if quick else "") + ".", ""]
    versions = [f"{r.id.split('.', 1)[1]}: {r.extra['version']}" for r in rows if r.extra.get("version")]
    if versions:
        lines += ["Versions: " + "; ".join(versions) + ".", ""]

    lines += ["### Targets", "", "| target | measured | result | why |", "|---|---|---|---|"]
    for t in targets(by_id):
        mark = {"met": "met", "missed": "**missed**"}.get(t.status, t.status)
        lines.append(f"| {t.name} | {t.measured} | {mark} | {t.why} |")

    runc, bwrap = by_id.get("start.runc"), by_id.get("start.bwrap")
    lines += ["", "### Container start-to-exit: `/bin/true` on the same busybox root", "",
              "Milliseconds; median of n runs (after warm-up), p10–p90; ratios are medians over runc's and bwrap's.",
              "", "| what | median | p10–p90 | n | × runc | × bwrap | note |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if r.group in ("start", "python"):
            spread = f"{_cell(r, 'p10')}–{_cell(r, 'p90')}" if r.status == OK else "–"
            lines.append(f"| {r.what} | {_cell(r, 'value')} | {spread} | {r.n or '–'} | {_ratio(r, runc)} | "
                         f"{_ratio(r, bwrap)} | {_status_note(r)} |")

    engine = by_id.get("start.engine")
    if engine is not None and engine.extra.get("phases"):
        ph = engine.extra["phases"]
        lines += ["", f"The engine's own clock (`jailshell run --timings`), medians: ready to fork "
                  f"{ph.get('prepare', 0):.2f} ms, container started {ph.get('started', 0):.2f} ms, exited and "
                  f"removed {ph.get('exited', 0):.2f} ms."]

    profile = [r for r in rows if r.group == "profile"]
    if profile:
        lines += ["", "### Where the engine's time goes (`run()` in-process, stage by stage)", "",
                  "Medians in ms, from timestamps taken at each stage boundary in the two processes "
                  "(jailshell, and the container's PID 1, forked straight into its new PID namespace).", "",
                  "| stage | median ms | share |", "|---|---:|---:|"]
        total = sum(r.value or 0 for r in profile)
        for r in profile:
            share = f"{100 * (r.value or 0) / total:.0f}%" if total else "–"
            lines.append(f"| {r.what} | {_cell(r, 'value')} | {share} |")

    scale = [r for r in rows if r.group == "scale"]
    if scale:
        lines += ["", "### Live jails at once", "",
                  "Each jail: `Jail.create()`, then unshare uts, ipc, net, mnt, pid and sethostname; all kept "
                  "alive, measured, then closed. Unique memory is psutil's USS of each jail's holder processes.", "",
                  "| jails | start all (ms) | per jail (ms) | unique MB total | unique MB per jail | "
                  "teardown (ms) | host clean | note |", "|---:|---:|---:|---:|---:|---:|---|---|"]
        for r in scale:
            x = r.extra
            if r.status == OK:
                lines.append(f"| {x['jails']} | {r.value:.0f} | {x['per_jail_ms']:.1f} | {x['total_uss_mb']:.1f} | "
                             f"{x['per_jail_uss_mb']:.2f} | {x['teardown_ms']:.0f} | yes | {r.note} |")
            else:
                lines.append(f"| {r.id.split('.')[1]} | – | – | – | – | – | – | {_status_note(r)} |")
        growth = [r for r in scale if r.status == OK]
        if len(growth) >= 2:
            a, b = growth[0].extra, growth[-1].extra
            lines += ["", f"Growth from {a['jails']} to {b['jails']} jails: start time per jail "
                      f"{a['per_jail_ms']:.1f} → {b['per_jail_ms']:.1f} ms, teardown per jail "
                      f"{a['teardown_ms'] / a['jails']:.1f} → {b['teardown_ms'] / b['jails']:.1f} ms, unique memory per jail "
                      f"{a['per_jail_uss_mb']:.2f} → {b['per_jail_uss_mb']:.2f} MB "
                      f"({'linear' if b['per_jail_ms'] <= 1.5 * a['per_jail_ms'] else 'worse than linear'} "
                      f"in start time). Holders are forks of the benchmark process "
                      f"({b['parent_rss_mb']:.0f} MB RSS)."]

    other = [r for r in rows if r.group not in ("start", "python", "profile", "scale", "host")]
    if other:
        lines += ["", "### Other measurements", "", "| what | value | unit | n | note |", "|---|---:|---|---:|---|"]
        for r in other:
            lines.append(f"| {r.what} | {_cell(r, 'value')} | {r.unit} | {r.n or '–'} | {_status_note(r)} |")
    return "\n".join(lines) + "\n"


def write_readme(path: Path, body: str) -> None:
    """Replace the generated block of README.md, keeping the text around it."""
    text = path.read_text() if path.exists() else f"# jailshell benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n## Results\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{body}{END}{tail}")
