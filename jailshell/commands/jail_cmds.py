"""The commands that act on the live jail, and those that look at it.

Each engine step is done the same way (`perform`): take a snapshot, work out
the docker and raw equivalents from the very parameters the engine will use,
do the step with Ctrl-C held for the one holder exchange, take a snapshot
again, record what was done. The result is data: the UI shows it.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jailshell.commands.registry import Arg, Args, Command
from jailshell.commands.results import DiffView, Handover, Message, StateView, StepReport
from jailshell.commands.session import Done
from jailshell.commands.workspace import step_not_interruptible
from jailshell.errors import InvalidInput, JailshellError

if TYPE_CHECKING:
    from jailshell.commands.workspace import Workspace
    from jailshell.engine.jail import Jail

ALL_SECTIONS = ("namespaces", "hostname", "processes", "mounts", "root", "user", "cgroup", "interfaces")
# The section of the live state that each namespace kind isolates.
SECTION_OF_KIND = {"uts": "hostname", "pid": "processes", "mnt": "mounts", "net": "interfaces", "user": "user",
                   "cgroup": "cgroup"}


class StepFailed(JailshellError):
    """A step the kernel (or the engine) refused; the jail is as it was before it."""

    unchanged = True


def _kinds() -> tuple[str, ...]:
    from jailshell.engine.namespaces import ALIASES, BY_KIND

    return (*BY_KIND, *ALIASES)


def _mount_names() -> tuple[str, ...]:
    from jailshell.engine.steps import SPECIAL_MOUNTS

    return (*SPECIAL_MOUNTS, "bind")


# Namespaces isolate names and views, not files: until chroot or pivot_root, a
# command "in the jail" writes the host's own files. Said every time, since a
# learner's `rm` there is a real one.
HOST_ROOT_NOTE = ("Careful: the jail's root is still the host's / (no chroot or pivot_root yet), so this command "
                  "read and wrote the host's own files.")


def perform(ws: Workspace, line: str, op: str, params: dict[str, Any], action: Callable[[Jail], Any], *,
            shows: tuple[str, ...], where: str = "host", revert: str | None = None, why_not: str = "",
            interruptible: bool = False, equivalents_after: bool = False) -> StepReport:
    """Do one engine step on the live jail and report it with the state around it."""
    from jailshell.engine import equivalents, inspect

    jail, created = ws.session.ensure()
    notes = [f"A new jail was started for this: PID {jail.pid}, id {jail.id}."] if created and not ws.replaying \
        else []
    if op == "exec" and jail.state.root_mode == "host" and not ws.replaying:
        notes.append(HOST_ROOT_NOTE)
    before = None if ws.replaying else inspect.snapshot(jail)
    # The raw `unshare` line rebuilds the jail so far *including* this namespace:
    # it can only be worked out after the step. Everything else before, from the
    # state the step starts from (e.g. whether a mount point must be made first).
    eq = None if equivalents_after else _equivalents(equivalents.for_step, op, jail, params)
    eq_pid, eq_root = jail.pid, jail.state.root_mode
    try:
        if interruptible:
            output = action(jail)
        else:
            with step_not_interruptible():
                output = action(jail)
    except JailshellError as exc:
        raise StepFailed(exc.message, exc.hint, status=exc.status) from None
    if equivalents_after:
        eq = _equivalents(equivalents.for_step, op, jail, params)
        eq_pid = jail.pid
    ws.session.record(Done(line, op, params, eq, revert, why_not, ws.origin, eq_pid, eq_root))
    if ws.replaying:
        return StepReport(line, op, where, eq)
    after = inspect.snapshot(jail)
    return StepReport(line, op, where, eq, before, after, inspect.diff(before, after) if before else [], shows,
                      output if op == "exec" else None, notes)


def _equivalents(for_step: Callable[..., Any], op: str, jail: Jail, params: dict[str, Any]) -> Any:
    try:
        return for_step(op, jail, **params)
    except KeyError:
        return None


# -- steps --------------------------------------------------------------------------------


def cmd_create(ws: Workspace, args: Args) -> Any:
    image = args.get("image")

    def create() -> StepReport:
        from jailshell.engine import equivalents, inspect

        jail = ws.session.fresh(image)
        if ws.tutor is not None:
            ws.tutor.forget_jail()
        line = f"create {image}" if image else "create"
        eq = equivalents.for_step("create", jail)
        ws.session.record(Done(line, "create", {"image": image}, eq, None, "", ws.origin, jail.pid))
        snap = ws.session.baseline or inspect.snapshot(jail)
        return StepReport(line, "create", "host", eq, None, snap, [], ("namespaces",),
                          notes=[f"Jail {jail.id} started: PID {jail.pid}, root filesystem {jail.rootfs}."])

    if ws.session.running and ws.session.done and not ws.replaying and ws.ctx.interactive:
        from jailshell.commands.results import Confirm

        return Confirm(f"Replace the running jail ({len(ws.session.done)} steps done) with a new one?", create,
                       Message("The jail is unchanged."))
    return create()


def cmd_unshare(ws: Workspace, args: Args) -> StepReport:
    from jailshell.engine.namespaces import lookup

    kind = lookup(args["kind"]).kind
    section = SECTION_OF_KIND.get(kind)
    return perform(ws, f"unshare {kind}", "unshare", {"kind": kind}, lambda j: j.unshare(kind),
                   shows=("namespaces", *([section] if section else [])), equivalents_after=True,
                   why_not="a process cannot leave a namespace it has entered: it would have to setns(2) back "
                           "into the host's, exactly what a jail must never be able to do")


def cmd_hostname(ws: Workspace, args: Args) -> Any:
    name = args.get("name")
    if name is None:
        from jailshell.engine import inspect

        jail, _ = ws.session.ensure()
        return StateView(inspect.snapshot(jail), ("hostname",), "hostname")
    jail, _ = ws.session.ensure()
    previous = jail.info().get("hostname") or ""
    return perform(ws, f"hostname {shlex.quote(name)}", "sethostname", {"name": name},
                   lambda j: j.sethostname(name), shows=("hostname",),
                   revert=f"hostname {shlex.quote(previous)}" if previous else None)


def cmd_mount(ws: Workspace, args: Args) -> StepReport:
    what, source, target, mode = args["what"], args.get("source"), args.get("target"), args.get("mode")
    if what == "bind":
        if not source or not target:
            raise InvalidInput("a bind mount needs SOURCE and TARGET", hint="mount bind /host/dir /dir/in/jail [ro]")
        if mode not in (None, "ro"):
            raise InvalidInput(f"unknown mount option '{mode}'", hint="only ro (read-only) is supported")
        line = " ".join(["mount bind", shlex.quote(source), shlex.quote(target), *(["ro"] if mode else [])])
        params: dict[str, Any] = {"what": "bind", "source": source, "target": target, "readonly": mode == "ro"}
        return perform(ws, line, "mount", params,
                       lambda j: j.mount("bind", source=source, target=target, readonly=mode == "ro"),
                       shows=("mounts",), revert=f"umount {shlex.quote(target)}")
    if source or target:
        raise InvalidInput(f"'mount {what}' takes no paths", hint="jailshell knows where it goes: mount " + what)
    return perform(ws, f"mount {what}", "mount", {"what": what}, lambda j: j.mount(what), shows=("mounts",),
                   revert=f"umount {what}")


def _umount_target(jail: Jail, target: str) -> str:
    """The path to unmount as a process entering the jail sees it: before
    chroot/pivot_root the jail's root is the host's /, so its proc is ROOTFS/proc."""
    from jailshell.engine.steps import SPECIAL_MOUNTS

    path = SPECIAL_MOUNTS[target].target if target in SPECIAL_MOUNTS else target
    if not path.startswith("/"):
        raise InvalidInput(f"'{target}' is neither a mount name nor an absolute path",
                           hint="umount proc, or umount /path/in/the/jail")
    return f"{jail.rootfs}{path}" if jail.state.root_mode == "host" else path


def cmd_umount(ws: Workspace, args: Args) -> StepReport:
    from jailshell.engine.equivalents import Equivalents, nsenter_prefix
    from jailshell.engine.steps import SPECIAL_MOUNTS

    target = args["target"]
    jail, _ = ws.session.ensure()
    if "mnt" not in jail.state.unshared:
        raise InvalidInput("refusing to umount: the jail has no mnt namespace yet, so this would unmount it on "
                           "the host", hint="run `unshare mnt` first")
    path = _umount_target(jail, target)
    inside = SPECIAL_MOUNTS[target].target if target in SPECIAL_MOUNTS else target

    def umount(j: Jail) -> None:
        res = j.exec(["umount", path])
        if res.returncode != 0:
            raise JailshellError(f"umount {path} failed: {res.stderr.strip() or f'exit {res.returncode}'}",
                                 hint="something may be mounted below it, or a process in the jail uses it")
        # The engine lists what it mounted; this mount is no longer there.
        if inside in j.state.mounts:
            j.state.mounts.remove(inside)

    kinds = [k for k in jail.state.unshared if k in ("user", "mnt")]
    eq = Equivalents(docker="(docker has no command to unmount inside a running container; docker exec CONTAINER "
                            f"umount {inside})",
                     raw=[f"{nsenter_prefix(jail, kinds)} umount {shlex.quote(path)}"])
    report = perform(ws, f"umount {shlex.quote(target)}", "umount", {"target": target}, umount, shows=("mounts",),
                     revert=f"mount {target}" if target in SPECIAL_MOUNTS else None,
                     why_not="jailshell does not know how it was mounted")
    report.equivalents = eq
    ws.session.done[-1].equivalents = eq
    return report


def chroot_target(ws: Workspace, word: str) -> Path:
    """The directory a typed `chroot ROOT` names, as the host sees it: ~ and
    $LAB expanded (the dispatcher expands $LAB in the line; a lesson's check
    may not have), relative to where jailshell was started, and checked."""
    from jailshell.engine.jail import check_root_dir

    path = Path(os.path.abspath(Path(ws.expand(word)).expanduser()))
    check_root_dir(path)
    return path


def _typed(ws: Workspace, path: Path) -> str:
    """PATH as the line that is shown and recorded: under this session's $LAB,
    written with $LAB (the same directory on replay, and readable)."""
    lab = ws._lab[0] if ws._lab is not None else None
    if lab is not None and (path == lab or lab in path.parents):
        rest = str(path)[len(str(lab)):]
        return "$LAB" + (shlex.quote(rest) if rest else "")
    return shlex.quote(str(path))


def cmd_chroot(ws: Workspace, args: Args) -> StepReport:
    from jailshell.engine.jail import missing_shell

    word = args.get("root")
    root = chroot_target(ws, word) if word else None  # bad input is refused before a jail is even started
    jail, _ = ws.session.ensure()
    own = root is None or root == jail.rootfs
    notes = []
    if not own and not ws.replaying and jail.state.root_mode == "host":
        assert root is not None
        why = missing_shell(root)
        if why:
            notes.append(f"Careful: {why}, so `shell` and `exec sh` will fail in this root (a directory "
                         "unpacked from an image has one: `untar $LAB/export.tar $LAB/root`).")
        if jail.state.mounts:
            notes.append(f"What was mounted before ({', '.join(jail.state.mounts)}) is in the jail's own root "
                         f"filesystem {jail.rootfs}, not under {root}: the jail will not see it.")
    line = "chroot" if root is None or own else f"chroot {_typed(ws, root)}"
    params = {} if own else {"root": str(root)}
    report = perform(ws, line, "chroot", params, lambda j: j.chroot(None if own else root), shows=("root",),
                     why_not="a chroot is left only by escaping it (the hole the chroot lesson shows)")
    report.notes.extend(notes)
    return report


def cmd_pivot_root(ws: Workspace, args: Args) -> StepReport:
    return perform(ws, "pivot-root", "pivot_root", {}, lambda j: j.pivot_root(), shows=("root", "mounts"),
                   why_not="the old root was detached: nothing in the jail leads back to it")


def cmd_mask(ws: Workspace, args: Args) -> StepReport:
    return perform(ws, "mask", "mask", {}, lambda j: j.mask(), shows=("mounts",),
                   why_not="jailshell does not unmask kernel files once hidden")


def cmd_exec(ws: Workspace, args: Args) -> StepReport:
    argv = list(args["cmd"])
    return perform(ws, "exec " + shlex.join(argv), "exec", {"argv": argv}, lambda j: j.exec(argv), shows=(),
                   where="jail", interruptible=True,
                   why_not="what a command did inside (files written, processes started) is not tracked")


def cmd_escape(ws: Workspace, args: Args) -> Message:
    from jailshell.lessons.checks import reached_host

    jail, _ = ws.session.ensure()
    with step_not_interruptible():
        res = jail.chroot_escape()
    listing = ", ".join(list(res.get("root_listing") or [])[:12])
    if reached_host(jail, res):
        return Message(f"Escaped. A root process in the jail made a directory, chrooted into it while its working "
                       f"directory stayed outside, walked up with `cd ..` and chrooted to where it ended: the "
                       f"host's / ({listing}, ...).", "warn",
                       hint="pivot_root in a mount namespace closes this: the old root is no longer mounted at all")
    if res.get("escaped"):
        return Message(f"No escape: the walk up stopped at the jail's own root ({listing}, ...). After pivot_root "
                       "the host's tree is not in the jail's mount namespace at all.", "ok")
    return Message(f"No escape: {res.get('error')}", "ok")


def cmd_rootless(ws: Workspace, args: Args) -> StepReport:
    """The jail's namespaces made by an unprivileged user (nobody), in a throwaway
    process: what the kernel grants without root, and what it still refuses."""
    from jailshell.engine import rootless
    from jailshell.engine.equivalents import Equivalents

    with step_not_interruptible():
        result = rootless.probe()
    ok, summary = rootless.expected(result)
    eq = Equivalents(docker="dockerd-rootless-setuptool.sh install    # rootless docker: the daemon runs as you",
                     raw=[rootless.shell_equivalent()],
                     note="setpriv drops to uid 65534 with no capabilities; unshare -r maps root inside to it")
    return StepReport("rootless", "rootless", "host", eq,
                      notes=[summary if ok else f"unexpected answer from the kernel: {summary}"])


def cmd_shell(ws: Workspace, args: Args) -> Handover:
    from jailshell.engine import equivalents

    jail, _ = ws.session.ensure()
    argv = list(args.get("cmd") or []) or None
    eq = equivalents.for_step("exec", jail, argv=argv or ["/bin/sh"])

    def run() -> Message:
        status = jail.shell(argv)  # which hands the terminal over and takes it back
        return Message(f"Back from the jail (exit status {status}); the jail is as you left it.")

    warning = " " + HOST_ROOT_NOTE.replace("read and wrote", "reads and writes").replace("this command", "this shell") \
        if jail.state.root_mode == "host" else ""
    return Handover(f"Entering the jail (PID {jail.pid}): this shell runs inside it. Type `exit` (or Ctrl-D) "
                    f"to come back.{warning}", run, eq)


# -- looking ------------------------------------------------------------------------------


def _view(sections: tuple[str, ...], title: str, *, with_root: bool = False) -> Callable[[Workspace, Args], StateView]:
    """with_root: once the jail's root is switched, the view says which root
    (what `ps` and `mounts` show is seen from it: the mount table lists only
    what is reachable from the jail's root)."""
    def handler(ws: Workspace, args: Args) -> StateView:
        from jailshell.engine import inspect

        jail, _ = ws.session.ensure()
        shown = (*sections, "root") if with_root and jail.state.root_mode != "host" else sections
        view = StateView(inspect.snapshot(jail), shown, title)
        if "cgroup" in sections and jail.cgroup is not None:
            from jailshell.commands.cgroup_cmds import view as cgroup_view

            view.cgroup = cgroup_view(jail)
        return view
    return handler


def cmd_diff(ws: Workspace, args: Args) -> DiffView:
    from jailshell.engine import inspect

    jail, _ = ws.session.ensure()
    baseline = ws.session.baseline or inspect.snapshot(jail)
    return DiffView(inspect.diff(baseline, inspect.snapshot(jail)), f"jail {jail.id} was started")


def commands() -> list[Command]:
    kinds, mounts = _kinds(), _mount_names()

    def mounted(ws: Workspace) -> list[str]:
        jail = ws.session.jail
        return list(jail.state.mounts) if jail else []

    return [
        Command("create", cmd_create, "start a fresh jail (from IMAGE; default: the embedded busybox)",
                (Arg("image", "image reference", optional=True),), ("new",)),
        Command("unshare", cmd_unshare, "give the jail its own namespace of this KIND (one at a time)",
                (Arg("kind", "namespace kind", kinds),)),
        Command("hostname", cmd_hostname, "set the jail's hostname (needs uts); without NAME: show host vs jail",
                (Arg("name", "new hostname", optional=True),), ("sethostname",)),
        Command("mount", cmd_mount, "mount proc, sys, tmp, dev, devpts, shm or mqueue in the jail; "
                "or `mount bind SOURCE TARGET [ro]`",
                (Arg("what", "what to mount", mounts), Arg("source", optional=True), Arg("target", optional=True),
                 Arg("mode", "ro for read-only", ("ro",), optional=True))),
        Command("umount", cmd_umount, "unmount TARGET (a mount name or a path) inside the jail",
                (Arg("target", "mount name or path", mounted),), ("unmount",)),
        Command("chroot", cmd_chroot, "change the jail's root directory to its root filesystem, or to ROOT (a "
                "directory on the host, e.g. one unpacked with untar); the unsafe way",
                (Arg("root", "a directory on the host holding a root filesystem (default: the jail's own)",
                     optional=True),)),
        Command("pivot-root", cmd_pivot_root, "switch the jail's root with pivot_root and detach the old one "
                "(needs mnt)", aliases=("pivot_root", "pivot")),
        Command("mask", cmd_mask, "hide the host's kernel files in /proc and /sys, as docker does"),
        Command("exec", cmd_exec, "run CMD inside the jail and show its output",
                (Arg("cmd", "command and arguments", rest=True),), where="jail"),
        Command("escape", cmd_escape, "try the classic chroot escape from inside the jail", where="jail"),
        Command("rootless", cmd_rootless, "build namespaces as an unprivileged user (nobody) in a throwaway process: "
                "what works without root"),
        Command("shell", cmd_shell, "an interactive shell inside the jail on this terminal (`exit` comes back)",
                (Arg("cmd", "program to run instead of sh", rest=True, optional=True),), ("sh",), where="jail",
                in_lessons=False, needs_tty=True),
        Command("ns", _view(("namespaces",), "namespaces: host vs jail"), "namespace inodes, host vs jail",
                group="inspect", aliases=("namespaces",)),
        Command("ps", _view(("processes",), "processes", with_root=True),
                "the jail's processes, with their PID outside and inside", group="inspect"),
        Command("mounts", _view(("mounts",), "the jail's mount table", with_root=True), "the jail's mount table",
                group="inspect"),
        Command("state", _view(ALL_SECTIONS, "live state"), "everything: namespaces, hostname, processes, mounts, "
                "root, user map, cgroup, interfaces", group="inspect"),
        Command("diff", cmd_diff, "what changed since the jail was started", group="inspect"),
    ]
