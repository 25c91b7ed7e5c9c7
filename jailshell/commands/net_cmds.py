"""`net`: networking the live jail by hand, one step at a time.

After `unshare net` the jail has only `lo`, and it is down. Each `net` step
does one thing of what `docker run --network bridge -p 8080:80` does, through
jailshell.engine.network (pyroute2 for the netlink work), and is reported like
every other step: the docker flag that does it, the raw `ip`/`nft`/`iptables`/
`sysctl` commands built from the very names and addresses the engine used,
and the interfaces host vs jail before and after.

    net                       interfaces, addresses, routes: host | jail (also `net show`)
    net up lo                 lo up inside
    net veth [NAME]           a veth pair; one end moves into the jail (by PID) as eth0 (or NAME)
    net addr [ADDRESS]        an address on both ends (default: the first free one of the subnet)
    net bridge                the host end becomes a port of the jailshell0 bridge (made if needed)
    net route                 a default route in the jail via the gateway
    net nat                   route + ip_forward + masquerade: the jail reaches beyond the host
    net publish HOST:JAIL     a host port to a jail port, like `docker run -p`
    net link NAME[:ALIAS]     a running container's address in the jail's /etc/hosts, like `--link`
    net netns [NAME]          a name for the jail's net namespace, for `ip netns exec` / `ip -n`

Everything made on the host is journaled by the engine before it exists and
removed when the jail closes, or by `jailshell cleanup` after a crash.
"""

from __future__ import annotations

import shlex
import weakref
from typing import TYPE_CHECKING, Any

from jailshell.commands.registry import Arg, Args, Command
from jailshell.commands.results import Message, Results, StepReport
from jailshell.errors import InvalidInput

if TYPE_CHECKING:
    from jailshell.commands.workspace import Workspace
    from jailshell.engine.jail import Jail
    from jailshell.engine.network import JailNet, NetStep

# sub-command -> (usage of its arguments, help); the lesson and `help net` read this.
OPS: dict[str, tuple[str, str]] = {
    "show": ("", "interfaces, addresses and routes on both sides, side by side, and the jail's NAT rules"),
    "up": ("lo", "bring the jail's loopback up (a new net namespace's lo is down: not even 127.0.0.1 answers)"),
    "veth": ("[NAME]", "a veth pair (a virtual cable): one end moves into the jail by its PID, renamed eth0"),
    "addr": ("[ADDRESS]", "an address of the jail subnet on the jail's end; the gateway on the host's end"),
    "bridge": ("", "the host end becomes a port of the jailshell0 bridge (docker0's twin); jails on it meet"),
    "route": ("", "a default route in the jail via the gateway"),
    "nat": ("", "default route, ip_forward=1 and masquerade: the jail reaches beyond the host"),
    "publish": ("HOSTPORT:JAILPORT", "connections to a host port reach the jail's port, like docker run -p"),
    "link": ("NAME[:ALIAS]", "the address of NAME (a container from `docker run -d --name NAME`, or a `jailshell "
                             "run --name NAME --network bridge`) in the jail's /etc/hosts, like docker run --link "
                             "(both on the bridge; the jail reads it once chrooted or pivoted into its root)"),
    "netns": ("[NAME]", "name the jail's net namespace (/run/netns/NAME) so `ip netns exec`/`ip -n` reach it"),
}
# The engine method behind each sub-command.
METHOD = {"up": "lo_up", "veth": "veth", "addr": "addr", "bridge": "bridge", "route": "route", "nat": "nat",
          "publish": "publish", "link": "link", "netns": "name_netns"}
WHY_NOT = ("network steps are taken back all at once, when the jail goes: its namespace takes eth0 with it, "
           "and the journal removes what is on the host")

_NETS: weakref.WeakKeyDictionary[Workspace, JailNet] = weakref.WeakKeyDictionary()


def jail_net(ws: Workspace, jail: Jail) -> JailNet:
    """This workspace's JailNet for its live jail (a new one for a new jail):
    what it published and linked is remembered across steps."""
    from jailshell.engine.network import JailNet

    net = _NETS.get(ws)
    if net is None or net.id != jail.id:
        net = _NETS[ws] = JailNet.for_jail(jail)
    return net


def peers(ws: Workspace, jail: Jail, name: str) -> dict[str, JailNet]:
    """`net link NAME`: NAME is a running container (docker run --all -d --name
    NAME ...) or a named `jailshell run`, on the same bridge, seen as a jail of
    the network module."""
    from jailshell.engine.network import container_peers

    return container_peers([name], jail.journal, jail_net(ws, jail).config)


def _args(op: str, words: list[str]) -> list[str]:
    usage = OPS[op][0]
    most = 0 if not usage else 1
    least = 1 if usage and not usage.startswith("[") else 0
    if not least <= len(words) <= most:
        raise InvalidInput(f"'net {op}' takes {usage or 'no arguments'}", hint=f"usage: net {op} {usage}".rstrip())
    return words


def cmd_net(ws: Workspace, args: Args) -> Any:
    op = args.get("what") or "show"
    words = _args(op, list(args.get("args") or []))
    jail, _ = ws.session.ensure()
    if op == "show":
        return _show(ws, jail)
    if op == "up" and words != ["lo"]:
        raise InvalidInput(f"'net up' brings up lo only, not {words[0]!r}",
                           hint="eth0 is brought up by `net veth`, which makes it")
    net = jail_net(ws, jail)
    method = getattr(net, METHOD[op])
    if op == "link":
        name, _, alias = words[0].partition(":")
        call_args: list[Any] = [name, peers(ws, jail, name), alias or None]
    else:
        call_args = [] if op == "up" else words
    line = " ".join(["net", op, *(shlex.quote(w) for w in words)])
    made: list[NetStep] = []

    def action(j: Jail) -> None:
        made.append(method(*call_args))

    from jailshell.commands.jail_cmds import perform

    report = perform(ws, line, f"net_{op}", {"args": words}, action, shows=("interfaces",), why_not=WHY_NOT)
    step = made[0]
    report.equivalents = step.equivalents
    ws.session.done[-1].equivalents = step.equivalents
    if not ws.replaying:
        report.notes.append(step.summary)
    return report


def _show(ws: Workspace, jail: Jail) -> Results:
    from jailshell.engine import net_show
    from jailshell.engine.equivalents import Equivalents

    net = jail_net(ws, jail)
    view = net.show()
    pid = jail.pid
    eq = Equivalents(
        docker="docker exec CONTAINER ip addr; docker exec CONTAINER ip route    # and on the host: ip addr; ip route",
        raw=["ip -br addr", "ip route", f"nsenter --target {pid} --net ip -br addr",
             f"nsenter --target {pid} --net ip route",
             # The jail's NAT rules, once `net nat` or `net publish` made some.
             *([] if not view.firewall else [f"nft list table ip {net.firewall.table}"
                                             if net.firewall.backend == "nft"
                                             else f"iptables -t nat -S | grep {net.firewall.comment}"])],
        note="the jail's interfaces are read through a netlink socket opened inside its network namespace")
    text = "\n".join(net_show.lines(view, net.host_end, pid))
    return Results([StepReport("net show", "net_show", "host", eq), Message(text)])


def commands() -> list[Command]:
    width = max(len(f"net {op} {usage}") for op, (usage, _) in OPS.items())
    detail = "".join(f"\n    {f'net {op} {usage}':<{width}}  {text}" for op, (usage, text) in OPS.items())
    return [
        Command("net", cmd_net, "network the jail by hand, after `unshare net`: up lo, veth, bridge, addr, nat, "
                "publish, link; `net` alone: interfaces host vs jail (the jails' subnet: $JAILSHELL_SUBNET)",
                (Arg("what", "the step (default: show); in the order a lesson takes them:" + detail + "\n ", tuple(OPS),
                     optional=True),
                 Arg("args", "its arguments", rest=True, optional=True)), ("network",)),
    ]
