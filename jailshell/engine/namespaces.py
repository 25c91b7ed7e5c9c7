"""The one table of namespace kinds.

Everything that names a namespace (the engine's unshare/setns, the raw
`unshare`/`nsenter` command shown to the learner, the docker flag, the state
table on screen) reads it from here, so the three can never disagree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from jailshell.engine import syscalls as sc


@dataclass(frozen=True)
class NamespaceKind:
    kind: str  # the name jailshell uses: `unshare uts`
    flag: int  # CLONE_NEW* for unshare(2)/setns(2)
    proc_name: str  # /proc/PID/ns/<proc_name>
    unshare_flag: str  # util-linux unshare(1) long option
    nsenter_flag: str  # util-linux nsenter(1) long option
    docker: str  # what docker does with it, as a flag a learner can type
    isolates: str  # one line: what a process in a new one of these gets its own of
    # unshare(2) moves the caller itself into the new namespace, except for pid
    # and time, where only children created afterwards are in it.
    children_only: bool = False


NAMESPACES: tuple[NamespaceKind, ...] = (
    NamespaceKind("uts", sc.CLONE_NEWUTS, "uts", "--uts", "--uts",
                  "--uts=host shares the host's; default: a new one",
                  "hostname and NIS domain name"),
    NamespaceKind("pid", sc.CLONE_NEWPID, "pid", "--pid", "--pid",
                  "--pid=host shares the host's; default: a new one",
                  "process IDs: the first process is PID 1, host processes are invisible",
                  children_only=True),
    NamespaceKind("mnt", sc.CLONE_NEWNS, "mnt", "--mount", "--mount",
                  "always a new one (no flag to share it)",
                  "the mount table: mounts made inside do not appear outside"),
    NamespaceKind("ipc", sc.CLONE_NEWIPC, "ipc", "--ipc", "--ipc",
                  "--ipc=host shares the host's; default: a new one",
                  "System V IPC objects and POSIX message queues"),
    NamespaceKind("net", sc.CLONE_NEWNET, "net", "--net", "--net",
                  "--network=host shares the host's; --network=none: a new, empty one",
                  "network devices, addresses, routes, firewall rules and ports"),
    NamespaceKind("user", sc.CLONE_NEWUSER, "user", "--user", "--user",
                  "--userns=host by default; a new one only with userns-remap",
                  "user and group IDs and capabilities: uid 0 inside maps to another uid outside"),
    NamespaceKind("cgroup", sc.CLONE_NEWCGROUP, "cgroup", "--cgroup", "--cgroup",
                  "--cgroupns=private (default on cgroup v2) or --cgroupns=host",
                  "the view of /proc/self/cgroup: the jail's cgroup looks like the root"),
)

BY_KIND = {ns.kind: ns for ns in NAMESPACES}
# Learners type the util-linux spellings too.
ALIASES = {"mount": "mnt", "network": "net", "hostname": "uts", "users": "user"}


def lookup(name: str) -> NamespaceKind:
    key = ALIASES.get(name, name)
    try:
        return BY_KIND[key]
    except KeyError:
        known = ", ".join(BY_KIND)
        from jailshell.errors import InvalidInput

        raise InvalidInput(f"unknown namespace kind '{name}'", hint=f"one of: {known}") from None


def ns_inode(pid: int | str, kind: NamespaceKind | str) -> int | None:
    """The inode number of /proc/PID/ns/KIND: equal inodes mean the same namespace."""
    ns = kind if isinstance(kind, NamespaceKind) else lookup(kind)
    try:
        return os.stat(f"/proc/{pid}/ns/{ns.proc_name}").st_ino
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def pid_for_children_inode(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/pid_for_children").st_ino
    except OSError:
        return None


def available() -> dict[str, bool]:
    """Which kinds this kernel supports (a kernel without CONFIG_X_NS lacks the file)."""
    return {ns.kind: os.path.exists(f"/proc/self/ns/{ns.proc_name}") for ns in NAMESPACES}
