"""`jailshell run [--rm] [--hostname NAME] [--image REF] -- CMD [ARGS...]`."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rm", action="store_true", help="remove the container's writable layer when it exits")
    p.add_argument("--image", default=None, help="image reference (default: the embedded busybox)")
    p.add_argument("--hostname", dest="hostname", default=None, help="hostname inside (default: the id)")
    p.add_argument("--name", default=None, help="a name for the container")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V", help="set an environment variable")
    p.add_argument("-w", "--workdir", default=None, help="working directory inside")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="HOST:JAIL[:ro]", help="bind mount")
    p.add_argument("-m", "--memory", default=None, help="memory limit, like docker's (64m, 1g)")
    p.add_argument("--pids-limit", default=None, help="the most processes the container may have")
    p.add_argument("--cpus", default=None, help="CPU time, in CPUs (0.5 = half of one CPU)")
    p.add_argument("--userns", action="store_true", help="also a user namespace (always on when not root)")
    p.add_argument("--timings", action="store_true", help="print where the time went (to stderr)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="command and arguments (after --)")


def run(args: argparse.Namespace) -> int:
    import sys

    from jailshell.engine.run import RunSpec, parse_volume
    from jailshell.engine.run import run as run_container
    from jailshell.errors import InvalidInput

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    for e in args.env:
        if "=" not in e:
            raise InvalidInput(f"invalid environment variable {e!r}", hint="use -e NAME=VALUE")
    spec = RunSpec(argv=cmd, image=args.image, hostname=args.hostname, rm=args.rm, env=args.env,
                   workdir=args.workdir, user_ns=args.userns, volumes=[parse_volume(v) for v in args.volume],
                   name=args.name, memory=args.memory, pids_limit=args.pids_limit, cpus=args.cpus)
    result = run_container(spec)
    if result.oom_killed:
        print(f"jailshell: the container was OOM-killed: it needed more than --memory {args.memory}",
              file=sys.stderr)
    if args.timings:
        parts = ", ".join(f"{k} {v * 1000:.2f} ms" for k, v in result.timings.items())
        print(f"jailshell: {result.container_id}: {parts}", file=sys.stderr)
    if not args.rm:
        print(f"jailshell: container {result.container_id} kept (exit {result.status})", file=sys.stderr)
    return result.status
