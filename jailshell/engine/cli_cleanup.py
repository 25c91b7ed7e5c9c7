"""`jailshell cleanup`: remove what a crashed or killed jailshell left behind."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when there was nothing to do")


def run(args: argparse.Namespace) -> int:
    import os

    from jailshell.engine.cleanup import cleanup
    from jailshell.errors import NeedsRoot

    if os.geteuid() != 0:
        raise NeedsRoot("cleanup (unmounting, removing cgroups and interfaces)")
    report = cleanup()
    for item in report.removed:
        print(f"removed {item}")
    for item in report.failed:
        print(f"could not remove {item}")
    for item in report.skipped_live:
        print(f"left alone: {item}")
    if not report.removed and not report.failed and not args.quiet:
        print("nothing to clean up: the host holds nothing of jailshell's")
    return 1 if report.failed else 0
