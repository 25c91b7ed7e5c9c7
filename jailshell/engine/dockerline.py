"""A typed `docker ...` line, read with docker's own rules, and `docker run`
unrolled into the by-hand steps it stands for.

Parsing follows the docker CLI: flags come before the image (or container)
and everything after it is the command (`docker run -it busybox ls -l`: `-l`
belongs to ls); short flags cluster (`-dit`); values come as `--name web`,
`--name=web`, `-e K=V` or `-eK=V`. A flag jailshell does not implement is
refused by name with the reason, never skipped: a learner who types
`--privileged` must not believe they got it.

For `run` and `create` the result is a ContainerSpec and a Plan: numbered
steps (image, overlay root, cgroup, namespaces, hostname, network, mounts,
pivot_root, masks, exec as PID 1), each carrying its parameters and the raw
commands generated from those parameters. The engine (jailshell.engine.
supervisor) executes a step from the same `params`, so what is shown cannot
drift from what is done. Pasted in order into a root terminal, the raw
commands build the same container by hand: `host` commands in that terminal,
`jail` commands in the shell that the unshare step starts.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jailshell import paths
from jailshell.engine import steps
from jailshell.engine.equivalents import dev_commands, mask_commands, unshare_cmdline
from jailshell.engine.run import DEFAULT_NAMESPACES, RunSpec, parse_volume
from jailshell.errors import InvalidInput

# The mounts docker gives every container (moby oci/defaults.go), in its order.
# jailshell's own `run` also mounts a tmpfs on /tmp; docker does not.
DOCKER_MOUNTS = ("proc", "dev", "devpts", "shm", "mqueue", "sys")
NETWORKS_BUILTIN = ("bridge", "none", "host")
SIGNALS_HINT = "a name (TERM, SIGKILL, HUP) or a number (15)"
# The placeholder a raw command uses for the container process's PID as the
# host sees it; replaced by the real PID once the process exists.
PID_PLACEHOLDER = "$PID"


# --- the flag tables ----------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    names: tuple[str, ...]  # ("-i", "--interactive")
    dest: str
    kind: str = "bool"  # bool | value | list
    metavar: str = ""
    help: str = ""

    @property
    def usage(self) -> str:
        return ", ".join(self.names) + (f" {self.metavar}" if self.kind != "bool" else "")


@dataclass(frozen=True)
class Verb:
    name: str  # canonical: run, ps, container-prune, ...
    usage: str  # what follows the verb
    help: str
    flags: tuple[Flag, ...] = ()
    # Flags stop at the first positional word (docker run IMAGE CMD -l: -l is the command's).
    flags_stop: bool = False
    min_args: int = 0
    max_args: int | None = 0


_RUN_FLAGS = (
    Flag(("-i", "--interactive"), "interactive", help="keep the container's stdin open (a pipe from the client)"),
    Flag(("-t", "--tty"), "tty", help="give the container a terminal (a pseudo-terminal its supervisor holds)"),
    Flag(("--rm",), "rm", help="remove the container when it exits"),
    Flag(("--name",), "name", "value", "NAME", "a name for the container"),
    Flag(("-h", "--hostname"), "hostname", "value", "NAME", "hostname inside (default: the short id)"),
    Flag(("-e", "--env"), "env", "list", "K=V", "set an environment variable (K alone: take it from here)"),
    Flag(("-w", "--workdir"), "workdir", "value", "DIR", "working directory inside (created if missing)"),
    Flag(("-v", "--volume"), "volume", "list", "HOST:JAIL[:ro]", "bind-mount a host path"),
    Flag(("-m", "--memory"), "memory", "value", "BYTES", "memory limit (k, m, g suffixes)"),
    Flag(("--pids-limit",), "pids_limit", "value", "N", "at most N processes"),
    Flag(("--cpus",), "cpus", "value", "CPUS", "CPU time, in CPUs (0.5: half of one)"),
    Flag(("--network", "--net"), "network", "value", "NET", "none, host, bridge (default) or a network name"),
    Flag(("-p", "--publish"), "publish", "list", "[IP:][HOST:]PORT[/tcp]", "publish a container port on the host"),
    Flag(("--link",), "link", "list", "NAME[:ALIAS]", "reach another container by name"),
    Flag(("-u", "--user"), "user", "value", "USER[:GROUP]", "run the command as this user (name or uid)"),
    Flag(("--entrypoint",), "entrypoint", "value", "CMD",
         "run CMD instead of the image's entrypoint (its Cmd is dropped; \"\" removes the entrypoint)"),
)
_DETACH = Flag(("-d", "--detach"), "detach", help="run in the background and print the container id")

VERBS: dict[str, Verb] = {
    v.name: v
    for v in (
        Verb("run", "[OPTIONS] IMAGE [COMMAND] [ARG...]", "create a container and start it",
             (_DETACH, *_RUN_FLAGS), flags_stop=True, min_args=1, max_args=None),
        Verb("create", "[OPTIONS] IMAGE [COMMAND] [ARG...]",
             "set a container up and leave its process waiting (runc create)", _RUN_FLAGS, flags_stop=True,
             min_args=1, max_args=None),
        Verb("start", "[OPTIONS] CONTAINER...", "exec the command of created or stopped containers (runc start)",
             (Flag(("-a", "--attach"), "attach", help="attach to its output and wait for it"),
              Flag(("-i", "--interactive"), "interactive", help="attach stdin too")), min_args=1, max_args=None),
        Verb("ps", "[OPTIONS]", "list containers",
             (Flag(("-a", "--all"), "all", help="also those not running"),
              Flag(("-q", "--quiet"), "quiet", help="only ids"),
              Flag(("--no-trunc",), "no_trunc", help="full ids and commands"))),
        Verb("logs", "[OPTIONS] CONTAINER", "what a container printed (kept in a file)",
             (Flag(("-f", "--follow"), "follow", help="keep printing new output until it stops"),
              Flag(("-t", "--timestamps"), "timestamps", help="show when each line was printed"),
              Flag(("-n", "--tail"), "tail", "value", "N", "only the last N lines")), min_args=1, max_args=1),
        Verb("stop", "[OPTIONS] CONTAINER...", "SIGTERM to PID 1, then SIGKILL after a timeout",
             (Flag(("-t", "--time"), "time", "value", "SECONDS", "seconds to wait before SIGKILL (default 10)"),),
             min_args=1, max_args=None),
        Verb("kill", "[OPTIONS] CONTAINER...", "send a signal to PID 1",
             (Flag(("-s", "--signal"), "signal", "value", "SIGNAL", "the signal (default KILL)"),),
             min_args=1, max_args=None),
        Verb("rm", "[OPTIONS] CONTAINER...", "remove containers, leaving nothing behind",
             (Flag(("-f", "--force"), "force", help="kill a running container first"),), min_args=1, max_args=None),
        Verb("exec", "[OPTIONS] CONTAINER COMMAND [ARG...]", "run a command in a running container (as nsenter)",
             (Flag(("-i", "--interactive"), "interactive", help="keep stdin open"),
              Flag(("-t", "--tty"), "tty", help="on this terminal"),
              Flag(("-d", "--detach"), "detach", help="in the background"),
              Flag(("-e", "--env"), "env", "list", "K=V", "set an environment variable"),
              Flag(("-w", "--workdir"), "workdir", "value", "DIR", "working directory inside"),
              Flag(("-u", "--user"), "user", "value", "USER[:GROUP]", "run as this user")),
             flags_stop=True, min_args=2, max_args=None),
        Verb("attach", "CONTAINER", "connect this terminal to a running container (detach: Ctrl-P Ctrl-Q)",
             (Flag(("--no-stdin",), "no_stdin", help="do not send input"),), min_args=1, max_args=1),
        Verb("container-prune", "[OPTIONS]", "remove every container that is not running",
             (Flag(("-f", "--force"), "force", help="do not ask"),)),
        Verb("system-prune", "[OPTIONS]",
             "remove stopped containers and whatever dead jailshell processes left behind",
             (Flag(("-f", "--force"), "force", help="do not ask"),)),
        Verb("export", "[OPTIONS] CONTAINER", "a container's root filesystem as one flat tar",
             (Flag(("-o", "--output"), "output", "value", "FILE", "write to FILE (default: stdout)"),),
             min_args=1, max_args=1),
        Verb("image-ls", "[OPTIONS]", "list images", (Flag(("-q", "--quiet"), "quiet", help="only names"),)),
        Verb("pull", "[OPTIONS] NAME[:TAG|@DIGEST]", "download an image from a registry (Docker Hub by default)",
             (Flag(("--platform",), "platform", "value", "OS/ARCH", "pick this platform from a multi-platform image"),
              Flag(("-q", "--quiet"), "quiet", help="print only the image name")), min_args=1, max_args=1),
        Verb("image-prune", "[OPTIONS]", "remove cached blobs and layers no image uses",
             (Flag(("-f", "--force"), "force", help="do not ask"),)),
        Verb("version", "", "versions of jailshell and of what it runs on"),
        Verb("help", "[COMMAND]", "this help, or one command's", max_args=1),
    )
}

# What people type for the same verb.
ALIASES: dict[tuple[str, ...], str] = {
    ("container", "ls"): "ps", ("container", "list"): "ps", ("container", "ps"): "ps",
    ("container", "prune"): "container-prune", ("system", "prune"): "system-prune",
    ("image", "ls"): "image-ls", ("image", "list"): "image-ls", ("images",): "image-ls",
    ("image", "pull"): "pull", ("image", "prune"): "image-prune",
    **{("container", v): v for v in ("run", "create", "start", "logs", "stop", "kill", "rm", "exec", "attach",
                                     "export")},
}

# Flags of `docker run`/`create` that jailshell does not implement, with the
# reason. Any other flag it does not know is refused too, with the closest match.
UNSUPPORTED_FLAGS = {
    "--privileged": "jailshell never hands a jail the host's devices and every capability",
    "--cap-add": "jailshell does not change capabilities: root in the jail keeps root's set",
    "--cap-drop": "jailshell does not change capabilities: root in the jail keeps root's set",
    "--init": "there is no init here on purpose: the command is PID 1, which is the lesson",
    "--restart": "containers are restarted by hand with `start`",
    "--tmpfs": "mount it yourself: `exec CONTAINER mount -t tmpfs tmpfs /DIR`",
    "--mount": "use -v HOST:JAIL[:ro]",
    "--read-only": "the root is always a writable overlay",
    "--env-file": "use -e K=V for each variable",
    "--pid": "the PID namespace is always a new one",
    "--ipc": "the IPC namespace is always a new one",
    "--uts": "the UTS namespace is always a new one",
    "--userns": "a user namespace is used only when jailshell runs without root",
    "--cgroupns": "the cgroup namespace is always a new one",
    "--security-opt": "no seccomp or AppArmor profiles are applied",
    "--device": "the jail's /dev holds only null, zero, full, random, urandom and tty",
    "--platform": "images run on this machine's architecture only",
    "--pull": "jailshell never pulls during run: `jailshell image pull REF` first",
    "--detach-keys": "the detach keys are Ctrl-P Ctrl-Q",
    "--sig-proxy": "signals are always passed to PID 1 by an attached client",
    "-a": "attach is all or nothing: `docker run` (attached) or `-d`",
    "--attach": "attach is all or nothing: `docker run` (attached) or `-d`",
    "-l": "labels are not kept",
    "--label": "labels are not kept",
    "--dns": "no resolver configuration is written into the jail",
    "--add-host": "no /etc/hosts is written into the jail",
    "--memory-swap": "only the memory limit itself (-m) is set",
    "--cpu-shares": "only --cpus is set",
    "--cpuset-cpus": "only --cpus is set",
    "--ulimit": "limits are not changed",
    "--stop-signal": "stop always sends SIGTERM first",
    "--stop-timeout": "use `stop -t SECONDS`",
    "--health-cmd": "no health checks",
}
GLOBAL_FLAGS_HINT = "jailshell is its own engine: there is no daemon to point -H, --context or --config at"


# --- the parsed command -------------------------------------------------------------


@dataclass
class Port:
    container_port: int
    host_port: int | None = None  # None: a free port, chosen when the container starts
    host_ip: str = "0.0.0.0"
    proto: str = "tcp"

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port or '?'}->{self.container_port}/{self.proto}"


@dataclass
class ContainerSpec:
    """What `docker run`/`create` asked for. `run` is the part jailshell's
    all-at-once engine shares (jailshell.engine.run.RunSpec); the rest is docker's."""

    run: RunSpec
    interactive: bool = False
    tty: bool = False
    detach: bool = False
    memory: int | None = None  # bytes
    pids_limit: int | None = None
    cpus: float | None = None
    network: str | None = None  # None: docker's default (bridge)
    publish: list[Port] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)  # (container, alias)
    user: str | None = None

    @property
    def limits(self) -> bool:
        return self.memory is not None or self.pids_limit is not None or self.cpus is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContainerSpec:
        data = dict(data)
        run = dict(data.pop("run", {}))
        run["volumes"] = [tuple(v) for v in run.get("volumes", [])]
        known_run = set(RunSpec.__dataclass_fields__)
        spec = cls(RunSpec(**{k: v for k, v in run.items() if k in known_run}))
        for key, value in data.items():
            if key == "publish":
                value = [Port(**p) for p in value]
            elif key == "links":
                value = [tuple(x) for x in value]
            if key in cls.__dataclass_fields__:
                setattr(spec, key, value)
        return spec


@dataclass
class DockerCommand:
    verb: str  # a key of VERBS
    words: list[str]  # the line as typed, after `docker`
    opts: dict[str, Any] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)  # positionals: containers, or exec's CONTAINER CMD...
    spec: ContainerSpec | None = None  # run and create
    explain: bool = False  # `explain docker run ...`: the plan only

    @property
    def line(self) -> str:
        return "docker " + " ".join(shlex.quote(w) for w in self.words)


# --- parsing ------------------------------------------------------------------------


def split(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise InvalidInput(f"cannot read that line: {exc}", hint="close the quote") from None


def parse(words: Sequence[str] | str) -> DockerCommand:
    """`docker run -it busybox sh` (as words or one string; the leading
    `docker` is optional) -> DockerCommand. Errors are InvalidInput, one line each."""
    words = split(words) if isinstance(words, str) else list(words)
    explain = False
    if words and words[0] == "explain":
        explain = True
        words = words[1:]
    if words and words[0] == "docker":
        words = words[1:]
    typed = list(words)
    if not words:
        raise InvalidInput("docker: which command?", hint="`docker help` lists what jailshell implements")
    if words[0] in ("--help", "-h"):
        return DockerCommand("help", typed, explain=explain)
    if words[0] in ("-v", "--version"):
        return DockerCommand("version", typed, explain=explain)
    if words[0].startswith("-"):
        raise InvalidInput(f"docker: global flag {words[0]} is not supported", hint=GLOBAL_FLAGS_HINT)
    verb_name, rest = _verb(words)
    verb = VERBS[verb_name]
    if "--help" in rest[: _flags_end(verb, rest)]:
        return DockerCommand("help", typed, args=[verb_name], explain=explain)
    opts, args = _parse_flags(verb, rest)
    if len(args) < verb.min_args:
        raise InvalidInput(f"docker {_shown(verb_name)} needs {verb.usage.replace('[OPTIONS] ', '')}",
                           hint=f"usage: docker {_shown(verb_name)} {verb.usage}")
    if verb.max_args is not None and len(args) > verb.max_args:
        raise InvalidInput(f"docker {_shown(verb_name)}: unexpected '{' '.join(args[verb.max_args:])}'",
                           hint=f"usage: docker {_shown(verb_name)} {verb.usage}")
    cmd = DockerCommand(verb_name, typed, opts, args, explain=explain)
    if verb_name in ("run", "create"):
        cmd.spec = _build_spec(opts, args)
    _check_values(cmd)
    if explain and verb_name not in ("run", "create"):
        raise InvalidInput("explain shows the plan of `docker run` or `docker create`",
                           hint="e.g. explain docker run -it --hostname web busybox sh")
    return cmd


def _shown(verb: str) -> str:
    return verb.replace("-", " ") if verb in ("container-prune", "system-prune", "image-ls", "image-prune") else verb


def _verb(words: list[str]) -> tuple[str, list[str]]:
    for n in (2, 1):
        if tuple(words[:n]) in ALIASES:
            return ALIASES[tuple(words[:n])], words[n:]
    first = words[0]
    if first in VERBS and "-" not in first:
        return first, words[1:]
    if first in ("container", "system", "image") and len(words) > 1:
        raise InvalidInput(f"docker {first} {words[1]} is not supported by jailshell",
                           hint="`docker help` lists what jailshell implements")
    known = [v for v in VERBS if "-" not in v] + ["container", "system", "image", "images"]
    close = difflib.get_close_matches(first, known, n=1)
    also = f" — did you mean '{close[0]}'?" if close else ""
    raise InvalidInput(f"docker {first}: not a command jailshell implements{also}",
                       hint="`docker help` lists what jailshell implements")


def _flags_end(verb: Verb, rest: list[str]) -> int:
    """Index of the first word that is not a flag (for --help detection)."""
    for i, w in enumerate(rest):
        if not w.startswith("-") or w == "--":
            return i
    return len(rest)


def _find(verb: Verb, name: str) -> Flag | None:
    for f in verb.flags:
        if name in f.names:
            return f
    return None


def _unknown_flag(verb: Verb, name: str) -> InvalidInput:
    where = f"docker {_shown(verb.name)}"
    reason = UNSUPPORTED_FLAGS.get(name) if verb.name in ("run", "create") else None
    if reason:
        return InvalidInput(f"{where}: flag {name} is not supported by jailshell ({reason})",
                            hint=f"`docker help {_shown(verb.name)}` lists the flags it implements")
    names = [n for f in verb.flags for n in f.names]
    close = difflib.get_close_matches(name, names, n=1)
    also = f" — did you mean {close[0]}?" if close else ""
    return InvalidInput(f"{where}: flag {name} is not supported by jailshell{also}",
                        hint="flags it implements: " + (" ".join(names) if names else "none"))


def _set(opts: dict[str, Any], flag: Flag, value: Any) -> None:
    if flag.kind == "list":
        opts.setdefault(flag.dest, []).append(value)
    else:
        opts[flag.dest] = value


def _parse_flags(verb: Verb, rest: list[str]) -> tuple[dict[str, Any], list[str]]:
    opts: dict[str, Any] = {f.dest: [] if f.kind == "list" else (False if f.kind == "bool" else None)
                            for f in verb.flags}
    args: list[str] = []
    i = 0
    while i < len(rest):
        w = rest[i]
        i += 1
        if args and verb.flags_stop:
            args.append(w)
            continue
        if w == "--":
            args += rest[i:]
            break
        if w.startswith("--"):
            name, eq, value = w.partition("=")
            flag = _find(verb, name)
            if flag is None:
                raise _unknown_flag(verb, name)
            if flag.kind == "bool":
                if eq and value not in ("true", "false"):
                    raise InvalidInput(f"docker {_shown(verb.name)}: {name} takes true or false, not '{value}'")
                _set(opts, flag, value != "false")
                continue
            if not eq:
                if i >= len(rest):
                    raise InvalidInput(f"docker {_shown(verb.name)}: flag {name} needs a value ({flag.metavar})")
                value = rest[i]
                i += 1
            _set(opts, flag, value)
            continue
        if w.startswith("-") and w != "-":
            j = 1
            while j < len(w):
                name = "-" + w[j]
                flag = _find(verb, name)
                if flag is None:
                    raise _unknown_flag(verb, name)
                j += 1
                if flag.kind == "bool":
                    _set(opts, flag, True)
                    continue
                attached = w[j:].removeprefix("=") if j < len(w) else None
                if attached is None:
                    if i >= len(rest):
                        raise InvalidInput(f"docker {_shown(verb.name)}: flag {name} needs a value ({flag.metavar})")
                    attached = rest[i]
                    i += 1
                _set(opts, flag, attached)
                break
            continue
        args.append(w)
    return opts, args


# --- values ----------------------------------------------------------------------------

_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")


def _limit(flag: str, text: str, parse: Any) -> Any:
    """A limit read by the cgroup engine's own parser (docker's units and
    bounds), its complaint worded for the docker flag."""
    try:
        return parse(text)
    except InvalidInput as exc:
        raise InvalidInput(f"{flag} {text}: {exc.message.split(': ', 1)[-1]}", hint=exc.hint) from None


def parse_port(text: str) -> Port:
    body, _, proto = text.partition("/")
    proto = proto or "tcp"
    if proto not in ("tcp", "udp"):
        raise InvalidInput(f"invalid protocol in -p {text}", hint="tcp or udp")
    parts = body.rsplit(":", 2)
    try:
        if len(parts) == 1:
            return Port(_port(parts[0]), None, proto=proto)
        if len(parts) == 2:
            return Port(_port(parts[1]), _port(parts[0]) if parts[0] else None, proto=proto)
        return Port(_port(parts[2]), _port(parts[1]) if parts[1] else None, parts[0] or "0.0.0.0", proto)
    except ValueError:
        raise InvalidInput(f"invalid port mapping '{text}'",
                           hint="[IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp], ports 1-65535") from None


def _port(text: str) -> int:
    n = int(text)
    if not 0 < n < 65536:
        raise ValueError(text)
    return n


def _env(items: list[str]) -> list[str]:
    out = []
    for item in items:
        if not item or item.startswith("="):
            raise InvalidInput(f"invalid environment variable '{item}'", hint="-e NAME=VALUE, or -e NAME")
        if "=" in item:
            out.append(item)
        elif item in os.environ:
            # docker's rule: `-e NAME` passes this side's value, and nothing when it is unset.
            out.append(f"{item}={os.environ[item]}")
    return out


def _build_spec(opts: dict[str, Any], args: list[str]) -> ContainerSpec:
    name = opts.get("name")
    if name is not None and not _NAME.match(name):
        raise InvalidInput(f"invalid container name '{name}'", hint="letters, digits, _ . - (not first)")
    hostname = opts.get("hostname")
    if hostname is not None and (not hostname or len(hostname) > 64 or any(c.isspace() or c == "/" for c in hostname)):
        raise InvalidInput(f"invalid hostname '{hostname}'", hint="1 to 64 characters, no spaces or slashes")
    workdir = opts.get("workdir")
    if workdir is not None and not workdir.startswith("/"):
        raise InvalidInput(f"the working directory '{workdir}' is not absolute", hint="e.g. -w /tmp")
    volumes = []
    for v in opts.get("volume", []):
        if not v.startswith("/"):
            raise InvalidInput(f"named volumes are not supported: '{v}'",
                               hint="use an absolute host path: -v /HOST/DIR:/JAIL/DIR[:ro]")
        volumes.append(parse_volume(v))
    image, argv = args[0], args[1:]
    run = RunSpec(argv=argv, image=image, entrypoint=opts.get("entrypoint"), hostname=hostname,
                  rm=bool(opts.get("rm")), env=_env(opts.get("env", [])),
                  workdir=workdir, volumes=volumes, name=name)
    spec = ContainerSpec(run, interactive=bool(opts.get("interactive")), tty=bool(opts.get("tty")),
                         detach=bool(opts.get("detach")), network=opts.get("network"), user=opts.get("user"))
    from jailshell.engine.cgroup_limits import parse_cpus, parse_memory, parse_pids

    if opts.get("memory") is not None:
        spec.memory = _limit("--memory", opts["memory"], parse_memory)
        run.memory = opts["memory"]
    if opts.get("pids_limit") is not None:
        try:
            pids = int(opts["pids_limit"])
        except ValueError:
            raise InvalidInput(f"invalid --pids-limit '{opts['pids_limit']}'", hint="a whole number") from None
        if pids > 0:  # docker: 0 or -1 means no limit
            spec.pids_limit = _limit("--pids-limit", str(pids), parse_pids)
            run.pids_limit = str(pids)
    if opts.get("cpus") is not None:
        spec.cpus = _limit("--cpus", opts["cpus"], parse_cpus)
        run.cpus = opts["cpus"]
    spec.publish = [parse_port(p) for p in opts.get("publish", [])]
    for port in spec.publish:
        if port.proto != "tcp":
            raise InvalidInput(f"-p {port.container_port}/{port.proto}: jailshell publishes tcp ports only")
        if port.host_port is None:
            port.host_port = free_port(port.host_ip)
    for link in opts.get("link", []):
        target, _, alias = link.partition(":")
        if not target or not _NAME.match(target) or (alias and not _NAME.match(alias)):
            raise InvalidInput(f"invalid --link '{link}'", hint="CONTAINER[:ALIAS]")
        spec.links.append((target, alias or target))
    net = spec.network
    if net is not None:
        if net.startswith("container:"):
            raise InvalidInput(f"--network {net} is not supported by jailshell",
                               hint="each jail has its own network namespace; use --link to reach another one")
        if not _NAME.match(net):
            raise InvalidInput(f"invalid network name '{net}'")
        if net in ("none", "host") and (spec.publish or spec.links):
            what = "-p" if spec.publish else "--link"
            raise InvalidInput(f"{what} needs a network the container is on: not --network {net}",
                               hint="leave --network out (bridge, docker's default)")
    if spec.user is not None and not re.match(r"^[\w.-]+(:[\w.-]+)?$", spec.user):
        raise InvalidInput(f"invalid --user '{spec.user}'", hint="USER, UID, USER:GROUP or UID:GID")
    return spec


def _check_values(cmd: DockerCommand) -> None:
    o = cmd.opts
    if cmd.verb == "stop" and o.get("time") is not None:
        try:
            if int(o["time"]) < 0:
                raise ValueError
        except ValueError:
            raise InvalidInput(f"invalid stop timeout '{o['time']}'", hint="whole seconds, e.g. -t 3") from None
    if cmd.verb == "kill" and o.get("signal") is not None:
        signal_number(o["signal"])
    if cmd.verb == "logs" and o.get("tail") not in (None, "all"):
        try:
            if int(o["tail"]) < 0:
                raise ValueError
        except ValueError:
            raise InvalidInput(f"invalid --tail '{o['tail']}'", hint="a number of lines, or all") from None
    if cmd.verb == "exec":
        _env(o.get("env", []))
        if o.get("workdir") is not None and not o["workdir"].startswith("/"):
            raise InvalidInput(f"the working directory '{o['workdir']}' is not absolute")
        if o.get("detach") and (o.get("tty") or o.get("interactive")):
            raise InvalidInput("exec -d cannot be combined with -i or -t", hint="a detached command has no terminal")


def signal_number(text: str) -> int:
    import signal

    t = text.upper()
    if t.isdigit():
        n = int(t)
        if 0 < n < signal.NSIG:
            return n
    else:
        name = t if t.startswith("SIG") else "SIG" + t
        sig = getattr(signal.Signals, name, None) if name in signal.Signals.__members__ else None
        if sig is not None:
            return int(sig)
    raise InvalidInput(f"invalid signal '{text}'", hint=SIGNALS_HINT)


# --- the plan ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where one container's files are."""

    id: str
    data: Path  # DATA/containers/<id>: the record, the writable layer, the log (kept while the container exists)
    run: Path  # RUN_DIR/containers/<id>: the root's mount point and the control socket (while it is up)

    @classmethod
    def of(cls, cid: str) -> Layout:
        return cls(cid, paths.data_dir() / "containers" / cid, paths.run_dir() / "containers" / cid)

    @property
    def short(self) -> str:
        return self.id[:12]

    @property
    def record(self) -> Path:
        return self.data / "container.json"

    @property
    def upper(self) -> Path:
        return self.data / "upper"

    @property
    def work(self) -> Path:
        return self.data / "work"

    @property
    def log(self) -> Path:
        return self.data / "container-json.log"

    @property
    def rootfs(self) -> Path:
        return self.run / "rootfs"

    @property
    def ctl(self) -> Path:
        return self.run / "ctl.sock"


@dataclass(frozen=True)
class ImageFacts:
    """What the plan needs to know of the image (without building or pulling it)."""

    ref: str
    rootfs: str | None  # None: not in the store yet
    env: tuple[str, ...] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",)
    command: tuple[str, ...] = ("/bin/sh",)  # what it runs by default: Entrypoint + Cmd
    workdir: str = "/"
    builtin: bool = False  # the embedded default, built on first use
    entrypoint: tuple[str, ...] = ()  # the config's Entrypoint and Cmd, apart (see command_of)
    cmd: tuple[str, ...] = ()
    lowers: tuple[str, ...] = ()  # its layer directories, top first, when the store keeps them (`--layers`)

    @classmethod
    def from_image(cls, image: Any) -> ImageFacts:
        from jailshell.engine.images.store import ImageStore

        # The store the image is in: STORE/<name>/<tag>.
        lowers = ImageStore(Path(image.path).parent.parent).lowerdirs(image)
        return cls(image.ref, str(image.rootfs), tuple(image.env()), tuple(image.command()),
                   image.config.get("WorkingDir") or "/", entrypoint=tuple(image.config.get("Entrypoint") or ()),
                   cmd=tuple(image.config.get("Cmd") or ()), lowers=tuple(str(d) for d in lowers))

    @classmethod
    def look_up(cls, ref: str | None) -> ImageFacts:
        from jailshell.engine.images.store import DEFAULT_IMAGE, ImageStore, parse_ref

        ref = ref or DEFAULT_IMAGE
        image = ImageStore().get(ref)
        if image is not None:
            return cls.from_image(image)
        name, tag = parse_ref(ref)
        if (name, tag) == parse_ref(DEFAULT_IMAGE):
            from jailshell.engine.images.embedded import CONFIG

            return cls(f"{name}:{tag}", None, tuple(CONFIG["Env"]), tuple(CONFIG["Cmd"]), str(CONFIG["WorkingDir"]),
                       builtin=True, entrypoint=tuple(CONFIG.get("Entrypoint") or ()), cmd=tuple(CONFIG["Cmd"]))
        return cls(f"{name}:{tag}", None)

    @property
    def lowerdir(self) -> str:
        """The overlay's lowerdir= value: the layers, or the flattened root."""
        return ":".join(self.lowers) if self.lowers else (self.rootfs or "$IMAGE_ROOTFS")


@dataclass(frozen=True)
class PlanStep:
    key: str  # image, rootfs, cgroup, unshare, hostname, network, mounts, volumes, pivot_root, mask, exec
    title: str
    why: str
    raw: tuple[str, ...]  # commands; PID_PLACEHOLDER stands for the container process's host PID
    where: str  # host: a root terminal on the host; jail: the shell the unshare step started
    docker: str  # the part of the docker line (or docker's default) this step is
    params: dict[str, Any] = field(default_factory=dict, compare=False)
    note: str = ""

    def raw_for(self, pid: int | None) -> list[str]:
        return [c.replace(PID_PLACEHOLDER, str(pid)) if pid else c for c in self.raw]


@dataclass(frozen=True)
class Plan:
    spec: ContainerSpec
    layout: Layout
    image: ImageFacts
    steps: tuple[PlanStep, ...]

    def step(self, key: str) -> PlanStep | None:
        return next((s for s in self.steps if s.key == key), None)

    def render(self, pid: int | None = None) -> str:
        """The numbered plan as text: what `explain` prints."""
        lines = []
        for n, s in enumerate(self.steps, 1):
            lines.append(f"{n:2}. {s.title}  [{s.docker}]")
            lines.append(f"      {s.why}")
            for cmd in s.raw_for(pid):
                lines.append(f"      {s.where}$ {cmd}")
            if s.note:
                lines.append(f"      note: {s.note}")
        if pid is None and any(PID_PLACEHOLDER in c for s in self.steps for c in s.raw):
            lines.append(f"{PID_PLACEHOLDER}: the container's process as the host sees it; typing by hand, the "
                         "shell that runs the unshare step (`echo $$` in it).")
        return "\n".join(lines)


def namespaces_of(spec: ContainerSpec) -> list[str]:
    return [k for k in DEFAULT_NAMESPACES if not (k == "net" and spec.network == "host")]


def effective_network(spec: ContainerSpec) -> str:
    """The network the container gets: what was asked, or docker's default (bridge)."""
    return spec.network or "bridge"


def container_env(spec: ContainerSpec, image: ImageFacts, hostname: str) -> list[str]:
    """docker's order: the image's Env, then HOSTNAME (and TERM with -t), then -e; later wins;
    then HOME, if nobody set it, from the user's entry in the image's /etc/passwd."""
    env: dict[str, str] = {}
    for item in [*image.env, f"HOSTNAME={hostname}", *(["TERM=xterm"] if spec.tty else []), *spec.run.env]:
        k, _, v = item.partition("=")
        env[k] = v
    if "HOME" not in env:
        home = home_of(spec.user, image.rootfs)
        if home:
            env["HOME"] = home
    return [f"{k}={v}" for k, v in env.items()]


def home_of(user: str | None, rootfs: str | None) -> str | None:
    """The home directory of user in the image (None: only known inside, at start)."""
    if not user:
        return "/root"
    if rootfs is None:
        return None
    from jailshell.engine.supervisor import _user_ids

    try:
        return _user_ids(user, root=rootfs)[3]
    except (LookupError, ValueError):
        return None  # the engine reports it when the container starts


def hostname_of(spec: ContainerSpec, layout: Layout) -> str:
    return spec.run.hostname or layout.short  # docker's default: the short id


def command_of(spec: ContainerSpec, image: ImageFacts) -> list[str]:
    """docker's rule (Image.command's): the image's Entrypoint + (the arguments, or its Cmd)."""
    from jailshell.engine.runfast import image_command

    # Facts made without Entrypoint and Cmd apart: the default command is the Cmd.
    cmd = image.cmd if (image.entrypoint or image.cmd) else image.command
    return image_command({"Entrypoint": list(image.entrypoint), "Cmd": list(cmd)}, list(spec.run.argv),
                         spec.run.entrypoint)


def _q(x: object) -> str:
    return shlex.quote(str(x))


def plan_for(spec: ContainerSpec, layout: Layout, image: ImageFacts) -> Plan:
    """The by-hand steps `docker run` (or `create`, without the last one) stands for."""
    r = str(layout.rootfs)
    lower = image.lowerdir
    hostname = hostname_of(spec, layout)
    kinds = namespaces_of(spec)
    network = effective_network(spec)
    out: list[PlanStep] = []

    if image.rootfs:
        out.append(PlanStep(
            "image", f"image {image.ref}", "the image's files, unpacked once into jailshell's store; every "
            "container of this image shares them, read-only", (f"ls {_q(image.rootfs)}",), "host",
            f"docker run {image.ref}: pulls it first if it is missing", {"ref": image.ref}))
    else:
        why = ("built on first use from this machine's busybox (no download)" if image.builtin else
               "not in jailshell's store: jailshell never pulls during run")
        out.append(PlanStep(
            "image", f"image {image.ref}", why, ("jailshell image ls",), "host",
            f"docker run {image.ref}: pulls it first if it is missing", {"ref": image.ref},
            note="" if image.builtin else f"get it first: jailshell image pull {image.ref} (or image import)"))

    layers = (f"; the image's {len(image.lowers)} layers are the lowerdirs, the top one first" if image.lowers
              else "")
    out.append(PlanStep(
        "rootfs", "overlay root and the process that will become the container",
        "writes go to the container's own upper dir, the image stays untouched (docker's overlay2 does the same)"
        + layers + "; a process is started that is not isolated at all yet",
        (f"mkdir -p {_q(layout.upper)} {_q(layout.work)} {_q(r)}",
         f"mount -t overlay overlay -o lowerdir={lower},upperdir={layout.upper},workdir={layout.work} {_q(r)}"),
        "host", "docker create: a writable layer on the image",
        {"lower": lower, "flat": image.rootfs or lower, "upper": str(layout.upper), "work": str(layout.work),
         "target": r}))

    if spec.limits or cgroups_usable():
        out.append(_cgroup_step(spec, layout))

    out.append(PlanStep(
        "unshare", "unshare " + " ".join(kinds),
        "new namespaces for the process, all at once; --fork because a new PID namespace only takes children, "
        "so the shell it starts is PID 1" + ("; no network namespace: --network host shares the host's"
                                               if "net" not in kinds else ""),
        (unshare_cmdline(kinds, cmd=["sh"]),), "host",
        "docker run: new mnt, uts, ipc, pid, cgroup namespaces" + (", and net" if "net" in kinds else ""),
        {"kinds": kinds},
        note="the jail commands below are typed into the shell this starts; unshare(1) also makes its mounts "
             "private, so nothing mounted below shows up on the host"))

    out.append(PlanStep(
        "hostname", f"hostname {hostname}", "the UTS namespace has its own hostname",
        (f"hostname {_q(hostname)}",), "jail",
        f"--hostname {hostname}" if spec.run.hostname else "docker's default hostname: the short container id",
        {"name": hostname}))

    if "net" in kinds:
        out.append(_network_step(spec, network, layout))

    mount_raw: list[str] = []
    for name in DOCKER_MOUNTS:
        m = steps.SPECIAL_MOUNTS[name]
        target = r + m.target
        if not m.target.startswith("/dev/"):  # those are made by the dev commands
            mount_raw.append(f"mkdir -p {_q(target)}")
        mount_raw.append(steps.mount_command(m, target))
        if name == "dev":
            mount_raw += dev_commands(target)
    out.append(PlanStep(
        "mounts", "mount " + ", ".join(steps.SPECIAL_MOUNTS[n].target for n in DOCKER_MOUNTS),
        "proc of the new PID namespace, a minimal /dev with private pseudo-terminals, shared memory and message "
        "queues of the new IPC namespace, /sys read-only",
        tuple(mount_raw), "jail", "docker run: the same mounts, always", {"names": list(DOCKER_MOUNTS)}))

    if spec.run.volumes:
        vol_raw: list[str] = []
        for host, inside, ro in spec.run.volumes:
            target = _q(r + inside)
            vol_raw += [f"mkdir -p {target}", f"mount --bind {_q(host)} {target}"]
            if ro:
                vol_raw.append(f"mount -o remount,bind,ro {target}")
        out.append(PlanStep(
            "volumes", "bind " + ", ".join(f"{h} -> {j}" + (" (ro)" if ro else "") for h, j, ro in spec.run.volumes),
            "a host directory shows up inside: the same files, not a copy", tuple(vol_raw), "jail",
            " ".join(f"-v {h}:{j}" + (":ro" if ro else "") for h, j, ro in spec.run.volumes),
            {"volumes": [list(v) for v in spec.run.volumes]}))

    out.append(PlanStep(
        "pivot_root", "pivot_root into the overlay root",
        "the overlay becomes / and the host's tree is detached: unlike chroot, no path leads back",
        (f"mount --rbind {_q(r)} {_q(r)}", f"cd {_q(r)}", "pivot_root . .", "umount -l .", "cd /"), "jail",
        "docker run: runc always uses pivot_root"))

    out.append(PlanStep(
        "mask", "mask host kernel files", "/proc/kcore, /proc/keys, ... hidden; /proc/sys and friends read-only",
        tuple(mask_commands()), "jail", "docker run: masked and read-only paths are its default"))

    argv = command_of(spec, image)
    env = container_env(spec, image, hostname)
    workdir = spec.run.workdir or image.workdir or "/"
    exec_raw = []
    if workdir != "/":
        exec_raw.append(f"mkdir -p {_q(workdir)} && cd {_q(workdir)}")
    user_note = ""
    if spec.user:
        user_note = (f"--user {spec.user}: the engine calls setgroups, setgid and setuid before exec, as runc does; "
                     "by hand, util-linux setpriv does it, but it is not in a busybox image")
    exec_raw.append("exec env -i " + " ".join(_q(e) for e in env) + " " + " ".join(_q(a) for a in argv))
    out.append(PlanStep(
        "exec", f"exec {shlex.join(argv)} as PID 1",
        "the waiting process is replaced by the command: it is PID 1 of the container, with its stdio on "
        + ("a pseudo-terminal" if spec.tty else "pipes to the log"),
        tuple(exec_raw), "jail",
        "docker start: the command replaces the container's waiting process",
        {"argv": argv, "env": env, "cwd": workdir, "user": spec.user, "tty": spec.tty}, note=user_note))
    return Plan(spec, layout, image, tuple(out))


def cgroups_usable() -> bool:
    """Whether this machine lets jailshell give each container a cgroup, as
    docker does (with or without limits)."""
    if os.geteuid() != 0:
        return False
    from jailshell.engine.cgroup_layout import detect

    return detect().mode != "none"


def _cgroup_step(spec: ContainerSpec, layout: Layout) -> PlanStep:
    from jailshell.engine.cgroup_limits import Limits

    limits = {"memory": spec.memory, "pids": spec.pids_limit, "cpus": spec.cpus}
    lim = Limits(spec.memory, spec.pids_limit, spec.cpus)
    shown = lim.docker_flags()
    title = f"cgroup jailshell/{layout.id}" + (" with " + ", ".join(f.lstrip("-") for f in shown) if shown
                                                else ": counted, not limited")
    return PlanStep(
        "cgroup", title,
        "the kernel counts (and, with limits, caps) what the process and its children use; the process joins "
        "before unsharing, so the cgroup namespace then shows this cgroup as its root",
        tuple(cgroup_commands(layout.id, lim)), "host",
        " ".join(shown) or "docker run: every container gets its own cgroup",
        {"name": layout.id, "limits": limits})


def cgroup_commands(name: str, limits: Any) -> list[str]:
    """mkdir, the limit writes and the join, as the cgroup module will do them
    on this machine (the same directories, files and values)."""
    from jailshell.engine import cgroups
    from jailshell.engine.cgroup_layout import V1_EXTRA, WANTED, detect

    layout = detect()
    cg = cgroups.Cgroup(name, layout, journal=None)  # type: ignore[arg-type]  # only looked at, never created
    for c in (*WANTED, *V1_EXTRA):
        h = layout.hierarchy(c)
        if h is not None and (c in WANTED or layout.version_of("cpu") == 1):
            cg.dirs[c] = h.mount / cgroups.PARENT / name
    real = {d: d for d in cg.paths}
    # Which limit files a cgroup has (memsw, swap.max: only where swap is
    # counted) is read from the cgroup itself; this one does not exist yet, so
    # ask one of the same hierarchy that does, and write to this one's paths.
    for c, d in list(cg.dirs.items()):
        like = _existing_like(d, layout.version_of(c))
        if like is not None:
            cg.dirs[c] = like
            real[like] = d
    writes = [cgroups.Op("write", str(real.get(path.parent, path.parent) / path.name), value).raw
              for path, value in cg._plan(limits)]
    cg.dirs = {c: real.get(d, d) for c, d in cg.dirs.items()}
    return ([f"mkdir -p {_q(p)}" for p in cg.paths] + writes
            + [f"echo {PID_PLACEHOLDER} > {_q(f)}" for f in cg.procs_files()])


def _existing_like(d: Path, version: int | None) -> Path | None:
    """d, or an existing cgroup of d's hierarchy with the same limit files:
    jailshell's parent; on v1 the root (it has every limit file); on v2 a
    child of the root with memory files (the root has none)."""
    if d.is_dir():
        return d
    if d.parent.is_dir():
        return d.parent
    root = d.parent.parent
    if version == 1:
        return root if root.is_dir() else None
    try:
        return next((c for c in sorted(root.iterdir()) if (c / "memory.max").exists()), None)
    except OSError:
        return None


def _network_step(spec: ContainerSpec, network: str, layout: Layout) -> PlanStep:
    if network == "none":
        return PlanStep("network", "network: loopback only", "a new network namespace has only lo, and it is down",
                        ("ip link set lo up",), "jail", "--network none", {"mode": "none"})
    shown = [f"--network {network}" if spec.network else "docker's default network: bridge"]
    shown += [f"-p {p.host_ip}:{p.host_port or ''}:{p.container_port}/{p.proto}" for p in spec.publish]
    shown += [f"--link {c}:{a}" for c, a in spec.links]
    params = {"mode": network, "publish": [asdict(p) for p in spec.publish], "links": [list(x) for x in spec.links]}
    return PlanStep("network", f"network: {network}", "a veth pair: one end in the jail as eth0, the other a port "
                    "of the host's bridge; an address, a default route, masquerade"
                    + (", published ports" if spec.publish else "") + (", linked names" if spec.links else ""),
                    tuple(network_commands(layout, spec)), "host", " ".join(shown), params,
                    note="the address, bridge, route and NAT commands depend on the address the container gets: "
                         "the step shows them as it runs them")


def network_commands(layout: Layout, spec: ContainerSpec) -> list[str]:
    """The network module's commands for loopback and the veth pair, from its
    own dry runs. What follows (address, bridge, route, NAT, ports, links)
    depends on the address the container gets: the step shows those commands
    as it does them."""
    from jailshell.engine import network as net

    jn = net.JailNet(lambda: PID_PLACEHOLDER, layout.id, journal=None)  # type: ignore[arg-type,return-value]
    out = [*jn.lo_up(dry_run=True).equivalents.raw, *jn.veth(dry_run=True).equivalents.raw]
    hosts = _q(f"{layout.rootfs}/etc/hosts")
    for name, alias in spec.links:
        line = f"{link_address(name) or '$' + name.upper().replace('-', '_').replace('.', '_') + '_ADDRESS'}\t{alias}"
        out.append(f"echo {_q(line + ('' if alias == name else ' ' + name))} >> {hosts}")
    return out


def link_address(name: str) -> str | None:
    """The address of the running container called name, if it has one."""
    from jailshell.engine import containers
    from jailshell.errors import JailshellError

    try:
        rec = containers.resolve(name)
    except JailshellError:  # no such container (yet): the plan shows a placeholder
        return None
    return (rec.network or {}).get("address") if rec.state == "running" else None


def publish_text(p: Port) -> str:
    """A -p mapping as the network module reads it."""
    ip = "" if p.host_ip in ("", "0.0.0.0") else f"{p.host_ip}:"
    return f"{ip}{p.host_port}:{p.container_port}"


def free_port(ip: str) -> int:
    """A port nobody listens on now, as docker picks one for `-p PORT`."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])
