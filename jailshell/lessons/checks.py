"""Named predicates on the live jail's kernel state, for lessons to cite.

A lesson writes `check: isolated uts`; the loader asks this registry whether
the name and its arguments exist, and the runner asks it for a verdict. Each
check reads the kernel (namespace inodes, mountinfo, uid_map, what a process
inside sees), never jailshell's own bookkeeping alone: a check must be able
to fail when the kernel disagrees with what the step claims.
"""

from __future__ import annotations

import os
import shlex
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jailshell.engine.jail import Jail


@dataclass(frozen=True)
class Verdict:
    ok: bool
    detail: str


CheckFn = Callable[..., Verdict]


@dataclass(frozen=True)
class Check:
    name: str
    doc: str
    fn: CheckFn
    params: tuple[str, ...] = ()
    # Allowed values per parameter position (None: any word).
    choices: tuple[tuple[str, ...] | None, ...] = ()
    rest: bool = False  # the last parameter takes every remaining word

    @property
    def usage(self) -> str:
        words = [p.upper() for p in self.params]
        if self.rest and words:
            words[-1] += "..."
        return " ".join([self.name, *words])


class CheckRegistry:
    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}

    def register(self, name: str, doc: str, params: tuple[str, ...] = (),
                 choices: tuple[tuple[str, ...] | None, ...] = (), rest: bool = False) -> Callable[[CheckFn], CheckFn]:
        def deco(fn: CheckFn) -> CheckFn:
            if name in self._checks:
                raise ValueError(f"check '{name}' registered twice")
            self._checks[name] = Check(name, doc, fn, params, choices, rest)
            return fn
        return deco

    def __iter__(self) -> Iterator[Check]:
        return iter(self._checks.values())

    def __contains__(self, name: object) -> bool:
        return name in self._checks

    def names(self) -> list[str]:
        return list(self._checks)

    def _split(self, text: str) -> tuple[Check | None, list[str], str | None]:
        try:
            words = shlex.split(text)
        except ValueError as exc:
            return None, [], f"cannot read it: {exc}"
        if not words:
            return None, [], "empty check"
        check = self._checks.get(words[0])
        if check is None:
            import difflib

            close = difflib.get_close_matches(words[0], self.names(), n=1)
            return None, [], f"unknown check '{words[0]}'" + (f" — did you mean '{close[0]}'?" if close else "")
        args = words[1:]
        if len(args) < len(check.params) or (len(args) > len(check.params) and not check.rest):
            return None, [], f"usage: {check.usage}"
        for i, allowed in enumerate(check.choices):
            if allowed is not None and i < len(args) and args[i] not in allowed:
                return None, [], f"'{args[i]}' is not one of: {', '.join(allowed)}"
        return check, args, None

    def validate(self, text: str) -> str | None:
        """Why this check text is not valid, or None: what the lessons loader asks."""
        return self._split(text)[2]

    def evaluate(self, text: str, jail: Jail) -> Verdict:
        check, args, why = self._split(text)
        if check is None:
            return Verdict(False, why or "invalid check")
        from jailshell.errors import JailshellError

        try:
            if check.rest:
                fixed = len(check.params) - 1
                return check.fn(jail, *args[:fixed], args[fixed:])
            return check.fn(jail, *args)
        except JailshellError as exc:
            return Verdict(False, f"could not check: {exc.message}")


# -- the checks ------------------------------------------------------------------------


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return ""


def _mountinfo(pid: int | str) -> list[tuple[str, str, str, str, str]]:
    """(major:minor, root, mount point, optional fields, fstype) per mount of PID's namespace."""
    rows = []
    for line in _read(f"/proc/{pid}/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        f = left.split()
        rows.append((f[2], f[3], f[4], " ".join(f[6:]), right.split()[0] if right else ""))
    return rows


def _kinds() -> tuple[str, ...]:
    from jailshell.engine.namespaces import BY_KIND

    return tuple(BY_KIND)


def _mount_names() -> tuple[str, ...]:
    from jailshell.engine.steps import SPECIAL_MOUNTS

    return tuple(SPECIAL_MOUNTS)


def _proc_in_jail(jail: Jail) -> tuple[bool, list[str], list[Any], int]:
    """What `ls /proc` in the jail lists: whether it could, the PIDs it saw, the
    processes of the jail's PID namespace, and how many the host has."""
    from jailshell.engine.inspect import processes_in_pidns

    res = jail.exec(["sh", "-c", "ls /proc"])
    jail_rows, host_total = processes_in_pidns(jail.pid)
    return res.returncode == 0, [w for w in res.stdout.split() if w.isdigit()], list(jail_rows), host_total


def _mount_target(jail: Jail, what: str) -> tuple[str, str, str]:
    """fstype, target inside the jail, and the path the mount has in the
    jail's mountinfo, which shows mount points relative to the jail's root:
    below the root filesystem's path until chroot/pivot_root, as is after."""
    from jailshell.engine.steps import SPECIAL_MOUNTS

    m = SPECIAL_MOUNTS[what]
    mode, _ = _root_mode(jail)
    return m.fstype, m.target, f"{jail.rootfs}{m.target}" if mode == "host" else m.target


def default_checks() -> CheckRegistry:
    reg = CheckRegistry()
    kinds, mounts = _kinds(), _mount_names()

    @reg.register("isolated", "the jail has its own KIND namespace (its /proc/PID/ns inode differs from the host's)",
                  ("kind",), (kinds,))
    def isolated(jail: Jail, kind: str) -> Verdict:
        from jailshell.engine.namespaces import ns_inode

        mine, theirs = ns_inode(os.getpid(), kind), ns_inode(jail.pid, kind)
        return Verdict(theirs is not None and mine != theirs, f"{kind}: host {mine}, jail {theirs}")

    @reg.register("shared", "the jail still shares the host's KIND namespace", ("kind",), (kinds,))
    def shared(jail: Jail, kind: str) -> Verdict:
        v = isolated(jail, kind)
        return Verdict(not v.ok, v.detail)

    @reg.register("hostname-differs", "the hostname inside the jail differs from the host's")
    def hostname_differs(jail: Jail) -> Verdict:
        host, inside = socket.gethostname(), jail.info().get("hostname", "")
        return Verdict(host != inside, f"host '{host}', jail '{inside}'")

    @reg.register("hostname-is", "the hostname inside the jail is NAME, and the host's is not", ("name",))
    def hostname_is(jail: Jail, name: str) -> Verdict:
        host, inside = socket.gethostname(), jail.info().get("hostname", "")
        return Verdict(inside == name and host != name, f"host '{host}', jail '{inside}'")

    @reg.register("pid1", "the jail's process is PID 1 in its own PID namespace")
    def pid1(jail: Jail) -> Verdict:
        for line in _read(f"/proc/{jail.pid}/status").splitlines():
            if line.startswith("NSpid:"):
                ids = line.split()[1:]
                return Verdict(len(ids) > 1 and ids[-1] == "1",
                               f"host PID {ids[0]}, PID inside {ids[-1]}" if len(ids) > 1
                               else f"PID {ids[0]}: same number inside and outside (no PID namespace)")
        return Verdict(False, "the jail's process is gone")

    @reg.register("sees-only-jail-processes",
                  "`ps` inside the jail lists only the jail's processes, not the host's (needs proc mounted)")
    def sees_only_jail(jail: Jail) -> Verdict:
        listed, visible, jail_rows, host_total = _proc_in_jail(jail)
        ok = listed and "1" in visible and len(visible) < host_total and \
            len(visible) <= len(jail_rows) + 3  # + the sh and ls of this check
        return Verdict(ok, f"the jail sees {len(visible)} processes, the host has {host_total}")

    @reg.register("mounted", "WHAT (proc, sys, tmp, dev, ...) is mounted in the jail's mount namespace",
                  ("what",), (mounts,))
    def mounted(jail: Jail, what: str) -> Verdict:
        fstype, target, where = _mount_target(jail, what)
        found = [r for r in _mountinfo(jail.pid) if r[2] == where and r[4] == fstype]
        return Verdict(bool(found), f"{fstype} on {target}: {'mounted' if found else 'not mounted'} in the jail")

    @reg.register("not-on-host", "the jail's WHAT mount is not visible in the host's mount table",
                  ("what",), (mounts,))
    def not_on_host(jail: Jail, what: str) -> Verdict:
        fstype, target, _ = _mount_target(jail, what)
        seen = [r for r in _mountinfo("self") if r[2] == f"{jail.root_dir}{target}" and r[4] == fstype]
        return Verdict(not seen, f"{fstype} on {jail.root_dir}{target}: " + ("visible on the host" if seen
                                                                         else "not on the host"))

    @reg.register("no-shared-mounts", "no mount of the jail propagates to or from the host (no shared: peer group)")
    def no_shared(jail: Jail) -> Verdict:
        shared_rows = [r[2] for r in _mountinfo(jail.pid) if "shared:" in r[3]]
        return Verdict(not shared_rows, f"{len(shared_rows)} shared mounts" +
                       (f" (e.g. {shared_rows[0]})" if shared_rows else ""))

    @reg.register("root-is", "the jail's root directory was switched this way: host, chroot or pivot",
                  ("mode",), (("host", "chroot", "pivot"),))
    def root_is(jail: Jail, mode: str) -> Verdict:
        actual, link = _root_mode(jail)
        return Verdict(actual == mode, f"root of PID {jail.pid}: {link} ({actual})")

    @reg.register("old-root-gone", "the host's root filesystem is no longer mounted in the jail's mount namespace")
    def old_root_gone(jail: Jail) -> Verdict:
        actual, _ = _root_mode(jail)
        detail = {"pivot": "gone from the jail", "chroot": "still mounted: chroot only hides it",
                  "host": "still the jail's root"}.get(actual, "unknown")
        return Verdict(actual == "pivot", f"the host's / is {detail}")

    @reg.register("escape-works", "the classic chroot escape (chroot into a subdir, then cd .. up) reaches the host")
    def escape_works(jail: Jail) -> Verdict:
        res = jail.chroot_escape()
        return Verdict(reached_host(jail, res), _escape_detail(res))

    @reg.register("escape-fails", "the classic chroot escape no longer reaches the host's files")
    def escape_fails(jail: Jail) -> Verdict:
        res = jail.chroot_escape()
        return Verdict(not reached_host(jail, res), _escape_detail(res))

    @reg.register("only-lo", "the jail's network namespace has only a loopback interface")
    def only_lo(jail: Jail) -> Verdict:
        names = [name for name, _up in jail.info().get("interfaces", [])]
        return Verdict(names == ["lo"], "interfaces in the jail: " + (", ".join(names) or "none"))

    @reg.register("uid-mapped", "the jail is in a user namespace with its own uid map (not the host's identity map)")
    def uid_mapped(jail: Jail) -> Verdict:
        m = " ".join(_read(f"/proc/{jail.pid}/uid_map").split())
        return Verdict(bool(m) and m != "0 0 4294967295", f"uid_map: {m or '?'}")

    @reg.register("cgroup-root", "inside its cgroup namespace the jail sees its own cgroup as the root (/)")
    def cgroup_root(jail: Jail) -> Verdict:
        res = jail.exec(["cat", "/proc/self/cgroup"])
        paths = [line.split(":", 2)[2] for line in res.stdout.splitlines() if line.count(":") >= 2]
        return Verdict(res.returncode == 0 and bool(paths) and all(p == "/" for p in paths),
                       "cgroup paths seen inside: " + (", ".join(sorted(set(paths))) or "none"))

    @reg.register("exec-ok", "CMD run inside the jail succeeds (exit status 0)", ("cmd",), rest=True)
    def exec_ok(jail: Jail, argv: list[str]) -> Verdict:
        res = jail.exec(argv, timeout=10)
        return Verdict(res.returncode == 0, f"`{shlex.join(argv)}` exited {res.returncode}" + _tail(res.stderr))

    @reg.register("exec-fails", "CMD run inside the jail fails (non-zero exit status)", ("cmd",), rest=True)
    def exec_fails(jail: Jail, argv: list[str]) -> Verdict:
        v = exec_ok(jail, argv)
        return Verdict(not v.ok, v.detail)

    @reg.register("exec-prints", "CMD run inside the jail prints TEXT (one of its output lines is exactly TEXT)",
                  ("text", "cmd"), rest=True)
    def exec_prints(jail: Jail, text: str, argv: list[str]) -> Verdict:
        res = jail.exec(argv, timeout=10)
        lines = [line.strip() for line in res.stdout.splitlines()]
        return Verdict(text in lines, f"`{shlex.join(argv)}` printed: " + (" | ".join(lines[:4]) or "nothing"))

    @reg.register("same-kernel", "a process in the jail reads the host's own kernel release (no virtual machine)")
    def same_kernel(jail: Jail) -> Verdict:
        res = jail.exec(["uname", "-r"], timeout=10)
        inside, host = res.stdout.strip(), os.uname().release
        return Verdict(res.returncode == 0 and inside == host, f"host kernel {host}, jail's uname -r: {inside or '?'}")

    @reg.register("image-present", "the image NAME (or NAME:TAG) is in the local store, unpacked with a /bin/sh",
                  ("name",))
    def image_present(jail: Jail, name: str) -> Verdict:
        from jailshell.engine.images.store import ImageStore

        image = ImageStore().get(name)
        ok = image is not None and os.path.lexists(image.rootfs / "bin/sh")
        return Verdict(ok, f"{name}: " + (f"unpacked in {image.rootfs}" if image is not None and ok else "not local"))

    @reg.register("container-running", "docker container NAME runs: its PID 1 is alive in namespaces of its own",
                  ("name",))
    def container_running(jail: Jail, name: str) -> Verdict:
        from jailshell.engine.namespaces import ns_inode

        pid = _container_pid(name)
        if pid is None:
            return Verdict(False, f"{name}: not running")
        own = [k for k in ("pid", "mnt", "uts") if ns_inode(pid, k) not in (None, ns_inode(os.getpid(), k))]
        return Verdict(len(own) == 3, f"{name}: PID {pid} on the host, own namespaces: {', '.join(own) or 'none'}")

    @reg.register("container-gone", "docker container NAME is not running (no live PID 1)", ("name",))
    def container_gone(jail: Jail, name: str) -> Verdict:
        pid = _container_pid(name)
        return Verdict(pid is None, f"{name}: " + (f"still running as PID {pid}" if pid else "not running"))

    @reg.register("tar-has", "FILE (relative to the current directory) is a tar archive holding MEMBER",
                  ("file", "member"))
    def tar_has(jail: Jail, file: str, member: str) -> Verdict:
        import tarfile

        try:
            with tarfile.open(file) as tar:
                names = {n.removeprefix("./").rstrip("/") for n in tar.getnames()}
        except (OSError, tarfile.TarError) as exc:
            return Verdict(False, f"{file}: not a readable tar ({exc})")
        return Verdict(member.strip("/") in names, f"{file}: {len(names)} entries, "
                       + ("with " if member.strip("/") in names else "without ") + member)

    @reg.register("upper-has", "PATH (relative to the jail's /) exists in the jail's writable upper layer on the host",
                  ("path",))
    def upper_has(jail: Jail, path: str) -> Verdict:
        import stat

        upper = jail.dir / "upper"
        if getattr(jail, "rootfs_mode", "overlay") != "overlay":
            return Verdict(False, "the jail's root is a copy, not an overlay (no upper layer on this host)")
        where = upper / path.strip("/")
        try:
            st = os.lstat(where)
        except OSError:
            return Verdict(False, f"{where}: not in the upper layer")
        whiteout = stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
        return Verdict(True, f"{where}: " + ("a whiteout (0:0 character device): deleted in the jail" if whiteout
                                             else "written by the jail"))

    @reg.register("sees-host-processes",
                  "`ps` in the jail lists the host's processes too (no PID namespace of its own; needs proc mounted)")
    def sees_host(jail: Jail) -> Verdict:
        listed, visible, _rows, host_total = _proc_in_jail(jail)
        # This checking process is a host process outside the jail: seeing it
        # under its host PID means the jail's /proc is the host's PID namespace.
        me = str(os.getpid())
        ok = listed and me in visible
        return Verdict(ok, f"the jail sees {len(visible)} processes (this checker, host PID {me}, "
                       + ("among them" if me in visible else "not among them") + f"); the host has {host_total}")

    @reg.register("masked", "PATH in the jail is covered by a mount (hidden from the jail, as docker's masked paths)",
                  ("path",))
    def masked(jail: Jail, path: str) -> Verdict:
        _fs, _t, where = _mount_target(jail, "proc")
        prefix = where[: -len("/proc")] if where.endswith("/proc") else ""
        found = [r for r in _mountinfo(jail.pid) if r[2] == f"{prefix}{path}"]
        return Verdict(bool(found), f"{path}: " + (f"covered ({found[-1][4]})" if found else "visible to the jail"))

    @reg.register("rootless", "an unprivileged user (nobody) gets the namespaces a user namespace grants, and "
                  "nothing more; or this kernel refuses it user namespaces, as its settings say")
    def rootless_check(jail: Jail) -> Verdict:
        from jailshell.engine import rootless

        ok, summary = rootless.expected(rootless.probe())
        return Verdict(ok, summary)

    # The checks of the cgroup, network, docker, image and escape labs live in their own module.
    from jailshell.lessons import checks_labs

    checks_labs.register(reg)
    return reg


def _container_pid(name: str) -> int | None:
    """PID 1 of a docker container (jailshell's engine), if it is alive."""
    from jailshell.engine import containers
    from jailshell.errors import JailshellError

    try:
        rec = containers.resolve(name)
    except JailshellError:
        return None
    if rec.state != "running" or not rec.pid or not containers.running(rec.pid, rec.starttime):
        return None
    return rec.pid


def _root_mode(jail: Jail) -> tuple[str, str]:
    """host, chroot or pivot, read from the kernel, and the root link.

    /proc/PID/mountinfo lists only the mounts reachable from PID's root, so it
    cannot tell alone: after chroot the host's / vanishes from it while still
    mounted. The root link tells chroot (a path below the host's /) apart;
    with the link at "/", the host's root mount still in the jail's table
    means no switch at all, and its absence means pivot_root took it away."""
    try:
        link = os.readlink(f"/proc/{jail.pid}/root")
    except OSError:
        return "gone", "?"
    if link != "/":
        return "chroot", link
    host_root = _host_root_mount()
    present = any((r[0], r[1], r[2]) == (*host_root, "/") for r in _mountinfo(jail.pid))
    return ("host" if present else "pivot"), link


def _host_root_mount() -> tuple[str, str]:
    for dev, root, target, _opt, _fs in _mountinfo("self"):
        if target == "/":
            return dev, root
    return "", ""


def reached_host(jail: Jail, res: dict[str, object]) -> bool:
    """Whether the walk up left the jail's tree. After pivot_root the walk still
    "succeeds", but stops at the jail's own root: what it lists tells."""
    listing = res.get("root_listing")
    if not res.get("escaped") or not isinstance(listing, list):
        return False
    jail_root = set(os.listdir(jail.root_dir)) | {".jsh-escape"}
    return not set(listing) <= jail_root


def _escape_detail(res: dict[str, object]) -> str:
    if res.get("escaped"):
        listing = res.get("root_listing")
        shown = ", ".join(str(x) for x in listing[:6]) if isinstance(listing, list) else ""
        return f"the walk up ended in a / holding {shown}, ..."
    return f"no escape: {res.get('error') or 'the walk up stopped at the jail root'}"


def _tail(stderr: str) -> str:
    last = stderr.strip().splitlines()[-1:] if stderr.strip() else []
    return f" ({last[0][:100]})" if last else ""
