"""`jailshell [repl] [--lessons FILE] [--present [--present-width N]] [--image REF]`: the teaching shell."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lessons", type=Path, default=None, metavar="FILE",
                   help="a course of your own (default: the one shipped with jailshell)")
    p.add_argument("--present", action="store_true",
                   help="presenter mode: one step per screen, confirm each command, host and jail side by side")
    p.add_argument("--present-width", type=_columns, default=None, metavar="N",
                   help="presenter mode: N columns of text, centred (default: two thirds of the terminal, "
                        "at least 60); zoom the terminal's font to make it large")
    p.add_argument("--image", default=None, metavar="REF", help="image for the jail (default: the embedded busybox)")


def run(args: argparse.Namespace) -> int:
    from jailshell.commands.builtin import build_workspace
    from jailshell.context import AppContext

    ctx = AppContext.from_environment(present=args.present or args.present_width is not None)
    ws = build_workspace(ctx, lessons=args.lessons, image=args.image)
    if not ctx.interactive:
        from jailshell.ui.app import run_piped

        return run_piped(ctx, ws)
    from jailshell.ui.app import Repl

    _leave_cleanly_on_hangup()
    return Repl(ctx, ws, present_width=args.present_width).run()


def _columns(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of columns: {text!r}") from None
    if n < 40:
        raise argparse.ArgumentTypeError(f"{n} columns is too narrow to read a table (40 at least)")
    return n


def _leave_cleanly_on_hangup() -> None:
    """Closing the terminal window (SIGHUP) or being told to stop (SIGTERM)
    ends the session the way `quit` does: the REPL's finally tears the jail
    down. By default Python would just die, leaving its mounts and cgroup
    for `jailshell cleanup`."""
    import signal

    def leave(signum: int, frame: object) -> None:
        for sig in (signal.SIGHUP, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)  # a second one must not cut the teardown short
        raise SystemExit(128 + signum)

    for sig in (signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, leave)
