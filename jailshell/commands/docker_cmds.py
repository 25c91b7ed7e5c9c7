"""REPL commands for docker lines: `docker ...`, `explain docker ...`, `walk`.

`docker run ...` (or `create`) shows the plan (jailshell.engine.dockerline)
and keeps it pending; `walk` takes its next step for real and reports it with
the commands that do the same by hand; `walk all` (or `docker run --all ...`)
takes every step left. The last step of `run` starts the command as PID 1:
attached, it gets this terminal until it exits or Ctrl-P Ctrl-Q detaches it.
A container outlives the REPL once started; a half-walked plan does not (its
supervisor removes it when the REPL lets go of it).

Every other docker verb (ps, logs, stop, kill, rm, exec, attach, start, prune,
export, image ls, version, help) is done by the same code as
`jailshell docker ...` (jailshell.engine.cli_docker), its output returned as
data; those that need the terminal are handed over to it.
"""

from __future__ import annotations

import contextlib
import io
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from jailshell.commands.registry import Arg, Args, Command
from jailshell.commands.results import Confirm, Handover, Message, Results, StepReport
from jailshell.commands.workspace import step_not_interruptible
from jailshell.errors import InvalidInput, JailshellError

if TYPE_CHECKING:
    from jailshell.commands.workspace import Workspace
    from jailshell.engine.containers import Creation, StepOutcome
    from jailshell.engine.dockerline import DockerCommand

@dataclass
class Pending:
    cmd: DockerCommand
    creation: Creation


_PENDING: weakref.WeakKeyDictionary[Workspace, Pending] = weakref.WeakKeyDictionary()


def _drop(ws: Workspace) -> Pending | None:
    p = _PENDING.pop(ws, None)
    if p is not None:
        p.creation.close()
    return p


def walking(ws: Workspace) -> bool:
    """Whether a docker plan is being walked here (Enter on an empty line walks it)."""
    return ws in _PENDING


def cmd_docker(ws: Workspace, args: Args) -> Any:
    from jailshell.engine import dockerline

    words = list(args["line"])
    cmd, all_at_once = None, False
    if "--all" in words:
        # jailshell's own flag (docker has no --all for run): anywhere among the
        # flags, not after the image, where it belongs to the container's command.
        i = words.index("--all")
        rest = words[:i] + words[i + 1:]
        with contextlib.suppress(InvalidInput):
            cmd = dockerline.parse(rest)
            all_at_once = cmd.verb in ("run", "create") and i <= len(rest) - len(cmd.args)
    if not all_at_once:
        cmd = dockerline.parse(words)
    assert cmd is not None
    if cmd.verb in ("run", "create"):
        return _begin(ws, cmd, all_at_once)
    return _other(ws, cmd)


def cmd_explain(ws: Workspace, args: Args) -> Message:
    from jailshell.engine import cli_docker, dockerline

    cmd = dockerline.parse(["explain", *args["line"]])
    _plan, text = cli_docker.plan_text(cmd)
    return Message(f"{cmd.line}, by hand (nothing is done):\n{text}")


def cmd_walk(ws: Workspace, args: Args) -> Any:
    p = _PENDING.get(ws)
    what = args.get("what")
    if p is None:
        raise JailshellError("no docker plan is being walked", hint="type a docker command: docker run -it busybox sh")
    if what == "abort":
        _drop(ws)
        return Message("dropped: the half-built container is removed by its supervisor", "ok")
    return Results(_walk(ws, p, every=what == "all"))


# --- run and create, a step at a time ------------------------------------------------------------


def _begin(ws: Workspace, cmd: DockerCommand, all_at_once: bool) -> Results:
    from jailshell.engine.containers import Creation

    spec = cmd.spec
    assert spec is not None
    if spec.interactive and not spec.detach and not ws.ctx.interactive:
        raise InvalidInput(f"{cmd.line}: -i needs a terminal, and input is not one here",
                           hint="leave out -i (and -t), or add -d")
    items: list[Any] = []
    old = _drop(ws)
    if old is not None:
        items.append(Message(f"the plan of `{old.cmd.line}` was dropped, with what it had built", "warn"))
    creation = Creation(spec)
    p = Pending(cmd, creation)
    _PENDING[ws] = p
    weakref.finalize(ws, creation.close)
    steps = creation.plan.steps if cmd.verb == "run" else creation.plan.steps[:-1]
    plan = type(creation.plan)(creation.plan.spec, creation.plan.layout, creation.plan.image, steps)
    items.append(Message(f"{cmd.line}, by hand: {len(steps)} steps", "ok"))
    items.append(Message(plan.render()))
    if all_at_once:
        items += _walk(ws, p, every=True)
    else:
        items.append(Message("Enter (or `walk`) takes the next step, `walk all` every step left, `walk abort` drops "
                             "the plan",
                             hint=f"step 1: {steps[0].title}"))
    return Results(items)


def _report(p: Pending, o: StepOutcome) -> StepReport:
    from jailshell.engine.equivalents import Equivalents

    s = o.step
    total = len(p.creation.plan.steps) - (1 if p.cmd.verb == "create" else 0)
    eq = Equivalents(docker=f"{p.cmd.line}    # {s.docker}", raw=o.raw, where="jail" if s.where == "jail" else "host",
                     note=s.note)
    return StepReport(f"walk    # step {o.index + 1}/{total}: {s.title}", f"docker-{s.key}", "host", eq,
                      notes=[s.why, *o.facts])


def _walk(ws: Workspace, p: Pending, *, every: bool) -> list[Any]:
    """One step (every=False) or all that are left; for run, the last is the exec."""
    out: list[Any] = []
    creation = p.creation
    try:
        while creation.remaining > 0:
            with step_not_interruptible():
                outcome = creation.next()
            out.append(_report(p, outcome))
            if not every:
                break
    except JailshellError:
        _drop(ws)  # a failed step: the half-built container goes with the plan
        raise
    if creation.remaining > 0:
        return out
    if p.cmd.verb == "create":
        _drop(ws)  # created: its supervisor keeps it now
        name = p.cmd.spec.run.name if p.cmd.spec else "?"
        out.append(Message(f"created {name} ({creation.layout.id}): its process waits for `docker start {name}`, "
                           "which execs the command in it (runc's create/start)", "ok"))
        return out
    if not every and out:
        last = creation.plan.steps[-1]
        out.append(Message(f"next `walk`: {last.title}", hint="the command starts, and the container with it"))
        return out
    out.append(_start(ws, p))
    return out


def _start(ws: Workspace, p: Pending) -> Any:
    """The last step of run: exec the command as PID 1, attached unless -d."""
    from jailshell.engine import containers
    from jailshell.engine.equivalents import Equivalents

    creation, spec = p.creation, p.cmd.spec
    assert spec is not None and creation.ctl is not None
    s = creation.plan.steps[-1]
    _PENDING.pop(ws, None)
    name = spec.run.name
    if spec.detach:
        try:
            with step_not_interruptible():
                reply = creation.ctl.request("start")
        finally:
            creation.close()
        eq = Equivalents(docker=f"{p.cmd.line}    # {s.docker}", raw=s.raw_for(reply.get("pid")), where="jail")
        total = len(creation.plan.steps)
        return Results([StepReport(f"walk    # step {total}/{total}: {s.title}", "docker-exec", "host", eq,
                                   notes=[s.why, f"PID 1 is {reply.get('pid')} on the host"]),
                        Message(f"{name} runs in the background; `docker logs {name}`, `docker stop {name}`", "ok")])
    rec = containers.Record.load(creation.layout)
    ctl = creation.ctl

    def run() -> Message:
        try:
            code = containers.attach_and_start(ctl, rec, stdin=spec.interactive, streams=_streams(ws))
        finally:
            creation.close()
        if code is None:
            return Message(f"detached from {name}: it keeps running (`docker attach {name}`)", "ok")
        return Message(f"{name} exited with status {code}", "ok" if code == 0 else "warn")

    eq = Equivalents(docker=f"{p.cmd.line}    # {s.docker}", raw=list(s.raw), where="jail")
    if not (spec.tty or spec.interactive):
        # Output only: it streams here as it comes (Ctrl-C is passed on to PID 1).
        total = len(creation.plan.steps)
        report = StepReport(f"walk    # step {total}/{total}: {s.title}", "docker-exec", "host", eq, notes=[s.why])
        if ws.ctx.interactive:
            # At the prompt, the step is shown first and its output follows; piped
            # lines are shown when the command is done, so it runs now.
            return Results([report, Handover(f"Starting {name}: its output follows (Ctrl-C is passed on to "
                                             "PID 1).", run)])
        return Results([report, run()])
    return Handover(f"Starting {name}: its PID 1 has this terminal"
                    + (" (Ctrl-P Ctrl-Q detaches)" if spec.tty and spec.interactive else "") + ".", run, eq)


def _streams(ws: Workspace) -> Any:
    from jailshell.engine.containers import Streams

    out, err = ws.ctx.stdout, ws.ctx.stderr

    def write(stream: Any) -> Any:
        def w(data: bytes) -> None:
            stream.write(data.decode("utf-8", "replace"))
            stream.flush()
        return w

    def notice(text: str) -> None:
        err.write(text + "\n")
        err.flush()

    return Streams(out=write(out), err=write(err), notice=notice)


# --- everything else -----------------------------------------------------------------------------


def _captured(cmd: DockerCommand) -> Results:
    """Run through the CLI's own code, its output returned as messages."""
    from jailshell.engine import cli_docker

    out, err = io.StringIO(), io.StringIO()
    status = cli_docker.execute(cmd, cli_docker.Output(out, err))
    items: list[Any] = []
    if out.getvalue():
        items.append(Message(out.getvalue().rstrip("\n")))
    for line in err.getvalue().splitlines():
        items.append(Message(line.removeprefix("jailshell: "), "warn" if "no handler" in line else "info"))
    if status:
        items.append(Message(f"exit status {status}", "warn"))
    return Results(items)


def _pull(cmd: DockerCommand) -> Results:
    """`docker pull`: done by the same code as `jailshell image pull`, shown with
    the registry HTTP requests it made, as curl commands (from its own digests)."""
    from jailshell.engine.equivalents import Equivalents
    from jailshell.engine.images.oci import Platform
    from jailshell.engine.images.registry import PullEvents, by_hand, pull

    ref = cmd.args[0]
    statuses: list[str] = []
    platform = Platform.parse(cmd.opts["platform"]) if cmd.opts.get("platform") else None
    image = pull(ref, platform=platform, events=PullEvents(
        on_status=statuses.append,
        on_blob_done=lambda digest, cached: statuses.append(
            f"{digest[7:19]}: {'already cached' if cached else 'downloaded, digest checked'}")))
    eq = Equivalents(docker=cmd.line, raw=by_hand(ref, image), where="host",
                     note="The first line's sha256 is the image's digest; each layer is a tarball, unpacked in "
                          "order. tar neither checks digests nor applies whiteouts: jailshell's pull does both.")
    digest = (image.meta.get("blobs") or ["?"])[0]
    return Results([StepReport(cmd.line, "pull", "host", eq), Message("\n".join(statuses)),
                    Message(f"{image.ref}: {len(image.layers)} layer(s), digest {digest}", "ok",
                            hint=f"`layers {image.ref}` shows each layer; `docker run {image.ref} ...` runs it")])


def _other(ws: Workspace, cmd: DockerCommand) -> Any:
    from jailshell.engine import cli_docker, containers

    o = cmd.opts
    if cmd.verb == "pull":
        return _pull(cmd)
    if cmd.verb == "image-prune" and not o.get("force"):
        o["force"] = True
        return Confirm("Remove every cached blob and layer no image uses?", lambda: _captured(cmd),
                       Message("nothing removed"))
    if cmd.verb in ("container-prune", "system-prune") and not o.get("force"):
        what = "every container that is not running" + (
            ", and whatever dead jailshell processes left on this host" if cmd.verb == "system-prune" else "")
        o["force"] = True
        return Confirm(f"Remove {what}?", lambda: _captured(cmd), Message("nothing removed"))
    if cmd.verb == "exec" and not (o.get("detach") or o.get("interactive") or o.get("tty")):
        eq = containers.exec_equivalents(cmd.args[0], cmd.args[1:], env=o.get("env"), workdir=o.get("workdir"),
                                         user=o.get("user"), line=cmd.line)
        res = containers.exec_output(cmd.args[0], cmd.args[1:], env=o.get("env"), workdir=o.get("workdir"),
                                     user=o.get("user"))
        text = (res.stdout + res.stderr).rstrip("\n")
        items: list[Any] = [StepReport(cmd.line, "docker-exec", "host", eq)]
        items += [Message(text)] if text else []
        if res.returncode:
            items.append(Message(f"exit status {res.returncode}", "warn"))
        return Results(items)
    streams = (cmd.verb in ("attach", "exec") or (cmd.verb == "start" and o.get("attach"))
               or (cmd.verb == "logs" and o.get("follow")))
    if not streams:
        return _captured(cmd)
    needs_terminal = bool(o.get("interactive") or o.get("tty"))
    if cmd.verb in ("attach", "exec"):
        rec = containers.resolve(cmd.args[0])
        if rec.state != "running":  # said before the terminal is handed over, not after
            raise JailshellError(f"container {rec.name} is not running", hint=f"start {rec.name}")
    if cmd.verb in ("attach", "start") and (cmd.verb == "attach" or o.get("attach")):
        spec = containers.resolve(cmd.args[0]).spec
        needs_terminal = needs_terminal or spec.tty or (spec.interactive and cmd.verb == "attach")
    if not needs_terminal:
        # Streams here (logs -f, start -a, attach of an output-only container): Ctrl-C ends it.
        err = io.StringIO()
        status = cli_docker.execute(cmd, cli_docker.Output(ws.ctx.stdout, err))
        items = [Message(line.removeprefix("jailshell: ")) for line in err.getvalue().splitlines()]
        if status:
            items.append(Message(f"exit status {status}", "warn"))
        return Results(items)
    if not ws.ctx.interactive:
        raise InvalidInput(f"{cmd.line} needs a terminal, and input is not one here")

    def run() -> Message:
        status = cli_docker.execute(cmd, cli_docker.Output(ws.ctx.stdout, ws.ctx.stderr))
        return Message(f"back at the jailshell prompt (exit status {status})")

    return Handover(f"{cmd.line}: this terminal is the container's until it is done"
                    + (" (Ctrl-P Ctrl-Q detaches)" if cmd.verb in ("attach", "start") else "") + ".", run)


def commands() -> list[Command]:
    return [
        Command("docker", cmd_docker, "a docker command line, done by hand: run and create show their plan, "
                "`walk` takes it (`docker run --all ...`: at once)",
                (Arg("line", "the docker command line (`docker help`)", rest=True),)),
        Command("walk", cmd_walk, "the pending docker plan: its next step (all: every step left; abort: drop it)",
                (Arg("what", "all or abort", ("all", "abort"), optional=True),)),
        Command("explain", cmd_explain, "explain docker run ...: the by-hand plan only, nothing is done",
                (Arg("line", "docker run ... or docker create ...", rest=True),)),
    ]
