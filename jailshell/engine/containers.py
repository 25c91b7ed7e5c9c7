"""Containers that outlive the command that made them: records and lifecycle.

Layout (dockerline.Layout):
  DATA/containers/<id>/container.json     the record: config, state, how it ended
  DATA/containers/<id>/upper, work        the writable layer (kept across stop/start, as docker's)
  DATA/containers/<id>/container-json.log what it printed, in docker's json-file format
  RUN_DIR/containers/<id>/rootfs          the overlay mount, while it is up
  RUN_DIR/containers/<id>/ctl.sock        its supervisor's control socket

A container that is up has a supervisor (jailshell.engine.supervisor), the
process that owns it and its journal. Everything here is the client side:
it reads records, talks to supervisors, and signals PID 1 directly, as the
raw commands shown to the learner do (`kill -TERM PID`).

State (`Record.state`): creating (steps being taken), created (set up, its
process waiting for `start`), running, exited, and dead (it was up, but its
supervisor was killed: `rm` or `jailshell cleanup` finish it off).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from jailshell import paths
from jailshell.engine.dockerline import (
    ContainerSpec,
    ImageFacts,
    Layout,
    Plan,
    PlanStep,
    container_env,
    hostname_of,
    namespaces_of,
    plan_for,
)
from jailshell.engine.jail import Jail
from jailshell.engine.journal import Journal, process_alive, process_starttime
from jailshell.errors import ExitStatus, InvalidInput, JailshellError

CONNECT_TIMEOUT = 60.0  # the supervisor may build the default image first
DETACH_KEYS = b"\x10\x11"  # Ctrl-P Ctrl-Q, docker's default
LIVE = ("creating", "created", "running")

_ADJECTIVES = ("brave", "calm", "eager", "fond", "gentle", "happy", "jolly", "keen", "lucid", "merry", "nifty",
               "quiet", "swift", "tender", "vivid", "witty")
_NOUNS = ("chroot", "cgroup", "veth", "inode", "pivot", "mount", "procfs", "tmpfs", "socket", "signal", "kernel",
          "thread", "holder", "bridge", "overlay", "unshare")


def _base() -> Path:
    return paths.data_dir() / "containers"


# --- records ---------------------------------------------------------------------------------


@dataclass
class Record:
    layout: Layout
    name: str
    image: str
    created: float
    spec: ContainerSpec
    argv: list[str]
    status: str = "creating"
    step: int = 0
    pid: int | None = None  # PID 1 of the container (or its waiting process), as the host sees it
    starttime: int | None = None
    supervisor: int | None = None
    supervisor_start: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    error: str | None = None
    cgroup_procs: list[str] = field(default_factory=list)
    network: dict[str, Any] | None = None

    @property
    def id(self) -> str:
        return self.layout.id

    @property
    def supervisor_alive(self) -> bool:
        return bool(self.supervisor) and running(int(self.supervisor or 0), self.supervisor_start)

    @property
    def state(self) -> str:
        if self.status in LIVE and not self.supervisor_alive:
            return "dead"
        return self.status

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "image": self.image, "created": self.created, "argv": self.argv,
                "config": self.spec.to_dict(),
                "state": {k: getattr(self, k) for k in (
                    "status", "step", "pid", "starttime", "supervisor", "supervisor_start", "started_at",
                    "finished_at", "exit_code", "error", "cgroup_procs", "network")}}

    def save(self) -> None:
        tmp = self.layout.record.with_name(f".container.json.{os.getpid()}")
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        os.replace(tmp, self.layout.record)

    @classmethod
    def load(cls, layout: Layout) -> Record:
        try:
            data = json.loads(layout.record.read_text())
        except FileNotFoundError:
            raise JailshellError(f"no such container: {layout.id}", hint="`ps -a` lists them") from None
        except (json.JSONDecodeError, OSError) as exc:
            raise JailshellError(f"container {layout.id}: unreadable record ({exc})",
                                 hint=f"remove it: rm -f {layout.id}") from None
        if "config" in data:
            spec = ContainerSpec.from_dict(data["config"])
        else:
            # Kept by `jailshell run` without --rm: a container that ran once and exited.
            from jailshell.engine.run import RunSpec

            spec = ContainerSpec(RunSpec(argv=list(data.get("argv") or []), image=data.get("image"), rm=False))
            data["state"] = {"status": "exited"}
        rec = cls(layout, data.get("name") or layout.id, data.get("image") or "busybox:latest",
                  float(data.get("created") or 0), spec, list(data.get("argv") or spec.run.argv))
        for k, v in (data.get("state") or {}).items():
            if k in cls.__dataclass_fields__:
                setattr(rec, k, v)
        return rec


def running(pid: int, starttime: int | None) -> bool:
    """Alive, and not a zombie (a killed supervisor stays in /proc until its
    new parent reaps it, but it is dead for everything here)."""
    return process_alive(pid, starttime)


def records() -> list[Record]:
    base = _base()
    if not base.is_dir():
        return []
    out = []
    for d in base.iterdir():
        if d.name.startswith(".") or not (d / "container.json").is_file():
            continue
        with contextlib.suppress(JailshellError):
            out.append(Record.load(Layout.of(d.name)))
    out.sort(key=lambda r: r.created, reverse=True)
    return out


def resolve(ref: str) -> Record:
    """A container by name, full id or unique id prefix (docker's order)."""
    every = records()
    for r in every:
        if r.name == ref or r.id == ref:
            return r
    found = [r for r in every if r.id.startswith(ref)] if ref else []
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise InvalidInput(f"'{ref}' matches {len(found)} containers", hint="give more of the id, or the name")
    raise JailshellError(f"no such container: {ref}", hint="`ps -a` lists them")


@contextlib.contextmanager
def _names_lock() -> Iterator[None]:
    base = paths.ensure_dir(_base(), 0o700)
    fd = os.open(base / ".lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def new_id() -> str:
    # 12 hex digits: docker's short id, long enough to be unique on one machine,
    # short enough to read in every path of the plan.
    return secrets.token_hex(6)


def _new_name(taken: set[str]) -> str:
    while True:
        name = f"{secrets.choice(_ADJECTIVES)}_{secrets.choice(_NOUNS)}"
        if name not in taken:
            return name


def remove_data(layout: Layout) -> None:
    """The container's data dir, without following a symlink or crossing a mount."""
    from jailshell.engine.journal import undo_dir

    for path in (layout.data, layout.run):
        undo_dir({"path": str(path)})


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        from jailshell.errors import NeedsRoot

        raise NeedsRoot(what)


# --- talking to a supervisor -----------------------------------------------------------------


class Control:
    """One connection to a container's supervisor."""

    def __init__(self, sock: socket.socket, name: str):
        self.sock = sock
        self.name = name

    @classmethod
    def connect(cls, rec: Record) -> Control:
        if not rec.supervisor_alive:
            raise JailshellError(f"container {rec.name} is not up (state: {rec.state})")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.connect(str(rec.layout.ctl))
        except OSError as exc:
            sock.close()
            raise JailshellError(f"cannot reach the supervisor of {rec.name}: {exc.strerror}") from None
        return cls(sock, rec.name)

    def receive(self, timeout: float | None = CONNECT_TIMEOUT) -> dict[str, Any]:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except OSError:
            data = b""
        if not data:
            raise JailshellError(f"the supervisor of {self.name} went away",
                                 hint="see supervisor.log in the container's data directory")
        reply: dict[str, Any] = json.loads(data)
        if not reply.get("ok"):
            raise JailshellError(str(reply.get("error")), hint=reply.get("hint"),
                                 status=ExitStatus(reply.get("code") or 1) if reply.get("code") in
                                 {int(s) for s in ExitStatus} else ExitStatus.ERROR)
        return reply

    def request(self, op: str, **kw: Any) -> dict[str, Any]:
        try:
            self.sock.send(json.dumps({"op": op, **kw}).encode())
        except OSError:
            raise JailshellError(f"the supervisor of {self.name} went away") from None
        return self.receive()

    def close(self) -> None:
        self.sock.close()


def _spawn_supervisor(rec: Record) -> Control:
    """Start the container's supervisor; returns the creator's connection once
    it has mounted the root and started the container's process."""
    import jailshell

    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    env = dict(os.environ)
    # The supervisor must run this very jailshell, wherever it was imported from.
    pkg_parent = str(Path(jailshell.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent, *filter(None, [env.get("PYTHONPATH")])])
    log = os.open(rec.layout.data / "supervisor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jailshell.engine.supervisor", rec.id, str(theirs.fileno())],
            pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd="/",
            start_new_session=True)
    finally:
        theirs.close()
        os.close(log)
    proc.wait()  # the first process forks the supervisor and exits at once
    ctl = Control(mine, rec.name)
    try:
        ctl.receive()
    except BaseException:
        ctl.close()
        raise
    return ctl


# --- create, step by step --------------------------------------------------------------------


@dataclass
class StepOutcome:
    index: int  # 0-based in plan.steps
    step: PlanStep
    facts: list[str]
    pid: int | None
    done: list[str] | None = None  # the commands as the engine ran them (cgroup, network), when it knows them

    @property
    def raw(self) -> list[str]:
        return list(self.done) if self.done else self.step.raw_for(self.pid)


class Creation:
    """`docker create`, one plan step at a time: what the REPL walks with Enter.

    Steps 1 and 2 happen here (the image is resolved; the supervisor is started,
    which mounts the root and starts the process); every further step is done
    by the supervisor on request. Closing the Creation before the last step
    removes the half-built container."""

    def __init__(self, spec: ContainerSpec):
        _require_root("docker run/create (mounts, namespaces)")
        self.spec = spec
        self.layout = Layout.of(new_id())
        self.plan: Plan = plan_for(spec, self.layout, ImageFacts.look_up(spec.run.image))
        self.done = 0
        self.ctl: Control | None = None
        self.record: Record | None = None
        self.pid: int | None = None

    @property
    def remaining(self) -> int:
        """Steps left before exec (which is `start`)."""
        return len(self.plan.steps) - 1 - self.done

    def next(self) -> StepOutcome:
        if self.remaining <= 0:
            raise JailshellError("every step is done: the container is created", hint="start it")
        step = self.plan.steps[self.done]
        done: list[str] | None = None
        if step.key == "image":
            facts = self._image()
        elif step.key == "rootfs":
            facts = self._rootfs()
        else:
            assert self.ctl is not None
            reply = self.ctl.request("next")
            if reply.get("key") != step.key:
                raise JailshellError(f"the supervisor did step {reply.get('key')!r}, expected {step.key!r}")
            facts = list(reply.get("facts") or [])
            self.pid = reply.get("pid") or self.pid
            done = reply.get("raw")
        self.done += 1
        return StepOutcome(self.done - 1, self.plan.steps[self.done - 1], facts, self.pid, done)

    def _image(self) -> list[str]:
        from jailshell.engine.images.store import ImageStore

        image = ImageStore().resolve(self.spec.run.image)
        # The plan was made before the image was known to be there: make it again
        # with the image's real path, command and environment.
        self.plan = plan_for(self.spec, self.layout, ImageFacts.from_image(image))
        return [f"{image.ref}: {image.rootfs} ({image.source or 'imported'})"]

    def _rootfs(self) -> list[str]:
        spec = self.spec
        exec_step = self.plan.steps[-1]
        with _names_lock():
            taken = {r.name for r in records()}
            name = spec.run.name or _new_name(taken)
            if name in taken:
                other = next(r for r in records() if r.name == name)
                raise JailshellError(f'the container name "{name}" is already in use by container {other.id}',
                                     hint=f"remove it (rm -f {name}) or choose another --name")
            spec.run.name = name
            self.layout.data.mkdir(parents=True, mode=0o700)
            self.record = Record(self.layout, name, self.plan.image.ref, time.time(), spec,
                                 list(exec_step.params["argv"]))
            self.record.save()
        try:
            self.ctl = _spawn_supervisor(self.record)
        except BaseException:
            remove_data(self.layout)
            raise
        self.record = Record.load(self.layout)
        self.pid = self.record.pid
        return [f"overlay mounted on {self.layout.rootfs}",
                f"the container's process: PID {self.pid}, not isolated yet (it shares every namespace with the host)"]

    def steps(self) -> Iterator[StepOutcome]:
        while self.remaining > 0:
            yield self.next()

    def finish(self) -> Record:
        """Every step left before exec: the container is `created`."""
        for _ in self.steps():
            pass
        assert self.record is not None
        return Record.load(self.layout)

    def close(self) -> None:
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None


def create(spec: ContainerSpec, on_step: Callable[[StepOutcome], None] | None = None) -> Record:
    """`docker create`: all the steps, the command waiting for `start`."""
    creation = Creation(spec)
    try:
        for outcome in creation.steps():
            if on_step:
                on_step(outcome)
        return Record.load(creation.layout)
    finally:
        creation.close()


# --- start, attach -----------------------------------------------------------------------------


def _control_for_start(rec: Record) -> Control:
    """A connection to a supervisor that can start the container: its own if it
    is up, else a new one (start after stop), which builds the container again
    on the same writable layer."""
    state = rec.state
    if state in ("created", "creating"):
        return Control.connect(rec)
    if state == "dead":
        _finish_dead(rec)
    with _names_lock():
        rec = Record.load(rec.layout)
        rec.error = None
        rec.save()
    ctl = _spawn_supervisor(rec)
    try:
        ctl.request("all")
    except BaseException:
        ctl.close()
        raise
    return ctl


def start(ref: str, *, attach: bool = False, stdin: bool = False, streams: Streams | None = None) -> int | None:
    """`docker start [-a] [-i]`: exec the container's command as PID 1. With
    attach, waits and returns its exit code (None if detached with Ctrl-P Ctrl-Q)."""
    _require_root("docker start")
    rec = resolve(ref)
    if rec.state == "running":
        return attach_to(rec.name, stdin=stdin, streams=streams) if attach else None
    ctl = _control_for_start(rec)
    try:
        if not attach:
            ctl.request("start")
            return None
        return attach_and_start(ctl, Record.load(rec.layout), stdin=stdin and rec.spec.interactive, streams=streams)
    finally:
        ctl.close()


def attach_and_start(ctl: Control, rec: Record, *, stdin: bool, streams: Streams | None) -> int | None:
    """Attach first, then start, in one request: not a byte of output is missed."""
    sup = _pidfd(rec.supervisor, rec.supervisor_start)
    try:
        # Signals are caught before the command starts: a Ctrl-C that comes
        # the moment it runs is passed on to it, never lost or fatal to this client.
        with ClientSignals() as signals:
            reply = ctl.request("attach", start=True, stdin=stdin)
            # The record may be gone by the time we look (--rm and a quick command): take
            # PID 1 from the reply, for passing signals on.
            rec.pid = reply.get("pid")
            rec.starttime = process_starttime(rec.pid) if rec.pid else None
            rec.status = "running"
            code = relay(ctl, rec, tty=bool(reply.get("tty")), send_stdin=stdin, streams=streams, signals=signals)
        if code is not None:
            # The supervisor reports the exit once everything is torn down; wait
            # for it to be gone too, so that nothing of the container is left.
            _wait_gone(sup, 10)
        return code
    finally:
        if sup is not None:
            os.close(sup)


def run(creation: Creation, *, on_step: Callable[[StepOutcome], None] | None = None,
        streams: Streams | None = None) -> int | None:
    """`docker run`: create (every step), then start; attached unless -d.
    Returns the exit code (None when detached, or detached from with Ctrl-P Ctrl-Q)."""
    spec = creation.spec
    try:
        for outcome in creation.steps():
            if on_step:
                on_step(outcome)
        ctl = creation.ctl
        assert ctl is not None
        try:
            if spec.detach:
                ctl.request("start")
                return None
            return attach_and_start(ctl, Record.load(creation.layout), stdin=spec.interactive, streams=streams)
        except JailshellError:
            if spec.run.rm:  # docker run --rm removes a container whose command could not start
                creation.close()
                rm(creation.layout.id, force=True)
            raise
    finally:
        creation.close()


def attach_to(ref: str, *, stdin: bool = True, streams: Streams | None = None) -> int | None:
    """`docker attach`: this terminal to the running container; Ctrl-P Ctrl-Q detaches."""
    rec = resolve(ref)
    if rec.state != "running":
        raise JailshellError("You cannot attach to a stopped container, start it first",
                             hint=f"start -a {rec.name}")
    ctl = Control.connect(rec)
    try:
        send_stdin = stdin and rec.spec.interactive
        with ClientSignals() as signals:
            reply = ctl.request("attach", stdin=send_stdin)
            return relay(ctl, rec, tty=bool(reply.get("tty")), send_stdin=send_stdin, streams=streams,
                         signals=signals)
    finally:
        ctl.close()


def _to_fd(fd: int) -> Callable[[bytes], None]:
    return lambda data: _write_all(fd, data)


@dataclass
class Streams:
    """Where an attached client (and `logs`) reads and writes: this process's
    own stdin, stdout and stderr by default; the REPL passes its console's."""

    stdin: int = 0
    out: Callable[[bytes], None] = field(default_factory=lambda: _to_fd(1))
    err: Callable[[bytes], None] = field(default_factory=lambda: _to_fd(2))
    notice: Callable[[str], None] = field(default=lambda text: print(text, file=sys.stderr))


class ClientSignals:
    """SIGINT, SIGTERM and SIGWINCH of an attached client, caught (on the main
    thread) and queued for relay, which passes the first two on to PID 1, as
    docker's client does, and the last as the new window size. Installed before
    the attach request, so none that comes while the command starts is lost."""

    def __init__(self) -> None:
        self.caught: list[int] = []
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.on_main = threading.current_thread() is threading.main_thread()
        self._old: dict[int, Any] = {}
        self._old_wakeup = -1

    def __enter__(self) -> ClientSignals:
        if self.on_main:
            self._old_wakeup = signal.set_wakeup_fd(self.wake_w)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGWINCH):
                self._old[sig] = signal.signal(sig, lambda signum, frame: self.caught.append(signum))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.on_main:
            for sig, handler in self._old.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(self._old_wakeup)
        os.close(self.wake_r)
        os.close(self.wake_w)


def relay(ctl: Control, rec: Record, *, tty: bool, send_stdin: bool, streams: Streams | None = None,
          signals: ClientSignals | None = None) -> int | None:
    """Copy the container's output here and this input there until it exits
    (its code) or the learner detaches with Ctrl-P Ctrl-Q (None)."""
    if signals is None:
        with ClientSignals() as own:
            return relay(ctl, rec, tty=tty, send_stdin=send_stdin, streams=streams, signals=own)
    import termios
    import tty as ttymod

    from jailshell.engine.supervisor import EOF, ERR, EXIT, IN, OUT, RESIZE

    s = streams or Streams()
    sock = ctl.sock
    sock.settimeout(None)
    raw_tty = tty and send_stdin and os.isatty(s.stdin)
    saved = termios.tcgetattr(s.stdin) if raw_tty else None

    def send_size() -> None:
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(s.stdin)
            sock.send(bytes([RESIZE]) + json.dumps({"rows": size.lines, "cols": size.columns}).encode())

    poller = select.poll()
    poller.register(sock, select.POLLIN)
    poller.register(signals.wake_r, select.POLLIN)
    if send_stdin:
        poller.register(s.stdin, select.POLLIN)
    saw_ctrl_p = False
    interrupts = 0
    # Signals caught before the loop (while the command was starting) are handled at once.
    with contextlib.suppress(BlockingIOError):  # full: it is awake already
        os.write(signals.wake_w, b"\0")
    try:
        if raw_tty:
            ttymod.setraw(s.stdin, termios.TCSANOW)  # not TCSAFLUSH: keep what was typed ahead
            send_size()
        while True:
            for fd, _ in poller.poll():
                if fd == signals.wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(signals.wake_r, 64)
                    while signals.caught:
                        sig = signals.caught.pop(0)
                        if sig == signal.SIGWINCH:
                            if raw_tty:
                                send_size()
                            continue
                        interrupts += 1
                        if interrupts > 1:
                            s.notice(f"detached from {rec.name}; it keeps running")
                            return None
                        try:
                            note = signal_pid1(rec, sig)
                        except JailshellError:
                            continue  # it has just ended: its exit code is on the way
                        s.notice(f"sent {signal.Signals(sig).name} to PID 1 of {rec.name}"
                                 + (f": {note}. Ctrl-C again detaches (the container keeps running)" if note else ""))
                elif fd == s.stdin:
                    data = os.read(s.stdin, 4096)
                    if not data:
                        poller.unregister(s.stdin)
                        sock.send(bytes([EOF]))
                        continue
                    if raw_tty:
                        if saw_ctrl_p and data[:1] == DETACH_KEYS[1:]:
                            return None
                        if DETACH_KEYS in data:
                            sock.send(bytes([IN]) + data[: data.index(DETACH_KEYS)])
                            return None
                        if saw_ctrl_p:
                            data = DETACH_KEYS[:1] + data
                        saw_ctrl_p = data.endswith(DETACH_KEYS[:1])
                        if saw_ctrl_p:
                            data = data[:-1]  # held back: it may be the start of the detach keys
                    if data:
                        sock.send(bytes([IN]) + data)
                else:
                    try:
                        frame = sock.recv(1 << 20)
                    except OSError:
                        frame = b""
                    if not frame:
                        raise JailshellError(f"lost the connection to {rec.name}'s supervisor")
                    kind, body = frame[0], frame[1:]
                    if kind == OUT:
                        s.out(body)
                    elif kind == ERR:
                        s.err(body)
                    elif kind == EXIT:
                        return int(json.loads(body)["code"])
    finally:
        if saved is not None:
            termios.tcsetattr(s.stdin, termios.TCSADRAIN, saved)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        n = os.write(fd, data)
        data = data[n:]


# --- signals to PID 1 -----------------------------------------------------------------------


def _sig_mask(pid: int, field_name: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def catches(pid: int, sig: int) -> bool:
    """Whether the process has a handler for sig (SigCgt in /proc/PID/status)."""
    return bool(_sig_mask(pid, "SigCgt") & (1 << (sig - 1)))


def why_dropped(pid: int, sig: int) -> str | None:
    """Why a signal sent from the host to a container's PID 1 will have no
    effect, or None when it will be delivered."""
    if sig in (signal.SIGKILL, signal.SIGSTOP):
        return None  # forced, when sent from an ancestor PID namespace
    name = signal.Signals(sig).name
    if _sig_mask(pid, "SigIgn") & (1 << (sig - 1)):
        return f"PID 1 ignores {name} (SigIgn in /proc/{pid}/status)"
    if catches(pid, sig):
        return None
    try:
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        comm = "?"
    return (f"PID 1 ({comm}) has no handler for {name} (SigCgt in /proc/{pid}/status): the kernel gives the init "
            "of a PID namespace only the signals it handles, so it drops this one; only SIGKILL and SIGSTOP "
            "from outside the namespace are forced")


def _pidfd(pid: int | None, starttime: int | None) -> int | None:
    """A pidfd on the process if it is still the one recorded (no PID reuse)."""
    if not pid:
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    if not running(pid, starttime):
        os.close(fd)
        return None
    return fd


def signal_pid1(rec: Record, sig: int) -> str | None:
    """Send sig to the container's PID 1; returns why it will have no effect, if so."""
    fd = _pidfd(rec.pid, rec.starttime)
    if fd is None:
        raise JailshellError(f"container {rec.name} is not running")
    try:
        note = why_dropped(int(rec.pid or 0), sig)
        signal.pidfd_send_signal(fd, sig)
        return note
    finally:
        os.close(fd)


def _wait_gone(fd: int | None, timeout: float) -> bool:
    if fd is None:
        return True
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(max(0.0, timeout) * 1000))


@dataclass
class StopReport:
    name: str
    was_running: bool
    seconds: float = 0.0
    killed: bool = False  # escalated to SIGKILL
    exit_code: int | None = None
    note: str | None = None
    raw: list[str] = field(default_factory=list)


def stop(ref: str, timeout: float = 10) -> StopReport:
    """`docker stop`: SIGTERM to PID 1, SIGKILL if it is still there after timeout."""
    _require_root("docker stop")
    rec = resolve(ref)
    if rec.state != "running":
        return StopReport(rec.name, False, exit_code=rec.exit_code)
    pid = int(rec.pid or 0)
    sup = _pidfd(rec.supervisor, rec.supervisor_start)
    # As one line that can be pasted: the SIGKILL fails harmlessly if SIGTERM ended it.
    report = StopReport(rec.name, True, raw=[f"kill -TERM {pid}", f"sleep {timeout:g}",
                                             f"kill -KILL {pid} 2>/dev/null"])
    t0 = time.monotonic()
    try:
        report.note = signal_pid1(rec, signal.SIGTERM)
        if not _wait_gone(sup, timeout):
            report.killed = True
            with contextlib.suppress(JailshellError):
                signal_pid1(rec, signal.SIGKILL)
            if not _wait_gone(sup, 30):
                raise JailshellError(f"container {rec.name} did not go away after SIGKILL")
    finally:
        if sup is not None:
            os.close(sup)
    report.seconds = time.monotonic() - t0
    with contextlib.suppress(JailshellError):
        report.exit_code = Record.load(rec.layout).exit_code
    return report


def kill(ref: str, sig: int = signal.SIGKILL) -> str | None:
    """`docker kill -s SIG`: returns why PID 1 will not react, if it will not."""
    _require_root("docker kill")
    rec = resolve(ref)
    if rec.state != "running":
        raise JailshellError(f"container {rec.name} is not running")
    return signal_pid1(rec, sig)


# --- remove ----------------------------------------------------------------------------------


def _finish_dead(rec: Record) -> list[str]:
    """Undo what a killed supervisor left of this container (its journal)."""
    from jailshell.engine import journal as jmod

    removed = []
    for path in jmod.journals():
        if not path.stem.endswith(f"-ctr-{rec.id}"):
            continue
        pid, start = jmod.owner_of(path)
        if running(pid, start):  # a killed supervisor not reaped yet (a zombie) is dead too
            continue
        j = jmod.Journal.load(path)
        for entry, exc in j.undo_all():
            if exc:
                raise JailshellError(f"could not remove {entry.describe()}: {exc}", hint="run `jailshell cleanup`")
            removed.append(entry.describe())
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return removed


def _shut_down(rec: Record) -> None:
    """Ask the supervisor to end the container now (it kills, tears down, exits)."""
    sup = _pidfd(rec.supervisor, rec.supervisor_start)
    if sup is None:
        return
    try:
        signal.pidfd_send_signal(sup, signal.SIGTERM)
        if not _wait_gone(sup, 15):
            signal.pidfd_send_signal(sup, signal.SIGKILL)
            _wait_gone(sup, 5)
    finally:
        os.close(sup)


def rm(ref: str, *, force: bool = False) -> str:
    """`docker rm [-f]`: nothing of the container stays: processes, mounts,
    directories, journal, record."""
    _require_root("docker rm")
    rec = resolve(ref)
    if rec.state == "running" and not force:
        raise JailshellError(f"You cannot remove a running container {rec.id}. Stop the container before "
                             "attempting removal or force remove", hint=f"stop {rec.name}, or rm -f {rec.name}")
    _shut_down(rec)
    _finish_dead(rec)
    remove_data(rec.layout)
    return rec.name


@dataclass
class PruneReport:
    removed: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def prune(*, system: bool = False) -> PruneReport:
    """`docker container prune` (every container not running); `system prune`
    also removes what dead jailshell processes left on the host."""
    _require_root("docker prune")
    report = PruneReport()
    for rec in records():
        if rec.state in ("running", "creating"):
            continue
        try:
            report.removed.append(rm(rec.id))
        except JailshellError as exc:
            report.failed.append(f"{rec.name}: {exc.message}")
    if system:
        from jailshell.engine.cleanup import cleanup

        result = cleanup()
        report.leftovers += result.removed
        report.failed += result.failed
    return report


# --- look inside -----------------------------------------------------------------------------


def logs(ref: str, *, follow: bool = False, timestamps: bool = False, tail: int | None = None,
         streams: Streams | None = None, poll: float = 0.1) -> None:
    """`docker logs`: what the container printed, from its json-file log."""
    s = streams or Streams()
    rec = resolve(ref)
    try:
        fh: IO[bytes] = open(rec.layout.log, "rb")  # noqa: SIM115 - kept open while following
    except FileNotFoundError:
        return
    with fh:
        lines = fh.readlines()
        if tail is not None:
            lines = lines[-tail:] if tail else []
        partial = b""  # a line being written while we read: completed by the next read
        while True:
            for raw in lines:
                raw, partial = partial + raw, b""
                if not raw.endswith(b"\n"):
                    partial = raw
                    break
                _log_line(raw, timestamps, s)
            if not follow:
                return
            # Whether the supervisor (the only writer) is alive is asked before
            # reading: once it is gone, what is read next is all there will be.
            try:
                alive = Record.load(rec.layout).supervisor_alive
            except JailshellError:  # removed meanwhile (--rm): it has stopped for good
                alive = False
            lines = fh.readlines()
            if not lines:
                if not alive:
                    return
                time.sleep(poll)  # nothing tells us when the file grows: look again


def _log_line(raw: bytes, timestamps: bool, s: Streams) -> None:
    entry = json.loads(raw)
    data = entry["log"].encode("utf-8", "surrogateescape")
    if timestamps:
        data = entry["time"].encode() + b" " + data
    (s.err if entry.get("stream") == "stderr" else s.out)(data)


class _RunningJail(Jail):
    """A handle on a running container's jail, to enter it like nsenter does
    (`docker exec`); the container itself belongs to its supervisor."""

    user_ids: tuple[int, int, list[int]] | None = None

    def _preexec(self, nsfds: dict[str, int], root_fd: int, cwd: str | None, tty_fd: int | None) -> None:
        super()._preexec(nsfds, root_fd, cwd, tty_fd)
        if self.user_ids is not None:
            uid, gid, groups = self.user_ids
            os.setgroups(groups)
            os.setgid(gid)
            os.setuid(uid)


def _jail_of(rec: Record) -> _RunningJail:
    from jailshell.engine.images.store import Image, parse_ref

    name, tag = parse_ref(rec.image)
    facts = ImageFacts(rec.image, None)
    env = container_env(rec.spec, facts, hostname_of(rec.spec, rec.layout))
    image = Image(name, tag, rec.layout.data, config={"Env": env})
    j = _RunningJail(rec.id, image, rec.layout.rootfs, rec.layout.run, Journal.for_owner(tag=f"exec-{rec.id}"))
    j.pid = int(rec.pid or 0)
    j.state.unshared = namespaces_of(rec.spec)
    j.state.hostname = hostname_of(rec.spec, rec.layout)
    j.state.root_mode = "pivot"
    j.cgroup_procs = list(rec.cgroup_procs)
    return j


def _prepare_exec(ref: str, env: list[str] | None, user: str | None) -> tuple[_RunningJail, dict[str, str]]:
    _require_root("docker exec")
    from jailshell.engine.dockerline import _env
    from jailshell.engine.supervisor import _user_ids

    rec = resolve(ref)
    if rec.state != "running":
        raise JailshellError(f"container {rec.name} is not running", hint=f"start {rec.name}")
    jail = _jail_of(rec)
    extra = dict(e.split("=", 1) for e in _env(env or []))
    # docker exec runs as the container's user (run --user) unless -u says otherwise.
    try:
        uid, gid, groups, home = _user_ids(user or rec.spec.user, root=f"/proc/{jail.pid}/root")
    except LookupError as exc:
        raise JailshellError(str(exc)) from None
    jail.user_ids = (uid, gid, groups)
    if not any(e.startswith("HOME=") for e in rec.spec.run.env):  # run -e HOME=... stays
        extra.setdefault("HOME", home)
    return jail, extra


def exec_equivalents(ref: str, argv: list[str], *, env: list[str] | None = None, workdir: str | None = None,
                     user: str | None = None, line: str = "") -> Any:
    """The by-hand form of `docker exec` (Equivalents), from the same facts the
    engine uses: nsenter into PID 1's namespaces and root, its cgroups joined
    first, the environment the engine gives (env -i), its user and directory."""
    import shlex

    from jailshell.engine.equivalents import for_exec

    jail, extra = _prepare_exec(ref, env, user)
    full = jail._env(extra)
    full.pop("PS1", None)  # the engine's prompt for interactive shells only
    cmd = ["env", "-i", *(f"{k}={v}" for k, v in sorted(full.items())), *argv]
    if workdir:
        # Not nsenter --wd=DIR: it would open DIR before entering the mount namespace.
        cmd = ["sh", "-c", f"cd {shlex.quote(workdir)} && exec \"$@\"", "sh", *cmd]
    eq = for_exec(jail, cmd)
    raw = eq.raw[0]
    assert jail.user_ids is not None
    uid, gid, groups = jail.user_ids
    note = ("nsenter enters the namespaces and the root of the container's PID 1, but not its cgroups: the "
            "`echo $$ > cgroup.procs` lines do that first")
    if uid or gid:
        # nsenter -S/-G switch ids once inside.
        raw = raw.replace(f"nsenter --target {jail.pid} ", f"nsenter --target {jail.pid} -S {uid} -G {gid} ", 1)
        if groups:
            note += f"; nsenter -G drops supplementary groups, which docker keeps ({','.join(map(str, groups))})"
    return type(eq)(docker=line or f"docker exec {ref} {' '.join(shlex.quote(a) for a in argv)}", raw=[raw],
                    where="host", note=note)


def exec_output(ref: str, argv: list[str], *, env: list[str] | None = None, workdir: str | None = None,
                user: str | None = None, timeout: float = 60) -> Any:
    """`docker exec` with its output captured (an ExecResult): what the REPL shows."""
    jail, extra = _prepare_exec(ref, env, user)
    return jail.exec(argv, env=extra, cwd=workdir, timeout=timeout)


def exec_in(ref: str, argv: list[str], *, interactive: bool = False, tty: bool = False, detach: bool = False,
            env: list[str] | None = None, workdir: str | None = None, user: str | None = None) -> int | None:
    """`docker exec`: a new process in the running container's namespaces, root
    and cgroup, entered the way nsenter(1) does. Returns its exit code (None with -d)."""
    jail, extra = _prepare_exec(ref, env, user)
    if detach:
        proc = jail.popen(argv, env=extra, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
        threading.Thread(target=proc.wait, daemon=True).start()  # reaped, never a zombie of ours
        return None
    use_tty = tty and os.isatty(0)
    on_main = threading.current_thread() is threading.main_thread()
    # Ignored before the fork: the child makes itself the terminal's foreground
    # group (tcsetpgrp) while still in the background, which stops it with
    # SIGTTOU unless ignored; it puts every signal back before exec.
    ttou = signal.signal(signal.SIGTTOU, signal.SIG_IGN) if on_main else None
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if on_main else None
    try:
        proc = jail.popen(argv, env=extra, cwd=workdir, tty=use_tty, stdin=None if interactive or use_tty
                          else subprocess.DEVNULL)
        code = proc.wait()
    finally:
        if use_tty:
            with contextlib.suppress(OSError):
                os.tcsetpgrp(0, os.getpgrp())
        if on_main:
            signal.signal(signal.SIGINT, old)
            signal.signal(signal.SIGTTOU, ttou)
    return code if code >= 0 else 128 - code


def export(ref: str, out: IO[bytes]) -> int:
    """`docker export`: the container's root filesystem as one flat tar (its
    own files over the image's; nothing of /proc, /sys, /dev). Returns the entry count."""
    _require_root("docker export")
    from jailshell.engine.rootfs import export_tar

    rec = resolve(ref)
    if rec.supervisor_alive:
        return export_tar(rec.layout.rootfs, out)
    # Not up: a read-only overlay of the container's layer over the image, for
    # as long as the tar takes (lowerdirs only: no upper, so nothing can change).
    from jailshell.engine import syscalls as sc
    from jailshell.engine.images.store import ImageStore

    image = ImageStore().resolve(rec.image)
    journal = Journal.for_owner(tag=f"export-{rec.id}")
    paths.ensure_dir(paths.run_dir(), 0o700)
    tmp = paths.run_dir() / f"export-{rec.id}-{os.getpid()}"
    journal.record("dir", path=str(tmp))
    tmp.mkdir(mode=0o700)
    try:
        with journal.resource("mount", target=str(tmp)):
            # The container's upper sits on the lowers its overlay had: the layers or the flattened root.
            lowers = [str(d) for d in ImageStore().overlay_lowers(image)]
            lower = ":".join([str(rec.layout.upper), *lowers] if rec.layout.upper.is_dir() else lowers)
            sc.mount("overlay", tmp, "overlay", sc.MS_RDONLY, f"lowerdir={lower}")
        return export_tar(tmp, out)
    finally:
        journal.undo_all()


@dataclass
class PsRow:
    id: str
    image: str
    command: str
    created: float
    status: str
    ports: str
    name: str
    pid: int | None
    state: str


def ps(*, all: bool = False) -> list[PsRow]:
    rows = []
    now = time.time()
    for rec in records():
        state = rec.state
        if not all and state != "running":
            continue
        if state == "running":
            status = f"Up {human_duration(now - (rec.started_at or now))}"
        elif state == "exited":
            code = "?" if rec.exit_code is None else rec.exit_code
            status = f"Exited ({code}) {human_duration(now - (rec.finished_at or rec.created))} ago"
        elif state == "dead":
            status = "Dead (its supervisor was killed)"
        else:
            status = state.capitalize()
        ports = ", ".join(str(p) for p in rec.spec.publish)
        rows.append(PsRow(rec.id, rec.image, " ".join(rec.argv), rec.created, status, ports, rec.name,
                          rec.pid if state == "running" else None, state))
    return rows


def human_duration(seconds: float) -> str:
    """docker's wording (go-units HumanDuration)."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    m = s // 60
    if m == 1:
        return "About a minute"
    if m < 60:
        return f"{m} minutes"
    h = round(s / 3600)
    if h == 1:
        return "About an hour"
    if h < 48:
        return f"{h} hours"
    if h < 24 * 7 * 2:
        return f"{h // 24} days"
    if h < 24 * 30 * 2:
        return f"{h // 24 // 7} weeks"
    if h < 24 * 365 * 2:
        return f"{h // 24 // 30} months"
    return f"{h // 24 // 365} years"
