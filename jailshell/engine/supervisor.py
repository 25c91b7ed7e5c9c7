"""One container's supervisor: the long-lived process that owns it.

docker has containerd-shim, podman has conmon: a small process per container
that is its parent, holds its terminal or output pipes, writes its log and
records how it ended. This is jailshell's. It starts as its own interpreter
(`python -m jailshell.engine.supervisor ID FD`, so nothing of the REPL's
threads or terminal comes along) and detaches from whoever started it (fork,
new session): a container outlives the REPL or CLI that ran it.

It owns the container's journal. While it runs, `jailshell cleanup` leaves
the container alone; if it is killed, the container goes with it (the
container's processes carry PR_SET_PDEATHSIG tied to the supervisor, never
to the REPL) and `cleanup` removes what is left, like for any dead owner.

The container is a live jail (jailshell.engine.jail): its holder takes the
plan's steps one at a time and finally execs the command as PID 1, as runc's
create and start do, with stdio on the supervisor's pseudo-terminal or pipes.

Control socket (AF_UNIX, SOCK_SEQPACKET: one message a packet). Requests are
JSON {"op": ...}; replies {"ok": true, ...} or {"ok": false, "error", "hint", "code"}.
  next    do the next step of the plan          -> {"index", "key", "facts", "pid"} or {"done": true}
  all     do every step but exec                -> {"done": true}
  start   the rest, then exec the command as PID 1 -> {"pid"}
  attach  {"stdin": bool, "start": bool}        -> then frames, one a packet:
          to the client  b"\\x01"+stdout  b"\\x02"+stderr  b"\\x09"+JSON {"code"}
          from it        b"\\x00"+input  b"\\x03"+JSON {"rows", "cols"}  b"\\x04" (end of input)
  state   -> {"status", "step"}
The connection that created the container (inherited as FD) owns it until
the last step before exec: if it goes away first, the half-built container
is removed, as if it had never been asked for.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import selectors
import signal
import socket
import struct
import sys
import termios
import time
from dataclasses import dataclass, field
from typing import Any

from jailshell import paths
from jailshell.engine import holder as holder_mod
from jailshell.engine import steps
from jailshell.engine import syscalls as sc
from jailshell.engine.dockerline import ImageFacts, Layout, Plan, PlanStep, plan_for
from jailshell.engine.images.store import Image, ImageStore
from jailshell.engine.jail import Jail
from jailshell.engine.journal import Journal, process_starttime
from jailshell.errors import ExitStatus, JailshellError

OUT, ERR, EXIT, IN, RESIZE, EOF = 1, 2, 9, 0, 3, 4
DRAIN_SECONDS = 1.0  # after PID 1 is gone, how long its last output may take to arrive


# --- inside the container: the holder, and PID 1 -----------------------------------------


def _user_ids(user: str | None, root: str = "/") -> tuple[int, int, list[int], str]:
    """--user USER[:GROUP] (None: root) -> uid, gid, the groups for setgroups,
    home, as docker computes them (runc's GetExecUser, moby's getUser): from
    the jail's own /etc/passwd and /etc/group, under root, which is "/" for the
    holder (it has pivoted) and /proc/PID/root from the host. The groups are
    the primary one, then every group that lists the user; a uid with no
    passwd entry gets gid 0 and home "/"."""
    name, _, group = (user or "").partition(":")

    def table(path: str) -> list[list[str]]:
        try:
            with open(path) as fh:
                return [line.rstrip("\n").split(":") for line in fh if line.count(":") >= 3]
        except OSError:
            return []

    passwd, groups = table(os.path.join(root, "etc/passwd")), table(os.path.join(root, "etc/group"))
    entry = next((e for e in passwd if (e[2] == "0" if not name else e[0] == name or (name.isdigit() and e[2] == name))),
                 None)
    if entry is None and name and not name.isdigit():
        raise LookupError(f"unable to find user {name}: no matching entries in passwd file")
    uid = int(entry[2]) if entry else int(name or 0)
    gid = int(entry[3]) if entry and len(entry) > 3 and entry[3].isdigit() else 0
    home = entry[5] if entry and len(entry) > 5 and entry[5] else "/"
    extra = []
    if group:
        g = next((e for e in groups if e[0] == group or (group.isdigit() and e[2] == group)), None)
        if g is None and not group.isdigit():
            raise LookupError(f"unable to find group {group}: no matching entries in group file")
        gid = int(g[2]) if g else int(group)
    elif entry:
        extra = [int(e[2]) for e in groups if entry[0] in e[3].split(",")]
    return uid, gid, [gid, *extra], home


def _which(cmd: str, path: str) -> str:
    """The file execve will run, or the error docker reports."""
    candidates = [cmd] if "/" in cmd else [os.path.join(d or ".", cmd) for d in path.split(":")]
    denied = None
    for cand in candidates:
        if os.path.isfile(cand):
            if os.access(cand, os.X_OK):
                return cand
            denied = cand
    if denied:
        raise PermissionError(errno.EACCES, f"{denied}: permission denied")
    raise FileNotFoundError(errno.ENOENT, f"{cmd}: executable file not found in $PATH")


class ContainerHolder(holder_mod.Holder):
    """The live jail's holder, with what a container's PID 1 needs on top:
    exec as another user, in a working directory, on a controlling terminal,
    and an exit status that tells "killed by SIGKILL" from "exit 137"."""

    def op_exec(self, req: dict[str, Any]) -> dict[str, Any]:
        argv = list(req["argv"])
        env = dict(e.split("=", 1) for e in req.get("env") or [])
        cwd = req.get("cwd") or "/"
        try:
            uid, gid, groups, home = _user_ids(req.get("user"))
        except LookupError as exc:
            raise OSError(errno.ENOENT, str(exc)) from None
        env.setdefault("HOME", home)
        os.makedirs(cwd, exist_ok=True)  # docker creates a missing working directory
        path = _which(argv[0], env.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
        doing = "setuid"
        slave = None
        if req.get("tty"):
            # The terminal comes from the container's own devpts (/dev/ptmx ->
            # pts/ptmx), as runc's console socket does it: inside, `tty` names
            # /dev/pts/0, and the host's ptys are not involved. The master end
            # goes to the supervisor with the reply (SCM_RIGHTS).
            master, slave = os.openpty()
        # Everything that can fail with a clear message has been checked: only
        # now does the holder say yes and become the command.
        if slave is not None:
            socket.send_fds(self.sock, [json.dumps({"ok": True, "console": True}).encode()], [master])
            os.close(master)
        else:
            self._send({"ok": True})
        self.sock.close()
        steps.reset_signals()
        holder_mod.reset_oom_score_adj()  # the command is the container's PID 1, killable like any other
        if slave is not None:
            for fd in (0, 1, 2):
                os.dup2(slave, fd)
            os.close(slave)
            # A session of its own, with the pty as controlling terminal: job
            # control and Ctrl-C in an interactive shell need both.
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        try:
            # Always, as docker does: without --user, root with the groups
            # the image gives root, not those of whoever started jailshell.
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)
            doing = f"cd {cwd}"
            os.chdir(cwd)
            doing = f"exec {path}"
            os.execve(path, argv, env)
        except OSError as exc:
            # Nobody is listening on the socket any more: tell the container's
            # stderr (its log), as runc does, and end as a command that could not run.
            os.write(2, f"jailshell: {doing}: {exc.strerror}\n".encode())
            os._exit(ExitStatus.CANNOT_EXECUTE)
        return {}  # not reached


class ContainerJail(Jail):
    """A live jail whose root is the container's overlay (upper dir kept in the
    container's data dir, so `start` after `stop` finds its files again) and
    whose holder has the container's stdio."""

    stdio: tuple[int, int, int] = (0, 1, 2)

    @classmethod
    def build(cls, plan: Plan, image: Image, journal: Journal, stdio: tuple[int, int, int]) -> ContainerJail:
        layout = plan.layout
        jail = cls(layout.id, image, layout.rootfs, layout.run, journal)
        jail.stdio = stdio
        try:
            step = plan.step("rootfs")
            assert step is not None
            jail._mount_root(step.params)
            jail._start_holder()
        except BaseException:
            jail.close()
            raise
        return jail

    def _mount_root(self, p: dict[str, Any]) -> None:
        # The upper dir's mode is the mode of the container's "/": 0755, or
        # nobody but root could use the container's root (docker's diff dirs too).
        os.makedirs(p["upper"], mode=0o755, exist_ok=True)
        os.makedirs(p["work"], mode=0o700, exist_ok=True)
        self.rootfs.mkdir(mode=0o755)
        entry = self.journal.record("mount", target=str(self.rootfs))
        data = f"lowerdir={p['lower']},upperdir={p['upper']},workdir={p['work']}"
        try:
            try:
                sc.mount("overlay", self.rootfs, "overlay", 0, data)
            except OSError:
                if p.get("flat", p["lower"]) == p["lower"]:
                    raise
                # The image's layers would not stack here: its flattened root holds the same files.
                data = f"lowerdir={p['flat']},upperdir={p['upper']},workdir={p['work']}"
                sc.mount("overlay", self.rootfs, "overlay", 0, data)
        except OSError as exc:
            self.journal.release(entry)
            from jailshell.errors import kernel_error

            raise kernel_error("mounting the container's overlay root", exc,
                               hint=steps.overlay_upper_hint(str(p["upper"]))) from None
        self.rootfs_mode = "overlay"
        self.overlay_data = data

    def _holder_main(self, sock: socket.socket, go_fd: int, parent_pid: int) -> None:
        # Tied by PDEATHSIG to the supervisor, which is what owns the container;
        # with the container's stdio instead of /dev/null.
        holder_mod.main(sock, go_fd, parent_pid, str(self.rootfs), stdio=self.stdio, holder_class=ContainerHolder)

    def start_command(self, argv: list[str], env: list[str], cwd: str, user: str | None,
                      tty: bool) -> tuple[int, int | None]:
        """runc start: the holder becomes the command. Returns its PID (the
        host's view) and, with tty, the master end of its terminal."""
        self._send({"op": "exec", "argv": argv, "env": env, "cwd": cwd, "user": user, "tty": tty})
        assert self.sock is not None
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 20, 1)
        except OSError:
            data, fds = b"", []
        if not data:
            raise self._gone()
        reply = json.loads(data)
        master = fds[0] if fds else None
        if not reply.get("ok"):
            err = reply.get("errno")
            status = ExitStatus.NOT_FOUND if err == errno.ENOENT else ExitStatus.CANNOT_EXECUTE
            message = re.sub(r"^\[Errno \d+\] ", "", str(reply.get("error")))
            hint = ("--user names a user of the image's /etc/passwd, or is a number" if "unable to find" in message
                    else "the command is looked up in the image's PATH, inside the container")
            raise JailshellError(message, status=status, hint=hint)
        self.sock.close()
        self.sock = None
        return self.pid, master


# --- the supervisor ------------------------------------------------------------------------


def _facts_unshare(jail: Jail, kinds: list[str]) -> list[str]:
    from jailshell.engine.namespaces import BY_KIND, ns_inode

    me = os.getpid()
    out = [f"{k}: host {ns_inode(me, BY_KIND[k])} -> container {ns_inode(jail.pid, BY_KIND[k])}" for k in kinds]
    out.append(f"the container's process is PID 1 inside, PID {jail.pid} on the host")
    return out


@dataclass
class Conn:
    sock: socket.socket
    attached: bool = False
    stdin: bool = False
    creator: bool = False


@dataclass
class Output:
    fd: int
    stream: str  # stdout | stderr
    frame: int


@dataclass
class Supervisor:
    cid: str
    layout: Layout = field(init=False)
    plan: Plan = field(init=False)
    jail: ContainerJail | None = None
    journal: Journal | None = None
    conns: dict[int, Conn] = field(default_factory=dict)
    outputs: dict[int, Output] = field(default_factory=dict)
    input_fd: int | None = None
    pending_input: bytearray = field(default_factory=bytearray)
    close_input_when_flushed: bool = False
    master_fd: int | None = None
    winsize: dict[str, int] | None = None
    listener: socket.socket | None = None
    next_index: int = 0
    exit_code: int | None = None
    stopping: bool = False
    log_fd: int = -1
    done_raw: list[str] | None = None  # the commands the last step really ran, when they differ from the plan's

    def __post_init__(self) -> None:
        from jailshell.engine import containers

        self.layout = Layout.of(self.cid)
        self.record = containers.Record.load(self.layout)
        self.sel = selectors.DefaultSelector()
        # A container being created for the first time (not a `start` after a
        # stop) that fails or is abandoned before it is created never existed.
        self.fresh = self.record.status == "creating"
        self.remove = self.record.spec.run.rm

    # -- record --------------------------------------------------------------------------

    def save(self, **changes: Any) -> None:
        for k, v in changes.items():
            setattr(self.record, k, v)
        self.record.save()

    # -- set-up --------------------------------------------------------------------------

    def setup(self) -> dict[str, Any]:
        self.journal = Journal.for_owner(tag=f"ctr-{self.cid}")
        run = self.layout.run
        paths.ensure_dir(run.parent, 0o700)
        self.journal.record("dir", path=str(run))
        run.mkdir(mode=0o700)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.listener.bind(str(self.layout.ctl))
        self.listener.listen(16)
        image = ImageStore().resolve(self.record.image)
        self.plan = plan_for(self.record.spec, self.layout, ImageFacts.from_image(image))
        stdio = self._make_stdio()
        self.jail = ContainerJail.build(self.plan, image, self.journal, stdio)
        for fd in set(stdio):
            os.close(fd)
        self.log_fd = os.open(self.layout.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.next_index = 2  # image and rootfs are done
        self.save(status="creating", supervisor=os.getpid(), supervisor_start=process_starttime(os.getpid()),
                  pid=self.jail.pid, starttime=process_starttime(self.jail.pid), exit_code=None, error=None,
                  finished_at=None, step=self.next_index)
        return {"pid": self.jail.pid, "facts": [
            f"overlay mounted on {self.layout.rootfs}", f"the container's process: PID {self.jail.pid}, "
            "not isolated yet (it shares every namespace with the host)"]}

    def _make_stdio(self) -> tuple[int, int, int]:
        """The container's stdin, stdout, stderr: pipes (stdin only with -i), or
        with -t nothing yet: the terminal is made when the command starts."""
        spec = self.record.spec
        if spec.tty:
            # The terminal is made at start, in the container (ContainerHolder.op_exec).
            null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            return null, null, null
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        for fd, stream, frame in ((out_r, "stdout", OUT), (err_r, "stderr", ERR)):
            os.set_blocking(fd, False)
            self.outputs[fd] = Output(fd, stream, frame)
        if spec.interactive:
            in_r, in_w = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(in_w, False)
            self.input_fd = in_w
        else:
            in_r = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        return in_r, out_w, err_w

    # -- steps ---------------------------------------------------------------------------

    def do_next(self) -> dict[str, Any]:
        """One step of the plan (never exec: that is `start`)."""
        steps_ = self.plan.steps
        if self.next_index >= len(steps_) - 1:
            return {"done": True}
        step = steps_[self.next_index]
        self.done_raw = None
        facts = self._do(step)
        self.next_index += 1
        changes: dict[str, Any] = {"step": self.next_index, "pid": self.jail.pid if self.jail else None}
        if self.next_index >= len(steps_) - 1:
            changes["status"] = "created"
        if changes["pid"]:
            changes["starttime"] = process_starttime(changes["pid"])
        self.save(**changes)
        return {"index": self.next_index - 1, "key": step.key, "facts": facts, "pid": changes["pid"],
                "raw": self.done_raw}

    def _do(self, step: PlanStep) -> list[str]:
        j = self.jail
        assert j is not None
        p = step.params
        if step.key == "cgroup":
            return self._cgroup(p)
        if step.key == "unshare":
            for kind in p["kinds"]:
                j.unshare(kind)
            return _facts_unshare(j, p["kinds"])
        if step.key == "hostname":
            j.sethostname(p["name"])
            return [f"hostname inside: {j.info()['hostname']}; the host's is still {socket.gethostname()}"]
        if step.key == "network":
            return self._network(p)
        if step.key == "mounts":
            for name in p["names"]:
                j.mount(name)
            return [f"mounted: {', '.join(j.state.mounts)}"]
        if step.key == "volumes":
            for host, inside, ro in p["volumes"]:
                j.mount("bind", source=host, target=inside, readonly=ro)
            return [f"bound: {', '.join(v[1] for v in p['volumes'])}"]
        if step.key == "pivot_root":
            j.pivot_root()
            return [f"/proc/{j.pid}/root is now the overlay; the host's tree is detached"]
        if step.key == "mask":
            masked = j.mask()
            return [f"masked or read-only: {', '.join(masked)}"]
        raise JailshellError(f"unknown plan step {step.key!r}")

    def _cgroup(self, p: dict[str, Any]) -> list[str]:
        """The container's cgroup in every hierarchy jailshell uses, its limits,
        and the container's process in it (before it unshares the cgroup namespace)."""
        from jailshell.engine.cgroup_layout import WANTED, detect
        from jailshell.engine.cgroup_limits import Limits
        from jailshell.engine.cgroups import Cgroup

        assert self.jail is not None and self.journal is not None
        lim = p["limits"]
        limits = Limits(lim.get("memory"), lim.get("pids"), lim.get("cpus"))
        layout = detect()
        # Limits need their controllers; otherwise every one this machine has, as docker does.
        wanted = tuple(limits.controllers()) or tuple(c for c in WANTED if layout.hierarchy(c) is not None)
        extra = tuple(c for c in WANTED if c not in wanted and layout.hierarchy(c) is not None)
        cg = Cgroup.create(p["name"], self.journal, controllers=(*wanted, *extra), layout=layout)
        applied = cg.set_limits(limits) if limits.controllers() else None
        joined = cg.join(self.jail.pid)
        self.jail.cgroup = cg
        self.jail.cgroup_procs = cg.procs_files()
        self.save(cgroup_procs=cg.procs_files())
        self.done_raw = [op.raw for op in cg.created] + (applied.raw if applied else []) + joined.raw
        stats = cg.stats()
        return [f"{label}: {value}" for label, value, _src in stats.rows() if "limit" in label] or \
            ["no limits: the cgroup only counts"]

    def _network(self, p: dict[str, Any]) -> list[str]:
        from jailshell.engine import network as net

        assert self.jail is not None
        jn = net.JailNet.for_jail(self.jail)
        if p["mode"] == "none":
            jn.lo_up()
            return ["lo is up; it is the only interface"]
        from jailshell.engine.dockerline import Port, publish_text

        peers = self._peers([name for name, _ in p["links"]], jn.config)
        done = jn.connect(p["mode"], publish=[publish_text(Port(**x)) for x in p["publish"]],
                          links=[f"{name}:{alias}" for name, alias in p["links"]], peers=peers)
        self.save(network={"mode": p["mode"], "address": str(jn.address) if jn.address else None,
                           "bridge": jn.config.bridge if jn.bridged else None,
                           "host_end": jn.host_end, "published": [str(x) for x in jn.published]})
        self.done_raw = [cmd for s in done for cmd in s.equivalents.raw]
        return [s.summary for s in done]

    def _peers(self, names: list[str], config: Any) -> dict[str, Any]:
        """--link targets: running containers on the bridge, as the network module sees jails."""
        from jailshell.engine import containers
        from jailshell.engine import network as net

        peers = {}
        for name in names:
            rec = containers.resolve(name)
            info = rec.network or {}
            if rec.state != "running" or not info.get("address"):
                raise JailshellError(f"cannot link to {name}: it is not running on the bridge",
                                     hint=f"start it first: docker run -d --name {name} ...")
            assert self.journal is not None
            other = net.JailNet(int(rec.pid or 0), rec.id, self.journal, config=config)
            other.address = net.IPv4Address(info["address"])
            other.bridged = bool(info.get("bridge"))
            peers[rec.name] = other
        return peers

    def do_start(self) -> dict[str, Any]:
        if self.record.status == "running":
            raise JailshellError(f"container {self.record.name} is already running")
        while self.next_index < len(self.plan.steps) - 1:
            self.do_next()
        step = self.plan.steps[-1]
        p = step.params
        assert self.jail is not None
        try:
            pid, master = self.jail.start_command(p["argv"], p["env"], p["cwd"], p["user"], p["tty"])
        except JailshellError as exc:
            self.save(error=exc.message, exit_code=int(exc.status))
            raise
        if master is not None:
            os.set_blocking(master, False)
            self.master_fd = self.input_fd = master
            self.outputs[master] = Output(master, "stdout", OUT)
            self.sel.register(master, selectors.EVENT_READ, "output")
            if self.winsize is not None:
                self._resize(self.winsize)
        self.next_index = len(self.plan.steps)
        self.save(status="running", pid=pid, starttime=process_starttime(pid), started_at=time.time(),
                  step=self.next_index, error=None, exit_code=None)
        return {"pid": pid}

    # -- the loop -------------------------------------------------------------------------

    def serve(self, creator: socket.socket) -> None:
        assert self.listener is not None
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self.sel.register(wake_r, selectors.EVENT_READ, "wake")
        self.sel.register(self.listener, selectors.EVENT_READ, "accept")
        self._add_conn(creator, creator=True)
        for fd in self.outputs:
            self.sel.register(fd, selectors.EVENT_READ, "output")
        while self.exit_code is None:
            for key, events in self.sel.select(timeout=1.0):
                what = key.data
                if what == "wake":
                    with contextlib.suppress(BlockingIOError):
                        os.read(wake_r, 512)
                elif what == "accept":
                    with contextlib.suppress(OSError):
                        conn, _ = self.listener.accept()
                        self._add_conn(conn)
                elif what == "output":
                    if events & selectors.EVENT_READ:
                        self._read_output(key.fd)
                    if events & selectors.EVENT_WRITE:
                        self._flush_input()
                elif what == "input":
                    self._flush_input()
                elif isinstance(what, Conn):
                    self._from_client(what)
            self._check_child()
            if self.stopping and self.exit_code is None:
                self._kill_all()
        self._drain()
        signal.set_wakeup_fd(-1)

    def _on_signal(self, signum: int, frame: object) -> None:
        if signum != signal.SIGCHLD:
            self.stopping = True  # rm -f, or a shutdown: the container goes, its files are cleaned

    def _kill_all(self) -> None:
        assert self.jail is not None
        for pid in [self.jail.pid, *self.jail.holder_pids]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _check_child(self) -> None:
        if self.jail is None or not self.jail.holder_pids:
            return
        first = self.jail.holder_pids[0]
        try:
            pid, status = os.waitpid(first, os.WNOHANG)
        except ChildProcessError:
            pid, status = first, 0
        if pid == first:
            code = os.waitstatus_to_exitcode(status)
            self.exit_code = code if code >= 0 else 128 - code

    def _add_conn(self, sock: socket.socket, *, creator: bool = False) -> None:
        c = Conn(sock, creator=creator)
        self.conns[sock.fileno()] = c
        self.sel.register(sock, selectors.EVENT_READ, c)

    def _drop(self, c: Conn) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(c.sock)
        self.conns.pop(c.sock.fileno(), None)
        c.sock.close()
        if c.creator and self.record.status == "creating":
            self.stopping = True  # abandoned half-way
            self.remove = self.remove or self.fresh

    def _send(self, c: Conn, data: bytes) -> bool:
        try:
            c.sock.settimeout(5)
            c.sock.send(data)
            return True
        except OSError:
            self._drop(c)
            return False

    def _from_client(self, c: Conn) -> None:
        try:
            data = c.sock.recv(1 << 20)
        except OSError:
            data = b""
        if not data:
            self._drop(c)
            return
        if c.attached:
            kind, body = data[0], data[1:]
            if kind == IN and c.stdin and self.input_fd is not None:
                self.pending_input += body
                self._flush_input()
            elif kind == RESIZE:
                self.winsize = json.loads(body)
                self._resize(self.winsize)
            elif kind == EOF and c.stdin and not self.record.spec.tty:
                self.close_input_when_flushed = True
                self._flush_input()
            return
        try:
            req = json.loads(data)
            reply = self._handle(c, req)
        except JailshellError as exc:
            reply = {"ok": False, "error": exc.message, "hint": exc.hint, "code": int(exc.status)}
        except Exception as exc:  # a bad request must not take the container down
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "hint": None, "code": 1}
        self._send(c, json.dumps(reply).encode())

    def _resize(self, size: dict[str, int]) -> None:
        if self.master_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.ioctl(self.master_fd, termios.TIOCSWINSZ,
                            struct.pack("HHHH", int(size["rows"]), int(size["cols"]), 0, 0))

    def _handle(self, c: Conn, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "state":
            return {"ok": True, "status": self.record.status, "step": self.next_index}
        if op == "next":
            return {"ok": True, **self.do_next()}
        if op == "all":
            while not self.do_next().get("done"):
                pass
            return {"ok": True, "done": True}
        if op == "start":
            return {"ok": True, **self.do_start()}
        if op == "attach":
            c.attached = True
            c.stdin = bool(req.get("stdin")) and self.record.spec.interactive
            c.sock.settimeout(5)
            result: dict[str, Any] = {"ok": True, "tty": self.record.spec.tty, "status": self.record.status}
            if req.get("start"):
                try:
                    result.update(self.do_start())
                except JailshellError:
                    c.attached = False
                    raise
            elif self.record.status != "running":
                c.attached = False
                raise JailshellError(f"container {self.record.name} is not running",
                                     hint=f"start it: start -a {self.record.name}")
            return result
        raise JailshellError(f"unknown request {op!r}")

    # -- stdio ---------------------------------------------------------------------------

    def _read_output(self, fd: int) -> None:
        out = self.outputs.get(fd)
        if out is None:
            return
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: the pty has no slave left
            data = b""
        if not data:
            self._close_output(fd)
            return
        self._log(out.stream, data)
        for c in list(self.conns.values()):
            if c.attached:
                self._send(c, bytes([out.frame]) + data)

    def _close_output(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(fd)
        self.outputs.pop(fd, None)
        if fd == self.master_fd:
            return  # closed at the end: it is also the input
        os.close(fd)

    def _log(self, stream: str, data: bytes) -> None:
        """docker's json-file log format: one JSON object a line."""
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e9):09d}Z"
        text = data.decode("utf-8", "surrogateescape")
        lines = [{"log": piece, "stream": stream, "time": stamp} for piece in text.splitlines(keepends=True)]
        os.write(self.log_fd, "".join(json.dumps(x) + "\n" for x in lines).encode())

    def _flush_input(self) -> None:
        fd = self.input_fd
        if fd is None:
            return
        try:
            while self.pending_input:
                n = os.write(fd, self.pending_input)
                del self.pending_input[:n]
        except BlockingIOError:
            pass
        except OSError:  # nobody reads the container's stdin any more
            self.pending_input.clear()
        waiting = bool(self.pending_input)
        if fd == self.master_fd:
            self.sel.modify(fd, selectors.EVENT_READ | (selectors.EVENT_WRITE if waiting else 0), "output")
            return
        registered = fd in self.sel.get_map()
        if waiting and not registered:
            self.sel.register(fd, selectors.EVENT_WRITE, "input")
        elif not waiting and registered:
            self.sel.unregister(fd)
        if not waiting and self.close_input_when_flushed:
            os.close(fd)
            self.input_fd = None

    def _drain(self) -> None:
        """PID 1 is gone (and with it every process of its PID namespace): read
        what is still in the pipes or the pty, then stop."""
        deadline = time.monotonic() + DRAIN_SECONDS
        while self.outputs and time.monotonic() < deadline:
            for fd in list(self.outputs):
                self._read_output(fd)
            if self.outputs:
                time.sleep(0.01)

    # -- the end -------------------------------------------------------------------------

    def finish(self) -> None:
        """Tear the container's runtime down, record how it ended, tell the
        attached clients, and go. With --rm, nothing of it stays."""
        if self.listener is not None:
            self.listener.close()
        errors = []
        if self.jail is not None:
            try:
                self.jail.close()
            except JailshellError as exc:
                errors.append(exc.message)
        elif self.journal is not None:
            errors += [f"{e.describe()}: {exc}" for e, exc in self.journal.undo_all() if exc]
        for fd in [*self.outputs, *([self.master_fd] if self.master_fd is not None else []),
                   *([self.input_fd] if self.input_fd not in (None, self.master_fd) else [])]:
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.log_fd >= 0:
            os.close(self.log_fd)
        code = self.exit_code if self.exit_code is not None else 137
        if self.record.status != "running":  # never started by this supervisor
            code = self.record.exit_code if self.record.exit_code is not None else code
        if self.remove:
            from jailshell.engine import containers

            containers.remove_data(self.layout)
        else:
            self.save(status="exited", exit_code=code, finished_at=time.time(), supervisor=None,
                      supervisor_start=None, error="; ".join(errors) or self.record.error)
        for c in list(self.conns.values()):
            if c.attached:
                self._send(c, bytes([EXIT]) + json.dumps({"code": code}).encode())
            with contextlib.suppress(OSError):
                c.sock.close()


def main(argv: list[str]) -> int:
    cid, creator_fd = argv[0], int(argv[1])
    # Leave whoever started us: they wait for this first process only, and the
    # supervisor carries on as an orphan in a session of its own.
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    os.chdir("/")
    # stdout and stderr are the container's supervisor.log (a traceback there is a bug).
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    creator = socket.socket(fileno=creator_fd)
    sup: Supervisor | None = None
    try:
        sup = Supervisor(cid)
        ready = sup.setup()
    except BaseException as exc:
        msg = exc.message if isinstance(exc, JailshellError) else f"{type(exc).__name__}: {exc}"
        hint = exc.hint if isinstance(exc, JailshellError) else None
        with contextlib.suppress(OSError):
            creator.send(json.dumps({"ok": False, "error": msg, "hint": hint, "code": 1}).encode())
        if sup is not None:
            sup.remove = sup.remove or sup.fresh
            sup.finish()
        if not isinstance(exc, JailshellError):
            raise  # a bug: its traceback goes to supervisor.log
        return 1
    try:
        creator.send(json.dumps({"ok": True, **ready}).encode())
    except OSError:
        sup.stopping = True
    try:
        sup.serve(creator)
    finally:
        sup.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
