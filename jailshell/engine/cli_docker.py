"""`jailshell docker ...`: a docker command line, done by jailshell's engine.

Also `jailshell ps|logs|stop|kill|rm|exec|attach|create|start|prune` (the
same verbs without the word docker) and `jailshell explain docker run ...`
(the plan only). Every word after the subcommand goes to the docker-line
parser (jailshell.engine.dockerline), which knows docker's flags; argparse
must not read them, or `jailshell ps -a` would be refused as an unknown
option of jailshell's.

The plan and jailshell's own notes go to stderr: stdout carries what docker
prints there (container ids, the container's own output, tables), so a
script can use it the same way.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import IO, Any

# Subcommand of jailshell -> the docker verb it stands for.
VERB_OF = {"ps": "ps", "logs": "logs", "stop": "stop", "kill": "kill", "rm": "rm", "exec": "exec",
           "attach": "attach", "create": "create", "start": "start", "prune": "container-prune"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("words", nargs=argparse.REMAINDER, help="the docker command line (`docker help` lists them)")
    # No word is an option of jailshell's: all of them are docker's, read by dockerline.
    p.prefix_chars = "\0"


def run(args: argparse.Namespace) -> int:
    from jailshell.engine import dockerline

    words = list(args.words)
    quiet = False
    if args.command == "explain":
        cmd = dockerline.parse(["explain", *words])
    elif args.command == "docker":
        # jailshell's own option, before the docker verb: no plan on stderr (scripts, tests).
        quiet = bool(words) and words[0] in ("-q", "--quiet")
        cmd = dockerline.parse(words[1:] if quiet else words)
    else:
        cmd = dockerline.parse([*VERB_OF[args.command].replace("container-", "container ").split(), *words])
    return execute(cmd, Output(quiet=quiet))


class Output:
    """Where a command writes: stdout for what docker prints there, stderr for the rest."""

    def __init__(self, out: IO[str] | None = None, err: IO[str] | None = None, *, quiet: bool = False):
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.quiet = quiet  # no plan

    def print(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def note(self, text: str) -> None:
        print(f"jailshell: {text}", file=self.err, flush=True)


def execute(cmd: Any, o: Output) -> int:
    """Run a parsed docker command; returns the exit status docker would."""
    handler: Callable[[Any, Output], int] = HANDLERS[cmd.verb]
    if cmd.explain:
        return _explain(cmd, o)
    return handler(cmd, o)


# --- run, create, explain -----------------------------------------------------------------------


def plan_text(cmd: Any) -> tuple[Any, str]:
    from jailshell.engine import containers
    from jailshell.engine.dockerline import ImageFacts, Layout, plan_for

    layout = Layout.of(containers.new_id())
    plan = plan_for(cmd.spec, layout, ImageFacts.look_up(cmd.spec.run.image))
    if cmd.verb == "create":
        plan = type(plan)(plan.spec, plan.layout, plan.image, plan.steps[:-1])
    return plan, plan.render()


def _explain(cmd: Any, o: Output) -> int:
    _, text = plan_text(cmd)
    o.print(f"{cmd.line}, by hand (nothing is done; the paths use an id the container could get):")
    o.print(text)
    return 0


def _show_plan(cmd: Any, o: Output, creation: Any) -> None:
    if o.quiet:
        return
    print(f"jailshell: {cmd.line}, by hand:", file=o.err)
    print(creation.plan.render(), file=o.err, flush=True)


def _check_tty(spec: Any) -> None:
    from jailshell.errors import InvalidInput

    if spec.tty and spec.interactive and not spec.detach and not os.isatty(0):
        raise InvalidInput("the input device is not a TTY", hint="leave out -t when input comes from a pipe or file")


def _run(cmd: Any, o: Output) -> int:
    from jailshell.engine import containers

    spec = cmd.spec
    _check_tty(spec)
    creation = containers.Creation(spec)
    _show_plan(cmd, o, creation)
    code = containers.run(creation, streams=_streams(o))
    if spec.detach:
        from jailshell.errors import JailshellError

        try:
            rec = containers.Record.load(creation.layout)
            o.note(f"{rec.name}: PID 1 is {rec.pid} on the host; `jailshell logs {rec.name}` shows what it prints")
        except JailshellError:
            o.note(f"{spec.run.name}: it has already exited and was removed (--rm)")
        o.print(creation.layout.id)
        return 0
    if code is None:
        o.note(f"detached from {spec.run.name}: it keeps running (`jailshell attach {spec.run.name}`)")
        return 0
    return code


def _create(cmd: Any, o: Output) -> int:
    from jailshell.engine import containers

    creation = containers.Creation(cmd.spec)
    plan = creation.plan
    if not o.quiet:
        print(f"jailshell: {cmd.line}, by hand (the last step, exec, is `start`):", file=o.err)
        print(type(plan)(plan.spec, plan.layout, plan.image, plan.steps[:-1]).render(), file=o.err, flush=True)
    try:
        for _ in creation.steps():
            pass
    finally:
        creation.close()
    o.print(creation.layout.id)
    return 0


def _streams(o: Output) -> Any:
    """The container's bytes go straight to this process's fds when the output
    is this process's own (binary output survives); else, as text, to o."""
    from jailshell.engine.containers import Streams

    if o.out is sys.stdout and o.err is sys.stderr:
        return Streams(notice=o.note)

    def text(stream: IO[str]) -> Callable[[bytes], None]:
        def write(data: bytes) -> None:
            stream.write(data.decode("utf-8", "replace"))
            stream.flush()
        return write

    return Streams(out=text(o.out), err=text(o.err), notice=o.note)


# --- lifecycle ------------------------------------------------------------------------------------


def _start(cmd: Any, o: Output) -> int:
    from jailshell.engine import containers

    attach = bool(cmd.opts.get("attach"))
    status = 0
    for ref in cmd.args:
        code = containers.start(ref, attach=attach, stdin=bool(cmd.opts.get("interactive")), streams=_streams(o))
        if attach:
            if code is None:
                o.note(f"detached from {ref}: it keeps running")
            else:
                status = code
        else:
            o.print(ref)
    return status


def _stop(cmd: Any, o: Output) -> int:
    from jailshell.engine import containers

    timeout = int(cmd.opts["time"]) if cmd.opts.get("time") is not None else 10
    for ref in cmd.args:
        report = containers.stop(ref, timeout)
        if report.was_running:
            if report.note:
                o.note(report.note + f"; SIGKILL follows after {timeout} s")
            how = f"SIGKILL after {timeout} s (SIGTERM had no effect)" if report.killed else "SIGTERM"
            o.note(f"{report.name}: stopped by {how} in {report.seconds:.1f} s, exit code {report.exit_code}; "
                   "by hand: " + "; ".join(report.raw))
        o.print(ref)
    return 0


def _kill(cmd: Any, o: Output) -> int:
    import signal as sigmod

    from jailshell.engine import containers
    from jailshell.engine.dockerline import signal_number

    sig = signal_number(cmd.opts["signal"]) if cmd.opts.get("signal") else int(sigmod.SIGKILL)
    for ref in cmd.args:
        rec = containers.resolve(ref)
        note = containers.kill(ref, sig)
        o.note(f"kill -{sigmod.Signals(sig).name[3:]} {rec.pid}    # PID 1 of {rec.name}, as the host sees it")
        if note:
            o.note(note)
        o.print(ref)
    return 0


def _rm(cmd: Any, o: Output) -> int:
    from jailshell.engine import containers

    for ref in cmd.args:
        containers.rm(ref, force=bool(cmd.opts.get("force")))
        o.print(ref)
    return 0


def _confirm(o: Output, question: str, force: bool) -> bool:
    from jailshell.errors import InvalidInput

    if force:
        return True
    if not os.isatty(0):
        raise InvalidInput("not asking without a terminal", hint="add -f to go ahead")
    o.err.write(f"{question} [y/N] ")
    o.err.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def _prune(cmd: Any, o: Output) -> int:
    from jailshell.engine import containers

    system = cmd.verb == "system-prune"
    what = ("all stopped containers, and whatever dead jailshell processes left on this host" if system
            else "all stopped containers")
    if not _confirm(o, f"WARNING! This will remove {what}. Are you sure you want to continue?",
                    bool(cmd.opts.get("force"))):
        return 0
    report = containers.prune(system=system)
    if report.removed:
        o.print("Deleted Containers:")
        for name in report.removed:
            o.print(name)
    for item in report.leftovers:
        o.print(f"removed {item}")
    for item in report.failed:
        o.note(f"could not remove {item}")
    if not report.removed and not report.leftovers:
        o.print("Nothing to remove.")
    return 1 if report.failed else 0


def _exec(cmd: Any, o: Output) -> int:
    from jailshell.engine import containers

    ref, argv = cmd.args[0], cmd.args[1:]
    code = containers.exec_in(ref, argv, interactive=bool(cmd.opts.get("interactive")), tty=bool(cmd.opts.get("tty")),
                              detach=bool(cmd.opts.get("detach")), env=cmd.opts.get("env"),
                              workdir=cmd.opts.get("workdir"), user=cmd.opts.get("user"))
    return code or 0


def _attach(cmd: Any, o: Output) -> int:
    from jailshell.engine import containers

    code = containers.attach_to(cmd.args[0], stdin=not cmd.opts.get("no_stdin"), streams=_streams(o))
    if code is None:
        o.note("read escape sequence: detached, the container keeps running")
        return 0
    return code


def _logs(cmd: Any, o: Output) -> int:
    from jailshell.engine import containers

    tail = cmd.opts.get("tail")
    containers.logs(cmd.args[0], follow=bool(cmd.opts.get("follow")), timestamps=bool(cmd.opts.get("timestamps")),
                    tail=None if tail in (None, "all") else int(tail), streams=_streams(o))
    return 0


def _export(cmd: Any, o: Output) -> int:
    from jailshell.engine import containers
    from jailshell.errors import InvalidInput

    dest = cmd.opts.get("output")
    if dest in (None, "-"):
        if os.isatty(1):
            raise InvalidInput("cowardly refusing to write a tar to a terminal", hint="use -o FILE, or redirect")
        sys.stdout.flush()
        with os.fdopen(os.dup(1), "wb") as out:
            count = containers.export(cmd.args[0], out)
    else:
        tmp = f"{dest}.part-{os.getpid()}"
        try:
            with open(tmp, "wb") as fh:
                count = containers.export(cmd.args[0], fh)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    o.note(f"{count} entries exported")
    return 0


# --- listings ---------------------------------------------------------------------------------------


def _table(o: Output, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    for row in [header, *rows]:
        o.print("   ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())


def _ps(cmd: Any, o: Output) -> int:
    from jailshell.engine import containers

    rows = containers.ps(all=bool(cmd.opts.get("all")))
    full = bool(cmd.opts.get("no_trunc"))
    if cmd.opts.get("quiet"):
        for r in rows:
            o.print(r.id)
        return 0
    now = time.time()

    def trunc(text: str) -> str:
        return text if full or len(text) <= 22 else text[:19] + "..."

    _table(o, ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES", "PID"],
           [[r.id, r.image, '"' + trunc(r.command) + '"', containers.human_duration(now - r.created) + " ago",
             r.status, r.ports, r.name, str(r.pid or "")] for r in rows])
    return 0


def _image_ls(cmd: Any, o: Output) -> int:
    from jailshell.engine.images.cli_image import _size_of, human
    from jailshell.engine.images.store import ImageStore

    images = list(ImageStore().images())
    if cmd.opts.get("quiet"):
        for image in images:
            o.print(image.ref)
        return 0
    _table(o, ["REPOSITORY", "TAG", "SIZE", "SOURCE"],
           [[i.name, i.tag, human(_size_of(i)), i.source] for i in images])
    return 0


def _pull(cmd: Any, o: Output) -> int:
    from jailshell.engine.images.cli_image import human
    from jailshell.engine.images.oci import Platform
    from jailshell.engine.images.registry import PullEvents, by_hand, pull

    ref = cmd.args[0]
    platform = Platform.parse(cmd.opts["platform"]) if cmd.opts.get("platform") else None
    events = PullEvents() if cmd.opts.get("quiet") else PullEvents(
        on_status=o.note,
        on_blob=lambda digest, size: o.note(f"{digest[7:19]}: downloading ({human(size)})"),
        on_blob_done=lambda digest, cached: o.note(f"{digest[7:19]}: {'already exists' if cached else 'done'}"))
    image = pull(ref, platform=platform, events=events)
    if cmd.opts.get("quiet"):
        o.print(image.ref)
        return 0
    digest = (image.meta.get("blobs") or ["?"])[0]
    o.print(f"Digest: {digest}")
    o.print(f"Status: {image.ref}: {len(image.layers)} layer(s) in {image.rootfs}")
    if not o.quiet:
        o.note("by hand (the registry's HTTP API, then tar):")
        for line in by_hand(ref, image):
            o.note("  " + line)
    return 0


def _image_prune(cmd: Any, o: Output) -> int:
    from jailshell.engine.images.cli_image import human
    from jailshell.engine.images.store import ImageStore

    if not _confirm(o, "WARNING! This will remove every cached blob and layer no image uses. Are you sure you "
                       "want to continue?", bool(cmd.opts.get("force"))):
        return 0
    report = ImageStore().prune()
    for item in report.removed:
        o.print(f"deleted: {item}")
    o.print(f"Total reclaimed space: {human(report.freed)}")
    return 0


def _version(cmd: Any, o: Output) -> int:
    import platform

    from jailshell import __version__

    try:
        from jailshell.engine.cgroup_layout import detect

        cgroups = detect().summary()
    except OSError as exc:
        cgroups = f"unknown ({exc})"
    o.print(f"jailshell:       {__version__} (its own engine: no daemon, no containerd, no runc)")
    o.print(f"Python:          {platform.python_version()}")
    o.print(f"Kernel:          {platform.release()} ({platform.machine()})")
    o.print(f"cgroups:         {cgroups}")
    o.print("docker commands: " + ", ".join(_shown(v) for v in _verbs()))
    return 0


def _verbs() -> list[str]:
    from jailshell.engine.dockerline import VERBS

    return list(VERBS)


def _shown(verb: str) -> str:
    from jailshell.engine.dockerline import _shown as shown

    return shown(verb)


def _help(cmd: Any, o: Output) -> int:
    from jailshell.engine.dockerline import ALIASES, UNSUPPORTED_FLAGS, VERBS
    from jailshell.errors import InvalidInput

    if cmd.args:
        word = cmd.args[0]
        verb = VERBS.get(word) or VERBS.get(ALIASES.get((word,), "")) or VERBS.get(word.replace(" ", "-"))
        if verb is None:
            raise InvalidInput(f"docker help: no command {word!r}", hint="`docker help` lists them")
        o.print(f"Usage:  docker {_shown(verb.name)} {verb.usage}".rstrip())
        o.print()
        o.print(verb.help)
        if verb.flags:
            o.print()
            o.print("Options:")
            width = max(len(f.usage) for f in verb.flags)
            for f in verb.flags:
                o.print(f"  {f.usage.ljust(width)}   {f.help}")
        if verb.name in ("run", "create"):
            o.print()
            o.print("Not supported (refused by name): " + " ".join(sorted(UNSUPPORTED_FLAGS)))
        return 0
    o.print("Usage:  docker COMMAND    (jailshell's engine does what docker would, one real step at a time)")
    o.print()
    width = max(len(_shown(v)) for v in VERBS)
    for name, verb in VERBS.items():
        o.print(f"  {_shown(name).ljust(width)}   {verb.help}")
    o.print()
    o.print("  explain docker run ...   the plan only: every by-hand step and its command, nothing done")
    o.print("  jailshell docker -q ...  the same without printing the plan first (for scripts)")
    o.print("Run 'docker help COMMAND' for the flags of one command.")
    return 0


HANDLERS: dict[str, Callable[[Any, Output], int]] = {
    "run": _run, "create": _create, "start": _start, "stop": _stop, "kill": _kill, "rm": _rm, "exec": _exec,
    "attach": _attach, "logs": _logs, "export": _export, "ps": _ps, "image-ls": _image_ls, "version": _version,
    "help": _help, "container-prune": _prune, "system-prune": _prune, "pull": _pull, "image-prune": _image_prune,
}
