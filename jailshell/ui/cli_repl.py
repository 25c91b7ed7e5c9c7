"""`jailshell [repl] [--lessons FILE] [--present] [--image REF]`: the teaching shell."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lessons", type=Path, default=None, metavar="FILE",
                   help="a course of your own (default: the one shipped with jailshell)")
    p.add_argument("--present", action="store_true",
                   help="presenter mode: one step per screen, confirm each command, host and jail side by side")
    p.add_argument("--image", default=None, metavar="REF", help="image for the jail (default: the embedded busybox)")


def run(args: argparse.Namespace) -> int:
    from jailshell.commands.builtin import build_workspace
    from jailshell.context import AppContext

    ctx = AppContext.from_environment(present=args.present)
    ws = build_workspace(ctx, lessons=args.lessons, image=args.image)
    if not ctx.interactive:
        from jailshell.ui.app import run_piped

        return run_piped(ctx, ws)
    from jailshell.ui.app import Repl

    return Repl(ctx, ws).run()
