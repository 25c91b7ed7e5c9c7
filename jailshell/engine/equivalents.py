"""The docker and raw commands equivalent to each engine step.

Generated from the same parameters the engine used (the jail's PID, its
root, what it has unshared so far, the mount table in steps.SPECIAL_MOUNTS),
so what the learner is shown cannot drift from what was done. The raw
commands target the live jail by PID and work when pasted into a second root
terminal; where no util-linux command can change *another* process (unshare,
chroot), the raw form is the command that builds the same jail from scratch.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jailshell.engine import steps
from jailshell.engine.namespaces import BY_KIND, lookup

if TYPE_CHECKING:
    from jailshell.engine.jail import Jail


@dataclass(frozen=True)
class Equivalents:
    docker: str
    raw: list[str] = field(default_factory=list)
    where: str = "host"  # where the raw commands run: "host" (a second root terminal) or "jail"
    note: str = ""


def q(arg: str | object) -> str:
    return shlex.quote(str(arg))


def unshare_cmdline(kinds: Sequence[str], *, chroot_to: str | None = None, cmd: Sequence[str] = ("sh",)) -> str:
    """util-linux unshare(1) creating these namespaces (all at once, in one process)."""
    parts = ["unshare"]
    for kind in kinds:
        parts.append(BY_KIND[kind].unshare_flag)
    if "pid" in kinds:
        parts.append("--fork")  # unshare(CLONE_NEWPID) only moves children: the shell must be one
    if "user" in kinds:
        parts.append("--map-root-user")
    if chroot_to:
        parts += ["chroot", q(chroot_to)]
    parts += [q(c) for c in cmd]
    return " ".join(parts)


def nsenter_prefix(jail: Jail, kinds: Sequence[str] | None = None, *, root: bool = True) -> str:
    """nsenter into the live jail's namespaces (those it has unshared) and root."""
    parts = ["nsenter", "--target", str(jail.pid)]
    for kind in kinds if kinds is not None else jail.state.unshared:
        flag = BY_KIND[kind].nsenter_flag
        if flag not in parts:
            parts.append(flag)
    if root and jail.state.root_mode != "host":
        parts += ["--root", "--wd"]
    return " ".join(parts)


DOCKER_NS = {
    "uts": "docker run -it --hostname jail busybox sh    # a new UTS namespace is the default (--uts=host shares the host's)",
    "pid": "docker run -it busybox sh    # a new PID namespace is the default (--pid=host shares the host's)",
    "mnt": "docker run -it busybox sh    # always a new mount namespace",
    "ipc": "docker run -it --ipc=private busybox sh    # (--ipc=host shares the host's)",
    "net": "docker run -it --network=none busybox sh    # a new, empty network namespace",
    "user": "dockerd --userns-remap=default    # docker uses a user namespace only when the daemon is set up for it",
    "cgroup": "docker run -it --cgroupns=private busybox sh    # the default on cgroup v2",
}


def for_create(jail: Jail) -> Equivalents:
    img = jail.image
    if getattr(jail, "rootfs_mode", "overlay") == "overlay":
        # The options the engine mounted with: the image's layers as lowerdirs (top
        # first) when it keeps them, else its flattened root.
        data = (getattr(jail, "overlay_data", "")
                or f"lowerdir={img.rootfs},upperdir={jail.dir}/upper,workdir={jail.dir}/work")
        mk = f"mount -t overlay overlay -o {q(data)} {q(jail.rootfs)}"
    else:
        mk = f"cp -a {img.rootfs}/. {jail.rootfs}"
    return Equivalents(
        docker=f"docker create -it {img.ref} sh",
        raw=[f"mkdir -p {jail.rootfs} {jail.dir}/upper {jail.dir}/work", mk,
             f"sh    # jailshell's holder is this process: PID {jail.pid}"],
        note="a private, writable copy of the image's files; the process is not isolated at all yet",
    )


def for_unshare(jail: Jail, kind: str) -> Equivalents:
    ns = lookup(kind)
    chroot_to = root_of(jail) if jail.state.root_mode != "host" else None
    return Equivalents(
        docker=DOCKER_NS[ns.kind],
        raw=[unshare_cmdline(jail.state.unshared, chroot_to=chroot_to),
             f"readlink /proc/{jail.pid}/ns/{ns.proc_name} /proc/$$/ns/{ns.proc_name}    # jail vs this shell"],
        note="the first line builds the jail so far from scratch (no command can unshare another process); "
             "the second compares namespace inodes",
    )


def for_sethostname(jail: Jail, name: str) -> Equivalents:
    return Equivalents(docker=f"docker run -it --hostname {q(name)} busybox sh",
                       raw=[f"nsenter --target {jail.pid} --uts hostname {q(name)}"])


def for_mount(jail: Jail, what: str, *, source: str | None = None, target: str | None = None,
              readonly: bool = False) -> Equivalents:
    kinds = [k for k in jail.state.unshared if k in ("user", "mnt", "pid")]
    prefix = nsenter_prefix(jail, kinds)
    if what == "bind":
        tgt = target if jail.state.root_mode != "host" else f"{jail.rootfs}{target}"
        raw = []
        # As for the special mounts below: the engine makes a missing mount point (a file for a file).
        if not os.path.lexists(f"/proc/{jail.pid}/root{tgt}"):
            raw.append(f"{prefix} mkdir -p {q(tgt)}" if source is None or os.path.isdir(source) else
                       f"{prefix} touch {q(tgt)}")
        raw.append(f"{prefix} mount --rbind {q(source)} {q(tgt)}")    # MS_REC, as the engine and docker -v
        if readonly:
            raw.append(f"{prefix} mount -o remount,bind,ro {q(tgt)}")
        return Equivalents(docker=f"docker run -v {source}:{target}{':ro' if readonly else ''} busybox sh", raw=raw)
    m = steps.SPECIAL_MOUNTS[what]
    tgt = m.target if jail.state.root_mode != "host" else f"{jail.rootfs}{m.target}"
    raw = []
    # The engine creates a missing mount point; so must the shown commands.
    if not os.path.isdir(f"/proc/{jail.pid}/root{tgt}"):
        raw.append(f"{prefix} mkdir -p {tgt}")
    raw.append(f"{prefix} {steps.mount_command(m, tgt)}")
    if what == "dev":
        raw += [f"{prefix} {cmd}" for cmd in dev_commands(tgt, in_userns="user" in jail.state.unshared)]
    docker = {
        "tmp": "docker run --tmpfs /tmp busybox sh",
        "sys": "docker run busybox sh    # /sys is mounted read-only by default",
    }.get(what, f"docker run busybox sh    # docker mounts {m.target} by default")
    return Equivalents(docker=docker, raw=raw, note=m.why)


def dev_commands(base: str, *, in_userns: bool = False) -> list[str]:
    """What `mount dev` does after mounting the tmpfs (steps._populate_dev):
    in a user namespace mknod is refused, so the host's nodes are bound instead."""
    nodes = ([cmd for n, _maj, _mi in steps.DEV_NODES for cmd in (f"touch {base}/{n}", f"mount --bind /dev/{n} {base}/{n}")]
             if in_userns else [f"mknod -m 666 {base}/{n} c {maj} {mi}" for n, maj, mi in steps.DEV_NODES])
    return (nodes
            + [f"ln -s {dest} {base}/{n}" for n, dest in steps.DEV_LINKS]
            + [f"mkdir {' '.join(f'{base}/{d}' for d in steps.DEV_DIRS)}"])


def mask_commands() -> list[str]:
    """What steps.mask_paths does, as shell loops that skip what this kernel lacks."""
    return [
        f"for p in {' '.join(steps.MASKED_PATHS)}; do if [ -d $p ]; then mount -t tmpfs -o ro tmpfs $p; "
        "elif [ -e $p ]; then mount --bind /dev/null $p; fi; done",
        f"for p in {' '.join(steps.READONLY_PATHS)}; do if [ -e $p ]; then mount --bind $p $p && "
        "mount -o remount,bind,ro $p; fi; done",
    ]


def for_mask(jail: Jail) -> Equivalents:
    prefix = nsenter_prefix(jail, [k for k in jail.state.unshared if k in ("user", "mnt", "pid")])
    return Equivalents(docker="docker run busybox sh    # masked and read-only paths are docker's default "
                              "(--security-opt systempaths=unconfined turns them off)",
                       raw=[f"{prefix} sh -c {q(c)}" for c in mask_commands()],
                       note="host kernel files hidden (/dev/null or an empty tmpfs on top), kernel knobs read-only")


def root_of(jail: Jail) -> str:
    """The jail's root directory as the host sees it: its own root filesystem,
    or the directory `chroot DIR` chose (Jail.root_dir)."""
    return str(getattr(jail, "root_dir", jail.rootfs))


def for_chroot(jail: Jail, root: str | None = None) -> Equivalents:
    # ROOT is the very parameter the engine chroots into (None: the jail's own root filesystem).
    target = root or str(jail.rootfs)
    return Equivalents(
        docker="(docker never uses chroot: it uses pivot_root)",
        raw=[unshare_cmdline(jail.state.unshared, chroot_to=target) if jail.state.unshared
             else f"chroot {q(target)} sh",
             f"ls /proc/{jail.pid}/root/    # the jail's / seen from the host: {target} once it is done"],
        note="chroot changes one process's idea of '/'; nothing else",
    )


def for_pivot_root(jail: Jail) -> Equivalents:
    r = q(root_of(jail))
    script = f"mount --rbind {r} {r} && cd {r} && pivot_root . . && umount -l ."
    prefix = nsenter_prefix(jail, [k for k in jail.state.unshared if k in ("user", "mnt")], root=False)
    return Equivalents(
        docker="docker run -it busybox sh    # runc always switches the root with pivot_root",
        raw=[f"{prefix} sh -c {q(script)}"],
        note="pivot_root moves the root (and working directory) of every process in the mount namespace whose "
             "root (or working directory) was exactly the old root. From a second terminal nothing can `cd /` for "
             "the jail's PID 1: if its working directory was anywhere else, it keeps it, in the detached old tree. "
             "The engine's pivot-root also does chdir(\"/\") in PID 1, as runtimes do.",
    )


def for_exec(jail: Jail, argv: Sequence[str]) -> Equivalents:
    cmd = " ".join(q(a) for a in argv)
    raw = f"{nsenter_prefix(jail)} {cmd}"
    procs = list(getattr(jail, "cgroup_procs", None) or [])
    if procs:
        # nsenter does not join cgroups: without this the command would run
        # outside the jail's limits (a memory hog would have the whole host).
        raw = "sh -c " + q("".join(f"echo $$ > {p}; " for p in procs) + f"exec {raw}")
    return Equivalents(docker=f"docker exec -it CONTAINER {cmd}", raw=[raw], where="host")


def for_step(op: str, jail: Jail, **params: Any) -> Equivalents:
    """One entry point: op is the engine method's name."""
    table = {
        "create": lambda: for_create(jail),
        "unshare": lambda: for_unshare(jail, params["kind"]),
        "sethostname": lambda: for_sethostname(jail, params["name"]),
        "mount": lambda: for_mount(jail, params["what"], source=params.get("source"), target=params.get("target"),
                                   readonly=params.get("readonly", False)),
        "chroot": lambda: for_chroot(jail, params.get("root")),
        "pivot_root": lambda: for_pivot_root(jail),
        "mask": lambda: for_mask(jail),
        "exec": lambda: for_exec(jail, params["argv"]),
        "shell": lambda: for_exec(jail, ["/bin/sh"]),
    }
    if op not in table:
        raise KeyError(f"no equivalents for {op!r}")
    return table[op]()


def for_run(spec: Any, kinds: Sequence[str], rootfs: str, image_ref: str) -> Equivalents:
    """What `jailshell run` does, as docker run and as one util-linux command line."""
    from jailshell.engine.run import DEFAULT_MOUNTS

    r = q(rootfs)
    setup = [f"mount --rbind {r} {r}", f"cd {r}"]
    for name in DEFAULT_MOUNTS:
        m = steps.SPECIAL_MOUNTS[name]
        setup.append(steps.mount_command(m, "." + m.target))
        if name == "dev":
            setup += dev_commands("./dev")
    hostname = spec.hostname or spec.name or "jail"
    setup += ["ip link set lo up", f"hostname {q(hostname)}", "pivot_root . .", "umount -l .", *mask_commands(),
              "exec " + " ".join(q(a) for a in (spec.argv or ["/bin/sh"]))]
    flags = "--rm " if spec.rm else ""
    flags += f"--hostname {q(hostname)} " if spec.hostname else ""
    flags += f"--name {q(spec.name)} " if spec.name else ""
    entrypoint = getattr(spec, "entrypoint", None)
    flags += f"--entrypoint {q(entrypoint)} " if entrypoint is not None else ""
    return Equivalents(
        docker=f"docker run {flags}--network none {image_ref} " + " ".join(q(a) for a in spec.argv),
        raw=[unshare_cmdline(kinds, cmd=["sh", "-c", " && ".join(setup)])],
    )
