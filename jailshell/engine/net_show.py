"""Reading a network namespace as data: interfaces, addresses, routes.

Read over netlink with pyroute2, the same way `ip link`, `ip addr` and
`ip route` do. For a jail, the netlink socket is opened *inside* the jail's
namespace (pyroute2 forks a helper that setns()es into /proc/PID/ns/net,
opens the socket and hands it back): a netlink socket talks to the namespace
it was created in for its whole life, so the caller never leaves its own.
"""

from __future__ import annotations

import itertools
import socket
from dataclasses import dataclass, field
from typing import Any

IFF_UP = 0x1
# rtnetlink route scopes and protocols, as `ip route` prints them.
SCOPES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}
PROTOCOLS = {2: "kernel", 3: "boot", 4: "static", 16: "dhcp"}
MAIN_TABLE = 254


@dataclass(frozen=True)
class Address:
    cidr: str  # 10.199.0.2/24
    peer: str | None = None  # the other end of a point-to-point address (`ip addr add A peer B`)
    family: int = socket.AF_INET

    def __str__(self) -> str:
        return f"{self.cidr.split('/')[0]} peer {self.peer}" if self.peer else self.cidr


@dataclass(frozen=True)
class Interface:
    index: int
    name: str
    kind: str  # loopback, veth, bridge, ether, ...
    up: bool  # administratively up (IFF_UP), what `ip link set X up` changes
    state: str  # operational state: UP, DOWN, LOWERLAYERDOWN, UNKNOWN (lo)
    mac: str
    mtu: int
    master: str | None = None  # the bridge this interface is a port of
    peer_index: int | None = None  # a veth's other end (its index in *its* namespace)
    peer_elsewhere: bool = False  # the other end lives in another namespace
    addresses: tuple[Address, ...] = ()


@dataclass(frozen=True)
class Route:
    dst: str  # "default" or a CIDR
    dev: str | None
    gateway: str | None = None
    src: str | None = None
    scope: str = "global"
    proto: str = ""

    def __str__(self) -> str:
        parts = [self.dst]
        if self.gateway:
            parts += ["via", self.gateway]
        if self.dev:
            parts += ["dev", self.dev]
        if self.proto:
            parts += ["proto", self.proto]
        if self.scope != "global":
            parts += ["scope", self.scope]
        if self.src:
            parts += ["src", self.src]
        return " ".join(parts)


@dataclass(frozen=True)
class Side:
    """One network namespace, as `ip addr` and `ip route` would show it."""

    netns: int  # inode of the net namespace
    interfaces: tuple[Interface, ...] = ()
    routes: tuple[Route, ...] = ()

    def interface(self, name: str) -> Interface | None:
        return next((i for i in self.interfaces if i.name == name), None)

    @property
    def names(self) -> list[str]:
        return [i.name for i in self.interfaces]


@dataclass(frozen=True)
class NetView:
    host: Side
    jail: Side
    firewall: tuple[str, ...] = field(default=())  # this jail's NAT rules, as the backend lists them


def _kind(msg: Any) -> str:
    kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    if kind:
        return str(kind)
    return "loopback" if msg.get("IFLA_IFNAME") == "lo" else "ether"


def read(ipr: Any, netns: int) -> Side:
    """Everything of interest in the namespace ipr's socket belongs to."""
    links = ipr.get_links()
    names = {msg["index"]: msg.get("IFLA_IFNAME") for msg in links}
    addrs: dict[int, list[Address]] = {}
    for msg in ipr.get_addr():
        family, plen = msg["family"], msg["prefixlen"]
        local, address = msg.get("IFA_LOCAL"), msg.get("IFA_ADDRESS")
        if family == socket.AF_INET and local and address and local != address:
            a = Address(f"{local}/32", peer=f"{address}/{plen}", family=family)
        else:
            a = Address(f"{local or address}/{plen}", family=family)
        addrs.setdefault(msg["index"], []).append(a)
    interfaces = []
    for msg in links:
        idx = msg["index"]
        peer = msg.get("IFLA_LINK")
        interfaces.append(Interface(
            index=idx, name=msg.get("IFLA_IFNAME"), kind=_kind(msg), up=bool(msg["flags"] & IFF_UP),
            state=msg.get("IFLA_OPERSTATE") or "UNKNOWN", mac=msg.get("IFLA_ADDRESS") or "",
            mtu=msg.get("IFLA_MTU") or 0, master=names.get(msg.get("IFLA_MASTER")),
            peer_index=peer if peer and peer != idx else None,
            peer_elsewhere=msg.get("IFLA_LINK_NETNSID") is not None,
            addresses=tuple(addrs.get(idx, ())),
        ))
    routes = []
    for msg in ipr.get_routes(family=socket.AF_INET, table=MAIN_TABLE):
        dst = msg.get("RTA_DST")
        routes.append(Route(
            dst=f"{dst}/{msg['dst_len']}" if dst else "default", dev=names.get(msg.get("RTA_OIF")),
            gateway=msg.get("RTA_GATEWAY"), src=msg.get("RTA_PREFSRC"),
            scope=SCOPES.get(msg["scope"], str(msg["scope"])), proto=PROTOCOLS.get(msg["proto"], str(msg["proto"])),
        ))
    return Side(netns, tuple(interfaces), tuple(routes))


def _interface_line(i: Interface, mark: str = "") -> str:
    state = "UP" if i.up else "DOWN"
    where = f" master {i.master}" if i.master else ""
    addrs = " ".join(str(a) for a in i.addresses if a.family == socket.AF_INET) or "-"
    return f"{i.name:<11} {i.kind:<8} {state:<4} {addrs}{where}{mark}"


def lines(view: NetView, host_end: str | None = None, pid: int | None = None) -> list[str]:
    """The view as text, host on the left and jail on the right, as `ip -br
    addr` and `ip route` print them; the jail's own veth end on the host is
    marked, and the other jails' veth ends on the host are left out."""
    def keep(i: Interface) -> bool:
        # Other jails' cables are noise here; the bridge shows they exist (as its ports).
        return i.name == host_end or not (i.kind == "veth" and i.name.startswith("jsh"))

    host_ifs = [_interface_line(i, "   <- the jail's cable" if i.name == host_end else "")
                for i in view.host.interfaces if keep(i)]
    jail_ifs = [_interface_line(i) for i in view.jail.interfaces]
    host_rt = [str(r) for r in view.host.routes if r.dev is None or r.dev == host_end
               or not r.dev.startswith("jsh")] or ["(none)"]
    jail_rt = [str(r) for r in view.jail.routes] or ["(none: only what lo needs)"]
    left = [f"host (net ns {view.host.netns})", "interfaces", *["  " + x for x in host_ifs],
            "routes", *["  " + x for x in host_rt]]
    right = [f"jail (net ns {view.jail.netns}" + (f", PID {pid})" if pid else ")"), "interfaces",
             *["  " + x for x in jail_ifs], "routes", *["  " + x for x in jail_rt]]
    # Row by row, each side's "routes" heading on the same line.
    lh, rh = left.index("routes"), right.index("routes")
    pad = max(lh, rh)
    left = left[:lh] + [""] * (pad - lh) + left[lh:]
    right = right[:rh] + [""] * (pad - rh) + right[rh:]
    width = max(len(x) for x in left) + 3
    out = [f"{a:<{width}}| {b}".rstrip() for a, b in itertools.zip_longest(left, right, fillvalue="")]
    out += ["", "this jail's NAT rules", *(["  " + r for r in view.firewall] or ["  (none)"])]
    return out
