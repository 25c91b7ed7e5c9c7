"""`jailshell run`: every step at once, the way a runtime does it.

This is the lesson's end state as one call, and the benchmark target. The
sequence mirrors runc's (and `unshare --fork ... chroot` with more care):

  jailshell ──fork──> C: unshare(all namespaces at once) ──fork──> G = PID 1:
                         waits for G, exits with its status          overlay root, proc, sys, tmp,
                                                                     dev, pivot_root, mask, exec CMD

As root, with no user namespace, the middle process is saved, as runc and
crun do with clone(CLONE_NEWPID): jailshell forks G straight into a new PID
namespace (runfast.fork_into_new_pid_ns) and G unshares the other namespaces
itself:

  jailshell ──fork into a new PID ns──> G = PID 1: unshare(the others), then as above

The processes live in jailshell/engine/runfast.py, which also runs a plain
`jailshell run --rm` on its own, without this module's imports.

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
from jailshell.engine import runfast
from jailshell.engine.images.store import Image, ImageStore
from jailshell.engine.journal import Journal, process_starttime
from jailshell.errors import InvalidInput

# What docker gives a container (the raw command lists them in this order):
# defined in runfast, with the processes themselves, re-exported here.
DEFAULT_NAMESPACES = runfast.DEFAULT_NAMESPACES
DEFAULT_MOUNTS = runfast.DEFAULT_MOUNTS


@dataclass
class RunSpec:
    argv: list[str] = field(default_factory=list)
    image: str | None = None
    entrypoint: str | None = None  # docker's --entrypoint: replaces the image's ("" removes it)
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
    # --network none (lo only: the default here, and the fast path), bridge or host; -p and --link need bridge.
    network: str = "none"
    publish: list[str] = field(default_factory=list)  # [HOST_IP:]HOSTPORT:JAILPORT
    links: list[str] = field(default_factory=list)  # NAME[:ALIAS] of running containers

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
    network: list[Any] = field(default_factory=list)  # network.NetStep for each step of --network bridge

    @property
    def oom_killed(self) -> bool:
        return bool(self.cgroup_stats is not None and (self.cgroup_stats.oom_kill or 0) > 0)


def namespaces_for(spec: RunSpec) -> list[str]:
    kinds = list(DEFAULT_NAMESPACES)
    if spec.user_ns or os.geteuid() != 0:
        kinds.insert(0, "user")
    if spec.network == "host":
        kinds.remove("net")  # no namespace: the host's interfaces and ports
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


def run(spec: RunSpec, *, store: ImageStore | None = None, on_started: Callable[[int], None] | None = None) -> RunResult:
    """Run spec.argv in a fresh container; returns when it exits."""
    t0 = time.perf_counter()
    limits = spec.limits()  # invalid values fail here, before anything exists
    if spec.network != "none" or spec.publish or spec.links:
        from jailshell.engine import network

        network.check_run_options(spec.network, spec.publish, spec.links)
    store = store or ImageStore()
    image = store.resolve(spec.image)
    argv = image.command(spec.argv, spec.entrypoint)
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
    # The image's layers as the overlay's lowerdirs when it keeps them; not in a
    # user namespace, where overlayfs ignores the trusted.* xattrs that mark the
    # layers' opaque directories (the flattened root needs none).
    lowers = [] if "user" in kinds else [str(d) for d in store.lowerdirs(image, cdir / "upper", cdir / "work")]
    timings = {"prepare": time.perf_counter() - t0}
    plan = runfast.Plan(cdir=str(cdir), lower=str(image.rootfs), lowers=lowers, argv=argv,
                        env=runfast.container_env(image.env(), spec.env),
                        workdir=spec.workdir or image.config.get("WorkingDir") or "/",
                        hostname=spec.hostname or spec.name or cid, kinds=kinds, volumes=spec.volumes,
                        network=spec.network)
    pid, go_w, err_r, ready_r, _ = runfast.start(plan)
    proc_entry = journal.record("process", pid=pid, starttime=process_starttime(pid))
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the container
    cgroup = None
    stats = None
    net_steps: list[Any] = []
    try:
        if limits is not None:
            # The container's first process joins the cgroup before it is let
            # go, so PID 1 and everything it starts are born inside the limits.
            from jailshell.engine.cgroups import Cgroup

            cgroup = Cgroup.create(cid, journal, controllers=tuple(limits.controllers()))
            cgroup.set_limits(limits)
            cgroup.join(pid)
        os.write(go_w, b"g")
        if ("user" in kinds or spec.network == "bridge") and os.read(ready_r, 1) == b"u":
            if "user" in kinds:
                _write_rootless_maps(pid)
            if spec.network == "bridge":
                net_steps = _connect(spec, pid, cid, journal, cdir, image)
                timings["network"] = time.perf_counter() - t0
            os.write(go_w, b"g")
        os.close(ready_r)
        if on_started:
            on_started(pid)
        timings["started"] = time.perf_counter() - t0
        status = runfast.wait_status(pid)
        journal.release(proc_entry)
        if cgroup is not None:
            stats = cgroup.stats()
        err = runfast.read_all(err_r)
    finally:
        signal.signal(signal.SIGINT, old_int)
        os.close(go_w)
        os.close(err_r)
        if not spec.rm:
            _keep(cdir, cid, spec, image, argv)
            journal.release(dir_entry)
        elif journal.pending() == [dir_entry]:
            # Only the directory is left (no cgroup, no network): removed the
            # quick way, which falls back to the journal's own undo.
            runfast.remove_container_dir(str(cdir))
            journal.release(dir_entry)
        journal.undo_all()
    timings["exited"] = time.perf_counter() - t0
    if err:
        runfast.raise_container_error(err, argv[0], image.ref)
    return RunResult(status, cid, timings, stats, net_steps)


def _connect(spec: RunSpec, pid: int, cid: str, journal: Journal, cdir: Path, image: Image) -> list[Any]:
    """--network bridge: veth, bridge, address, NAT, ports, links, made while
    the container's process waits between unshare and exec. On failure it
    dies before running anything (closing the go pipe alone would let it run)."""
    from jailshell.engine import network

    try:
        return network.connect_run(pid, cid, journal, spec.network, spec.publish, spec.links, cdir / "upper",
                                   Path(image.rootfs), spec.name)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise


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
