"""Snapshots of live kernel state, host and jail side by side, and their diff.

Everything is read from the host through /proc/PID (namespace inodes,
mountinfo, uid_map, cgroup, net/dev), plus what only the jail itself can
answer (its hostname, whether its interfaces are up), asked of the holder.
No process is started to take a snapshot: it has to be cheap enough to take
before and after every step.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jailshell.engine.namespaces import NAMESPACES, ns_inode

if TYPE_CHECKING:
    from jailshell.engine.jail import Jail


@dataclass(frozen=True)
class NsRow:
    kind: str
    host: int | None
    jail: int | None

    @property
    def isolated(self) -> bool:
        return self.host != self.jail


@dataclass(frozen=True)
class ProcRow:
    host_pid: int
    jail_pid: int | None  # its PID as the jail sees it (None: the jail cannot see it)
    command: str


@dataclass(frozen=True)
class MountRow:
    target: str
    fstype: str
    source: str
    options: str
    propagation: str  # "shared:N", "master:N" or "private"


@dataclass
class Snapshot:
    pid: int
    namespaces: list[NsRow] = field(default_factory=list)
    hostname: dict[str, str] = field(default_factory=dict)  # host/jail
    processes: list[ProcRow] = field(default_factory=list)  # processes in the jail's PID namespace
    host_process_count: int = 0
    mounts: list[MountRow] = field(default_factory=list)  # the jail's mount table as it sees it
    root: str = ""
    root_mode: str = "host"
    uid_map: str = ""
    gid_map: str = ""
    cgroup: list[str] = field(default_factory=list)
    interfaces: dict[str, list[tuple[str, bool]]] = field(default_factory=dict)  # host/jail

    def sections(self) -> dict[str, dict[str, Any]]:
        """Flat key -> value views, what diff() compares and the UI lists."""
        return {
            "namespaces": {r.kind: (r.host, r.jail) for r in self.namespaces},
            "hostname": dict(self.hostname),
            "processes": {str(p.jail_pid if p.jail_pid is not None else f"host:{p.host_pid}"): p.command
                          for p in self.processes},
            "mounts": {m.target: f"{m.fstype} {m.options} {m.propagation}" for m in self.mounts},
            "root": {"root": self.root, "mode": self.root_mode},
            "user": {"uid_map": self.uid_map, "gid_map": self.gid_map},
            "cgroup": {line.split(":", 2)[1] or "v2": line.split(":", 2)[2] for line in self.cgroup if line.count(":") >= 2},
            "interfaces": {f"{side}:{name}": ("up" if up else "down")
                           for side, rows in self.interfaces.items() for name, up in rows},
        }


@dataclass(frozen=True)
class Change:
    section: str
    key: str
    before: Any
    after: Any


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return ""


def _nspid(pid: int | str) -> list[int]:
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    return []


def _cmdline(pid: int | str) -> str:
    raw = _read(f"/proc/{pid}/cmdline").replace("\0", " ").strip()
    return raw or f"[{_read(f'/proc/{pid}/comm').strip()}]"


def processes_in_pidns(pid: int) -> tuple[list[ProcRow], int]:
    """Processes that share PID's PID namespace, with their PID inside it."""
    target = ns_inode(pid, "pid")
    rows, total = [], 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        total += 1
        if ns_inode(entry, "pid") != target:
            continue
        ids = _nspid(entry)
        rows.append(ProcRow(int(entry), ids[-1] if ids else None, _cmdline(entry)[:120]))
    rows.sort(key=lambda r: (r.jail_pid or 0, r.host_pid))
    return rows, total


def mounts_of(pid: int) -> list[MountRow]:
    rows = []
    for line in _read(f"/proc/{pid}/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        f, r = left.split(), right.split()
        optional = [x for x in f[6:] if ":" in x]
        rows.append(MountRow(f[4], r[0], r[1] if len(r) > 1 else "", f[5],
                             " ".join(optional) if optional else "private"))
    return rows


def _host_interfaces() -> list[tuple[str, bool]]:
    out = []
    for name in sorted(os.listdir("/sys/class/net")):
        flags = _read(f"/sys/class/net/{name}/flags").strip()
        out.append((name, bool(int(flags, 16) & 1) if flags else False))
    return out


def snapshot(jail: Jail) -> Snapshot:
    pid = jail.pid
    me = os.getpid()
    snap = Snapshot(pid=pid)
    snap.namespaces = [NsRow(ns.kind, ns_inode(me, ns), ns_inode(pid, ns)) for ns in NAMESPACES]
    info = jail.info() if jail.alive else {}
    snap.hostname = {"host": socket.gethostname(), "jail": info.get("hostname", "")}
    snap.processes, snap.host_process_count = processes_in_pidns(pid)
    snap.mounts = mounts_of(pid)
    try:
        snap.root = os.readlink(f"/proc/{pid}/root")
    except OSError:
        snap.root = ""
    snap.root_mode = jail.state.root_mode
    snap.uid_map = " ".join(_read(f"/proc/{pid}/uid_map").split())
    snap.gid_map = " ".join(_read(f"/proc/{pid}/gid_map").split())
    snap.cgroup = _read(f"/proc/{pid}/cgroup").splitlines()
    snap.interfaces = {"host": _host_interfaces(), "jail": [tuple(x) for x in info.get("interfaces", [])]}
    return snap


def diff(before: Snapshot, after: Snapshot) -> list[Change]:
    changes = []
    b_sections, a_sections = before.sections(), after.sections()
    for section, a_rows in a_sections.items():
        b_rows = b_sections.get(section, {})
        for key in list(b_rows) + [k for k in a_rows if k not in b_rows]:
            old, new = b_rows.get(key), a_rows.get(key)
            if old != new:
                changes.append(Change(section, key, old, new))
    return changes
