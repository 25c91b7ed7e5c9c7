"""`jailshell doctor`: one screen on what this machine can do before the lesson starts."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    from dataclasses import asdict

    from jailshell.engine.doctor import core_ok, run_checks

    checks = run_checks()
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        utf = (sys.stdout.encoding or "").lower().startswith("utf")
        yes, no = ("✓", "✗") if utf else ("ok", "NO")
        width = max(len(c.name) for c in checks)
        for c in checks:
            print(f" {yes if c.ok else no} {c.name:<{width}}  {c.detail}")
            if not c.ok and c.fix:
                print(f"   {'':<{width}}  fix: {c.fix}")
        print()
        print("The core lessons can run here." if core_ok(checks)
              else "The core lessons cannot run here: fix the items marked above.")
    return 0 if core_ok(checks) else 1
