"""`jailshell run [--rm] [--hostname NAME] [--image REF] [--entrypoint CMD] [--network MODE] [-p H:C] [--link N]
-- [ARGS...]`."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

# `jailshell run` is the benchmark's whole-process path: argparse (with the
# gettext, re and enum it imports) is not imported to parse a plain command
# line; parse_fast() below handles the options of this table and leaves
# anything else (--help, abbreviations, unknown options) to argparse.
_FAST_FLAGS = {"--rm": "rm", "--userns": "userns", "--timings": "timings"}
_FAST_VALUES = {"--image": "image", "--entrypoint": "entrypoint", "--hostname": "hostname", "--name": "name",
                "-w": "workdir", "--workdir": "workdir", "-m": "memory", "--memory": "memory",
                "--pids-limit": "pids_limit", "--cpus": "cpus",
                "--network": "network", "--net": "network"}
_FAST_LISTS = {"-e": "env", "--env": "env", "-v": "volume", "--volume": "volume", "-p": "publish",
               "--publish": "publish", "--link": "link"}
_FAST_CHOICES = {"network": ("none", "bridge", "host")}
_FAST_DEFAULTS: dict[str, object] = {"rm": False, "image": None, "entrypoint": None, "hostname": None, "name": None,
                                     "env": [], "workdir": None, "volume": [], "memory": None, "pids_limit": None,
                                     "cpus": None, "network": "none", "publish": [], "link": [], "userns": False,
                                     "timings": False, "cmd": []}


class FastArgs:
    """What argparse would return for the same command line. An attribute
    not in the table above (an option added to add_arguments only) gets
    argparse's default, at the price of importing argparse then."""

    def __init__(self, values: dict[str, object]):
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:
        import argparse

        parser = argparse.ArgumentParser()
        add_arguments(parser)
        defaults = vars(parser.parse_args([]))
        if name not in defaults:
            raise AttributeError(name)
        return defaults[name]


def parse_fast(argv: list[str]) -> FastArgs | None:
    """argv after `run`, parsed as argparse would parse it, or None for
    anything not plainly one of the table's options (argparse then parses
    it, and reports its errors)."""
    values: dict[str, object] = {k: list(v) if isinstance(v, list) else v for k, v in _FAST_DEFAULTS.items()}
    values["command"] = "run"
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--" or not arg.startswith("-"):
            values["cmd"] = argv[i:]  # argparse.REMAINDER: everything from here, a leading "--" included
            break
        name, eq, attached = arg.partition("=")
        if name in _FAST_FLAGS and not eq:
            values[_FAST_FLAGS[name]] = True
            i += 1
            continue
        dest = _FAST_VALUES.get(name) or _FAST_LISTS.get(name)
        if dest is None or (eq and not name.startswith("--")):
            return None
        if eq:
            value = attached
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            value = argv[i + 1]
            i += 2
        else:
            return None  # a missing value, or one argparse would take for an option
        if dest in _FAST_CHOICES and value not in _FAST_CHOICES[dest]:
            return None
        if name in _FAST_LISTS:
            listed = values[dest]
            assert isinstance(listed, list)
            listed.append(value)
        else:
            values[dest] = value
    return FastArgs(values)


def add_arguments(p: argparse.ArgumentParser) -> None:
    import argparse

    p.add_argument("--rm", action="store_true", help="remove the container's writable layer when it exits")
    p.add_argument("--image", default=None, help="image reference (default: the embedded busybox)")
    p.add_argument("--entrypoint", default=None, metavar="CMD",
                   help="run CMD instead of the image's Entrypoint (its Cmd is then dropped, as docker does; "
                        "\"\" removes the entrypoint)")
    p.add_argument("--hostname", dest="hostname", default=None, help="hostname inside (default: the id)")
    p.add_argument("--name", default=None, help="a name for the container")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V", help="set an environment variable")
    p.add_argument("-w", "--workdir", default=None, help="working directory inside")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="HOST:JAIL[:ro]", help="bind mount")
    p.add_argument("-m", "--memory", default=None, help="memory limit, like docker's (64m, 1g)")
    p.add_argument("--pids-limit", default=None, help="the most processes the container may have")
    p.add_argument("--cpus", default=None, help="CPU time, in CPUs (0.5 = half of one CPU)")
    p.add_argument("--network", "--net", default="none", choices=("none", "bridge", "host"),
                   help="none: only lo (the default here; docker's is bridge); bridge: a veth to the jailshell0 "
                        "bridge, an address, NAT; host: the host's network, no namespace")
    p.add_argument("-p", "--publish", action="append", default=[], metavar="[IP:]HOSTPORT:PORT",
                   help="publish a container port on the host (needs --network bridge)")
    p.add_argument("--link", action="append", default=[], metavar="NAME[:ALIAS]",
                   help="reach the running container NAME by name (in /etc/hosts; needs --network bridge)")
    p.add_argument("--userns", action="store_true", help="also a user namespace (always on when not root)")
    p.add_argument("--timings", action="store_true", help="print where the time went (to stderr)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="command and arguments (after --)")


def run(args: argparse.Namespace) -> int:
    import sys

    from jailshell.engine import runfast

    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    for e in args.env:
        if "=" not in e:
            from jailshell.errors import InvalidInput

            raise InvalidInput(f"invalid environment variable {e!r}", hint="use -e NAME=VALUE")
    result: Any = None
    if runfast.plain_enough(image=args.image, rm=args.rm, userns=args.userns, volumes=args.volume,
                            network=args.network, publish=args.publish, links=args.link, memory=args.memory,
                            pids_limit=args.pids_limit, cpus=args.cpus):
        # Without the imports of run.py, the image store and the journal module
        # (see runfast's docstring); None when the default image is not built yet.
        result = runfast.run_plain(cmd, env=args.env, workdir=args.workdir, hostname=args.hostname, name=args.name,
                                   entrypoint=args.entrypoint)
    if result is None:
        result = _run_full(args, cmd)
    if result.oom_killed:
        print(f"jailshell: the container was OOM-killed: it needed more than --memory {args.memory}",
              file=sys.stderr)
    if args.timings and result.network:
        print("jailshell: network: " + "; ".join(s.summary for s in result.network), file=sys.stderr)
    if args.timings:
        parts = ", ".join(f"{k} {v * 1000:.2f} ms" for k, v in result.timings.items())
        print(f"jailshell: {result.container_id}: {parts}", file=sys.stderr)
    if not args.rm:
        print(f"jailshell: container {result.container_id} kept (exit {result.status})", file=sys.stderr)
    return result.status


def _run_full(args: argparse.Namespace, cmd: list[str]) -> Any:
    """Every other run: run.run() with a RunSpec."""
    from jailshell.engine.run import RunSpec, parse_volume
    from jailshell.engine.run import run as run_container

    spec = RunSpec(argv=cmd, image=args.image, entrypoint=args.entrypoint, hostname=args.hostname, rm=args.rm,
                   env=args.env, workdir=args.workdir, user_ns=args.userns,
                   volumes=[parse_volume(v) for v in args.volume],
                   name=args.name, memory=args.memory, pids_limit=args.pids_limit, cpus=args.cpus,
                   network=args.network, publish=args.publish, links=args.link)
    return run_container(spec)
