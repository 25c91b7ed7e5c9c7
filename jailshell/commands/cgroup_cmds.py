"""`cgroup`: the jail's control group — what it may use, and what it uses.

Namespaces decide what a process can *see*; a cgroup decides how much it may
*use*. Typed at the prompt or run by a lesson step:

    cgroup                              limits and usage now, with the file each number comes from
    cgroup create                       give the jail a cgroup of its own: counted, not limited
    cgroup memory=64M pids=20 cpu=0.5   set limits (any of the three; the cgroup is made if needed)
    cgroup files                        which file is which knob on cgroup v1 and on v2, and docker's flag

Limits use docker's units and bounds (jailshell.engine.cgroup_limits), so the
docker command shown (`docker update --memory 64m --pids-limit 20 --cpus 0.5`)
is one docker accepts and means the same. The raw commands are the mkdir and
echo-into-a-file that jailshell.engine.cgroups did, on this machine's cgroup
version, and next to them the same on the other version: v1 (one directory
per controller: memory.limit_in_bytes, cpu.cfs_quota_us) and v2 (one tree:
memory.max, cpu.max).

The cgroup is `jailshell/<jail id>` in every hierarchy, journalled before it
is made, so it goes when the jail does (or with `jailshell cleanup`). Only the
jail's processes join it, as with runc: its PID 1 and what runs below it, and
every later `exec` or `shell` (jail.cgroup_procs).
"""

from __future__ import annotations

import contextlib
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jailshell.commands.registry import Arg, Args, Command
from jailshell.commands.results import CgroupFiles, CgroupView, Message, Results, StateView, StepReport
from jailshell.errors import InvalidInput, JailshellError

if TYPE_CHECKING:
    from jailshell.commands.workspace import Workspace
    from jailshell.engine.cgroup_limits import Limits
    from jailshell.engine.cgroups import Applied, Cgroup
    from jailshell.engine.jail import Jail

WORDS = ("create", "join", "files", "show")
KEYS = ("memory=", "pids=", "cpu=")
USAGE_HINT = "cgroup [show], cgroup create (or join), cgroup files, or limits: cgroup [set] memory=64M pids=20 cpu=0.5"
# Where a v2 machine mounts its one tree, and a v1 machine its hierarchies: for
# the "same on the other version" lines, which cannot be read off this machine.
V2_ROOT = "/sys/fs/cgroup"
V1_DIRS = {"memory": "/sys/fs/cgroup/memory", "pids": "/sys/fs/cgroup/pids", "cpu": "/sys/fs/cgroup/cpu,cpuacct"}


def _limits(words: list[str]) -> Limits:
    from jailshell.engine.cgroup_limits import parse_limits

    bad = [w for w in words if "=" not in w]
    if bad:
        raise InvalidInput(f"'cgroup': unknown word '{bad[0]}'", hint=USAGE_HINT)
    return parse_limits(" ".join(words))


def validate(args: Args) -> None:
    """What the lesson loader checks: the words, and every limit's value."""
    words = _words(args)
    if words and words[0] in WORDS:
        if len(words) > 1:
            raise InvalidInput(f"'cgroup {words[0]}' takes nothing more", hint=USAGE_HINT)
        return
    if words:
        try:
            _limits(words)
        except InvalidInput as exc:
            # How many CPUs the machine running the lesson has is for then, not for lint.
            if "this machine has only" not in exc.message:
                raise


def _words(args: Args) -> list[str]:
    """The words after `cgroup`; `set` before limits is optional (`cgroup set memory=64M`)."""
    words = list(args.get("what") or [])
    if words[:1] == ["set"]:
        if len(words) == 1:
            raise InvalidInput("'cgroup set' needs limits, e.g. cgroup set memory=64M pids=20", hint=USAGE_HINT)
        return words[1:]
    return words


def cmd_cgroup(ws: Workspace, args: Args) -> Any:
    words = _words(args)
    if not words or words == ["show"]:
        return show(ws)
    if words == ["files"]:
        return files()
    if words in (["create"], ["join"]):
        # One step, as runc does it: make the jail's own cgroup, then move the jail into it.
        return _step(ws, "cgroup create", None)
    validate(args)
    return _step(ws, "cgroup " + " ".join(words), _limits(words))


# -- looking ------------------------------------------------------------------------------


def view(jail: Jail, *, before: dict[str, str] | None = None,
         other: tuple[str, list[str]] | None = None) -> CgroupView:
    """The jail's cgroup as it is now (the jail must have one)."""
    from jailshell.engine.cgroups import PARENT

    cg: Cgroup = jail.cgroup
    return CgroupView(f"{PARENT}/{cg.name}", cg.layout.summary(), cg.stats().rows(), [str(p) for p in cg.paths],
                      before, other, "docker stats --no-stream CONTAINER    # usage; the limits: docker inspect CONTAINER")


def show(ws: Workspace) -> Any:
    from jailshell.engine import inspect
    from jailshell.engine.cgroup_layout import detect

    jail, _ = ws.session.ensure()
    if jail.cgroup is not None:
        return view(jail)
    return Results([
        Message("The jail has no cgroup of its own yet: what it uses is counted in the cgroup jailshell runs in, "
                f"and nothing limits it. This machine: {detect().summary()}.",
                hint="`cgroup create` gives it one; `cgroup memory=64M pids=20 cpu=0.5` also sets limits; "
                     "`cgroup files` shows which file is which"),
        StateView(inspect.snapshot(jail), ("cgroup",), "the jail's cgroup"),
    ])


def files() -> CgroupFiles:
    from jailshell.engine.cgroup_layout import FILES, detect

    v1, v2 = FILES[1], FILES[2]
    rows = [
        ("memory limit", v1["memory.limit"], v2["memory.limit"], "--memory"),
        ("memory+swap", v1["memory.swap"], v2["memory.swap"], "--memory-swap"),
        ("memory used", v1["memory.current"], v2["memory.current"], "stats"),
        ("memory peak", v1["memory.peak"], v2["memory.peak"], ""),
        ("OOM kills", v1["memory.events"], v2["memory.events"], "inspect"),
        ("task limit", v1["pids.limit"], v2["pids.limit"], "--pids-limit"),
        ("tasks", v1["pids.current"], v2["pids.current"], "stats"),
        ("cpu limit", v1["cpu.limit"], v2["cpu.limit"], "--cpus"),
        ("cpu period", v1["cpu.period"], f"{v2['cpu.period']} (2nd)", ""),
        ("cpu time", v1["cpu.usage"], v2["cpu.stat"], "stats"),
        ("throttling", v1["cpu.stat"], v2["cpu.stat"], ""),
        ("members", f"{v1['procs']} (each)", v2["procs"], ""),
        ("where", "/sys/fs/cgroup/CTRL/...", "/sys/fs/cgroup/...", ""),
    ]
    layout = detect()
    return CgroupFiles(rows, layout.usable(), layout.summary())


# -- acting -------------------------------------------------------------------------------


def _jail_processes(pid: int) -> list[int]:
    """pid and every process below it, parents first: what is in the jail."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        out.append(p)
        try:
            tasks = Path(f"/proc/{p}/task").iterdir()
            for task in tasks:
                with contextlib.suppress(OSError, ValueError):
                    todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return list(dict.fromkeys(out))


def _create(jail: Jail) -> tuple[Cgroup, list[int]]:
    """The jail's own cgroup, with the jail's processes in it."""
    from jailshell.engine.cgroup_layout import WANTED, detect
    from jailshell.engine.cgroups import Cgroup

    layout = detect()
    controllers = tuple(c for c in WANTED if layout.hierarchy(c) is not None)
    if not controllers:
        raise JailshellError(f"none of the controllers jailshell uses (memory, pids, cpu) is available here "
                             f"({layout.summary()})", hint="`jailshell doctor` says what is missing")
    cg = Cgroup.create(jail.id, jail.journal, controllers=controllers, layout=layout)
    moved: list[int] = []
    try:
        for pid in _jail_processes(jail.pid):
            try:
                cg.join(pid)
                moved.append(pid)
            except JailshellError:
                if pid == jail.pid:
                    raise  # a process below it that just ended is no matter; the jail itself is
    except BaseException:
        with contextlib.suppress(JailshellError, OSError):
            cg.remove()
        raise
    return cg, moved


def _step(ws: Workspace, line: str, limits: Limits | None) -> StepReport:
    from jailshell.commands.jail_cmds import perform

    jail, _ = ws.session.ensure()
    created = jail.cgroup is None
    before = None if created or ws.replaying else {label: value for label, value, _ in jail.cgroup.stats().rows()}
    revert, why_not = _revert(jail, limits) if not created else (
        None, "jailshell does not move a jail back out of its cgroup")
    done: dict[str, Any] = {}

    def act(j: Jail) -> None:
        applied: Applied | None = None
        if j.cgroup is None:
            cg, moved = _create(j)
            try:
                applied = cg.set_limits(limits) if limits is not None else None
            except BaseException:
                with contextlib.suppress(JailshellError, OSError):
                    cg.remove()
                raise
            j.cgroup = cg
            j.cgroup_procs = cg.procs_files()
            done["moved"] = moved
        else:
            assert limits is not None
            applied = j.cgroup.set_limits(limits)
        done["applied"] = applied

    params = {"limits": " ".join(f"{k}={v}" for k, v in _spec(limits).items()), "created": created}
    report = perform(ws, line, "cgroup", params, act, shows=("cgroup",) if created else (), revert=revert,
                     why_not=why_not)
    cg: Cgroup = jail.cgroup
    ws.session.done[-1].params["name"] = cg.name
    eq = _equivalents(jail, cg, limits, created, done.get("applied"))
    report.equivalents = eq
    ws.session.done[-1].equivalents = eq
    if ws.replaying:
        return report
    others = [p for p in done.get("moved", []) if p != jail.pid]
    if others:
        report.notes.append(f"{len(others)} other process{'es' if len(others) > 1 else ''} already in the jail "
                            f"moved with it (PID {', '.join(map(str, others))}); every later `exec` or `shell` "
                            "starts in it.")
    if created and "cgroup" in jail.state.unshared:
        report.notes.append("The jail unshared its cgroup namespace before joining this cgroup, so inside it the "
                            "cgroup is a path above its own root (/..). runc joins first and unshares after, so a "
                            "container sees itself at /.")
    report.cgroup = view(jail, before=before, other=_other_version(cg, jail.pid, limits, created))
    return report


def _spec(limits: Limits | None) -> dict[str, str]:
    from jailshell.engine.cgroup_limits import format_cpus, format_size

    if limits is None:
        return {}
    out = {}
    if limits.memory is not None:
        out["memory"] = format_size(limits.memory)
    if limits.pids is not None:
        out["pids"] = str(limits.pids)
    if limits.cpus is not None:
        out["cpu"] = format_cpus(limits.cpus)
    return out


def _revert(jail: Jail, limits: Limits | None) -> tuple[str | None, str]:
    """The `cgroup ...` line that puts the limits this step changes back, if
    jailshell can say it: it sets limits, it does not lift a memory or cpu limit."""
    from jailshell.engine.cgroup_limits import MEMORY_MIN, format_cpus, format_size

    st = jail.cgroup.stats()
    words = []
    why = "the limit was 'none' before, and `cgroup` sets memory and cpu limits but does not lift them"
    if limits is None:
        return None, "nothing was changed"
    if limits.memory is not None:
        if not isinstance(st.memory_max, int) or st.memory_max < MEMORY_MIN:
            return None, why
        words.append(f"memory={format_size(st.memory_max)}")
    if limits.pids is not None:
        if st.pids_max is None:
            return None, why
        words.append(f"pids={st.pids_max}")
    if limits.cpus is not None:
        if not isinstance(st.cpu_max, float):
            return None, why
        words.append(f"cpu={format_cpus(st.cpu_max)}")
    return "cgroup " + " ".join(words), ""


def _equivalents(jail: Jail, cg: Cgroup, limits: Limits | None, created: bool, applied: Applied | None) -> Any:
    from jailshell.engine.equivalents import Equivalents

    raw: list[str] = []
    if created:
        # mkdir -p: pasted where the directories already exist, it still does the rest.
        raw += [f"mkdir -p {op.path}" if op.kind == "mkdir" else op.raw for op in cg.created]
    if applied is not None:
        raw += applied.raw
    if created:
        raw += [f"echo {jail.pid} > {f}" for f in cg.procs_files()]
    flags = " ".join(limits.docker_flags()) if limits is not None else ""
    if flags:
        docker = f"docker update {flags} CONTAINER    # from the start: docker run {flags} busybox sh"
    else:
        docker = "docker run busybox sh    # every container gets a cgroup of its own: counted, not limited"
    note = ("a cgroup is a directory; its files are the limits and the counters; a process is in it once its PID "
            "is written to cgroup.procs, and its children are born in it")
    return Equivalents(docker=docker, raw=raw, where="host", note=note)


def _other_version(cg: Cgroup, pid: int, limits: Limits | None, created: bool) -> tuple[str, list[str]] | None:
    """The same step on the cgroup version this machine does not use for memory:
    v1's per-controller directories, or v2's single tree."""
    from jailshell.engine.cgroup_limits import CPU_PERIOD_US
    from jailshell.engine.cgroups import PARENT

    here = cg.layout.version_of("memory") or cg.layout.version_of("pids") or 2
    ctrls = cg.controllers
    lines: list[str] = []
    if here == 1:
        base = f"{V2_ROOT}/{PARENT}/{cg.name}"
        enable = shlex.quote(" ".join(f"+{c}" for c in ctrls))
        if created:
            lines += [f"echo {enable} > {V2_ROOT}/cgroup.subtree_control", f"mkdir -p {V2_ROOT}/{PARENT}",
                      f"echo {enable} > {V2_ROOT}/{PARENT}/cgroup.subtree_control", f"mkdir -p {base}"]
        if limits is not None and limits.pids is not None:
            lines.append(f"echo {limits.pids} > {base}/pids.max")
        if limits is not None and limits.cpus is not None:
            lines.append(f"echo '{round(limits.cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}' > {base}/cpu.max")
        if limits is not None and limits.memory is not None:
            lines += [f"echo {limits.memory} > {base}/memory.max",
                      f"echo {limits.memory} > {base}/memory.swap.max    # swap on top, as docker allows"]
        if created:
            lines.append(f"echo {pid} > {base}/cgroup.procs")
        return "cgroup v2", lines
    dirs = {c: f"{V1_DIRS[c]}/{PARENT}/{cg.name}" for c in ctrls}
    if created:
        lines.append("mkdir -p " + " ".join(dirs.values()))
    if limits is not None and limits.pids is not None and "pids" in dirs:
        lines.append(f"echo {limits.pids} > {dirs['pids']}/pids.max")
    if limits is not None and limits.cpus is not None and "cpu" in dirs:
        lines += [f"echo {CPU_PERIOD_US} > {dirs['cpu']}/cpu.cfs_period_us",
                  f"echo {round(limits.cpus * CPU_PERIOD_US)} > {dirs['cpu']}/cpu.cfs_quota_us"]
    if limits is not None and limits.memory is not None and "memory" in dirs:
        lines += [f"echo {limits.memory} > {dirs['memory']}/memory.limit_in_bytes",
                  f"echo {2 * limits.memory} > {dirs['memory']}/memory.memsw.limit_in_bytes    # memory + swap"]
    if created:
        lines += [f"echo {pid} > {d}/cgroup.procs" for d in dirs.values()]
    return "cgroup v1", lines


def commands() -> list[Command]:
    def choices(ws: Workspace) -> tuple[str, ...]:
        return (*WORDS, "set", *KEYS)

    return [
        Command("cgroup", cmd_cgroup,
                "the jail's cgroup: limits and usage; `cgroup create`; `cgroup memory=64M pids=20 cpu=0.5` sets "
                "limits (docker's --memory, --pids-limit, --cpus); `cgroup files`: v1 vs v2 files",
                (Arg("what", "create, files, or limits: memory=SIZE (64M, 1g) pids=N|max cpu=CPUS (0.5)",
                     choices, optional=True, rest=True),),
                ("cgroups",), validate=validate),
    ]
