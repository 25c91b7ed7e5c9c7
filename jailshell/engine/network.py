"""Networking a jail by hand: what `docker run --network bridge -p 8080:80` builds.

After `unshare net` the jail has one interface, `lo`, and it is down. The
steps below give it, one at a time, what docker gives a container:

  lo_up     lo up inside (all a `--network none` container has)
  veth      a veth pair: a virtual cable; one end moves into the jail's net
            namespace (by the jail's PID, like `ip link set X netns PID`)
            and is renamed eth0 there, the other stays on the host
  addr      addresses on both ends: the jail end gets one from the subnet;
            the host end, while it is not on the bridge, the gateway address
            as a point-to-point address (`peer`), so several jails can each
            have their own cable to the same gateway address
  bridge    jailshell0, a virtual switch like docker0, holding the gateway
            address; the host end of each jail's veth becomes a port of it,
            so jails reach each other directly
  route     a default route in the jail via the gateway
  nat       masquerade: the jail's packets leave with the host's address
  publish   HOSTPORT:JAILPORT, like `docker run -p`
  link      another jail's address in this jail's /etc/hosts, like `--link`

Everything is addressed by the PID of a process in the jail (its
/proc/PID/ns/net), which is how the live jail is known. Every host resource
(interface, bridge, firewall table or rule, sysctl change, proxy process) is
written to the jail's journal *before* it is created and removed when the
jail closes or by `jailshell cleanup`. What lives inside the jail's namespace
(its eth0, addresses, routes) needs no record: the namespace dies with the
jail's last process and takes its interfaces with it, and deleting one end
of a veth pair deletes the other.

The bridge, ip_forward and the subnet's addresses are shared by all jails
(net_shared: the last jail to leave removes or restores them), whatever
their jailshell's run directory (net_registry: who uses what); firewall
rules are in net_firewall, the port proxy in net_proxy, netlink plumbing in
net_links, and what `show` reads in net_show.

Each step is generated as data first: a summary and the docker and raw
(`ip`, `nsenter`, `nft`, `sysctl`) commands, built from the very names,
addresses and rules that are then applied. `dry_run=True` returns just that:

    net = JailNet.for_jail(jail)                  # or JailNet(pid, jail_id, journal, rootfs=...)
    step = net.veth(dry_run=True)                 # step.summary, step.equivalents.docker / .raw
    net.veth()                                    # done, journaled
    net.connect("bridge", publish=["8080:80"], links=["web:db"], peers={"web": web_net})
    view = net.show()                             # NetView(host=Side, jail=Side, firewall=(...))

Every method raises JailshellError (InvalidInput for bad input) with nothing
half-made. The state a JailNet keeps (veth, address, bridge) is re-read from
the kernel before each step, so a new JailNet for a running jail works too.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jailshell.engine import journal as jmod
from jailshell.engine import net_firewall as fw
from jailshell.engine import net_links as nl
from jailshell.engine import net_registry
from jailshell.engine import net_shared as shared
from jailshell.engine.equivalents import Equivalents
from jailshell.engine.journal import Entry, Journal, process_starttime
from jailshell.engine.net_shared import FORWARDING, SUBNET_ENV
from jailshell.errors import InvalidInput, JailshellError, NeedsRoot, kernel_error

if TYPE_CHECKING:
    from jailshell.engine.jail import Jail
    from jailshell.engine.net_show import NetView, Side

BRIDGE = "jailshell0"
# Docker takes 172.17.0.0/16 for docker0 and 172.18.0.0/16 onwards (and
# 192.168.0.0/16 in /20s) for user networks, Podman 10.88.0.0/16 and 10.89.x,
# libvirt 192.168.122.0/24, VirtualBox NAT 10.0.2.0/24, Kubernetes pods and
# services 10.244/16, 10.42/16, 10.96/12. 10.199.0.0/24 is in none of them.
DEFAULT_SUBNET = "10.199.0.0/24"
INSIDE_NAME = "eth0"
NETNS_DIR = Path("/run/netns")  # where `ip netns` keeps named namespaces
MODES = ("none", "bridge", "host")
IFNAMSIZ = 15  # the kernel's limit on an interface name, without the NUL
_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,62})$")


# --- configuration and input ---------------------------------------------------------


def parse_subnet(text: str) -> IPv4Network:
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise InvalidInput(f"invalid subnet {text!r}: {exc}",
                           hint="an IPv4 network in CIDR form, such as 10.199.0.0/24") from None
    if not isinstance(net, IPv4Network):
        raise InvalidInput(f"subnet {text} is IPv6; jail networks here are IPv4, as docker's default bridge",
                           hint="an IPv4 network such as 10.199.0.0/24")
    if net.prefixlen > 29:
        raise InvalidInput(f"subnet {net} is too small: a gateway and jails need a /29 or larger",
                           hint="such as 10.199.0.0/24")
    if not net.is_private or net.is_loopback or net.is_link_local:
        raise InvalidInput(f"subnet {net} is not a private range: jails would hide real machines with those addresses",
                           hint="use a range from 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16")
    return net


def check_ifname(name: str, what: str = "interface name") -> str:
    if not _IFNAME.match(name) or name in (".", ".."):
        raise InvalidInput(f"invalid {what} {name!r}",
                           hint=f"1 to {IFNAMSIZ} characters: letters, digits, '_', '.', '-'")
    return name


@dataclass(frozen=True)
class NetConfig:
    """Where jails live: the subnet (its first address is the gateway, on
    the bridge) and the firewall backend ("auto": nft, or iptables without nft)."""

    subnet: IPv4Network = field(default_factory=lambda: parse_subnet(DEFAULT_SUBNET))
    bridge: str = BRIDGE
    firewall: str = "auto"

    @classmethod
    def create(cls, subnet: str | None = None, bridge: str | None = None, firewall: str = "auto") -> NetConfig:
        """From arguments, else $JAILSHELL_SUBNET, else the default."""
        net = parse_subnet(subnet or os.environ.get(SUBNET_ENV) or DEFAULT_SUBNET)
        return cls(net, check_ifname(bridge or BRIDGE, "bridge name"), firewall)

    @property
    def gateway(self) -> IPv4Address:
        return self.subnet.network_address + 1

    @property
    def gateway_cidr(self) -> str:
        return f"{self.gateway}/{self.subnet.prefixlen}"


@dataclass(frozen=True)
class PortMapping:
    """One `-p [HOST_IP:]HOST_PORT:JAIL_PORT[/tcp]`."""

    host_port: int
    jail_port: int
    host_ip: IPv4Address | None = None  # None: every address of the host, as docker's default

    def __str__(self) -> str:
        return (f"{self.host_ip}:" if self.host_ip else "") + f"{self.host_port}:{self.jail_port}"

    @classmethod
    def parse(cls, text: str) -> PortMapping:
        spec, _, proto = text.strip().partition("/")
        if proto and proto != "tcp":
            raise InvalidInput(f"cannot publish {text!r}: only tcp ports can be published here",
                               hint="HOSTPORT:JAILPORT, e.g. 8080:80")
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            raise InvalidInput(f"invalid port mapping {text!r}", hint="[HOST_IP:]HOSTPORT:JAILPORT, e.g. 8080:80")
        host_ip = None
        if len(parts) == 3:
            try:
                host_ip = IPv4Address(parts[0])
            except ValueError:
                raise InvalidInput(f"invalid host address {parts[0]!r} in {text!r}",
                                   hint="an IPv4 address such as 127.0.0.1") from None
        ports = []
        for p in parts[-2:]:
            if not p.isdigit() or not 1 <= int(p) <= 65535:
                raise InvalidInput(f"invalid port {p!r} in {text!r}", hint="a number from 1 to 65535")
            ports.append(int(p))
        return cls(ports[0], ports[1], host_ip)


@dataclass(frozen=True)
class NetStep:
    """One networking step, as done (or, with dry_run, as it would be done)."""

    op: str
    summary: str
    equivalents: Equivalents
    details: dict[str, Any] = field(default_factory=dict)


def interface_names(jail_id: str) -> tuple[str, str]:
    """Host end and (before it moves and is renamed) jail end of the jail's veth."""
    short = re.sub(r"[^0-9a-f]", "", jail_id.lower())[:6]
    if not short:
        raise InvalidInput(f"jail id {jail_id!r} has no hex digits to name its interfaces after")
    return f"jsh{short}h", f"jsh{short}j"


def docker_network_flag(mode: str) -> Equivalents:
    """`run --network MODE`, shown for the flag itself."""
    notes = {
        "none": "a new network namespace with only lo (up)",
        "bridge": "lo, a veth to the bridge, an address, a default route and masquerade",
        "host": "no network namespace: the jail uses the host's interfaces and ports",
    }
    if mode not in notes:
        raise InvalidInput(f"unknown network mode {mode!r}", hint="none, bridge or host")
    raw = {
        "none": ["unshare --net sh -c 'ip link set lo up && exec sh'"],
        "bridge": ["unshare --net sh    # then, from a second terminal, the net steps: veth, bridge, addr, nat"],
        "host": ["sh    # no --net: the shell shares the host's network namespace"],
    }[mode]
    return Equivalents(docker=f"docker run -it --network {mode} busybox sh", raw=raw, note=notes[mode])


# --- one jail's network ------------------------------------------------------------------


class JailNet:
    """The network of one jail, built step by step. Host resources go to the
    jail's journal; `jail.close()` (or `jailshell cleanup`) removes them."""

    def __init__(self, pid: int | Callable[[], int], jail_id: str, journal: Journal, *,
                 config: NetConfig | None = None, rootfs: Path | Callable[[], Path] | None = None,
                 name: str | None = None):
        self._pid = pid
        self.name = name  # others reach a named jail with --link NAME (its address lease carries the name)
        self.id = jail_id
        self.journal = journal
        self.config = config or NetConfig.create()
        self._rootfs = rootfs
        self.host_end, self.jail_end = interface_names(jail_id)
        self.inside: str | None = None  # the jail end's name in the jail, once the veth exists
        self.address: IPv4Address | None = None
        self.bridged = False
        self.published: list[PortMapping] = []
        self.links: dict[str, IPv4Address] = {}

    @classmethod
    def for_jail(cls, jail: Jail, config: NetConfig | None = None) -> JailNet:
        # The jail's PID changes when it unshares pid (the step forks): always ask the jail.
        # Its root too: `chroot DIR` makes DIR the /etc/hosts a link writes into.
        return cls(lambda: jail.pid, jail.id, jail.journal, config=config, rootfs=lambda: jail.root_dir)

    @property
    def rootfs(self) -> Path | None:
        return self._rootfs() if callable(self._rootfs) else self._rootfs

    @property
    def pid(self) -> int:
        return self._pid() if callable(self._pid) else self._pid

    def _nsenter(self, cmd: str) -> str:
        return f"nsenter --target {self.pid} --net {cmd}"

    @property
    def firewall(self) -> fw.Firewall:
        return fw.Firewall.choose(self.config.firewall, self.id)

    # -- checks ---------------------------------------------------------------------------

    def _need_netns(self) -> None:
        pid = self.pid
        if process_starttime(pid) is None:
            raise JailshellError(f"the jail's process {pid} is gone", hint="start a new jail")
        if nl.ns_inode(pid) == nl.ns_inode("self"):
            raise JailshellError(
                "the jail has no network namespace of its own yet, so this would change the host's network",
                hint="run `unshare net` first")

    @staticmethod
    def _need_root(what: str) -> None:
        if os.geteuid() != 0:
            raise NeedsRoot(what)

    def refresh(self) -> None:
        """Re-read from the kernel where this jail's network stands: its veth,
        whether that is on the bridge, the jail end's name and address. A
        JailNet made afresh for a running jail (or one whose commands were
        typed by hand in a second terminal) then knows as much as the one
        that did the steps; a veth that died with a replaced namespace is
        forgotten."""
        with nl.rtnl() as ipr:
            idx = nl.index(ipr, self.host_end)
            if idx is None:
                self.inside, self.address, self.bridged = None, None, False
                return
            msg = ipr.get_links(idx)[0]
            master, peer = msg.get("IFLA_MASTER"), msg.get("IFLA_LINK")
            self.bridged = master is not None and master == nl.index(ipr, self.config.bridge)
        if process_starttime(self.pid) is None or nl.ns_inode(self.pid) == nl.ns_inode("self") or not peer:
            return  # the peer is still on the host: the veth is half made; `jailshell cleanup` removes it
        with nl.rtnl(self.pid) as jipr:
            found = jipr.get_links(peer)
            self.inside = found[0].get("IFLA_IFNAME") if found else None
            addrs = [IPv4Address(m.get("IFA_LOCAL")) for m in jipr.get_addr(index=peer, family=socket.AF_INET)]
        self.address = next((a for a in addrs if a in self.config.subnet), None)

    def _need_veth(self) -> str:
        self.refresh()
        if self.inside is None:
            raise JailshellError("the jail has no veth yet", hint="run `net veth` first")
        return self.inside

    def _need_address(self) -> IPv4Address:
        self._need_veth()
        if self.address is None:
            raise JailshellError("the jail has no address yet", hint="run `net addr` first")
        return self.address

    # -- steps ---------------------------------------------------------------------------

    def lo_up(self, *, dry_run: bool = False) -> NetStep:
        """`ip link set lo up` inside: a new net namespace's loopback starts down,
        so even 127.0.0.1 does not answer."""
        step = NetStep("lo_up", "bring the jail's loopback interface up", Equivalents(
            docker="docker run -it --network none busybox sh    # lo is up in every container, even with no network",
            raw=[self._nsenter("ip link set lo up")], where="host"))
        if dry_run:
            return step
        self._need_netns()
        from jailshell.engine import steps

        nl.run_in_netns(self.pid, steps.loopback_up, "ip link set lo up (in the jail)")
        return step

    def veth(self, inside: str = INSIDE_NAME, *, dry_run: bool = False) -> NetStep:
        check_ifname(inside)
        pid, h, j = self.pid, self.host_end, self.jail_end
        step = NetStep("veth", f"a veth pair {h} <-> {j}; {j} moves into the jail (PID {pid}) as {inside}",
                       Equivalents(
                           docker="docker run -it --network bridge busybox sh    # docker makes the same pair, "
                                  "names the jail end eth0 and plugs the host end into docker0",
                           raw=[f"ip link add {h} type veth peer name {j}", f"ip link set {j} netns {pid}",
                                self._nsenter(f"ip link set {j} name {inside}"), f"ip link set {h} up",
                                self._nsenter(f"ip link set {inside} up")],
                           note="a veth pair is a cable: what goes in one end comes out of the other, "
                                "even across namespaces"),
                       {"host": h, "jail": inside, "pid": pid})
        if dry_run:
            return step
        self._need_root("a veth pair to the host")
        self._need_netns()
        self.refresh()
        if self.inside is not None:
            raise JailshellError(f"the jail already has a veth ({h} on the host, {self.inside} inside)")
        with nl.rtnl() as ipr, nl.rtnl(pid) as jipr:
            if nl.index(ipr, h) is not None:
                raise JailshellError(f"an interface named {h} already exists on the host",
                                     hint=f"`ip link del {h}` if it is a leftover, or `jailshell cleanup`")
            if nl.index(jipr, inside) is not None:
                raise InvalidInput(f"the jail already has an interface named {inside}", hint="choose another name")
            # Deleting the host end deletes its peer too, wherever it is by then.
            entry = net_registry.record(self.journal, "link", name=h, role="veth", jail=self.id)
            try:
                with nl.netlink(f"ip link add {h} type veth peer name {j}"):
                    ipr.link("add", ifname=h, kind="veth", peer={"ifname": j})
                with nl.netlink(f"ip link set {j} netns {pid}"):
                    ipr.link("set", index=nl.index(ipr, j), net_ns_pid=pid)
                with nl.netlink(f"ip link set {j} name {inside} (in the jail)"):
                    idx = nl.index(jipr, j)
                    jipr.link("set", index=idx, ifname=inside)
                    jipr.link("set", index=idx, state="up")
                with nl.netlink(f"ip link set {h} up"):
                    ipr.link("set", index=nl.index(ipr, h), state="up")
            except BaseException:
                self.journal.undo(entry)
                raise
        self.inside = inside
        return step

    def addr(self, address: str | None = None, *, dry_run: bool = False) -> NetStep:
        """An address for the jail end; while the veth is not on the bridge,
        the host end gets the gateway address, point-to-point to the jail."""
        wanted = None
        if address is not None:
            try:
                wanted = IPv4Address(address.split("/")[0])
            except ValueError:
                raise InvalidInput(f"invalid address {address!r}", hint=f"an address in {self.config.subnet}") from None
        inside = self._need_veth()
        if self.address is not None:
            raise JailshellError(f"the jail already has the address {self.address}")
        cfg = self.config
        lease = None
        if dry_run:
            ip = shared.pick_address(cfg, wanted)
        else:
            self._need_root("addresses on the veth")
            self._need_netns()
            if not self.bridged:
                shared.check_subnet_free(cfg)
            lease = shared.lease(self.journal, cfg, self.id, wanted, name=self.name, pid=self.pid)
            ip = IPv4Address(lease.fields["address"])
        plen = cfg.subnet.prefixlen
        host_cmd = f"ip addr add {cfg.gateway} peer {ip}/32 dev {self.host_end}"
        raw = ([] if self.bridged else [host_cmd]) + [self._nsenter(f"ip addr add {ip}/{plen} dev {inside}")]
        step = NetStep("addr", f"{ip}/{plen} on the jail's {inside}"
                       + ("" if self.bridged else f", {cfg.gateway} on the host's {self.host_end}"),
                       Equivalents(docker=f"docker run -it --ip {ip} busybox sh    # docker's IPAM picks a free "
                                          "address of the network; --ip only on user-defined networks",
                                   raw=raw, note="the kernel adds a route for each address's network by itself"
                                   + ("" if self.bridged else "; `peer` makes the host end a point-to-point "
                                      "link to exactly this jail")),
                       {"address": str(ip), "prefixlen": plen, "gateway": str(cfg.gateway)})
        if lease is None:
            return step
        host_added = False
        try:
            if not self.bridged:
                with nl.rtnl() as ipr, nl.netlink(host_cmd):
                    ipr.addr("add", index=self._host_index(ipr), local=str(cfg.gateway), address=str(ip), prefixlen=32)
                host_added = True
            with nl.rtnl(self.pid) as jipr, nl.netlink(f"ip addr add {ip}/{plen} dev {inside} (in the jail)"):
                jipr.addr("add", index=nl.index(jipr, inside), address=str(ip), prefixlen=plen)
        except BaseException:
            if host_added:
                self._del_host_peer_addr(ip)
            net_registry.release(self.journal, lease)
            raise
        self.address = ip
        return step

    def _host_index(self, ipr: Any) -> int:
        idx = nl.index(ipr, self.host_end)
        if idx is None:
            raise JailshellError(f"the host end of the jail's veth ({self.host_end}) is gone",
                                 hint="the jail's network namespace was probably destroyed; start a new jail")
        return idx

    def _del_host_peer_addr(self, ip: IPv4Address) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        with nl.rtnl() as ipr, contextlib.suppress(NetlinkError):
            idx = nl.index(ipr, self.host_end)
            if idx is not None:
                ipr.addr("del", index=idx, local=str(self.config.gateway), address=str(ip), prefixlen=32)

    def bridge(self, *, dry_run: bool = False) -> NetStep:
        """Plug the host end into the jailshell0 bridge (created with the
        gateway address if no jail has it yet)."""
        self._need_veth()
        if self.bridged:
            raise JailshellError(f"{self.host_end} is already a port of {self.config.bridge}")
        cfg, br, h = self.config, self.config.bridge, self.host_end
        with nl.rtnl() as ipr:
            exists = nl.index(ipr, br) is not None
        raw = [] if exists else [f"ip link add {br} type bridge", f"ip addr add {cfg.gateway_cidr} dev {br}",
                                 f"ip link set {br} up"]
        if not exists and fw.forward_blocked():
            raw += fw.bridge_forward_commands(br)
        raw.append(f"ip link set {h} master {br}")
        if self.address is not None:
            raw.append(f"ip addr del {cfg.gateway} peer {self.address}/32 dev {h}    # the gateway now lives on {br}")
        step = NetStep("bridge", f"{h} becomes a port of the bridge {br} ({cfg.gateway_cidr})", Equivalents(
            docker="docker run -it --network bridge busybox sh    # the default: the host end is a port of docker0 "
                   "(ip link show master docker0)",
            raw=raw, note="a bridge is a virtual switch: jails on it reach each other directly, and the host "
                          "through the bridge's own address"),
            {"bridge": br, "gateway": cfg.gateway_cidr, "created": not exists})
        if dry_run:
            return step
        self._need_root("a bridge")
        self._need_netns()
        with shared.net_lock(), nl.rtnl() as ipr:
            host_idx = self._host_index(ipr)
            br_idx = nl.index(ipr, br)
            if br_idx is None:
                shared.check_subnet_free(cfg)
            else:
                self._check_our_bridge(ipr, br_idx)
            # Recorded even when the bridge exists: the last jail to leave removes it.
            entry = net_registry.record(self.journal, "link", name=br, role="bridge", address=cfg.gateway_cidr,
                                        token=secrets.token_hex(4))
            created = False
            try:
                if br_idx is None:
                    with nl.netlink(f"ip link add {br} type bridge"):
                        ipr.link("add", ifname=br, kind="bridge")
                        created = True
                        br_idx = nl.index(ipr, br)
                        ipr.addr("add", index=br_idx, address=str(cfg.gateway), prefixlen=cfg.subnet.prefixlen)
                        ipr.link("set", index=br_idx, state="up")
                    if fw.forward_blocked():
                        fw.allow_bridge_forwarding(br)
                with nl.netlink(f"ip link set {h} master {br}"):
                    ipr.link("set", index=host_idx, master=br_idx)
            except BaseException:
                if created:  # under the lock: no other jail can have joined it meanwhile
                    shared.delete_bridge(br)
                net_registry.release(self.journal, entry)
                raise
        if self.address is not None:
            self._del_host_peer_addr(self.address)
        self.bridged = True
        return step

    def _check_our_bridge(self, ipr: Any, idx: int) -> None:
        cfg = self.config
        kind = nl.link_kind(ipr, idx)
        addrs = {f"{m.get('IFA_LOCAL')}/{m['prefixlen']}" for m in ipr.get_addr(index=idx, family=socket.AF_INET)}
        if kind != "bridge" or cfg.gateway_cidr not in addrs:
            raise JailshellError(
                f"{cfg.bridge} exists but is not a bridge with {cfg.gateway_cidr} "
                f"(it is a {kind or 'device'} with {', '.join(sorted(addrs)) or 'no address'})",
                hint=f"another jailshell with another subnet? use the same {SUBNET_ENV}, or remove it: "
                     f"ip link del {cfg.bridge}")

    def route(self, *, dry_run: bool = False) -> NetStep:
        """A default route in the jail via the gateway: where to send what is not on the subnet."""
        self._need_address()
        gw = self.config.gateway
        step = NetStep("route", f"default route in the jail via {gw}", Equivalents(
            docker="docker run busybox ip route    # default via the bridge's address (172.17.0.1 on docker0)",
            raw=[self._nsenter(f"ip route add default via {gw}")]), {"gateway": str(gw)})
        if dry_run:
            return step
        self._need_netns()
        have = self._default_gateways()
        if str(gw) in have:
            return step
        if have:
            raise JailshellError(f"the jail already has a default route via {have[0]}",
                                 hint=self._nsenter("ip route del default"))
        with nl.rtnl(self.pid) as jipr, nl.netlink(f"ip route add default via {gw} (in the jail)"):
            # proto boot (3) is what `ip route add` writes when not told otherwise.
            jipr.route("add", dst="0.0.0.0/0", gateway=str(gw), proto=3)
        return step

    def _default_gateways(self) -> list[str]:
        with nl.rtnl(self.pid) as jipr:
            routes = jipr.get_routes(family=socket.AF_INET, table=254)  # main
        return [str(r.get("RTA_GATEWAY")) for r in routes if r["dst_len"] == 0]

    def nat(self, *, dry_run: bool = False) -> NetStep:
        """Let the jail reach beyond the host: a default route in the jail,
        forwarding on the host, and masquerade on the way out."""
        ip = self._need_address()
        rules = self.firewall.masquerade(ip, self.config.subnet)
        # The commands shown are those still needed, so each one pastes without "File exists".
        route = [] if str(self.config.gateway) in self._default_gateways() else self.route(dry_run=True).equivalents.raw
        forwarding_off = fw.read_sysctl(FORWARDING) != "1"
        # Where the FORWARD policy is DROP (docker, ufw), a veth that is not a
        # bridge port (the bridge has its own rules) needs its own to forward.
        accept = fw.veth_forward_rules(self.host_end, self.firewall.comment) \
            if not self.bridged and fw.forward_blocked() else None
        raw = [*route, *([f"sysctl -w {FORWARDING}=1"] if forwarding_off else []), *rules.raw,
               *(accept.raw if accept else [])]
        step = NetStep("nat", f"masquerade {ip} when it leaves {self.config.subnet}", Equivalents(
            docker="docker run -it busybox sh    # dockerd: iptables -t nat -A POSTROUTING -s 172.17.0.0/16 "
                   "! -o docker0 -j MASQUERADE, and ip_forward=1",
            raw=raw, note="packets from the jail leave with the host's address (masquerade: source NAT to "
                          "the outgoing interface's address); the replies are translated back by conntrack"),
            {"backend": self.firewall.backend, "address": str(ip)})
        if dry_run:
            return step
        self._need_root("NAT")
        self._need_netns()
        with self._rollback():
            shared.enable_forwarding(self.journal)
            rules.apply(self.journal)
            if accept is not None:
                accept.apply(self.journal)
            self.route()
        return step

    def publish(self, mapping: str | PortMapping, *, dry_run: bool = False) -> NetStep:
        """HOSTPORT:JAILPORT: connections to the host's port reach the jail's.
        From other machines through DNAT (prerouting), from the host itself
        through a userland proxy (see net_proxy for why both)."""
        pm = mapping if isinstance(mapping, PortMapping) else PortMapping.parse(mapping)
        ip = self._need_address()
        if any(p.host_port == pm.host_port for p in self.published):
            raise InvalidInput(f"host port {pm.host_port} is already published by this jail")
        bind_ip = str(pm.host_ip or "0.0.0.0")
        dnat = pm.host_ip is None or not pm.host_ip.is_loopback  # nothing from outside reaches 127.0.0.1
        rules = self.firewall.dnat(pm.host_ip, pm.host_port, ip, pm.jail_port, self.config.bridge) if dnat else None
        forwarding_off = fw.read_sysctl(FORWARDING) != "1"
        raw = [*([f"sysctl -w {FORWARDING}=1"] if dnat and forwarding_off else []), *(rules.raw if rules else []),
               f"socat TCP-LISTEN:{pm.host_port},bind={bind_ip},fork,reuseaddr TCP:{ip}:{pm.jail_port} &"
               "    # the userland proxy, for connections from this host"]
        step = NetStep("publish", f"host port {bind_ip}:{pm.host_port} -> jail {ip}:{pm.jail_port}", Equivalents(
            docker=f"docker run -it -p {pm} busybox sh",
            raw=raw, note="DNAT rewrites the destination of connections arriving from other machines; "
                          "connections from the host itself (127.0.0.1) never pass that hook, so a proxy "
                          "process (docker-proxy) relays them"),
            {"host_ip": bind_ip, "host_port": pm.host_port, "jail_ip": str(ip), "jail_port": pm.jail_port})
        if dry_run:
            return step
        self._need_root("publishing a port")
        self._need_netns()
        listener = _listen(bind_ip, pm.host_port)  # first: a port in use fails before anything is made
        try:
            with self._rollback():
                if rules is not None:
                    shared.enable_forwarding(self.journal)
                    rules.apply(self.journal)
                self._start_proxy(listener, ip, pm.jail_port)
        finally:
            listener.close()
        self.published.append(pm)
        return step

    def _start_proxy(self, listener: socket.socket, ip: IPv4Address, port: int) -> Entry:
        life_r, life_w = os.pipe()
        pkg_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [pkg_root, os.environ.get("PYTHONPATH")])))
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "jailshell.engine.net_proxy", str(listener.fileno()), str(life_r), str(ip),
                 str(port)],
                pass_fds=(listener.fileno(), life_r), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, env=env, cwd="/",
                # Its own session: a Ctrl-C at the learner's prompt must not reach it.
                start_new_session=True)
        except OSError as exc:
            os.close(life_r)
            os.close(life_w)
            raise kernel_error("starting the port proxy", exc)
        os.close(life_r)
        entry = self.journal.record("process", pid=proc.pid, starttime=process_starttime(proc.pid), role="proxy")
        os.write(life_w, b"g")  # journaled: it may serve now

        def reap() -> None:
            # Our end of the lifeline stays open as long as the proxy runs (our
            # own exit closes it too, and that stops the proxy); then free it.
            proc.wait()
            os.close(life_w)

        threading.Thread(target=reap, daemon=True, name=f"jsh-proxy-{proc.pid}").start()
        return entry

    def link(self, name: str, peers: Mapping[str, JailNet], alias: str | None = None, *,
             dry_run: bool = False) -> NetStep:
        """Make the jail called `name` reachable by name: its address in this
        jail's /etc/hosts (what `docker run --link name:alias` writes)."""
        alias = alias or name
        for n in (name, alias):
            if not _HOSTNAME.match(n):
                raise InvalidInput(f"invalid jail name {n!r}", hint="letters, digits, '.', '_', '-'")
        other = peers.get(name)
        if other is None:
            known = ", ".join(sorted(peers)) or "none"
            raise InvalidInput(f"there is no jail named {name!r}", hint=f"running jails: {known}")
        if other is self:
            raise InvalidInput("a jail cannot be linked to itself")
        self.refresh()
        other.refresh()
        if other.address is None:
            raise JailshellError(f"jail {name} has no address yet", hint=f"give it one first (`net addr` in {name})")
        if self.rootfs is None:
            raise JailshellError("this jail has no root filesystem to write /etc/hosts into")
        if not (self.bridged and other.bridged):
            raise JailshellError(f"this jail and {name} are not both on the bridge, so they cannot reach each other",
                                 hint="run `net bridge` in both")
        hosts = self.rootfs / "etc" / "hosts"
        line = f"{other.address}\t{alias}" + (f" {name}" if alias != name else "")
        step = NetStep("link", f"{alias} -> {other.address} in the jail's /etc/hosts", Equivalents(
            docker=f"docker run -it --link {name}:{alias} busybox sh",
            raw=[f"echo {shlex.quote(line)} >> {shlex.quote(str(hosts))}"],
            note="--link is docker's legacy way; user-defined networks resolve names with an embedded DNS server"),
            {"name": name, "alias": alias, "address": str(other.address)})
        if dry_run:
            return step
        _append_hosts_line(self.rootfs, line, alias)
        self.links[alias] = other.address
        return step

    def name_netns(self, name: str | None = None, *, dry_run: bool = False) -> NetStep:
        """`ip netns attach NAME PID`: a name for the jail's net namespace under
        /run/netns (a bind mount of /proc/PID/ns/net), so that `ip netns exec
        NAME ...` and `ip -n NAME ...` reach it. `ip netns list` shows none of
        docker's: it keeps its namespaces under /var/run/docker/netns."""
        name = check_ifname(name or f"jsh-{self.id}", "namespace name")
        path = NETNS_DIR / name
        step = NetStep("name_netns", f"the jail's net namespace is now also {path}", Equivalents(
            docker="docker inspect -f '{{.NetworkSettings.SandboxKey}}' CONTAINER    # where docker keeps it",
            raw=[f"ip netns attach {name} {self.pid}", f"ip -n {name} addr    # any ip command, in the jail"],
            note="the name is a bind mount of the namespace file: it keeps the namespace alive even "
                 "with no process in it, until it is removed (ip netns del)"), {"name": name, "path": str(path)})
        if dry_run:
            return step
        self._need_root("naming a network namespace")
        self._need_netns()
        if path.exists():
            raise InvalidInput(f"{path} already exists", hint="choose another name")
        from jailshell.engine import syscalls as sc

        made_dir = not NETNS_DIR.exists()
        entry = net_registry.record(self.journal, "netns", path=str(path), name=name, made_dir=made_dir)
        try:
            NETNS_DIR.mkdir(mode=0o755, exist_ok=True)
            os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0))
            sc.mount(f"/proc/{self.pid}/ns/net", path, None, sc.MS_BIND)
        except OSError as exc:
            self.journal.undo(entry)
            raise kernel_error(f"ip netns attach {name} {self.pid}", exc)
        return step

    # -- all at once (`run --network ...`) -------------------------------------------------

    def connect(self, mode: str = "bridge", *, publish: Sequence[str | PortMapping] = (),
                links: Sequence[str] = (), peers: Mapping[str, JailNet] | None = None) -> list[NetStep]:
        """Everything `docker run --network MODE [-p ...] [--link ...]` sets up,
        in order. On any error, whatever this call made is removed again.
        `links` are NAME or NAME:ALIAS, looked up in `peers`."""
        if mode not in MODES:
            raise InvalidInput(f"unknown network mode {mode!r}", hint="none, bridge or host")
        if mode != "bridge" and (publish or links):
            raise InvalidInput(f"-p and --link need --network bridge (not {mode})")
        if mode == "host":
            return []
        parsed = [p if isinstance(p, PortMapping) else PortMapping.parse(p) for p in publish]
        link_specs = [(lk.partition(":")[0], lk.partition(":")[2] or None) for lk in links]
        for name, _ in link_specs:
            if name not in (peers or {}):
                raise InvalidInput(f"there is no jail named {name!r} to link to",
                                   hint="running jails: " + (", ".join(sorted(peers or {})) or "none"))
        done: list[NetStep] = []
        try:
            with self._rollback():
                done.append(self.lo_up())
                if mode == "none":
                    return done
                done += [self.veth(), self.bridge(), self.addr(), self.nat()]
                done += [self.publish(pm) for pm in parsed]
                done += [self.link(name, peers or {}, alias) for name, alias in link_specs]
        except BaseException:
            self.inside, self.address, self.bridged = None, None, False
            self.published.clear()
            self.links.clear()
            raise
        return done

    @contextlib.contextmanager
    def _rollback(self) -> Iterator[None]:
        """If the block fails, undo every journal entry it added, newest first:
        nothing half-created."""
        before = {e.id for e in self.journal.pending()}
        try:
            yield
        except BaseException:
            for entry in sorted(self.journal.pending(), key=lambda e: e.id, reverse=True):
                if entry.id not in before:
                    with contextlib.suppress(Exception):
                        self.journal.undo(entry)
            raise

    # -- looking -----------------------------------------------------------------------------

    def show(self) -> NetView:
        """Interfaces, addresses and routes on both sides, and this jail's NAT rules."""
        from jailshell.engine import net_show

        self._need_netns()
        host = host_side()
        with nl.rtnl(self.pid) as jipr:
            jail = net_show.read(jipr, nl.ns_inode(self.pid))
        return net_show.NetView(host, jail, tuple(fw.rules_of(self.id)) if os.geteuid() == 0 else ())


# --- `jailshell run --network ... -p ... --link ...` ----------------------------------------


def check_run_options(mode: str, publish: Sequence[str], links: Sequence[str]) -> None:
    """Refuse bad `run` network options before anything is created."""
    if mode not in MODES:
        raise InvalidInput(f"unknown network mode {mode!r}", hint="none, bridge or host")
    if mode != "bridge" and (publish or links):
        raise InvalidInput(f"{'-p' if publish else '--link'} needs --network bridge (not {mode})",
                           hint="add --network bridge")
    for p in publish:
        PortMapping.parse(p)
    for lk in links:
        for n in filter(None, lk.split(":", 1)):
            if not _HOSTNAME.match(n):
                raise InvalidInput(f"invalid --link {lk!r}", hint="NAME[:ALIAS]: a running container's name")
    if mode == "bridge" and os.geteuid() != 0:
        raise NeedsRoot("--network bridge (a veth pair and a bridge on the host)")


def container_peers(names: Sequence[str], journal: Journal, config: NetConfig) -> dict[str, JailNet]:
    """The running containers called NAMES (`jailshell docker run -d --name
    NAME ...`, or `jailshell run --name NAME --network bridge ...` in another
    terminal), as jails of this module, for --link and `net link`."""
    from jailshell.engine import containers

    peers: dict[str, JailNet] = {}
    for name in names:
        try:
            rec = containers.resolve(name)
        except JailshellError:
            held = shared.named_lease(name, config.subnet)
            if held is None:
                raise InvalidInput(f"there is no container named {name!r} to link to",
                                   hint=f"start one on the bridge first: jailshell docker run -d --name {name} "
                                        "busybox httpd -f -p 80") from None
            other = JailNet(int(held.fields["pid"]), held.fields["jail"], journal, config=config, name=name)
            other.address = IPv4Address(held.fields["address"])
            peers[name] = other
            continue
        address = (rec.network or {}).get("address")
        if rec.state != "running" or not rec.pid or not address:
            raise JailshellError(f"container {name} is not running on the bridge, so it has no address to link to",
                                 hint=f"docker start {name} (and not with --network none)")
        other = JailNet(int(rec.pid), rec.id, journal, config=config)
        other.address = IPv4Address(address)
        peers[name] = other
    return peers


def connect_run(pid: int, cid: str, journal: Journal, mode: str, publish: Sequence[str], links: Sequence[str],
                upper: Path, image_rootfs: Path, name: str | None = None) -> list[NetStep]:
    """The network of a `jailshell run` container, made from the host after
    its process (PID) unshared its net namespace and before the command is
    exec'd, as docker does it before the container starts. Links go into the
    container's writable layer (UPPER), seeded with the image's /etc/hosts."""
    if links:
        etc = upper / "etc"
        etc.mkdir(mode=0o755, exist_ok=True)
        image_hosts = image_rootfs / "etc" / "hosts"
        if image_hosts.is_file() and not image_hosts.is_symlink() and not (etc / "hosts").exists():
            (etc / "hosts").write_bytes(image_hosts.read_bytes())
    net = JailNet(pid, cid, journal, rootfs=upper, name=name)
    peers = container_peers([lk.partition(":")[0] for lk in links], journal, net.config) if links else {}
    return net.connect(mode, publish=publish, links=links, peers=peers)


def host_side() -> Side:
    from jailshell.engine import net_show

    with nl.rtnl() as ipr:
        return net_show.read(ipr, nl.ns_inode("self"))


def _listen(ip: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # SO_REUSEADDR ignores only connections in TIME_WAIT, never a listener.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ip, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise InvalidInput(f"host port {port} is already in use" + (f" on {ip}" if ip != "0.0.0.0" else ""),
                               hint=f"choose another port; `ss -ltnp 'sport = :{port}'` shows who holds it") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise InvalidInput(f"{ip} is not an address of this host", hint="leave it out to publish on all") from None
        raise kernel_error(f"bind {ip}:{port}", exc)
    return sock


def _append_hosts_line(rootfs: Path, line: str, alias: str) -> None:
    """Add (or replace) the line for alias in ROOTFS/etc/hosts, never following
    a symlink: the image decides where /etc/hosts points, and an absolute link
    would lead out of the jail onto the host's own file."""
    etc = rootfs / "etc"
    if etc.is_symlink() or not etc.is_dir():
        raise JailshellError(f"{etc} is not a plain directory; refusing to write the jail's /etc/hosts through it")
    path = etc / "hosts"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise JailshellError(f"{path} is a symlink; refusing to follow it out of the jail") from None
        raise kernel_error(f"open {path}", exc)
    with os.fdopen(fd, "r+") as fh:
        # Our lines name the alias first; a line of the image's naming it elsewhere stays.
        kept = [ln for ln in fh.read().splitlines() if ln.split("#")[0].split()[1:2] != [alias]]
        fh.seek(0)
        fh.truncate()
        fh.write("\n".join([*kept, line]) + "\n")


# --- undo handlers (journal.UNDO) and leftovers ------------------------------------------


def undo_link(fields: dict[str, Any]) -> None:
    if fields.get("role") == "bridge":
        shared.remove_bridge_if_unused(fields)
        return
    nl.delete_link(fields["name"])
    net_registry.unregister(fields)


def undo_nft(fields: dict[str, Any]) -> None:
    fw.delete_nft_table(fields["table"])
    net_registry.unregister(fields)


def undo_netns(fields: dict[str, Any]) -> None:
    """A named network namespace (/run/netns/NAME, a bind mount of a
    /proc/PID/ns/net): unmount and remove the name."""
    from jailshell.engine import syscalls as sc

    path = fields["path"]
    if jmod.mounted(path):
        sc.umount2(path, sc.MNT_DETACH)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    if fields.get("made_dir"):
        with contextlib.suppress(OSError):  # only if empty: other tools may have named namespaces since
            os.rmdir(os.path.dirname(path))
    net_registry.unregister(fields)


def _live_names() -> set[str]:
    """Names of what live jailshell processes have journaled: interfaces,
    named namespaces, nft tables, iptables rules (as their spec) and rule comments."""
    names: set[str] = set()
    for kind in ("link", "nft", "iptables", "netns"):
        for e in shared.live_entries(kind, lambda f: True):
            names.add(str(e.fields.get("path") or e.fields.get("name") or e.fields.get("table")))
            if kind == "iptables":
                names.add(" ".join(e.fields["rule"]))
            if e.fields.get("role") == "bridge":  # its FORWARD rules live as long as it does
                names.add(fw.COMMENT_PREFIX + e.fields["name"])
    return names


def find_leftovers() -> list[str]:
    """Interfaces, bridges and firewall rules that look like jailshell's and
    that no live jailshell process has journaled (for `jailshell cleanup`)."""
    if os.geteuid() != 0:
        return []
    live = _live_names()
    found = []
    with nl.rtnl() as ipr:
        for msg in ipr.get_links():
            name = msg.get("IFLA_IFNAME")
            if name in live:
                continue
            if shared.OUR_LINK.match(name) or (name == BRIDGE and msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "bridge"):
                found.append(f"link {name}")
    if NETNS_DIR.is_dir():
        found += [f"netns {p}" for p in sorted(NETNS_DIR.glob("jsh-*")) if str(p) not in live]
    found += [f"nft {t}" for t in fw.nft_tables() if t not in live]
    found += [f"iptables {t} {c} {shlex.join(spec)}" for t, c, spec in fw.our_iptables_rules()
              if " ".join(spec) not in live and not live.intersection(spec)]
    return found


def remove_leftover(item: str) -> None:
    kind, _, rest = item.partition(" ")
    if kind == "link":
        nl.delete_link(rest)
    elif kind == "netns":
        undo_netns({"path": rest})
    elif kind == "nft":
        fw.delete_nft_table(rest)
    elif kind == "iptables":
        table, chain, spec = rest.split(" ", 2)
        fw.delete_iptables_rule(table, chain, shlex.split(spec))
    else:
        raise ValueError(f"not a network leftover: {item}")
