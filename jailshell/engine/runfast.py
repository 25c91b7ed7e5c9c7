"""The processes of `jailshell run`, and the plain run without heavy imports.

Two halves:

- The container's processes (middle(), container_init(), fork_into_new_pid_ns()),
  used by every run: jailshell.engine.run.run() prepares a Plan and forks.
- run_plain(): the whole of a plain `jailshell run --rm` (as root, the
  default image, no network, limits, volumes or user namespace), done here
  with nothing heavier than os, ctypes and json. run.py's RunSpec, the image
  store and the journal module pull in dataclasses, inspect, pathlib and
  typing: 20-25 ms of Python imports, more than the container itself costs,
  in a command benchmarked against runc (bench/). run_plain() keeps the same
  guarantees: the container's directory and process are journaled, in the
  journal module's format, before they exist (tests/engine/test_runfast.py
  checks the format against journal.Journal.load and a kill -9 against
  `jailshell cleanup`); anything it does not handle returns None and goes to
  run.run().

Nothing is mounted in the host's mount namespace: the overlay root is
mounted by PID 1 inside the new one, so it vanishes with the container even
on kill -9. What is left on the host (the container's directory) is journaled.
"""

from __future__ import annotations

import json
import os
import signal
import time

from jailshell.engine import steps
from jailshell.engine import syscalls as sc

# What docker gives a container, in the order the raw command lists them.
DEFAULT_NAMESPACES = ("mnt", "uts", "ipc", "net", "pid", "cgroup")
DEFAULT_MOUNTS = ("proc", "sys", "tmp", "dev", "devpts", "shm", "mqueue")
# namespaces.BY_KIND[kind].flag, without the dataclass import (a test checks they agree).
NS_FLAGS = {"user": sc.CLONE_NEWUSER, "mnt": sc.CLONE_NEWNS, "uts": sc.CLONE_NEWUTS, "ipc": sc.CLONE_NEWIPC,
            "net": sc.CLONE_NEWNET, "pid": sc.CLONE_NEWPID, "cgroup": sc.CLONE_NEWCGROUP}


class Plan:
    """Everything the container's processes need, decided before the fork."""

    def __init__(self, *, cdir: str, lower: str, argv: list[str], env: dict[str, str], workdir: str,
                 hostname: str, kinds: list[str], volumes: list[tuple[str, str, bool]] | None = None,
                 network: str = "none", lowers: list[str] | None = None):
        self.cdir = cdir  # the container's directory: rootfs/, upper/, work/
        self.lower = lower  # the image's flattened root: the one lowerdir without layers, and what a copy copies
        # The image's layer directories, top first, when they were kept (`image import --layers`):
        # then they are the overlay's lowerdirs, as docker's overlay2 mounts them.
        self.lowers = lowers or [lower]
        self.argv = argv
        self.env = env
        self.workdir = workdir
        self.hostname = hostname
        self.kinds = kinds
        self.volumes = volumes or []
        self.network = network


# The mount(2) options are one page: a longer lowerdir= list is refused with EINVAL.
MAX_MOUNT_DATA = 4095


def overlay_data(lowers: list[str], upper: str, work: str) -> str:
    """The options of an overlay mount: lowers top first, then the writable upper."""
    return f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"


def layer_lowers(images_root: str, meta: dict[str, object], upper: str = "", work: str = "") -> list[str]:
    """An image's kept layer directories (image.json's "layer_dirs", relative to the
    store, bottom first) as overlayfs lowerdirs: top first. Empty when the image
    was stored flattened only, a layer directory is missing, or the list would
    not fit in mount(2)'s options beside upper and work (when not given, room
    for long ones is kept). ImageStore.lowerdirs is this, here so the plain run
    needs no import for it."""
    rels = meta.get("layer_dirs") or []
    assert isinstance(rels, list)
    dirs = [os.path.join(images_root, rel) for rel in reversed(rels)]
    if not dirs or not all(os.path.isdir(d) for d in dirs):
        return []
    if len(overlay_data(dirs, upper or "u" * 256, work or "w" * 256)) > MAX_MOUNT_DATA:
        return []
    return dirs


def image_command(config: dict[str, object], args: list[str], entrypoint: str | None = None) -> list[str]:
    """docker's rule for what a container runs: the image's Entrypoint, then
    the command line's arguments or, without any, the image's Cmd. An
    --entrypoint replaces the image's (an empty one removes it) and drops its
    Cmd: then only the command line's arguments follow. Image.command is this
    (in this module so the plain run needs no import for it)."""
    if entrypoint is None:
        entry = list(config.get("Entrypoint") or [])  # type: ignore[call-overload]
        argv = entry + (list(args) or list(config.get("Cmd") or []))  # type: ignore[call-overload]
        return argv or ["/bin/sh"]
    argv = ([entrypoint] if entrypoint else []) + list(args)
    if not argv:
        from jailshell.errors import InvalidInput

        raise InvalidInput("no command to run: --entrypoint '' removes the image's entrypoint and its Cmd",
                           hint="give the command after the image")
    return argv


def container_env(image_env: list[str], extra: list[str]) -> dict[str, str]:
    env = dict(e.split("=", 1) for e in [*image_env, "HOME=/root", *extra])
    env.setdefault("TERM", os.environ.get("TERM", "xterm"))
    return env


def read_all(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    return data


def _report(err_w: int, stage: str, errno: int | None, error: str, code: int) -> None:
    os.write(err_w, json.dumps({"stage": stage, "errno": errno, "error": error, "code": code}).encode())


def container_init(plan: Plan, err_w: int) -> None:
    """G: PID 1 of the new namespaces. Set up the root and exec. Never returns."""
    stage = "setting up the root file system"
    in_userns = "user" in plan.kinds
    try:
        sc.set_pdeathsig(signal.SIGKILL)
        root = os.path.join(plan.cdir, "rootfs")
        upper = os.path.join(plan.cdir, "upper")
        work = os.path.join(plan.cdir, "work")
        try:
            try:
                sc.mount("overlay", root, "overlay", 0, overlay_data(plan.lowers, upper, work))
            except OSError:
                if plan.lowers == [plan.lower]:
                    raise
                # The layers would not stack here: the flattened root holds the same files.
                sc.mount("overlay", root, "overlay", 0, overlay_data([plan.lower], upper, work))
        except OSError:
            # No overlayfs here (or not in a user namespace on an old kernel):
            # a private copy, made once into the upper dir, bound as the root.
            import shutil

            stage = "copying the image (overlayfs unavailable)"
            shutil.copytree(plan.lower, upper, symlinks=True, dirs_exist_ok=True)
            sc.mount(upper, root, None, sc.MS_BIND | sc.MS_REC)
        host_root_fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        for name in DEFAULT_MOUNTS:
            stage = f"mounting {name}"
            steps.mount_special(name, root, in_userns=in_userns, host_root_fd=host_root_fd)
        for host, inside, ro in plan.volumes:
            stage = f"mounting volume {host}"
            steps.bind_mount(host, os.path.join(root, inside.lstrip("/")), readonly=ro, host_root_fd=host_root_fd)
        os.close(host_root_fd)
        stage = "bringing lo up"
        if plan.network != "host":
            steps.loopback_up()
        stage = "sethostname"
        steps.sethostname(plan.hostname)
        # From here on the host's tree (and Python's standard library) is gone:
        # nothing below may import.
        stage = "pivot_root"
        steps.pivot_root(root)
        stage = "masking host paths"
        steps.mask_paths("/")
        os.chdir(plan.workdir)
        steps.reset_signals()
        stage = f"exec {plan.argv[0]}"
        os.execvpe(plan.argv[0], plan.argv, plan.env)
    except OSError as exc:
        # 127 as a shell says "not found", 126 for anything else.
        code = 127 if isinstance(exc, FileNotFoundError) and stage.startswith("exec") else 126
        _report(err_w, stage, exc.errno, str(exc), code)
        os._exit(code)
    except BaseException as exc:
        _report(err_w, stage, 0, repr(exc), 126)
    os._exit(126)


def middle(plan: Plan, go_r: int, err_w: int, ready_w: int, *, pid_ns_done: bool = False) -> None:
    """C: unshare everything at once, then fork PID 1 and wait for it, like
    `unshare --fork`. With pid_ns_done (see fork_into_new_pid_ns) this
    process already is PID 1 of a new PID namespace: it unshares the others
    and becomes the container itself, no second fork. Never returns."""
    status = 126
    kinds = plan.kinds
    try:
        sc.set_pdeathsig(signal.SIGKILL)
        os.read(go_r, 1)  # jailshell has journaled us
        flags = 0
        for kind in kinds:
            if not (pid_ns_done and kind == "pid"):
                flags |= NS_FLAGS[kind]
        try:
            sc.unshare(flags)
        except OSError as exc:
            _report(err_w, f"unshare({', '.join(kinds)})", exc.errno, str(exc), 126)
            os._exit(126)
        if "user" in kinds or plan.network == "bridge":
            os.write(ready_w, b"u")  # the parent writes our uid/gid maps, makes our network
            os.read(go_r, 1)
        os.close(ready_w)
        steps.make_mounts_private()
        if pid_ns_done:
            container_init(plan, err_w)
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        pid = os.fork()
        if pid == 0:
            container_init(plan, err_w)
        os.close(err_w)
        while True:
            _, st = os.waitpid(pid, 0)
            if os.WIFEXITED(st):
                status = os.WEXITSTATUS(st)
                break
            if os.WIFSIGNALED(st):
                status = 128 + os.WTERMSIG(st)
                break
    finally:
        os._exit(status)


def can_fork_into_new_pid_ns(kinds: list[str]) -> bool:
    """Whether the middle process may be saved (one Python fork and exit,
    1-2 ms): only as root without a user namespace (the PID namespace must
    then be owned by the new user namespace, which only the child can make),
    and only with no other thread alive, which could fork into the
    container's PID namespace while this process points its children there.
    /proc/self/task counts every thread, the C libraries' too, and costs
    less than importing threading (1.5 ms)."""
    return "pid" in kinds and "user" not in kinds and len(os.listdir("/proc/self/task")) == 1


def fork_into_new_pid_ns() -> int:
    """fork() with the child born as PID 1 of a new PID namespace, as runc's
    clone(CLONE_NEWPID) does: unshare(CLONE_NEWPID) only changes where this
    process's *children* go, so this process stays where it is, and is put
    back (setns to its own PID namespace) right after the fork."""
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.unshare(sc.CLONE_NEWPID)
        pid = os.fork()
        if pid != 0:
            sc.setns(own, sc.CLONE_NEWPID)
        return pid
    except BaseException:
        sc.setns(own, sc.CLONE_NEWPID)
        raise
    finally:
        os.close(own)


def start(plan: Plan) -> tuple[int, int, int, int, bool]:
    """Fork the container's first process, waiting on its go pipe:
    (pid, go_w, err_r, ready_r, direct). The caller journals pid, then
    writes one byte to go_w."""
    # What PID 1 imports, imported here, once per process: not paid again
    # inside every container, and after pivot_root nothing can be imported.
    # lo goes up through a socket (steps.loopback_up); os.execvpe imports
    # warnings (os.get_exec_path).
    import _socket  # noqa: F401
    import fcntl  # noqa: F401
    import warnings  # noqa: F401

    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    direct = can_fork_into_new_pid_ns(plan.kinds)
    pid = fork_into_new_pid_ns() if direct else os.fork()
    if pid == 0:
        os.close(go_w)
        os.close(err_r)
        os.close(ready_r)
        middle(plan, go_r, err_w, ready_w, pid_ns_done=direct)
    for fd in (go_r, err_w, ready_w):
        os.close(fd)
    return pid, go_w, err_r, ready_r, direct


def wait_status(pid: int) -> int:
    _, st = os.waitpid(pid, 0)
    status = os.waitstatus_to_exitcode(st)
    return status if status >= 0 else 128 - status


# -- the plain run ----------------------------------------------------------------------

DEFAULT_REF = ("busybox", "latest")
# store.Image.env() for an image whose config has no Env (a test checks they agree).
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class PlainResult:
    """The part of run.RunResult that `jailshell run` reads."""

    def __init__(self, status: int, container_id: str, timings: dict[str, float]):
        self.status = status
        self.container_id = container_id
        self.timings = timings
        self.oom_killed = False  # no --memory on the plain path
        self.network: list[object] = []  # no --network bridge either


def run_dir() -> str:
    """paths.run_dir() for root, without pathlib."""
    return os.environ.get("JAILSHELL_RUN_DIR") or "/run/jailshell"


def data_dir() -> str:
    """paths.data_dir() for root, without pathlib."""
    return os.environ.get("JAILSHELL_DATA_DIR") or "/var/lib/jailshell"


def process_starttime(pid: int) -> int | None:
    """journal.process_starttime: field 22 of /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2:].split()[19])


class MiniJournal:
    """The journal (jailshell/engine/journal.py) for one run's two entries, in
    its file layout and line format, so `jailshell cleanup` finds them."""

    def __init__(self, tag: str):
        pid = os.getpid()
        directory = os.path.join(run_dir(), "journal")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.path = os.path.join(directory, f"{pid}-{process_starttime(pid)}-{tag}.jsonl")
        self.pending: set[int] = set()
        self.next = 1

    def _append(self, rec: dict[str, object]) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, (json.dumps(rec, separators=(",", ":")) + "\n").encode())
        finally:
            os.close(fd)

    def record(self, kind: str, **fields: object) -> int:
        entry, self.next = self.next, self.next + 1
        self.pending.add(entry)
        self._append({"op": "add", "id": entry, "kind": kind, "ts": round(time.time(), 3), **fields})
        return entry

    def release(self, entry: int) -> None:
        if entry not in self.pending:
            return
        self.pending.discard(entry)
        self._append({"op": "done", "id": entry})
        if not self.pending:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def remove_container_dir(cdir: str) -> None:
    """The container's directory after the container is gone: plain rmdir of
    empty directories (what /bin/true leaves), else journal.undo_dir, which
    unmounts anything below first and removes whatever the container wrote.
    rmdir never crosses a mount point (EBUSY), so the shortcut is safe."""
    try:
        for sub in ("work/work", "work/index", "work", "upper", "rootfs", ""):
            path = os.path.join(cdir, sub) if sub else cdir
            try:
                os.rmdir(path)
            except FileNotFoundError:
                if sub in ("work/work", "work/index"):
                    continue  # overlay makes these; not there when the root was a copy
                raise
    except OSError:
        from jailshell.engine.journal import undo_dir

        undo_dir({"path": cdir})


def plain_enough(*, image: str | None, rm: bool, userns: bool, volumes: list[str], network: str,
                 publish: list[str], links: list[str], memory: str | None, pids_limit: str | None,
                 cpus: str | None) -> bool:
    """Whether run_plain() takes this command line (everything else is run.run()'s)."""
    return (image is None and rm and not userns and not volumes and network == "none" and not publish
            and not links and memory is None and pids_limit is None and cpus is None and os.geteuid() == 0)


def run_plain(argv: list[str], *, env: list[str], workdir: str | None, hostname: str | None,
              name: str | None, entrypoint: str | None = None) -> PlainResult | None:
    """`jailshell run --rm` of the default image, as run.run() does it; None
    when the image has not been built yet (run.run() builds it)."""
    t0 = time.perf_counter()
    image_dir = os.path.join(data_dir(), "images", *DEFAULT_REF)
    try:
        with open(os.path.join(image_dir, "image.json"), "rb") as fh:
            meta = json.loads(fh.read())
    except FileNotFoundError:
        return None
    config = meta.get("config") or {}
    argv = image_command(config, argv, entrypoint)
    cid = os.urandom(6).hex()  # 12 hex digits, as docker's short ids
    kinds = list(DEFAULT_NAMESPACES)
    cdir = os.path.join(run_dir(), "containers", cid)
    lowers = layer_lowers(os.path.join(data_dir(), "images"), meta, os.path.join(cdir, "upper"),
                          os.path.join(cdir, "work"))
    plan = Plan(cdir=cdir, lower=os.path.join(image_dir, "rootfs"), argv=argv,
                env=container_env(list(config.get("Env") or [DEFAULT_PATH]), env),
                workdir=workdir or config.get("WorkingDir") or "/", hostname=hostname or name or cid, kinds=kinds,
                lowers=lowers)
    journal = MiniJournal(f"run-{cid}")
    os.makedirs(os.path.dirname(plan.cdir), mode=0o700, exist_ok=True)
    dir_entry = journal.record("dir", path=plan.cdir)
    os.mkdir(plan.cdir, 0o700)
    for sub in ("rootfs", "upper", "work"):
        os.mkdir(os.path.join(plan.cdir, sub))
    timings = {"prepare": time.perf_counter() - t0}
    pid, go_w, err_r, ready_r, _ = start(plan)
    proc_start = process_starttime(pid)
    proc_entry = journal.record("process", pid=pid, starttime=proc_start)
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the container
    try:
        os.write(go_w, b"g")
        os.close(ready_r)
        timings["started"] = time.perf_counter() - t0
        status = wait_status(pid)
        journal.release(proc_entry)
        err = read_all(err_r)
    finally:
        signal.signal(signal.SIGINT, old_int)
        os.close(go_w)
        os.close(err_r)
        if proc_entry in journal.pending:
            # An exception before the container was reaped (Ctrl-C is ignored, so
            # hardly ever): the journal's own undo kills and reaps it.
            from jailshell.engine.journal import undo_process

            undo_process({"pid": pid, "starttime": proc_start})
            journal.release(proc_entry)
        remove_container_dir(plan.cdir)
        journal.release(dir_entry)
    timings["exited"] = time.perf_counter() - t0
    if err:
        raise_container_error(err, argv[0], "busybox:latest")
    return PlainResult(status, cid, timings)


def raise_container_error(err: bytes, program: str, image_ref: str) -> None:
    """What PID 1 reported through the error pipe, as the user's error."""
    from jailshell.errors import ExitStatus, JailshellError

    info = json.loads(err)
    if info["stage"].startswith("exec") and info["errno"] == 2:
        raise JailshellError(f"{program}: command not found in image {image_ref}", status=ExitStatus.NOT_FOUND)
    raise JailshellError(f"{info['stage']} failed: {info['error']}", status=ExitStatus.CANNOT_EXECUTE)
