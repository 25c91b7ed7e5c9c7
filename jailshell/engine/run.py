"""`jailshell run`: every step at once, the way a runtime does it.

This is the lesson's end state as one call, and the benchmark target. The
sequence mirrors runc's (and `unshare --fork ... chroot` with more care):

  jailshell ──fork──> C: unshare(all namespaces at once) ──fork──> G = PID 1:
                         waits for G, exits with its status          overlay root, proc, sys, tmp,
                                                                     dev, pivot_root, mask, exec CMD

Nothing is mounted in the host's mount namespace: the overlay root is
mounted by G inside the new one, so it vanishes with the container even on
kill -9. What is left on the host (the container's directory) is journaled.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jailshell import paths
from jailshell.engine import steps
from jailshell.engine import syscalls as sc
from jailshell.engine.images.store import Image, ImageStore
from jailshell.engine.journal import Journal, process_starttime
from jailshell.engine.namespaces import BY_KIND
from jailshell.errors import ExitStatus, InvalidInput, JailshellError

# What docker gives a container, in the order the raw command lists them.
DEFAULT_NAMESPACES = ("mnt", "uts", "ipc", "net", "pid", "cgroup")
DEFAULT_MOUNTS = ("proc", "sys", "tmp", "dev", "devpts", "shm", "mqueue")


@dataclass
class RunSpec:
    argv: list[str] = field(default_factory=list)
    image: str | None = None
    hostname: str | None = None
    rm: bool = True
    env: list[str] = field(default_factory=list)
    workdir: str | None = None
    user_ns: bool = False  # forced on when not root: only a user namespace gives an unprivileged user the rest
    volumes: list[tuple[str, str, bool]] = field(default_factory=list)  # (host, jail, readonly)
    name: str | None = None
    # docker's --memory/--pids-limit/--cpus, as given ("64m", "20", "0.5"); parsed before anything is created.
    memory: str | None = None
    pids_limit: str | None = None
    cpus: str | None = None

    def limits(self) -> Any:
        """cgroup_limits.Limits, or None when no limit is asked for (then no cgroup is made)."""
        if self.memory is None and self.pids_limit is None and self.cpus is None:
            return None
        from jailshell.engine.cgroup_limits import Limits, parse_cpus, parse_memory, parse_pids

        return Limits(memory=None if self.memory is None else parse_memory(self.memory),
                      pids=None if self.pids_limit is None else parse_pids(self.pids_limit),
                      cpus=None if self.cpus is None else parse_cpus(self.cpus))


@dataclass
class RunResult:
    status: int
    container_id: str
    timings: dict[str, float] = field(default_factory=dict)
    # The cgroup's counters when the container exited (memory peak, oom_kill, pids, cpu throttling).
    cgroup_stats: Any = None

    @property
    def oom_killed(self) -> bool:
        return bool(self.cgroup_stats is not None and (self.cgroup_stats.oom_kill or 0) > 0)


def namespaces_for(spec: RunSpec) -> list[str]:
    kinds = list(DEFAULT_NAMESPACES)
    if spec.user_ns or os.geteuid() != 0:
        kinds.insert(0, "user")
    return kinds


def parse_volume(text: str) -> tuple[str, str, bool]:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0].startswith("/") or not parts[1].startswith("/"):
        raise InvalidInput(f"invalid volume {text!r}", hint="HOST_PATH:JAIL_PATH[:ro], both absolute")
    if len(parts) == 3 and parts[2] not in ("ro", "rw"):
        raise InvalidInput(f"invalid volume mode {parts[2]!r}", hint="ro or rw")
    if not os.path.exists(parts[0]):
        raise InvalidInput(f"volume source {parts[0]} does not exist")
    return parts[0], parts[1], len(parts) == 3 and parts[2] == "ro"


def _read_all(fd: int) -> bytes:
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    return data


def _container_init(spec: RunSpec, image: Image, cdir: Path, argv: list[str], in_userns: bool,
                    err_w: int) -> None:
    """G: PID 1 of the new namespaces. Set up the root and exec. Never returns."""
    stage = "setting up the root file system"
    try:
        sc.set_pdeathsig(signal.SIGKILL)
        root = str(cdir / "rootfs")
        data = f"lowerdir={image.rootfs},upperdir={cdir / 'upper'},workdir={cdir / 'work'}"
        try:
            sc.mount("overlay", root, "overlay", 0, data)
        except OSError:
            # No overlayfs here (or not in a user namespace on an old kernel):
            # a private copy, made once into the upper dir, bound as the root.
            stage = "copying the image (overlayfs unavailable)"
            shutil.copytree(image.rootfs, cdir / "upper", symlinks=True, dirs_exist_ok=True)
            sc.mount(str(cdir / "upper"), root, None, sc.MS_BIND | sc.MS_REC)
        host_root_fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        for name in DEFAULT_MOUNTS:
            stage = f"mounting {name}"
            steps.mount_special(name, root, in_userns=in_userns, host_root_fd=host_root_fd)
        for host, inside, ro in spec.volumes:
            stage = f"mounting volume {host}"
            steps.bind_mount(host, os.path.join(root, inside.lstrip("/")), readonly=ro, host_root_fd=host_root_fd)
        os.close(host_root_fd)
        stage = "bringing lo up"
        steps.loopback_up()
        stage = "sethostname"
        steps.sethostname(spec.hostname or spec.name or cdir.name[:12])
        # From here on the host's tree (and Python's standard library) is gone:
        # nothing below may import.
        stage = "pivot_root"
        steps.pivot_root(root)
        stage = "masking host paths"
        steps.mask_paths("/")
        os.chdir(spec.workdir or image.config.get("WorkingDir") or "/")
        env = dict(e.split("=", 1) for e in [*image.env(), "HOME=/root", *spec.env])
        env.setdefault("TERM", os.environ.get("TERM", "xterm"))
        steps.reset_signals()
        stage = f"exec {argv[0]}"
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        code = ExitStatus.NOT_FOUND if isinstance(exc, FileNotFoundError) and stage.startswith("exec") else 126
        os.write(err_w, json.dumps({"stage": stage, "errno": exc.errno, "error": str(exc), "code": int(code)}).encode())
        os._exit(code)
    except BaseException as exc:
        os.write(err_w, json.dumps({"stage": stage, "errno": 0, "error": repr(exc), "code": 126}).encode())
    os._exit(126)


def _middle(spec: RunSpec, image: Image, cdir: Path, argv: list[str], kinds: list[str], go_r: int,
            err_w: int, ready_w: int) -> None:
    """C: unshare everything at once, then fork PID 1 and wait for it, like
    `unshare --fork`. Never returns."""
    status = 126
    try:
        sc.set_pdeathsig(signal.SIGKILL)
        os.read(go_r, 1)  # jailshell has journaled us
        flags = 0
        for kind in kinds:
            flags |= BY_KIND[kind].flag
        try:
            sc.unshare(flags)
        except OSError as exc:
            os.write(err_w, json.dumps({"stage": f"unshare({', '.join(kinds)})", "errno": exc.errno,
                                        "error": str(exc), "code": 126}).encode())
            os._exit(126)
        if "user" in kinds:
            os.write(ready_w, b"u")  # the parent writes our uid/gid maps
            os.read(go_r, 1)
        os.close(ready_w)
        steps.make_mounts_private()
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        pid = os.fork()
        if pid == 0:
            _container_init(spec, image, cdir, argv, "user" in kinds, err_w)
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


def run(spec: RunSpec, *, store: ImageStore | None = None, on_started: Callable[[int], None] | None = None) -> RunResult:
    """Run spec.argv in a fresh container; returns when it exits."""
    t0 = time.perf_counter()
    limits = spec.limits()  # invalid values fail here, before anything exists
    image = (store or ImageStore()).resolve(spec.image)
    argv = spec.argv or image.default_command()
    kinds = namespaces_for(spec)
    # 12 hex digits, as docker's short ids; os.urandom spares `secrets` and the
    # hashlib/hmac it imports (milliseconds of every `jailshell run`).
    cid = os.urandom(6).hex()
    journal = Journal.for_owner(tag=f"run-{cid}")
    base = paths.ensure_dir(paths.run_dir() / "containers", 0o700)
    cdir = base / cid
    dir_entry = journal.record("dir", path=str(cdir))
    cdir.mkdir(mode=0o700)
    for sub in ("rootfs", "upper", "work"):
        (cdir / sub).mkdir()
    timings = {"prepare": time.perf_counter() - t0}
    # PID 1 brings lo up through a socket (steps.loopback_up); imported here,
    # once per process, the import is not paid again inside every container.
    import socket  # noqa: F401
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(go_w)
        os.close(err_r)
        os.close(ready_r)
        _middle(spec, image, cdir, argv, kinds, go_r, err_w, ready_w)
    for fd in (go_r, err_w, ready_w):
        os.close(fd)
    proc_entry = journal.record("process", pid=pid, starttime=process_starttime(pid))
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the container
    cgroup = None
    stats = None
    try:
        if limits is not None:
            # C joins the cgroup before it is let go, so PID 1 and everything
            # it starts are born inside the limits.
            from jailshell.engine.cgroups import Cgroup

            cgroup = Cgroup.create(cid, journal, controllers=tuple(limits.controllers()))
            cgroup.set_limits(limits)
            cgroup.join(pid)
        os.write(go_w, b"g")
        if "user" in kinds and os.read(ready_r, 1) == b"u":
            _write_rootless_maps(pid)
            os.write(go_w, b"g")
        os.close(ready_r)
        if on_started:
            on_started(pid)
        timings["started"] = time.perf_counter() - t0
        _, st = os.waitpid(pid, 0)
        status = os.waitstatus_to_exitcode(st)
        status = status if status >= 0 else 128 - status
        journal.release(proc_entry)
        if cgroup is not None:
            stats = cgroup.stats()
        err = _read_all(err_r)
    finally:
        signal.signal(signal.SIGINT, old_int)
        os.close(go_w)
        os.close(err_r)
        if not spec.rm:
            _keep(cdir, cid, spec, image, argv)
            journal.release(dir_entry)
        journal.undo_all()
    timings["exited"] = time.perf_counter() - t0
    if err:
        info = json.loads(err)
        if info["stage"].startswith("exec") and info["errno"] == 2:
            raise JailshellError(f"{argv[0]}: command not found in image {image.ref}", status=ExitStatus.NOT_FOUND)
        raise JailshellError(f"{info['stage']} failed: {info['error']}", status=ExitStatus.CANNOT_EXECUTE)
    return RunResult(status, cid, timings, stats)


def _write_rootless_maps(pid: int) -> None:
    with open(f"/proc/{pid}/setgroups", "w") as fh:
        fh.write("deny")
    with open(f"/proc/{pid}/uid_map", "w") as fh:
        fh.write(f"0 {os.getuid()} 1\n")
    with open(f"/proc/{pid}/gid_map", "w") as fh:
        fh.write(f"0 {os.getgid()} 1\n")


def _keep(cdir: Path, cid: str, spec: RunSpec, image: Image, argv: list[str]) -> None:
    """Without --rm the container's writable layer stays, as `docker run` keeps a stopped container."""
    dest = paths.ensure_dir(paths.data_dir() / "containers") / cid
    dest.mkdir(parents=True)
    shutil.move(str(cdir / "upper"), dest / "upper")
    (dest / "container.json").write_text(json.dumps(
        {"id": cid, "name": spec.name, "image": image.ref, "argv": argv, "created": time.time()}, indent=2) + "\n")
    shutil.rmtree(cdir, ignore_errors=True)
