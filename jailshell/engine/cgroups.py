"""Control groups for one jail: create, limit, join, read usage, remove.

A cgroup is a directory in a cgroup file system; its files are the
controllers' knobs and counters. Everything here is a mkdir, a write or a
read of such a file, so each action is also returned as the shell command a
learner can paste (`mkdir ...`, `echo 67108864 > .../memory.max`) and the
docker flag that asks for the same limit.

Where the directories go:
- v1 (and hybrid): one `jailshell/<id>` directory in every hierarchy that
  holds a controller we use (memory, pids, cpu, and cpuacct for cpu usage).
- v2: one `jailshell/<id>` in the unified tree. A v2 child only gets a
  controller its parent lists in cgroup.subtree_control, so the controllers are
  enabled at the root and in `jailshell`. The "no internal processes" rule
  (a cgroup that hands controllers to children cannot hold processes itself)
  is why processes only ever join the leaf, never `jailshell`.

Each directory is written to the journal before mkdir (see journal.py), so a
crash leaves nothing `jailshell cleanup` cannot find: undo_cgroup() kills what
runs inside and removes the tree bottom-up.

Use:
    cg = Cgroup.create(jail.id, jail.journal)      # cg.created: the mkdirs done
    shown = cg.set("memory=64M pids=20 cpu=0.5")   # shown.raw, shown.docker
    cg.join(jail.pid)                               # and jail.cgroup_procs = cg.procs_files()
    cg.stats()                                      # limits and counters, cheap to poll
    cg.remove()                                     # or journal undo / `jailshell cleanup`
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shlex
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from jailshell.engine.cgroup_layout import (
    CGROUP2_SUPER_MAGIC,
    CGROUP_SUPER_MAGIC,
    FILES,
    V1_EXTRA,
    WANTED,
    Hierarchy,
    Layout,
    detect,
    fs_magic,
)
from jailshell.engine.cgroup_limits import CPU_PERIOD_US, MEMORY_MAX, Limits, human_bytes, parse_limits
from jailshell.errors import InvalidInput, JailshellError, kernel_error

if TYPE_CHECKING:
    from jailshell.engine.journal import Entry, Journal

PARENT = "jailshell"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# How long removal waits for killed processes to leave and for rmdir to stop
# saying EBUSY (a cgroup stays busy for a moment after its last task exits).
REMOVE_TIMEOUT = 5.0

_DELEGATION_HINT = (
    "run jailshell with sudo. (On cgroup v2 root can delegate a subtree to a user — systemd-run --user "
    "-p Delegate=yes — but the user's own process sits in that subtree, and the no-internal-process rule "
    "then needs it moved first; jailshell's cgroup lessons use root.)"
)


@dataclass(frozen=True)
class Op:
    """One file-system action on the cgroup tree, as it was done."""

    kind: Literal["mkdir", "write", "rmdir"]
    path: str
    value: str = ""

    @property
    def raw(self) -> str:
        if self.kind == "write":
            return f"echo {shlex.quote(self.value)} > {self.path}"
        return f"{self.kind} {self.path}"


@dataclass(frozen=True)
class Applied:
    """What one call did: the actions, and the docker flags that ask for the same."""

    ops: tuple[Op, ...] = ()
    docker: tuple[str, ...] = ()

    @property
    def raw(self) -> list[str]:
        return [op.raw for op in self.ops]


Unlimited = Literal["max"]


@dataclass(frozen=True)
class Stats:
    """Limits and counters of one cgroup, read now. None: not available here
    (controller missing, or a kernel too old for that file); "max": no limit."""

    memory_current: int | None = None
    memory_max: int | Unlimited | None = None
    memory_peak: int | None = None
    oom_kill: int | None = None  # processes the OOM killer killed in this cgroup
    failcnt: int | None = None  # times usage hit the limit (v1 memory.failcnt; v2 memory.events "max")
    pids_current: int | None = None
    pids_max: int | Unlimited | None = None
    pids_denied: int | None = None  # fork/clone refused at pids.max (pids.events "max")
    cpu_usage_usec: int | None = None
    cpu_max: float | Unlimited | None = None  # in CPUs
    nr_periods: int | None = None
    nr_throttled: int | None = None
    throttled_usec: int | None = None
    sources: dict[str, str] = field(default_factory=dict)  # field -> file it came from

    def rows(self) -> list[tuple[str, str, str]]:
        """(label, value, source file) for display, only what is available."""

        def mem(v: int | str | None) -> str:
            return v if isinstance(v, str) else human_bytes(v) if v is not None else ""

        out = []
        table: list[tuple[str, str, Any]] = [
            ("memory used", "memory_current", mem(self.memory_current)),
            ("memory limit", "memory_max", mem(self.memory_max)),
            ("memory peak", "memory_peak", mem(self.memory_peak)),
            ("limit hits", "failcnt", self.failcnt),
            ("OOM kills", "oom_kill", self.oom_kill),
            ("tasks", "pids_current", self.pids_current),
            ("task limit", "pids_max", self.pids_max),
            ("forks refused", "pids_denied", self.pids_denied),
            ("cpu time", "cpu_usage_usec", f"{self.cpu_usage_usec / 1e6:.2f} s" if self.cpu_usage_usec is not None else None),
            ("cpu limit", "cpu_max", f"{self.cpu_max:g} CPUs" if isinstance(self.cpu_max, float) else self.cpu_max),
            ("periods", "nr_periods", self.nr_periods),
            ("throttled periods", "nr_throttled", self.nr_throttled),
            ("throttled time", "throttled_usec",
             f"{self.throttled_usec / 1e6:.2f} s" if self.throttled_usec is not None else None),
        ]
        for label, name, value in table:
            if getattr(self, name) is not None:
                out.append((label, str(value), self.sources.get(name, "")))
        return out


# --- small file helpers -----------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _read_keyed(path: Path) -> dict[str, int]:
    """Files of `key value` lines (memory.events, cpu.stat, memory.oom_control)."""
    out = {}
    for line in (_read(path) or "").splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            out[key] = int(value)
    return out


def _write(path: Path, value: str) -> None:
    # One write(2) per value: cgroup files act on each write, and a buffered
    # writer could split or merge them.
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _procs(path: Path) -> list[int]:
    text = _read(path / "cgroup.procs")
    return [int(p) for p in text.split()] if text else []


def _tree(path: Path) -> list[Path]:
    """path and every sub-cgroup below it, deepest first."""
    out = []
    for dirpath, _, _ in os.walk(path, topdown=False):
        out.append(Path(dirpath))
    return out


# --- removal, shared by Cgroup.remove, undo_cgroup and the leftovers scan -----------


def _is_jailshell_cgroup(path: Path) -> bool:
    """Only ever kill and remove inside a `jailshell` directory of a cgroup
    file system: a damaged journal must not point removal at the host's cgroups."""
    return (
        path.is_absolute()
        and ".." not in path.parts
        and path.parent.name == PARENT
        and bool(_NAME.match(path.name))
        and fs_magic(path.parent) in (CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC)
    )


def _kill_all(path: Path, deadline: float) -> None:
    """SIGKILL every process in path and below, until none is left."""
    if not path.is_dir():
        return
    me = os.getpid()
    kill_file = path / "cgroup.kill"
    if kill_file.exists():
        # v2 (5.14+): the kernel kills the whole subtree at once, racing no forks.
        with contextlib.suppress(OSError):
            _write(kill_file, "1")
    while True:
        pids = {p for d in _tree(path) for p in _procs(d)}
        if me in pids:
            raise JailshellError(f"jailshell itself is in {path}: not killing it",
                                 hint="move this process out first: echo $$ > /sys/fs/cgroup/.../cgroup.procs")
        if not pids:
            return
        if time.monotonic() > deadline:
            raise JailshellError(f"processes {sorted(pids)} in {path} did not die after SIGKILL",
                                 hint="a process stuck in the kernel (state D) cannot die; retry `jailshell cleanup`")
        # v1 has no cgroup.kill: kill what is listed and look again, because a
        # process may fork between the read and the kill (pids.max bounds it).
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)


def _rmdir(path: Path, deadline: float) -> bool:
    """rmdir, retrying while the kernel says EBUSY. False if it was not there."""
    while True:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise kernel_error(f"rmdir {path}", exc, hint="run `jailshell cleanup` again in a moment")
            time.sleep(0.01)


def _remove_tree(path: Path, timeout: float = REMOVE_TIMEOUT) -> list[Op]:
    deadline = time.monotonic() + timeout
    _kill_all(path, deadline)
    return [Op("rmdir", str(d)) for d in _tree(path) if _rmdir(d, deadline)]


def _remove_parent_if_empty(parent: Path) -> list[Op]:
    """The shared `jailshell` parent goes when its last jail does."""
    try:
        os.rmdir(parent)
        return [Op("rmdir", str(parent))]
    except OSError as exc:
        # Another jail still has a cgroup here (ENOTEMPTY, or EBUSY on some
        # kernels), or it is already gone.
        if exc.errno in (errno.ENOTEMPTY, errno.EBUSY, errno.EEXIST, errno.ENOENT):
            return []
        raise kernel_error(f"rmdir {parent}", exc)


def undo_cgroup(fields: dict[str, Any]) -> None:
    """Journal undo for kind "cgroup": kill what runs in it, remove it and its
    sub-cgroups bottom-up, then the `jailshell` parent if that is now empty."""
    path = Path(fields["path"])
    parent = Path(fields.get("parent") or path.parent)
    if not _is_jailshell_cgroup(path) or parent != path.parent:
        if not path.exists():
            return
        raise JailshellError(f"refusing to remove {path}: not a jailshell cgroup")
    _remove_tree(path)
    _remove_parent_if_empty(parent)


# --- the cgroup of one jail ---------------------------------------------------------


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise InvalidInput(f"{name!r} is not a usable cgroup name",
                           hint="letters, digits, '.', '_' and '-', up to 64, not starting with '.' or '-'")


def _where(layout: Layout, controller: str) -> str:
    if layout.mode == "v2" or (layout.v2 is not None and not layout.v1):
        return f"{layout.v2.mount if layout.v2 else layout.root}/cgroup.controllers does not list it"
    return "no cgroup v1 hierarchy has it mounted (see /proc/self/mountinfo) and cgroup v2 does not offer it"


def _needs_root(layout: Layout) -> JailshellError:
    return JailshellError(f"creating cgroups needs root ({layout.summary()})", hint=_DELEGATION_HINT)


class Cgroup:
    """The cgroup of one jail, `jailshell/<name>` in every hierarchy it needs."""

    def __init__(self, name: str, layout: Layout, journal: Journal):
        self.name = name
        self.layout = layout
        self.journal = journal
        self.dirs: dict[str, Path] = {}  # controller -> directory (v1: per hierarchy; v2: all the same)
        self.created: list[Op] = []  # what create() did, for the raw equivalent
        self._entries: dict[Path, Entry] = {}
        self._removed = False

    # -- life cycle --------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, journal: Journal | None = None, *, controllers: tuple[str, ...] = WANTED,
               layout: Layout | None = None) -> Cgroup:
        """Make `jailshell/<name>` for each of controllers (memory, pids, cpu).
        All requested controllers must be available, or nothing is created."""
        _check_name(name)
        layout = layout or detect()
        unknown = [c for c in controllers if c not in WANTED]
        if unknown:
            raise InvalidInput(f"unknown controller {unknown[0]!r}", hint=f"jailshell uses {', '.join(WANTED)}")
        if layout.mode == "none":
            raise JailshellError(f"no cgroup file system is mounted at {layout.root}",
                                 hint=f"mount -t cgroup2 none {layout.root}")
        for c in controllers:
            if layout.hierarchy(c) is None:
                raise JailshellError(f"the {c} controller is not available: {_where(layout, c)}",
                                     hint="a kernel built without it, or switched off with cgroup_disable= on the kernel command line")
        if os.geteuid() != 0:
            raise _needs_root(layout)
        if journal is None:
            from jailshell.engine.journal import Journal

            journal = Journal.for_owner(tag=f"cgroup-{name}")
        cg = cls(name, layout, journal)
        # Group controllers by hierarchy: co-mounted v1 controllers (cpu,cpuacct)
        # and all of v2 share one directory.
        groups: dict[Path, tuple[Hierarchy, list[str]]] = {}
        extra = [x for x in V1_EXTRA if "cpu" in controllers and layout.version_of("cpu") == 1]
        for c in [*controllers, *extra]:
            h = layout.hierarchy(c)
            if h is not None:
                groups.setdefault(h.mount, (h, []))[1].append(c)
        try:
            for h, ctrls in groups.values():
                path = cg._make(h, ctrls)
                for c in ctrls:
                    cg.dirs[c] = path
        except BaseException:
            with contextlib.suppress(JailshellError, OSError):
                cg.remove()
            raise
        return cg

    def _make(self, h: Hierarchy, ctrls: list[str]) -> Path:
        parent = h.mount / PARENT
        path = parent / self.name
        if path.exists():
            raise JailshellError(f"cgroup {path} already exists",
                                 hint="another jail has this name, or a crash left it: run `jailshell cleanup`")
        self._entries[path] = self.journal.record("cgroup", path=str(path), parent=str(parent), version=h.version)
        v2 = [c for c in ctrls if c not in V1_EXTRA] if h.version == 2 else []
        try:
            if v2:
                self._enable(h.mount, v2)
            # Another jail's removal may take the shared parent away between our
            # mkdirs: then make it again.
            for _ in range(5):
                if not parent.is_dir():
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(parent)
                        self.created.append(Op("mkdir", str(parent)))
                if v2:
                    self._enable(parent, v2)
                try:
                    os.mkdir(path)
                    break
                except FileNotFoundError:
                    continue
                except FileExistsError:
                    # Made by someone else since the check above: not ours to remove.
                    self.journal.release(self._entries.pop(path))
                    raise JailshellError(f"cgroup {path} already exists",
                                         hint="another jail has this name: pick another") from None
            else:
                raise OSError(errno.ENOENT, "the jailshell parent cgroup keeps disappearing", str(parent))
        except OSError as exc:
            raise kernel_error(f"creating cgroup {path}", exc, hint=_hint_for(exc, path.parent))
        self.created.append(Op("mkdir", str(path)))
        return path

    def _enable(self, where: Path, ctrls: list[str]) -> None:
        """Let children of `where` use ctrls (v2 cgroup.subtree_control).
        Left enabled afterwards, as systemd and docker do: turning a controller
        off again fails while any other cgroup below uses it."""
        have = (_read(where / "cgroup.subtree_control") or "").split()
        need = [c for c in ctrls if c not in have]
        if not need:
            return
        value = " ".join(f"+{c}" for c in need)
        try:
            _write(where / "cgroup.subtree_control", value)
        except OSError as exc:
            raise kernel_error(f"enabling {' '.join(need)} in {where}/cgroup.subtree_control", exc,
                               hint=_hint_for(exc, where))
        self.created.append(Op("write", str(where / "cgroup.subtree_control"), value))

    def remove(self) -> Applied:
        """Kill what runs in the cgroup, remove it (sub-cgroups first) and the
        `jailshell` parent if no other jail uses it. Safe to call twice."""
        ops: list[Op] = []
        errors: list[str] = []
        for path, entry in list(self._entries.items()):
            try:
                ops += _remove_tree(path)
                ops += _remove_parent_if_empty(path.parent)
                self.journal.release(entry)
                del self._entries[path]
            except JailshellError as exc:
                errors.append(str(exc))
        self._removed = not self._entries
        if errors:
            raise JailshellError("; ".join(errors), hint="run `jailshell cleanup`")
        return Applied(tuple(ops))

    def __enter__(self) -> Cgroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # -- what it is ----------------------------------------------------------------------

    @property
    def paths(self) -> list[Path]:
        """One directory per hierarchy."""
        return list(dict.fromkeys(self.dirs.values()))

    @property
    def controllers(self) -> list[str]:
        return [c for c in WANTED if c in self.dirs]

    def procs_files(self) -> list[str]:
        """The cgroup.procs files a process writes its PID to, to join."""
        return [str(p / "cgroup.procs") for p in self.paths]

    def pids(self) -> list[int]:
        """Processes in the cgroup (and its sub-cgroups)."""
        return sorted({pid for p in self.paths for d in _tree(p) for pid in _procs(d)})

    def _version(self, controller: str) -> int:
        return self.layout.version_of(controller) or 2

    def _file(self, key: str) -> Path:
        ctrl = key.split(".", 1)[0]
        return self.dirs[ctrl] / FILES[self._version(ctrl)][key]

    # -- acting --------------------------------------------------------------------------

    def join(self, pid: int) -> Applied:
        """Move process pid (all its threads) into this cgroup, in every hierarchy."""
        if self._removed:
            raise JailshellError(f"cgroup {self.name} was removed")
        ops = []
        for f in self.procs_files():
            try:
                _write(Path(f), str(pid))
            except OSError as exc:
                hint = "that process does not exist (any more)" if exc.errno == errno.ESRCH else None
                raise kernel_error(f"echo {pid} > {f}", exc, hint=hint)
            ops.append(Op("write", f, str(pid)))
        return Applied(tuple(ops))

    def kill(self) -> None:
        """SIGKILL every process in the cgroup."""
        deadline = time.monotonic() + REMOVE_TIMEOUT
        for p in self.paths:
            _kill_all(p, deadline)

    def set(self, spec: str | dict[str, Any]) -> Applied:
        """`memory=64M pids=20 cpu=0.5` -> checked, then written (see set_limits)."""
        return self.set_limits(parse_limits(spec))

    def set_limits(self, limits: Limits) -> Applied:
        """Write limits. Everything is checked first; if the kernel refuses one
        write, the ones before it are put back, so a failed call changes nothing."""
        if self._removed:
            raise JailshellError(f"cgroup {self.name} was removed")
        for c in limits.controllers():
            if c not in self.dirs:
                reason = "this cgroup was created without it" if self.layout.hierarchy(c) else _where(self.layout, c)
                raise InvalidInput(f"cannot limit {c}: the {c} controller is not available ({reason})",
                                   hint="`jailshell doctor` shows which controllers this machine has")
        plan = self._plan(limits)
        before = [(path, _read(path)) for path, _ in plan]
        done = 0
        try:
            for path, value in plan:
                _write(path, value)
                done += 1
        except OSError as exc:
            for path, old in reversed(before[:done]):
                if old is not None:
                    with contextlib.suppress(OSError):
                        _write(path, old)
            failed = plan[done][0]
            hint = None
            if exc.errno == errno.EBUSY and "memory" in failed.name:
                hint = "the processes in the cgroup already use more memory than that (see memory usage)"
            raise kernel_error(f"echo {plan[done][1]} > {failed}", exc, hint=hint)
        return Applied(tuple(Op("write", str(p), v) for p, v in plan), tuple(limits.docker_flags()))

    def _plan(self, limits: Limits) -> list[tuple[Path, str]]:
        """The (file, value) writes for limits, in the order the kernel accepts them.
        Memory goes last: it is the write the kernel refuses most (EBUSY when
        the processes already use more), and what came before is then undone."""
        plan: list[tuple[Path, str]] = []
        if limits.pids is not None:
            plan.append((self._file("pids.limit"), str(limits.pids)))
        if limits.cpus is not None:
            quota = round(limits.cpus * CPU_PERIOD_US)
            if self._version("cpu") == 2:
                plan.append((self._file("cpu.limit"), f"{quota} {CPU_PERIOD_US}"))
            else:
                plan.append((self._file("cpu.period"), str(CPU_PERIOD_US)))
                plan.append((self._file("cpu.limit"), str(quota)))
        if limits.memory is not None:
            m = limits.memory
            limit, swap = self._file("memory.limit"), self._file("memory.swap")
            if self._version("memory") == 2:
                # docker's --memory M alone allows M of swap on top (--memory-swap
                # defaults to twice --memory); memory.swap.max counts swap only.
                plan.append((limit, str(m)))
                if swap.exists():
                    plan.append((swap, str(m)))
            elif swap.exists():
                # v1 memsw counts memory + swap and must never be below the
                # memory limit: raise memsw first when raising, lower it last.
                current = _read_int(limit) or 0
                pair = [(limit, str(m)), (swap, str(2 * m))]
                plan += pair[::-1] if m > current else pair
            else:
                plan.append((limit, str(m)))
        return plan

    # -- reading -------------------------------------------------------------------------

    def stats(self) -> Stats:
        """Current limits and counters: a handful of small reads, cheap enough
        to call several times a second for a live display."""
        v: dict[str, Any] = {}
        src: dict[str, str] = {}

        def put(name: str, value: Any, path: Path) -> None:
            if value is not None:
                v[name] = value
                src[name] = str(path)

        if "memory" in self.dirs:
            ver = self._version("memory")
            put("memory_current", _read_int(self._file("memory.current")), self._file("memory.current"))
            lim = _read(self._file("memory.limit"))
            if lim is not None:
                put("memory_max", "max" if lim == "max" or int(lim) >= MEMORY_MAX else int(lim), self._file("memory.limit"))
            put("memory_peak", _read_int(self._file("memory.peak")), self._file("memory.peak"))
            events = _read_keyed(self._file("memory.events"))
            put("oom_kill", events.get("oom_kill"), self._file("memory.events"))
            if ver == 1:
                put("failcnt", _read_int(self._file("memory.failcnt")), self._file("memory.failcnt"))
            else:
                put("failcnt", events.get("max"), self._file("memory.events"))
        if "pids" in self.dirs:
            put("pids_current", _read_int(self._file("pids.current")), self._file("pids.current"))
            lim = _read(self._file("pids.limit"))
            if lim is not None:
                put("pids_max", "max" if lim == "max" else int(lim), self._file("pids.limit"))
            put("pids_denied", _read_keyed(self._file("pids.events")).get("max"), self._file("pids.events"))
        if "cpu" in self.dirs:
            stat_file = self._file("cpu.stat")
            stat = _read_keyed(stat_file)
            if self._version("cpu") == 2:
                put("cpu_usage_usec", stat.get("usage_usec"), stat_file)
                quota, _, period = (_read(self._file("cpu.limit")) or "").partition(" ")
                if quota:
                    put("cpu_max", "max" if quota == "max" else int(quota) / int(period), self._file("cpu.limit"))
                put("throttled_usec", stat.get("throttled_usec"), stat_file)
            else:
                if "cpuacct" in self.dirs:
                    usage_file = self.dirs["cpuacct"] / FILES[1]["cpu.usage"]
                    ns = _read_int(usage_file)
                    put("cpu_usage_usec", ns // 1000 if ns is not None else None, usage_file)
                quota_us = _read_int(self._file("cpu.limit"))
                period_us = _read_int(self._file("cpu.period"))
                if quota_us is not None and period_us:
                    put("cpu_max", "max" if quota_us < 0 else quota_us / period_us, self._file("cpu.limit"))
                ns = stat.get("throttled_time")
                put("throttled_usec", ns // 1000 if ns is not None else None, stat_file)
            put("nr_periods", stat.get("nr_periods"), stat_file)
            put("nr_throttled", stat.get("nr_throttled"), stat_file)
        return Stats(**v, sources=src)


def _hint_for(exc: OSError, where: Path) -> str | None:
    if exc.errno == errno.EBUSY:
        return (f"processes live in {where}: on cgroup v2 a cgroup either holds processes or passes "
                "controllers to its children, not both (the no-internal-process rule)")
    if exc.errno in (errno.EPERM, errno.EACCES, errno.EROFS):
        return _DELEGATION_HINT
    return None


# --- for `jailshell doctor` and `jailshell cleanup` ---------------------------------


def describe_host() -> tuple[bool, str, str]:
    """(usable, what is where, how to fix) for the doctor."""
    layout = detect()
    missing = layout.missing()
    if layout.mode == "none":
        return False, layout.summary(), f"mount -t cgroup2 none {layout.root}"
    if missing:
        return False, layout.summary(), (
            f"{', '.join(missing)} missing: a kernel with CONFIG_MEMCG, CONFIG_CGROUP_PIDS and "
            "CONFIG_CGROUP_SCHED, without cgroup_disable= on its command line")
    if os.geteuid() != 0:
        return False, layout.summary() + "; creating cgroups needs root", _DELEGATION_HINT
    return True, layout.summary(), ""


def _journaled_paths() -> set[str]:
    """cgroup directories that a running jailshell's journal still holds."""
    from jailshell.engine import journal as jmod

    live: set[str] = set()
    for path in jmod.journals():
        pid, start = jmod.owner_of(path)
        if jmod.process_alive(pid, start):
            live |= {e.fields["path"] for e in jmod.Journal.load(path).pending() if e.kind == "cgroup"}
    return live


def find_leftovers(layout: Layout | None = None) -> list[Path]:
    """jailshell cgroups in no running jailshell's journal (a journal deleted,
    a crash on another run directory), and an empty `jailshell` parent."""
    layout = layout or detect()
    live = _journaled_paths()
    out: list[Path] = []
    hierarchies = [*layout.v1, *([layout.v2] if layout.v2 else [])]
    for h in hierarchies:
        parent = h.mount / PARENT
        if not parent.is_dir():
            continue
        children = [d for d in sorted(parent.iterdir()) if d.is_dir()]
        out += [d for d in children if str(d) not in live]
        if not children:
            out.append(parent)
    return out


def remove_leftover(path: Path) -> None:
    if path.name == PARENT:
        _remove_parent_if_empty(path)
    else:
        undo_cgroup({"path": str(path), "parent": str(path.parent)})
