"""The holder: the process that *is* the live jail.

It is forked from jailshell, takes one request at a time over a socketpair
and applies it to itself (unshare, sethostname, mount, chroot, pivot_root), so
the learner can watch a single process become a container step by step.

Protocol: SOCK_SEQPACKET, one JSON object per message. Request
{"op": NAME, ...}; reply {"ok": true, ...} or {"ok": false, "errno": N,
"error": TEXT}. A failed step changes nothing that the learner can see.

PID namespaces are the exception to "applies it to itself": unshare(CLONE_NEWPID)
only puts *children* in the new namespace. So the holder forks: the child,
PID 1 of the new namespace, carries on as the holder and the parent stays
behind to wait for it, which is exactly what `unshare --pid --fork` does.
As PID 1 it must reap orphans (zombies would pile up otherwise); it wakes on
SIGCHLD to do so.
"""

from __future__ import annotations

import fcntl
import json
import os
import resource  # here, not where it is used: after pivot_root the holder can import nothing
import select
import signal
import socket
import struct
from typing import Any

# namespaces: steps.unshare() imports it lazily (steps is on `jailshell run`'s
# light path); imported here so a holder that has chrooted can still unshare.
from jailshell.engine import namespaces, steps
from jailshell.engine import syscalls as sc

_PRELOADED = (namespaces,)  # for steps.unshare() (see the import above)

SIOCGIFFLAGS = 0x8913
IFF_UP = 0x1


class Holder:
    def __init__(self, sock: socket.socket, rootfs: str):
        self.sock = sock
        self.rootfs = rootfs
        self.root_mode = "host"  # host | chroot | pivot
        self.unshared: list[str] = []
        # Kept so a later pivot_root can leave a chroot, and so device nodes can
        # be bound from the host in a user namespace. Closed after pivot_root.
        self.host_root_fd: int | None = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- requests ------------------------------------------------------------------

    def op_ping(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"pid": os.getpid()}

    def op_unshare(self, req: dict[str, Any]) -> dict[str, Any]:
        kind = req["kind"]
        if kind == "mnt" and self.host_root_fd is not None:
            # A bind mount's source must be in the caller's own mount namespace,
            # so the fd on the host's root has to follow us into the new one.
            # unshare(CLONE_NEWNS) moves the caller's cwd (and root) to their
            # copies: stand on the host's root while unsharing, keep that.
            cwd = os.getcwd()
            os.fchdir(self.host_root_fd)
            try:
                steps.unshare(kind)
            finally:
                new_root = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                os.close(self.host_root_fd)
                self.host_root_fd = new_root
                os.chdir(cwd)
        else:
            steps.unshare(kind)
        if kind == "mnt":
            steps.make_mounts_private()
        if kind == "user":
            # The host writes uid_map/gid_map now; wait for its go before the
            # reply, so nothing runs unmapped.
            self._send({"ok": True, "need_map": True})
            self._recv()
        self.unshared.append(kind)
        if kind == "pid":
            return self._fork_into_pid_ns()
        return {}

    def _fork_into_pid_ns(self) -> dict[str, Any]:
        pid = os.fork()
        if pid == 0:
            # PID 1 of the new namespace: become the holder.
            sc.set_pdeathsig(signal.SIGKILL)
            return {"pid_in_ns": os.getpid()}
        # The parent: like `unshare --fork`, wait for the child and exit with it.
        self.sock.close()
        sc.set_process_name("jsh-waiter")
        while True:
            try:
                _, status = os.waitpid(pid, 0)
            except ChildProcessError:
                os._exit(0)
            if os.WIFEXITED(status):
                os._exit(os.WEXITSTATUS(status))
            if os.WIFSIGNALED(status):
                # Die of the same signal, as `unshare --fork` does: whoever waits
                # for us sees how PID 1 ended, not a number that could be an exit code.
                sig = os.WTERMSIG(status)
                resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
                if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those two have no handler to reset
                    signal.signal(sig, signal.SIG_DFL)
                    signal.pthread_sigmask(signal.SIG_UNBLOCK, {sig})
                os.kill(os.getpid(), sig)
                os._exit(128 + sig)

    def op_sethostname(self, req: dict[str, Any]) -> dict[str, Any]:
        steps.sethostname(req["name"])
        return {}

    def _root(self) -> str:
        return self.rootfs if self.root_mode == "host" else "/"

    def op_mount(self, req: dict[str, Any]) -> dict[str, Any]:
        what = req["what"]
        if what == "bind":
            target = os.path.join(self._root(), req["target"].lstrip("/"))
            steps.bind_mount(req["source"], target, readonly=bool(req.get("readonly")),
                             host_root_fd=self.host_root_fd)
            return {"target": req["target"]}
        steps.mount_special(what, self._root(), in_userns="user" in self.unshared, host_root_fd=self.host_root_fd)
        return {"target": steps.SPECIAL_MOUNTS[what].target}

    def op_mask(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"masked": steps.mask_paths(self._root())}

    def op_chroot(self, req: dict[str, Any]) -> dict[str, Any]:
        if self.root_mode != "host":
            steps.chroot("/")
        else:
            # `chroot DIR`: another root than the jail's own (a host path). From
            # now on it is the jail's root filesystem: pivot_root moves onto it.
            root = req.get("root") or self.rootfs
            steps.chroot(root)
            self.rootfs = root
        self.root_mode = "chroot"
        return {}

    def op_pivot_root(self, req: dict[str, Any]) -> dict[str, Any]:
        if self.root_mode == "chroot" and self.host_root_fd is not None:
            # pivot_root refuses a caller whose root is not a mount point
            # (EINVAL after chroot): step back out to the real root first.
            steps.leave_chroot(self.host_root_fd)
        steps.pivot_root(self.rootfs)
        self.root_mode = "pivot"
        if self.host_root_fd is not None:
            os.close(self.host_root_fd)
            self.host_root_fd = None
        return {}

    def op_info(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"hostname": os.uname().nodename, "interfaces": interfaces(), "root_mode": self.root_mode,
                "unshared": self.unshared, "cwd": os.getcwd()}

    def op_chroot_escape(self, req: dict[str, Any]) -> dict[str, Any]:
        """The classic escape, done in a child so the holder keeps its root:
        mkdir a dir, chroot into it (cwd stays outside), then walk up with ..
        past the old root and chroot(".") there."""
        def walk_up() -> bytes:
            try:
                os.makedirs("/.jsh-escape", exist_ok=True)
                os.chroot("/.jsh-escape")  # cwd is now outside the root
                for _ in range(64):
                    os.chdir("..")
                os.chroot(".")
                return b"1" + os.uname().nodename.encode() + b"\0" + ",".join(sorted(os.listdir("/"))[:40]).encode()
            except OSError as exc:
                return b"0" + str(exc).encode()

        data = sc.answer_from_child(walk_up)
        try:
            os.rmdir("/.jsh-escape")
        except OSError:
            pass
        if data[:1] == b"1":
            host, _, listing = data[1:].decode().partition("\0")
            return {"escaped": True, "hostname": host, "root_listing": listing.split(",")}
        return {"escaped": False, "error": data[1:].decode()}

    def op_exec(self, req: dict[str, Any]) -> dict[str, Any]:
        """Replace the holder with the jail's command (runc's `start`)."""
        self._send({"ok": True})
        self.sock.close()
        steps.reset_signals()
        reset_oom_score_adj()  # the command is the jail's own process again: killable like any other
        os.chdir(req.get("cwd") or "/")
        env = dict(e.split("=", 1) for e in req.get("env") or [])
        os.execvpe(req["argv"][0], req["argv"], env)

    # -- loop ----------------------------------------------------------------------

    def _send(self, msg: dict[str, Any]) -> None:
        self.sock.send(json.dumps(msg).encode())

    def _recv(self) -> dict[str, Any] | None:
        data = self.sock.recv(1 << 20)
        if not data:
            return None
        result: dict[str, Any] = json.loads(data)
        return result

    def reap(self) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def serve(self) -> None:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd == self.wake_r:
                    try:
                        os.read(self.wake_r, 512)
                    except BlockingIOError:
                        pass
                    self.reap()
                    continue
                req = self._recv()
                if req is None:
                    return  # jailshell closed its end: the jail is over
                # After `unshare pid` this returns in the new PID 1 only (the
                # parent stays in _fork_into_pid_ns); poller and pipes are inherited.
                self._handle(req)

    def _handle(self, req: dict[str, Any]) -> None:
        handler = getattr(self, "op_" + str(req.get("op")), None)
        if handler is None:
            self._send({"ok": False, "errno": 22, "error": f"unknown request {req.get('op')!r}"})
            return
        try:
            reply = handler(req)
        except OSError as exc:
            self._send({"ok": False, "errno": exc.errno or 0, "error": str(exc)})
            return
        except Exception as exc:  # report, never die: the learner's jail must survive a bad request
            self._send({"ok": False, "errno": 0, "error": f"{type(exc).__name__}: {exc}"})
            return
        self._send({"ok": True, **reply})


def interfaces() -> list[tuple[str, bool]]:
    """Network interfaces of this process's net namespace and whether each is up."""
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            req = struct.pack("16sH14s", name.encode()[:15], 0, b"")
            try:
                flags = struct.unpack("16sH14s", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
            except OSError:
                flags = 0
            out.append((name, bool(flags & IFF_UP)))
    return out


def _close_fds_except(keep: set[int]) -> None:
    """No descriptor of jailshell (terminal state, sockets, files) may leak into the jail."""
    lo = 3
    for fd in sorted(keep | {1 << 20}):
        if fd >= lo:
            os.closerange(lo, fd)
            lo = fd + 1


def _set_oom_score_adj(value: int) -> None:
    try:
        with open("/proc/self/oom_score_adj", "w") as fh:
            fh.write(str(value))
    except OSError:
        pass  # lowering it needs CAP_SYS_RESOURCE: without root the holder stays an ordinary candidate


def reset_oom_score_adj() -> None:
    _set_oom_score_adj(0)


def protect_from_oom() -> None:
    """Make the holder the OOM killer's last choice, as containerd's shim does.

    The holder is forked from jailshell, so its resident set counts every page
    it shares copy-on-write with its parent (tens of MB): in a jail whose
    cgroup has a memory limit, the OOM killer would pick the holder over the
    memory hog the lesson runs, and the jail would die instead of the hog.
    Commands run in the jail do not inherit this: they are entered from
    outside, and `exec` resets it before execve."""
    _set_oom_score_adj(-999)


def main(sock: socket.socket, go_fd: int, parent_pid: int, rootfs: str, *,
         stdio: tuple[int, int, int] | None = None, holder_class: type[Holder] | None = None) -> None:
    """Entry point in the freshly forked child. Never returns. stdio: the
    descriptors 0, 1, 2 become (a container's log or console), else /dev/null."""
    code = 0
    try:
        sc.set_pdeathsig(signal.SIGKILL)
        if os.getppid() != parent_pid:
            os._exit(1)  # the parent died before we could ask to die with it
        os.setsid()  # no controlling terminal: Ctrl-C in the REPL must not kill the jail
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)  # a parent's wakeup fd (an asyncio loop's) is not ours to write to
        if stdio is not None:
            for target, fd in enumerate(stdio):
                os.dup2(fd, target)
        else:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.close(null)
        _close_fds_except({sock.fileno(), go_fd})
        # Wait until jailshell has written us into its journal.
        os.read(go_fd, 1)
        os.close(go_fd)
        sc.set_process_name("jsh-holder")
        protect_from_oom()
        holder = (holder_class or Holder)(sock, rootfs)
        holder._send({"ok": True, "pid": os.getpid()})
        holder.serve()
    except BaseException:
        code = 1
    finally:
        os._exit(code)
