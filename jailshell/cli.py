"""The `jailshell` command line.

Subcommands are a table of (name -> module). Each module defines
`add_arguments(parser)` and `run(args) -> int`, and is imported only when its
subcommand runs: `jailshell run` must not pay for prompt_toolkit and rich.
"""

from __future__ import annotations

import os
import sys

from jailshell import __version__
from jailshell.errors import ExitStatus, JailshellError

# argparse, importlib and typing are imported where they are used: `jailshell
# run` parses its command line without them (see main()), and every
# millisecond of its start-up is measured against runc's (bench/).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

# name -> (module, one-line help). Order is the order shown in --help.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "repl": ("jailshell.ui.cli_repl", "the interactive teaching shell (default)"),
    "play": ("jailshell.lessons.cli_play", "play lessons non-interactively (demo, CI)"),
    "lint": ("jailshell.lessons.cli_lint", "validate a lessons file"),
    "handout": ("jailshell.lessons.cli_handout", "a lesson as a printable handout"),
    "run": ("jailshell.engine.cli_run", "run a command in a fresh jail, all steps at once"),
    "doctor": ("jailshell.engine.cli_doctor", "what this machine can do, and how to fix what it can't"),
    "cleanup": ("jailshell.engine.cli_cleanup", "remove everything a crashed jailshell left behind"),
    "image": ("jailshell.engine.images.cli_image", "import, pull, list, export and remove images"),
    "docker": ("jailshell.engine.cli_docker", "a docker command line, done by hand by jailshell's engine"),
    "explain": ("jailshell.engine.cli_docker", "explain docker run ...: the by-hand plan only, nothing done"),
    "create": ("jailshell.engine.cli_docker", "docker create: set a container up, its process waiting"),
    "start": ("jailshell.engine.cli_docker", "docker start: exec a created container's command as PID 1"),
    "ps": ("jailshell.engine.cli_docker", "docker ps: list containers"),
    "logs": ("jailshell.engine.cli_docker", "docker logs: what a container printed"),
    "stop": ("jailshell.engine.cli_docker", "docker stop: SIGTERM to PID 1, SIGKILL after a timeout"),
    "kill": ("jailshell.engine.cli_docker", "docker kill: a signal to PID 1"),
    "rm": ("jailshell.engine.cli_docker", "docker rm: remove containers, leaving nothing behind"),
    "exec": ("jailshell.engine.cli_docker", "docker exec: a command in a running container"),
    "attach": ("jailshell.engine.cli_docker", "docker attach: this terminal to a container (Ctrl-P Ctrl-Q)"),
    "prune": ("jailshell.engine.cli_docker", "docker container prune: remove containers not running"),
}


def _load(name: str) -> Any:
    import importlib

    return importlib.import_module(SUBCOMMANDS[name][0])


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="jailshell",
        description="Learn how containers work by building one by hand, one real step at a time.",
    )
    parser.add_argument("--version", action="version", version=f"jailshell {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        # Only the chosen subcommand's module is imported to add its arguments.
        if only is None or only == name:
            try:
                _load(name).add_arguments(p)
            except ModuleNotFoundError as exc:
                if not exc.name or not exc.name.startswith("jailshell"):
                    raise
    return parser


def _print_error(exc: JailshellError) -> None:
    print(f"jailshell: error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"  hint: {exc.hint}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    as_program = argv is None  # the console script and `python -m jailshell` pass nothing
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "run":
        # The fast path: a plain `jailshell run` command line is parsed
        # without argparse; anything else falls through to the full parser.
        from jailshell.engine import cli_run

        fast = cli_run.parse_fast(argv[1:])
        if fast is not None:
            status = _call(cli_run.run, fast)
            if as_program:
                _exit_now(status)
            return status
    if not argv or (argv[0] not in SUBCOMMANDS and argv[0] not in ("-h", "--help", "--version")):
        # `jailshell` alone, or `jailshell --lessons FILE`, opens the REPL.
        argv = ["repl", *argv]
    parser = build_parser(only=argv[0] if argv and argv[0] in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return ExitStatus.USAGE
    return _call(_load(args.command).run, args)


def _exit_now(status: int) -> None:
    """End `jailshell run` without the interpreter's finalization (freeing
    every module's objects: 5-6 ms here, a sixth of the whole run). run()
    has already reaped the container and undone its journal; only the
    standard streams are left to flush. Not when something registered an
    atexit handler or started a thread (the network path's libraries may):
    those get the normal exit."""
    import atexit

    ncallbacks = getattr(atexit, "_ncallbacks", None)
    if ncallbacks is None or ncallbacks() or len(os.listdir("/proc/self/task")) != 1:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed or broken pipe: what the normal exit would have met too
    os._exit(status & 0xFF)


def _call(run: Any, args: Any) -> int:
    """A subcommand's run(args), with the user's errors as one line, not a traceback."""
    try:
        return int(run(args) or 0)
    except JailshellError as exc:
        _print_error(exc)
        return int(exc.status)
    except KeyboardInterrupt:
        return int(ExitStatus.CTRL_C)
    except BrokenPipeError:
        # `jailshell ... | head`: the reader went away; not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitStatus.OK)
