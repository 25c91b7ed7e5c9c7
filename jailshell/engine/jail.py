"""The live jail, seen from jailshell: a handle on the holder process.

`Jail.create()` gives the learner a process that is not isolated at all yet
(it shares every namespace with the host); each method then applies one step
to it, for real. Steps that would change the *host* when the namespace that
should contain them is missing (hostname without uts, mount without mnt,
pivot_root without mnt) are refused with the reason, instead of being done
to the learner's machine.

Entering the jail (`exec`, `shell`, `spawn`) works like nsenter(1): open the
jail's /proc/PID/ns/* and root, setns into each, chroot, exec. That is also
how `docker exec` works.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jailshell import paths
from jailshell.engine import namespaces as nsmod
from jailshell.engine import steps
from jailshell.engine import syscalls as sc
from jailshell.engine.images.store import Image, ImageStore
from jailshell.engine.journal import Entry, Journal, process_starttime
from jailshell.errors import ExitStatus, InvalidInput, JailshellError, kernel_error

# setns(CLONE_NEWPID) changes which PID namespace the calling *thread's* next
# child is born in; the lock keeps two entering threads from mixing that up.
_PIDNS_LOCK = threading.Lock()


@dataclass
class JailState:
    image: str
    unshared: list[str] = field(default_factory=list)
    hostname: str | None = None
    root_mode: str = "host"  # host | chroot | pivot
    # The directory `chroot DIR` made the jail's root, as the host sees it;
    # None: the jail's own root filesystem (Jail.rootfs).
    root: str | None = None
    mounts: list[str] = field(default_factory=list)
    user_map: str | None = None
    masked: list[str] = field(default_factory=list)


@dataclass
class ExecResult:
    returncode: int
    stdout: str
    stderr: str


def _user_namespaces_allowed() -> bool:
    for path, off in (("/proc/sys/kernel/unprivileged_userns_clone", "0"), ("/proc/sys/user/max_user_namespaces", "0")):
        try:
            with open(path) as fh:
                if fh.read().strip() == off:
                    return False
        except OSError:
            pass
    return True


def _children_of(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except FileNotFoundError:
        return []


class Jail:
    def __init__(self, jail_id: str, image: Image, rootfs: Path, jail_dir: Path, journal: Journal):
        self.id = jail_id
        self.image = image
        self.rootfs = rootfs
        self.dir = jail_dir
        self.journal = journal
        self.state = JailState(image=image.ref)
        self.pid = 0
        self.holder_pids: list[int] = []
        self.sock: socket.socket | None = None
        # Paths of cgroup.procs files a process must join before it runs in the
        # jail (set by the cgroup step), like `docker exec` joins the container's cgroup.
        self.cgroup_procs: list[str] = []
        self.cgroup: Any = None
        # The store the image came from (its layer directories are found through it),
        # and the options the root's overlay was mounted with, for the shown command.
        self.store: ImageStore | None = None
        self.overlay_data = ""
        self._closed = False

    # -- life cycle ------------------------------------------------------------------

    @classmethod
    def create(cls, image: str | None = None, *, store: ImageStore | None = None, jail_id: str | None = None) -> Jail:
        if os.geteuid() != 0 and not _user_namespaces_allowed():
            raise JailshellError(
                "the live jail needs root here: this kernel does not let unprivileged users create user namespaces",
                hint="run jailshell with sudo (or allow them: sudo sysctl kernel.unprivileged_userns_clone=1)",
            )
        store = store or ImageStore()
        img = store.resolve(image)
        jail_id = jail_id or secrets.token_hex(4)
        journal = Journal.for_owner(tag=jail_id)
        jail_dir = paths.ensure_dir(paths.run_dir() / "jails", 0o700) / jail_id
        jail = cls(jail_id, img, jail_dir / "rootfs", jail_dir, journal)
        jail.store = store
        try:
            jail._prepare_rootfs()
            jail._start_holder()
        except BaseException:
            jail.close()
            raise
        return jail

    def _prepare_rootfs(self) -> None:
        """A private, writable root for this jail: an overlay of the image (the
        image stays untouched, as with docker's overlay2), or a copy where
        overlayfs is unavailable. An image imported with `--layers` is mounted
        layer by layer (its layer directories as the lowerdirs, top first); one
        stored flattened, or whose layers will not stack here, as its one root."""
        self.journal.record("dir", path=str(self.dir))
        self.dir.mkdir(mode=0o700)
        for sub in ("rootfs", "upper", "work"):
            (self.dir / sub).mkdir()
        flat = str(self.image.rootfs)
        if os.geteuid() != 0:
            # Rootless: no mount on the host is possible; the jail gets a copy.
            shutil.copytree(flat, self.rootfs, symlinks=True, dirs_exist_ok=True)
            self.rootfs_mode = "copy"
            return
        from jailshell.engine.runfast import overlay_data

        upper, work = str(self.dir / "upper"), str(self.dir / "work")
        layers = [str(d) for d in (self.store or ImageStore()).lowerdirs(self.image, Path(upper), Path(work))]
        choices = [overlay_data(lowers, upper, work) for lowers in ([layers] if layers else []) + [[flat]]]
        entry = self.journal.record("mount", target=str(self.rootfs))
        for data in choices:
            try:
                sc.mount("overlay", self.rootfs, "overlay", 0, data)
            except OSError:
                continue
            self.rootfs_mode = "overlay"
            self.overlay_data = data
            return
        self.journal.release(entry)
        shutil.copytree(flat, self.rootfs, symlinks=True, dirs_exist_ok=True)
        self.rootfs_mode = "copy"

    def _holder_main(self, sock: socket.socket, go_fd: int, parent_pid: int) -> None:
        """Runs in the forked child; never returns. Containers override it."""
        from jailshell.engine import holder

        holder.main(sock, go_fd, parent_pid, str(self.rootfs))

    def _start_holder(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        go_r, go_w = os.pipe()
        me = os.getpid()
        pid = os.fork()
        if pid == 0:
            parent.close()
            os.close(go_w)
            self._holder_main(child, go_r, me)
        child.close()
        os.close(go_r)
        self._journal_process(pid)
        os.write(go_w, b"g")
        os.close(go_w)
        self.sock = parent
        self.pid = pid
        self.holder_pids.append(pid)
        self._reply()

    def _journal_process(self, pid: int) -> Entry:
        return self.journal.record("process", pid=pid, starttime=process_starttime(pid))

    def close(self) -> None:
        """Tear everything down, newest first. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        errors = [f"{e.describe()}: {exc}" for e, exc in self.journal.undo_all() if exc]
        if errors:
            raise JailshellError("could not remove everything: " + "; ".join(errors),
                                 hint="run `jailshell cleanup`")

    def __enter__(self) -> Jail:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        return not self._closed and self.pid > 0 and process_starttime(self.pid) is not None

    # -- talking to the holder -------------------------------------------------------

    def _send(self, msg: dict[str, Any]) -> None:
        if self.sock is None:
            raise JailshellError("this jail has been closed", hint="start a new one")
        import json

        try:
            self.sock.send(json.dumps(msg).encode())
        except OSError:
            raise self._gone() from None

    def _reply(self) -> dict[str, Any]:
        import json

        assert self.sock is not None
        try:
            data = self.sock.recv(1 << 20)
        except OSError:
            data = b""
        if not data:
            raise self._gone()
        reply: dict[str, Any] = json.loads(data)
        return reply

    def _gone(self) -> JailshellError:
        return JailshellError("the jail's holder process is gone (killed from outside?)",
                              hint="`reset` starts a fresh jail")

    def _request(self, op: str, label: str, **kw: Any) -> dict[str, Any]:
        self._send({"op": op, **kw})
        reply = self._reply()
        if not reply.get("ok"):
            raise self._explain(label, reply)
        return reply

    def _explain(self, what: str, reply: dict[str, Any]) -> JailshellError:
        err = OSError(reply.get("errno") or 0, reply.get("error", ""))
        hint = None
        if err.errno == 1 and os.geteuid() != 0 and "user" not in self.state.unshared:
            hint = ("as a normal user every other step needs the privileges a user namespace gives: "
                    "run `unshare user` first")
        elif err.errno == 1 and "user" in self.state.unshared:
            hint = ("the jail entered a user namespace after this namespace was created, so it has no "
                    "privileges over it; unshare it again (the new one belongs to the jail's user namespace)")
        if not err.errno:
            return JailshellError(f"{what} failed: {reply.get('error')}")
        return kernel_error(what, err, hint)

    # -- steps -----------------------------------------------------------------------

    def _require(self, kind: str, doing: str, consequence: str) -> None:
        if kind not in self.state.unshared:
            raise JailshellError(
                f"refusing to {doing}: the jail has no {kind} namespace yet, so {consequence}",
                hint=f"run `unshare {kind}` first",
            )

    def unshare(self, kind: str, *, uid_map: str | None = None, gid_map: str | None = None) -> None:
        ns = nsmod.lookup(kind)
        if ns.kind == "pid" and not nsmod.available().get("pid", True):
            raise JailshellError("this kernel has no PID namespaces")
        old_pid = self.pid
        self._send({"op": "unshare", "kind": ns.kind})
        reply = self._reply()
        if reply.get("ok") and reply.get("need_map"):
            self._write_maps(uid_map, gid_map)
            self._send({"op": "go"})
            reply = self._reply()
        if not reply.get("ok"):
            raise self._explain(f"unshare({ns.kind})", reply)
        self.state.unshared.append(ns.kind)
        if ns.kind == "pid":
            kids = _children_of(old_pid)
            if not kids:
                raise JailshellError("unshare(pid): the new PID 1 did not appear")
            self.pid = kids[0]
            self.holder_pids.append(self.pid)
            self._journal_process(self.pid)

    def default_user_map(self) -> str:
        # The mapping `unshare --map-root-user` writes: root inside is the
        # caller outside (the learner under sudo is still uid 0 to the kernel).
        return f"0 {os.getuid()} 1"

    def _write_maps(self, uid_map: str | None, gid_map: str | None) -> None:
        uid_map = uid_map or self.default_user_map()
        gid_map = gid_map or f"0 {os.getgid()} 1"
        try:
            # setgroups must be denied before an unprivileged gid_map write; util-linux does it always.
            with open(f"/proc/{self.pid}/setgroups", "w") as fh:
                fh.write("deny")
            with open(f"/proc/{self.pid}/uid_map", "w") as fh:
                fh.write(uid_map + "\n")
            with open(f"/proc/{self.pid}/gid_map", "w") as fh:
                fh.write(gid_map + "\n")
        except OSError as exc:
            self._send({"op": "go"})
            self._reply()
            raise kernel_error("writing uid_map/gid_map", exc)
        self.state.user_map = uid_map

    def sethostname(self, name: str) -> None:
        if not name or len(name) > 64 or any(c.isspace() or c == "/" for c in name):
            raise InvalidInput(f"invalid hostname {name!r}", hint="1 to 64 characters, no spaces or slashes")
        self._require("uts", "set the hostname", "this would rename the host itself")
        self._request("sethostname", f"sethostname({name})", name=name)
        self.state.hostname = name

    def mount(self, what: str, *, source: str | None = None, target: str | None = None,
              readonly: bool = False) -> str:
        if what != "bind" and what not in steps.SPECIAL_MOUNTS:
            raise InvalidInput(f"unknown mount '{what}'", hint="one of: " + ", ".join([*steps.SPECIAL_MOUNTS, "bind"]))
        self._require("mnt", f"mount {what}", "the mount would appear on the host")
        if what == "bind":
            if not source or not target:
                raise InvalidInput("a bind mount needs SOURCE and TARGET")
            if not os.path.exists(source):
                raise InvalidInput(f"bind source {source} does not exist on the host")
            reply = self._request("mount", f"mount --bind {source}", what="bind", source=source, target=target,
                                  readonly=readonly)
        else:
            reply = self._request("mount", f"mount {what}", what=what)
        self.state.mounts.append(reply["target"])
        return str(reply["target"])

    def mask(self) -> list[str]:
        self._require("mnt", "mask host paths", "the masks would cover the host's own /proc")
        masked: list[str] = self._request("mask", "masking /proc paths")["masked"]
        self.state.masked = masked
        return masked

    @property
    def root_dir(self) -> Path:
        """The directory that is the jail's root (or will be, before chroot), as
        the host sees it: its own root filesystem unless `chroot DIR` chose
        another. pivot_root, the equivalents and `shell` follow it."""
        return Path(self.state.root) if self.state.root else self.rootfs

    def chroot(self, root: str | Path | None = None) -> None:
        """chroot(2) the holder into ROOT (a host directory; default: the jail's
        own root filesystem)."""
        if self.state.root_mode != "host":
            where = f" to {self.state.root}" if self.state.root else ""
            raise JailshellError(f"the jail's root is already switched ({self.state.root_mode}{where})",
                                 hint="a fresh jail (`reset` or `create`) can chroot elsewhere")
        target = self.rootfs if root is None else Path(root)
        check_root_dir(target)
        own = target == self.rootfs
        self._request("chroot", f"chroot {target}", **({} if own else {"root": str(target)}))
        self.state.root_mode = "chroot"
        self.state.root = None if own else str(target)

    def pivot_root(self) -> None:
        # pivot_root in the host's mount namespace would move the root of every
        # process on the machine: never without a namespace of our own.
        self._require("mnt", "pivot_root", "it would switch the root of every process on the host")
        if self.state.root_mode == "pivot":
            raise JailshellError("the jail has already pivoted its root")
        self._request("pivot_root", "pivot_root")
        self.state.root_mode = "pivot"

    def chroot_escape(self) -> dict[str, Any]:
        """Try the classic chroot escape from inside the jail (in a throwaway child)."""
        return self._request("chroot_escape", "chroot escape")

    def info(self) -> dict[str, Any]:
        """What the holder sees from inside: hostname, interfaces, root mode."""
        return self._request("info", "reading the jail's state")

    # -- entering --------------------------------------------------------------------

    def _ns_to_enter(self) -> list[nsmod.NamespaceKind]:
        me = os.getpid()
        return [ns for ns in nsmod.NAMESPACES if nsmod.ns_inode(self.pid, ns) != nsmod.ns_inode(me, ns)]

    def _preexec(self, nsfds: dict[str, int], root_fd: int, cwd: str | None, tty_fd: int | None) -> None:
        """Runs in the forked child, before exec: nsenter's sequence."""
        for path in self.cgroup_procs:  # host paths: before we leave the host's mount ns
            with open(path, "w") as fh:
                fh.write(str(os.getpid()))
        # Like nsenter: non-user namespaces first where that works, then the user
        # namespace, then whatever needed its privileges.
        pending = dict(nsfds)
        for kind in [k for k in pending if k not in ("user", "pid")]:
            try:
                sc.setns(pending[kind], nsmod.BY_KIND[kind].flag)
                del pending[kind]
            except OSError as exc:
                if exc.errno != 1:
                    raise
        if "user" in pending:
            sc.setns(pending.pop("user"), sc.CLONE_NEWUSER)
        for kind in [k for k in pending if k != "pid"]:
            sc.setns(pending[kind], nsmod.BY_KIND[kind].flag)
        if "pid" in pending:
            # Only reached without root: joining the PID namespace needs the
            # user namespace's privileges, and only affects children, so fork
            # once more, as nsenter does; this process waits and relays.
            sc.setns(pending["pid"], sc.CLONE_NEWPID)
            self._fork_and_relay()
        os.fchdir(root_fd)
        os.chroot(".")
        try:
            os.chdir(cwd or "/")
        except OSError:
            os.chdir("/")
        if tty_fd is not None:
            os.setpgid(0, 0)
            with contextlib.suppress(OSError):
                os.tcsetpgrp(tty_fd, os.getpgrp())
        steps.reset_signals()

    @staticmethod
    def _fork_and_relay() -> None:
        child = os.fork()
        if child == 0:
            sc.set_pdeathsig(signal.SIGKILL)
            return
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP):
            signal.signal(sig, signal.SIG_IGN)
        # Drop every descriptor but stdio: subprocess waits for its error pipe to close.
        os.closerange(3, 1 << 16)
        while True:
            _, status = os.waitpid(child, 0)
            if os.WIFEXITED(status) or os.WIFSIGNALED(status):
                os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))

    def _env(self, env: dict[str, str] | None) -> dict[str, str]:
        base = dict(e.split("=", 1) for e in self.image.env())
        base.setdefault("HOME", "/root")
        base["TERM"] = os.environ.get("TERM", "xterm")
        base["PS1"] = f"[jail {self.state.hostname or self.id}] \\w # "
        base.update(env or {})
        return base

    def popen(self, argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
              tty: bool = False, **kw: Any) -> subprocess.Popen[bytes]:
        """Start argv inside the jail (all its namespaces, its root, its cgroup)."""
        if not self.alive:
            raise JailshellError("the jail is not running", hint="`reset` starts a fresh jail")
        if not argv:
            raise InvalidInput("no command given")
        kinds = self._ns_to_enter()
        nsfds = {ns.kind: os.open(f"/proc/{self.pid}/ns/{ns.proc_name}", os.O_RDONLY | os.O_CLOEXEC) for ns in kinds}
        root_fd = os.open(f"/proc/{self.pid}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        tty_fd = 0 if tty and os.isatty(0) else None
        # As root, the PID namespace is joined by the *parent* before fork (setns
        # on a pid ns only affects children) and left right after: the command
        # is then our direct child. Without root see _preexec.
        parent_joins_pid = "pid" in nsfds and os.geteuid() == 0
        own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC) if parent_joins_pid else None
        child_nsfds = {k: v for k, v in nsfds.items() if not (k == "pid" and parent_joins_pid)}
        try:
            with _PIDNS_LOCK:
                if parent_joins_pid:
                    sc.setns(nsfds["pid"], sc.CLONE_NEWPID)
                try:
                    return subprocess.Popen(
                        list(argv), env=self._env(env), close_fds=True, pass_fds=(), restore_signals=True,
                        preexec_fn=lambda: self._preexec(child_nsfds, root_fd, cwd, tty_fd), **kw,
                    )
                finally:
                    if own_pidns is not None:
                        sc.setns(own_pidns, sc.CLONE_NEWPID)
        except FileNotFoundError:
            raise JailshellError(f"{argv[0]}: command not found in the jail's root filesystem",
                                 status=ExitStatus.NOT_FOUND)
        except PermissionError as exc:
            raise JailshellError(f"{argv[0]}: cannot execute ({exc.strerror})")
        except subprocess.SubprocessError as exc:
            raise JailshellError(f"entering the jail failed: {exc}")
        finally:
            for fd in [*nsfds.values(), root_fd, *([own_pidns] if own_pidns is not None else [])]:
                os.close(fd)

    def exec(self, argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: str | None = None,
             input: str | None = None, timeout: float | None = 30) -> ExecResult:
        proc = self.popen(argv, env=env, cwd=cwd, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(input.encode() if input is not None else None, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise JailshellError(f"{argv[0]} did not finish within {timeout} s; killed")
        except KeyboardInterrupt:
            proc.kill()
            proc.wait()
            raise
        return ExecResult(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))

    def spawn(self, argv: Sequence[str], *, stdout: Any = None, stderr: Any = None) -> int:
        """A background process in the jail; it is killed when the jail closes."""
        proc = self.popen(argv, stdin=subprocess.DEVNULL, stdout=stdout or subprocess.DEVNULL,
                          stderr=stderr or subprocess.DEVNULL)
        entry = self._journal_process(proc.pid)
        # Reap it when it ends, so it never lingers as a zombie of jailshell.
        threading.Thread(target=self._reap, args=(proc, entry), daemon=True).start()
        return proc.pid

    def _reap(self, proc: subprocess.Popen[bytes], entry: Entry) -> None:
        proc.wait()
        self.journal.release(entry)

    def shell(self, argv: Sequence[str] | None = None) -> int:
        """An interactive shell in the jail on the learner's terminal."""
        argv = list(argv or ["/bin/sh", "-l"] if (self.root_dir / "bin/sh").exists() or self.state.root_mode == "pivot"
                    else ["/bin/sh"])
        # Ignored before the fork: the child makes its process group the
        # terminal's foreground one (tcsetpgrp) before it execs, and a
        # background group doing that is stopped by SIGTTOU unless it is ignored.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        ttou = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            proc = self.popen(argv, tty=True)
            return proc.wait()
        finally:
            if os.isatty(0):
                with contextlib.suppress(OSError):
                    os.tcsetpgrp(0, os.getpgrp())  # take the terminal back from the shell's group
            signal.signal(signal.SIGTTOU, ttou)
            signal.signal(signal.SIGINT, old)


def check_root_dir(root: Path) -> None:
    """What chroot(2) would refuse with a bare errno, said in words first: the
    new root must be an existing directory, named by an absolute path."""
    if not root.is_absolute():
        raise InvalidInput(f"{root}: the new root must be an absolute path")
    if not root.exists():
        raise InvalidInput(f"{root}: no such directory",
                           hint="unpack a root filesystem first, e.g. `untar $LAB/export.tar $LAB/root`")
    if not root.is_dir():
        raise InvalidInput(f"{root} is not a directory", hint="chroot needs a directory holding a root filesystem")


def missing_shell(root: Path) -> str | None:
    """Why ROOT has no /bin/sh a process chrooted there could run, or None."""
    found = resolve_inside(root, "/bin/sh")
    if found is None:
        return "/bin/sh does not exist there (or is a dangling or looping symlink)"
    if not found.is_file() or not os.access(found, os.X_OK):
        return "/bin/sh is not an executable file there"
    return None


def resolve_inside(root: Path, path: str) -> Path | None:
    """PATH as a process chrooted into ROOT finds it, as a host path; None if
    it does not exist. Symlinks are followed one component at a time inside
    ROOT: busybox's /bin/sh -> /bin/busybox means ROOT/bin/busybox, never the
    host's, and '..' stops at ROOT as it does after chroot."""
    parts = [p for p in path.split("/") if p]
    done: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        here = root.joinpath(*done, part)
        if here.is_symlink():
            hops += 1
            if hops > 40:
                return None
            link = os.readlink(here)
            if link.startswith("/"):
                done = []
            parts = [p for p in link.split("/") if p] + parts
            continue
        if not here.exists():
            return None
        done.append(part)
    return root.joinpath(*done)
