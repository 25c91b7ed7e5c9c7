"""Thin wrappers over the syscalls a container runtime needs.

os.unshare/os.setns exist from Python 3.12 only; learners' VMs (Ubuntu 22.04)
have 3.10, so everything missing from `os` goes through ctypes. Every wrapper
raises OSError with errno set, like the os module does, and names the call and
its argument so the error can be explained to the learner.
"""

from __future__ import annotations

import ctypes
import os

# <linux/sched.h>
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# <linux/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_FORCE = 1
MNT_DETACH = 2

# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

_PIVOT_ROOT_NR = {"x86_64": 155, "aarch64": 41, "armv7l": 218, "riscv64": 41, "ppc64le": 203, "s390x": 217}

# CDLL(None) is the running program's own symbol table, libc included: unlike
# ctypes.util.find_library("c") it does not run `ldconfig -p` (milliseconds of every start).
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long


def _check(ret: int, what: str) -> None:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{os.strerror(err)} [{what}]")


def _b(value: str | os.PathLike[str] | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def unshare(flags: int) -> None:
    if hasattr(os, "unshare"):
        os.unshare(flags)
        return
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def setns(fd: int, nstype: int = 0) -> None:
    if hasattr(os, "setns"):
        os.setns(fd, nstype)
        return
    _check(_libc.setns(fd, nstype), f"setns({nstype:#x})")


def mount(
    source: str | None,
    target: str | os.PathLike[str],
    fstype: str | None = None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    ret = _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data))
    _check(ret, f"mount {fstype or ''} {source or ''} on {os.fspath(target)}".replace("  ", " "))


def umount2(target: str | os.PathLike[str], flags: int = 0) -> None:
    _check(_libc.umount2(_b(target), flags), f"umount {os.fspath(target)}")


def pivot_root(new_root: str | os.PathLike[str], put_old: str | os.PathLike[str]) -> None:
    machine = os.uname().machine
    nr = _PIVOT_ROOT_NR.get(machine)
    if nr is None:
        raise OSError(38, f"pivot_root: unknown syscall number on {machine}")
    _check(_libc.syscall(nr, _b(new_root), _b(put_old)), "pivot_root")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), f"sethostname({name})")


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc.setdomainname(raw, len(raw)), f"setdomainname({name})")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    ret = _libc.prctl(option, arg2, arg3, arg4, arg5)
    _check(ret, f"prctl({option})")
    return int(ret)


def set_pdeathsig(sig: int) -> None:
    """Ask the kernel to send `sig` to this process when its parent thread exits."""
    prctl(PR_SET_PDEATHSIG, sig)


def set_process_name(name: str) -> None:
    """The name shown by ps -o comm / /proc/PID/comm (15 bytes at most)."""
    buf = ctypes.create_string_buffer(name.encode()[:15])
    _libc.prctl(PR_SET_NAME, ctypes.cast(buf, ctypes.c_void_p).value or 0, 0, 0, 0)


# work is a () -> bytes callable; unannotated because typing costs `jailshell run`'s
# light path, which imports this module, ~10 ms.
def answer_from_child(work) -> bytes:
    """What work() returns, computed in a forked child: for steps that change
    the calling process for good (chroot, setuid, unshare) and must not touch
    the caller. The child never returns into the caller's code."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.write(w, work())
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return data
