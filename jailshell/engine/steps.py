"""The container set-up steps, each a few syscalls, run *inside* the process
being jailed (the live jail's holder, or the child of `jailshell run`).

The order runc follows (rootfs_linux.go) and the reasons:
1. unshare the namespaces (user first when there is one: every other
   namespace is then owned by it, so the jail keeps its privileges over them);
2. make every mount private, or the mounts below would propagate to the host;
3. make the root filesystem a mount point (pivot_root needs one);
4. mount proc (needs the new PID namespace: proc shows the mounter's PIDs),
   sysfs (read-only), tmpfs /tmp, a minimal /dev, devpts, shm;
5. pivot_root and detach the old root: unlike chroot, nothing of the host's
   tree stays reachable;
6. mask the host's kernel files (/proc/kcore, ...) the way docker does.

The same table (SPECIAL_MOUNTS) gives the flags used here and the `mount`
command shown to the learner, so the two cannot disagree.
"""

from __future__ import annotations

import os
import stat

from jailshell.engine import syscalls as sc

# This module is on `jailshell run`'s path (jailshell/engine/runfast.py): a
# plain class, not a dataclass (whose import pulls in inspect, ast and dis,
# 8 ms of every run), and namespaces.py only where it is needed.


class SpecialMount:
    """One row of SPECIAL_MOUNTS (read-only by convention)."""

    __slots__ = ("data", "flags", "fstype", "name", "source", "target", "why")

    def __init__(self, name: str, source: str, target: str, fstype: str, flags: int, data: str | None, why: str):
        self.name = name  # what the learner types: `mount proc`
        self.source = source
        self.target = target  # inside the jail's root
        self.fstype = fstype
        self.flags = flags
        self.data = data
        self.why = why

    def __repr__(self) -> str:
        return f"SpecialMount({self.name!r}, {self.source!r}, {self.target!r}, {self.fstype!r})"


_FLAG_WORDS = ((sc.MS_RDONLY, "ro"), (sc.MS_NOSUID, "nosuid"), (sc.MS_NODEV, "nodev"), (sc.MS_NOEXEC, "noexec"),
               (sc.MS_STRICTATIME, "strictatime"))

SPECIAL_MOUNTS: dict[str, SpecialMount] = {
    m.name: m
    for m in (
        SpecialMount("proc", "proc", "/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, None,
                     "process information for the PID namespace of the process that mounts it"),
        SpecialMount("sys", "sysfs", "/sys", "sysfs", sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, None,
                     "kernel objects; read-only, and showing the network devices of the mounter's net namespace"),
        SpecialMount("tmp", "tmpfs", "/tmp", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=1777",
                     "a private, in-memory /tmp"),
        SpecialMount("dev", "tmpfs", "/dev", "tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME, "mode=755,size=65536k",
                     "a minimal /dev: only null, zero, full, random, urandom and tty, not the host's disks"),
        SpecialMount("devpts", "devpts", "/dev/pts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC,
                     "newinstance,ptmxmode=0666,mode=0620",
                     "a private instance of pseudo-terminals, so the jail cannot open the host's"),
        SpecialMount("shm", "shm", "/dev/shm", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
                     "mode=1777,size=65536k", "POSIX shared memory, private to the jail"),
        SpecialMount("mqueue", "mqueue", "/dev/mqueue", "mqueue", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, None,
                     "POSIX message queues of the jail's IPC namespace"),
    )
}

# What `mount dev` puts in /dev: (name, major, minor), as runc's default devices.
DEV_NODES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0))
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
             ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx"))
DEV_DIRS = ("pts", "shm", "mqueue")

# Docker's default masked and read-only paths (moby oci/defaults.go): host
# kernel memory, keys and timers must not be readable, and the kernel's knobs
# must not be writable, even by root in the jail.
MASKED_PATHS = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap")
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


def mount_options(m: SpecialMount) -> str:
    words = [w for f, w in _FLAG_WORDS if m.flags & f]
    if m.data:
        words.append(m.data)
    return ",".join(words)


def mount_command(m: SpecialMount, target: str | None = None) -> str:
    """The util-linux command that makes the same mount."""
    opts = mount_options(m)
    return f"mount -t {m.fstype}" + (f" -o {opts}" if opts else "") + f" {m.source} {target or m.target}"


def unshare(kind: str) -> None:
    from jailshell.engine.namespaces import lookup

    sc.unshare(lookup(kind).flag)


def make_mounts_private() -> None:
    # After unshare(CLONE_NEWNS) the copies of shared mounts stay in the host's
    # peer groups: a mount made below one would appear on the host too.
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)


def _inside(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/")) if root not in ("", "/") else path


def mount_special(name: str, root: str = "/", *, in_userns: bool = False, host_root_fd: int | None = None) -> str:
    """Mount one of SPECIAL_MOUNTS under root (the jail's root as this process
    sees it). Returns the target path."""
    m = SPECIAL_MOUNTS[name]
    target = _inside(root, m.target)
    os.makedirs(target, exist_ok=True)
    sc.mount(m.source, target, m.fstype, m.flags, m.data)
    if name == "dev":
        _populate_dev(target, in_userns=in_userns, host_root_fd=host_root_fd)
    return target


def _populate_dev(dev: str, *, in_userns: bool, host_root_fd: int | None) -> None:
    for node, major, minor in DEV_NODES:
        path = os.path.join(dev, node)
        if not in_userns:
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
            os.chmod(path, 0o666)  # mknod applies the umask
            continue
        # In a user namespace mknod is refused (EPERM): bind the host's node
        # instead, which is what runc does for rootless containers.
        if host_root_fd is None:
            raise OSError(1, "cannot create device nodes in a user namespace after the host root is gone")
        open(path, "w").close()
        here = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fchdir(host_root_fd)  # the bind source resolves against the host's tree
            sc.mount(f"dev/{node}", path, None, sc.MS_BIND)
        finally:
            os.fchdir(here)
            os.close(here)
    for name, dest in DEV_LINKS:
        os.symlink(dest, os.path.join(dev, name))
    for sub in DEV_DIRS:
        os.makedirs(os.path.join(dev, sub), exist_ok=True)


def bind_mount(source: str, target: str, *, readonly: bool = False, host_root_fd: int | None = None) -> None:
    """Bind a host path into the jail (docker -v). The source is resolved
    against the host's root even when this process is already chrooted."""
    here = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if host_root_fd is not None:
            os.fchdir(host_root_fd)
            source = source.lstrip("/") or "."
        if os.path.isdir(source) and not os.path.isdir(target):
            os.makedirs(target, exist_ok=True)
        elif not os.path.exists(target):
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            open(target, "a").close()
        sc.mount(source, target, None, sc.MS_BIND | sc.MS_REC)
        if readonly:
            sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_REC)
    finally:
        os.fchdir(here)
        os.close(here)


def chroot(root: str) -> None:
    os.chroot(root)
    os.chdir("/")


def leave_chroot(host_root_fd: int) -> None:
    """Undo a chroot. This is exactly the classic escape: a root process whose
    cwd or an open fd is outside its root can chroot back out."""
    os.fchdir(host_root_fd)
    os.chroot(".")


def pivot_root(root: str) -> None:
    """Switch the root of this mount namespace to `root`, and detach the old one.

    pivot_root(".", ".") stacks the old root on top of the new one; unmounting
    "." with MNT_DETACH then removes the old root from the namespace, so no path
    and no `..` leads back to the host's tree (unlike chroot)."""
    # new_root must be a mount point, and not on the same mount as the old root.
    sc.mount(root, root, None, sc.MS_BIND | sc.MS_REC)
    os.chdir(root)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")


def mask_paths(root: str = "/") -> list[str]:
    """Hide host kernel files like docker does. Returns what was masked."""
    done = []
    null = _inside(root, "/dev/null")
    for path in MASKED_PATHS:
        target = _inside(root, path)
        try:
            if os.path.isdir(target):
                sc.mount("tmpfs", target, "tmpfs", sc.MS_RDONLY, None)
            elif os.path.exists(target) and os.path.exists(null):
                sc.mount(null, target, None, sc.MS_BIND)
            else:
                continue
        except OSError:
            continue  # a path this kernel does not have or will not let us cover
        done.append(path)
    for path in READONLY_PATHS:
        target = _inside(root, path)
        if not os.path.exists(target):
            continue
        try:
            sc.mount(target, target, None, sc.MS_BIND | sc.MS_REC)
            # A bind remount sets every per-mount flag: keep nosuid/nodev/noexec (ST_* == MS_*), as runc does.
            keep = os.statvfs(target).f_flag & (sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
            sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_REC | keep)
        except OSError:
            continue
        done.append(path)
    return done


def fs_type(path: str) -> str:
    """The filesystem type of the mount holding path, from this process's mountinfo."""
    real = os.path.realpath(path)
    best, kind = "", ""
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            target = fields[4].replace("\\040", " ")
            inside = real == target or real.startswith(target.rstrip("/") + "/")
            if inside and len(target) >= len(best):
                best, kind = target, fields[fields.index("-") + 1]
    return kind


def overlay_upper_hint(upper: str) -> str:
    """Why an overlay with this upper directory may be refused, in words."""
    kind = fs_type(upper)
    if kind == "overlay":
        return (f"{os.path.dirname(upper)} is itself on overlayfs (is jailshell running inside a container?), and "
                "overlayfs cannot use an overlay as its upper layer: point JAILSHELL_DATA_DIR and JAILSHELL_RUN_DIR "
                "at a directory on ext4, xfs, btrfs or tmpfs (a volume, or /dev/shm)")
    return (f"the upper directory is on {kind or 'an unknown filesystem'}; overlayfs needs one that supports "
            "xattrs and d_type (ext4, xfs, btrfs, tmpfs)")


def sethostname(name: str) -> None:
    sc.sethostname(name)


def reset_signals() -> None:
    """Python ignores SIGPIPE and SIGXFSZ; an ignored signal stays ignored across
    execve, so a program exec'd from Python would behave differently from one
    started by a shell. Put every signal back to its default first."""
    import signal

    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGTSTP,
                signal.SIGTTIN, signal.SIGTTOU, signal.SIGCHLD, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def loopback_up() -> None:
    """ip link set lo up, with one ioctl: a new net namespace's lo starts down."""
    # _socket is the C module under `socket`: all an ioctl needs, without the
    # 2-3 ms import of socket.py (selectors, enum classes) in every container.
    import _socket
    import fcntl
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        req = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s.fileno(), siocgifflags, req))[1]
        fcntl.ioctl(s.fileno(), siocsifflags, struct.pack("16sH14s", b"lo", flags | iff_up, b""))
    finally:
        s.close()
