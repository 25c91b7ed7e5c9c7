"""Which cgroup version this machine runs, and which controller lives where.

Three layouts exist in the wild:

- v2 ("unified"): /sys/fs/cgroup is one cgroup2 file system; every controller
  is in it. Debian 11+, Ubuntu 21.10+, Fedora 31+.
- v1 ("legacy"): /sys/fs/cgroup is a tmpfs holding one cgroup (v1) mount per
  hierarchy, e.g. /sys/fs/cgroup/memory, /sys/fs/cgroup/cpu,cpuacct.
- hybrid: like v1, plus a cgroup2 mount (usually /sys/fs/cgroup/unified) that
  holds the controllers no v1 hierarchy took, often none.

A controller is attached to exactly one hierarchy at a time, so in a hybrid
the question is per controller: memory may be on v1 while hugetlb is on v2.
The kernel answers "what is mounted at this path" with statfs(2)'s f_type,
the same test systemd and runc use; /proc/self/mountinfo says which v1
controllers each mount carries, and a v2 root's cgroup.controllers says which
controllers it offers.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

# <linux/magic.h>
CGROUP2_SUPER_MAGIC = 0x63677270
CGROUP_SUPER_MAGIC = 0x0027E0EB
TMPFS_MAGIC = 0x01021994

DEFAULT_ROOT = Path("/sys/fs/cgroup")

# The controllers jailshell limits, and cpuacct, which on v1 holds the cpu
# usage counter (v2 reports usage in the cpu controller's cpu.stat).
WANTED = ("memory", "pids", "cpu")
V1_EXTRA = ("cpuacct",)

# File names per version, under one key each, so a lesson or the doctor can
# show the right name for this machine ("memory.max" vs "memory.limit_in_bytes").
FILES: dict[int, dict[str, str]] = {
    1: {
        "memory.limit": "memory.limit_in_bytes",
        "memory.swap": "memory.memsw.limit_in_bytes",
        "memory.current": "memory.usage_in_bytes",
        "memory.peak": "memory.max_usage_in_bytes",
        "memory.events": "memory.oom_control",
        "memory.failcnt": "memory.failcnt",
        "pids.limit": "pids.max",
        "pids.current": "pids.current",
        "pids.events": "pids.events",
        "cpu.limit": "cpu.cfs_quota_us",
        "cpu.period": "cpu.cfs_period_us",
        "cpu.stat": "cpu.stat",
        "cpu.usage": "cpuacct.usage",
        "procs": "cgroup.procs",
    },
    2: {
        "memory.limit": "memory.max",
        "memory.swap": "memory.swap.max",
        "memory.current": "memory.current",
        "memory.peak": "memory.peak",
        "memory.events": "memory.events",
        "memory.failcnt": "memory.events",
        "pids.limit": "pids.max",
        "pids.current": "pids.current",
        "pids.events": "pids.events",
        "cpu.limit": "cpu.max",
        "cpu.period": "cpu.max",
        "cpu.stat": "cpu.stat",
        "cpu.usage": "cpu.stat",
        "procs": "cgroup.procs",
    },
}

_FS_NAMES = {CGROUP2_SUPER_MAGIC: "cgroup2", CGROUP_SUPER_MAGIC: "cgroup", TMPFS_MAGIC: "tmpfs"}


class _Statfs(ctypes.Structure):
    # f_type is the first member of struct statfs on every Linux ABI; the rest
    # (120 bytes on x86_64) is room the kernel writes into and we never read.
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 256)]


_libc: ctypes.CDLL | None = None


def fs_magic(path: str | os.PathLike[str]) -> int | None:
    """statfs(2) f_type of the file system at path; None if nothing is there."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        _libc.statfs.argtypes = [ctypes.c_char_p, ctypes.POINTER(_Statfs)]
    buf = _Statfs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        return None
    return buf.f_type & 0xFFFFFFFF


def fs_name(magic: int | None) -> str:
    if magic is None:
        return "missing"
    return _FS_NAMES.get(magic, f"{magic:#x}")


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup hierarchy."""

    version: int  # 1 or 2
    mount: Path
    controllers: tuple[str, ...]  # v1: bound to this mount; v2: offered by its root (cgroup.controllers)


@dataclass(frozen=True)
class Layout:
    mode: str  # "v2", "v1", "hybrid" or "none"
    root: Path
    root_fs: str  # what statfs says is mounted at root: cgroup2, tmpfs, ...
    v1: tuple[Hierarchy, ...] = ()
    v2: Hierarchy | None = None
    disabled: tuple[str, ...] = field(default=())  # switched off on the kernel command line (cgroup_disable=)

    def hierarchy(self, controller: str) -> Hierarchy | None:
        """The hierarchy that holds controller, or None if no mount has it."""
        for h in self.v1:
            if controller in h.controllers:
                return h
        if self.v2 is not None and controller in self.v2.controllers:
            return self.v2
        return None

    def version_of(self, controller: str) -> int | None:
        h = self.hierarchy(controller)
        return h.version if h else None

    def usable(self) -> dict[str, int]:
        """Controllers jailshell uses -> the cgroup version that provides them here."""
        return {c: v for c in WANTED if (v := self.version_of(c) or 0)}

    def missing(self) -> list[str]:
        return [c for c in WANTED if self.hierarchy(c) is None]

    def file(self, key: str) -> str:
        """The file name for key (see FILES) where its controller lives on this machine."""
        version = self.version_of(key.split(".", 1)[0]) or (2 if self.mode == "v2" else 1)
        return FILES[version][key]

    def files(self) -> dict[str, str]:
        """Every FILES key with this machine's file name (for lessons and the doctor)."""
        out = {}
        for key in FILES[1]:
            ctrl = key.split(".", 1)[0]
            if ctrl == "procs" or self.hierarchy(ctrl) is not None:
                out[key] = self.file(key)
        return out

    def summary(self) -> str:
        """One line: the mode and where the controllers jailshell uses are."""
        if self.mode == "none":
            return f"no cgroup file system at {self.root}"
        names = {"v2": "cgroup v2 (unified)", "v1": "cgroup v1 (legacy)", "hybrid": "hybrid cgroup v1 + v2"}
        parts = []
        for c in WANTED:
            h = self.hierarchy(c)
            parts.append(f"{c} on v{h.version} ({h.mount})" if h else f"{c} missing")
        text = f"{names[self.mode]} at {self.root}: " + ", ".join(parts)
        if self.mode == "hybrid" and self.v2 is not None:
            text += f"; v2 at {self.v2.mount} offers {' '.join(self.v2.controllers) or 'no controllers'}"
        return text


def _unescape(path: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    if "\\" not in path:
        return path
    out, i = [], 0
    while i < len(path):
        if path[i] == "\\" and re.fullmatch(r"[0-7]{3}", path[i + 1 : i + 4]):
            out.append(chr(int(path[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def _proc_cgroups() -> tuple[set[str], set[str]]:
    """(controllers this kernel has, controllers switched off) from /proc/cgroups."""
    known, disabled = set(), set()
    try:
        with open("/proc/cgroups") as fh:
            for line in fh:
                if line.startswith("#"):
                    continue
                cols = line.split()
                if len(cols) >= 4:
                    known.add(cols[0])
                    if cols[3] == "0":
                        disabled.add(cols[0])
    except OSError:
        pass
    return known, disabled


def _read_words(path: Path) -> tuple[str, ...]:
    try:
        return tuple(path.read_text().split())
    except OSError:
        return ()


def detect(root: Path = DEFAULT_ROOT, mountinfo: str = "/proc/self/mountinfo") -> Layout:
    """Look at this machine (this mount namespace) and say how cgroups are laid out."""
    magic = fs_magic(root)
    known, disabled = _proc_cgroups()
    v1: list[Hierarchy] = []
    v2: Hierarchy | None = None
    seen: set[str] = set()
    try:
        with open(mountinfo) as fh:
            lines = fh.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        left, _, right = line.partition(" - ")
        lf, rf = left.split(), right.split()
        if len(lf) < 5 or len(rf) < 3 or rf[0] not in ("cgroup", "cgroup2"):
            continue
        mount = Path(_unescape(lf[4]))
        if rf[0] == "cgroup2":
            # The first cgroup2 mount wins; later ones are bind mounts of the same tree.
            if v2 is None:
                v2 = Hierarchy(2, mount, _read_words(mount / "cgroup.controllers"))
            continue
        ctrls = tuple(o for o in rf[2].split(",") if o in known)
        # A hierarchy can be mounted more than once (bind mounts, containers): keep the first.
        if ctrls and not (set(ctrls) & seen):
            seen.update(ctrls)
            v1.append(Hierarchy(1, mount, ctrls))
    if magic == CGROUP2_SUPER_MAGIC:
        mode = "v2"
        if v2 is None or v2.mount != root:
            v2 = Hierarchy(2, root, _read_words(root / "cgroup.controllers"))
    elif magic in (TMPFS_MAGIC, CGROUP_SUPER_MAGIC):
        mode = "hybrid" if v2 is not None else "v1"
    elif v1 or v2:
        # cgroups mounted somewhere else than root: still usable.
        mode = "hybrid" if v1 and v2 else ("v1" if v1 else "v2")
    else:
        mode = "none"
    return Layout(mode, root, fs_name(magic), tuple(v1), v2, tuple(sorted(disabled)))
