"""Snapshots of the host's state, to prove the engine leaves it as it found it."""

from __future__ import annotations

import os
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class HostState:
    mounts: frozenset[tuple[str, str, str]]  # (mount point, fstype, source)
    cgroups: frozenset[str]
    links: frozenset[str]
    netns: frozenset[str]
    children: frozenset[tuple[int, str]]
    nft_tables: frozenset[str]

    def leaks_since(self, before: HostState) -> list[str]:
        out = []
        for name in ("mounts", "cgroups", "links", "netns", "children", "nft_tables"):
            new = getattr(self, name) - getattr(before, name)
            out += [f"{name}: {item}" for item in sorted(new, key=str)]
        return out


def _mounts() -> frozenset[tuple[str, str, str]]:
    out = set()
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fields = left.split()
            rfields = right.split()
            out.add((fields[4], rfields[0], rfields[1] if len(rfields) > 1 else ""))
    return frozenset(out)


def _cgroups() -> frozenset[str]:
    found = set()
    for root in ("/sys/fs/cgroup",):
        for dirpath, dirnames, _ in os.walk(root):
            depth = dirpath[len(root) :].count("/")
            for d in dirnames:
                if "jailshell" in d or d.startswith("jsh"):
                    found.add(os.path.join(dirpath, d))
            if depth >= 2:
                dirnames[:] = []
            else:
                # Only descend into controller roots and jailshell's own parents.
                dirnames[:] = [d for d in dirnames if depth == 0 or "jailshell" in d]
    return frozenset(found)


def _links() -> frozenset[str]:
    return frozenset(os.listdir("/sys/class/net"))


def _netns() -> frozenset[str]:
    try:
        return frozenset(os.listdir("/run/netns"))
    except FileNotFoundError:
        return frozenset()


def _children() -> frozenset[tuple[int, str]]:
    me = psutil.Process()
    out = set()
    for child in me.children(recursive=True):
        try:
            out.add((child.pid, " ".join(child.cmdline())[:80]))
        except psutil.Error:
            pass
    return frozenset(out)


def _nft_tables() -> frozenset[str]:
    import shutil
    import subprocess

    if not shutil.which("nft") or os.geteuid() != 0:
        return frozenset()
    res = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=False)
    return frozenset(line.strip() for line in res.stdout.splitlines() if "jailshell" in line or "jsh" in line)


def snapshot() -> HostState:
    return HostState(_mounts(), _cgroups(), _links(), _netns(), _children(), _nft_tables())
