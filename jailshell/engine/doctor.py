"""What this machine can do for the course, checked for real.

Each check tries the thing (in a throwaway child where it changes state),
rather than guessing from version numbers, and says how to fix a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from jailshell.engine.namespaces import NAMESPACES


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    core: bool = True  # needed by the core lessons (exit status depends on it)


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def _in_child(fn: Callable[[], None]) -> str | None:
    """Run fn in a forked child; None if it worked, else the error."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            fn()
            os.write(w, b"")
            os._exit(0)
        except BaseException as exc:
            os.write(w, str(exc).encode()[:500])
            os._exit(1)
    os.close(w)
    msg = b""
    while chunk := os.read(r, 4096):
        msg += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return None if status == 0 else (msg.decode() or f"exit status {status}")


def check_root() -> Check:
    root = os.geteuid() == 0
    return Check("root", root, "running as root" if root else f"running as uid {os.geteuid()}",
                 "run jailshell with sudo (the live jail mounts file systems and creates namespaces)")


def check_userns() -> Check:
    clone = _read("/proc/sys/kernel/unprivileged_userns_clone")
    maxns = _read("/proc/sys/user/max_user_namespaces")
    apparmor = _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
    if clone == "0":
        return Check("user namespaces", False, "unprivileged user namespaces are disabled",
                     "sudo sysctl kernel.unprivileged_userns_clone=1", core=False)
    if maxns == "0":
        return Check("user namespaces", False, "user.max_user_namespaces is 0",
                     "sudo sysctl user.max_user_namespaces=15000", core=False)
    if apparmor == "1":
        return Check("user namespaces", False, "AppArmor restricts unprivileged user namespaces (Ubuntu 24.04+)",
                     "sudo sysctl kernel.apparmor_restrict_unprivileged_userns=0 (for the rootless lesson)",
                     core=False)
    from jailshell.engine import syscalls as sc

    err = _in_child(lambda: sc.unshare(sc.CLONE_NEWUSER))
    return Check("user namespaces", err is None, "allowed (rootless lessons can run)" if err is None else err,
                 "" if err is None else "check the sysctls kernel.unprivileged_userns_clone and user.max_user_namespaces",
                 core=False)


def check_namespace_kinds() -> list[Check]:
    from jailshell.engine import syscalls as sc

    out = []
    for ns in NAMESPACES:
        if not os.path.exists(f"/proc/self/ns/{ns.proc_name}"):
            out.append(Check(f"{ns.kind} namespace", False, "not in this kernel",
                             f"a kernel built with CONFIG_{ns.kind.upper()}_NS", core=ns.kind in ("uts", "pid", "mnt")))
            continue
        if os.geteuid() == 0:
            err = _in_child(lambda flag=ns.flag: sc.unshare(flag))  # type: ignore[misc]
        else:
            err = _in_child(lambda flag=ns.flag: sc.unshare(flag | sc.CLONE_NEWUSER))  # type: ignore[misc]
        out.append(Check(f"{ns.kind} namespace", err is None, ns.isolates if err is None else err,
                         "" if err is None else "needs root (sudo) or user namespaces",
                         core=ns.kind in ("uts", "pid", "mnt")))
    return out


def check_overlay() -> Check:
    fs = _read("/proc/filesystems") or ""
    ok = "overlay" in fs
    return Check("overlayfs", ok, "available: images are mounted as layers" if ok else "not loaded",
                 "sudo modprobe overlay (jailshell falls back to copying the image)", core=False)


def check_pivot_root() -> Check:
    if os.geteuid() != 0:
        return Check("pivot_root", False, "needs root to test", "run with sudo")
    import tempfile

    from jailshell.engine import steps
    from jailshell.engine import syscalls as sc

    d = tempfile.mkdtemp(prefix="jsh-doctor-")

    def attempt() -> None:
        # In the child's own mount namespace: the tmpfs and the pivot vanish with it.
        sc.unshare(sc.CLONE_NEWNS)
        steps.make_mounts_private()
        sc.mount("tmpfs", d, "tmpfs", 0, None)
        steps.pivot_root(d)

    try:
        err = _in_child(attempt)
    finally:
        os.rmdir(d)
    return Check("pivot_root", err is None, "works in a new mount namespace" if err is None else err,
                 "" if err is None else "a root file system on ramfs (initramfs) cannot pivot: boot from a disk")


def check_cgroups() -> Check:
    import importlib

    try:
        cgroups = importlib.import_module("jailshell.engine.cgroups")
    except ModuleNotFoundError:
        return Check("cgroups", False, "cgroup support is not installed", core=False)
    describe = getattr(cgroups, "describe_host", None)
    if describe is None:
        return Check("cgroups", False, "cgroup detection unavailable", core=False)
    ok, detail, fix = describe()
    return Check("cgroups", ok, detail, fix, core=False)


def check_netlink() -> Check:
    try:
        from pyroute2 import IPRoute
    except ImportError:
        return Check("netlink (pyroute2)", False, "pyroute2 is not installed", "pip install pyroute2", core=False)
    try:
        with IPRoute() as ipr:
            n = len(ipr.get_links())
    except OSError as exc:
        return Check("netlink (pyroute2)", False, str(exc), "run with sudo", core=False)
    return Check("netlink (pyroute2)", True, f"can read {n} interfaces", core=False)


def check_tools() -> Check:
    missing = [t for t in ("unshare", "nsenter", "mount", "chroot", "ip") if not shutil.which(t)]
    return Check("util-linux and iproute2", not missing,
                 "unshare, nsenter, mount, chroot and ip found: the raw commands can be pasted" if not missing
                 else "missing: " + ", ".join(missing),
                 "sudo apt-get install util-linux iproute2", core=False)


def check_image() -> Check:
    from jailshell.engine.images.embedded import find_busybox
    from jailshell.engine.images.store import ImageStore
    from jailshell.errors import JailshellError

    try:
        img = ImageStore().resolve()
    except (JailshellError, OSError) as exc:
        return Check("embedded image", False, str(exc), "sudo apt-get install busybox-static")
    how = "busybox" if find_busybox() else "host binaries (install busybox-static for a complete image)"
    return Check("embedded image", True, f"{img.ref} ready, built from {how}")


def run_checks() -> list[Check]:
    checks = [check_root(), *check_namespace_kinds(), check_userns(), check_pivot_root(), check_overlay(),
              check_cgroups(), check_netlink(), check_tools()]
    if os.geteuid() == 0:
        checks.append(check_image())
    return checks


def core_ok(checks: list[Check]) -> bool:
    return all(c.ok for c in checks if c.core)
