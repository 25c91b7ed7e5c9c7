"""Host resources that the jails of every jailshell on this host share.

The bridge, the ip_forward sysctl and the addresses of the subnet are not any
one jail's. Each jail that uses one writes that use to its own journal; the
*users* of a resource are the pending entries in the journals of jailshell
processes that are still alive (a dead one's jails died with it, by
PR_SET_PDEATHSIG), in any run directory (net_registry). The last user to
leave removes the bridge or puts the sysctl back to the value it had before
any jail needed it. A host-wide lock makes "look at the users, then change"
one step.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
from collections.abc import Callable, Iterable, Iterator
from ipaddress import IPv4Address, IPv4Network
from typing import TYPE_CHECKING, Any

from jailshell.engine import journal as jmod
from jailshell.engine import net_firewall as fw
from jailshell.engine import net_registry
from jailshell.engine.journal import Entry, Journal
from jailshell.engine.net_links import delete_link, rtnl
from jailshell.errors import InvalidInput, JailshellError, kernel_error

if TYPE_CHECKING:
    from jailshell.engine.network import NetConfig

FORWARDING = "net.ipv4.ip_forward"
SUBNET_ENV = "JAILSHELL_SUBNET"
OUR_LINK = re.compile(r"^jsh[0-9a-f]{1,6}[hj]$")  # either end of a jail's veth (network.interface_names)


@contextlib.contextmanager
def net_lock() -> Iterator[None]:
    """Serialises changes to shared resources (bridge, sysctl, address leases)
    between the jailshell processes on this host, whatever their run directory."""
    with net_registry.lock():
        yield


def live_entries(kind: str, match: Callable[[dict[str, Any]], bool], exclude_token: str | None = None) -> list[Entry]:
    """Pending journal entries of live jailshell processes, of every run
    directory (net_registry): who uses what now."""
    found = []
    for path in net_registry.journal_paths():
        pid, start = jmod.owner_of(path)
        if not jmod.process_alive(pid, start):
            continue  # a dead owner's jails died with it
        for entry in jmod.Journal.load(path).pending():
            if entry.kind != kind or (exclude_token is not None and entry.fields.get("token") == exclude_token):
                continue
            if _leaving(entry.fields):
                continue
            if match(entry.fields):
                found.append(entry)
    return found


def enable_forwarding(journal: Journal) -> Entry | None:
    """ip_forward=1, journaled with the value to restore when the last user leaves."""
    with net_lock():
        current = fw.read_sysctl(FORWARDING)
        others = live_entries("sysctl", lambda f: f.get("key") == FORWARDING)
        if current == "1" and not others:
            return None  # already on, and not by us: nothing to restore
        original = others[0].fields["original"] if others else current
        entry = net_registry.record(journal, "sysctl", key=FORWARDING, value="1", original=original,
                                    token=secrets.token_hex(4))
        if current != "1":
            try:
                fw.write_sysctl(FORWARDING, "1")
            except OSError as exc:
                net_registry.release(journal, entry)
                raise kernel_error(f"sysctl -w {FORWARDING}=1", exc)
        return entry


def pick_address(config: NetConfig, wanted: IPv4Address | None) -> IPv4Address:
    """The wanted address if it is free and usable, else the first free one.
    Addresses in use are those leased by live jailshell processes (a dead
    one's jails died with it). Call under net_lock() to keep it free."""
    subnet = str(config.subnet)
    used = {e.fields["address"] for e in live_entries("lease", lambda f: f.get("subnet") == subnet)}
    if wanted is None:
        picked = next((a for a in config.subnet.hosts() if a != config.gateway and str(a) not in used), None)
        if picked is None:
            raise JailshellError(f"no free address left in {config.subnet}",
                                 hint=f"close a jail, or use a larger subnet ({SUBNET_ENV})")
        return picked
    if wanted not in config.subnet or wanted in (config.subnet.network_address, config.subnet.broadcast_address):
        raise InvalidInput(f"address {wanted} is not a usable address of the jail subnet {config.subnet}",
                           hint=f"one of {config.gateway + 1} to {config.subnet.broadcast_address - 1}")
    if wanted == config.gateway:
        raise InvalidInput(f"{wanted} is the gateway (the host's address on the bridge)",
                           hint=f"from {config.gateway + 1} on")
    if str(wanted) in used:
        raise InvalidInput(f"address {wanted} is already used by another jail", hint="leave it out to get a free one")
    return wanted


def lease(journal: Journal, config: NetConfig, jail_id: str, wanted: IPv4Address | None, *,
          name: str | None = None, pid: int | None = None) -> Entry:
    """Reserve an address of the subnet for this jail. A named jail's lease
    (with the PID that holds its namespace) is how others --link to it."""
    with net_lock():
        address = pick_address(config, wanted)
        extra = {"name": name, "pid": pid} if name else {}
        return net_registry.record(journal, "lease", address=str(address), subnet=str(config.subnet), jail=jail_id,
                                   **extra)


def named_lease(name: str, subnet: IPv4Network) -> Entry | None:
    """The live lease of the jail called NAME (`jailshell run --name NAME
    --network bridge`) whose process is still there."""
    for entry in live_entries("lease", lambda f: f.get("name") == name and f.get("subnet") == str(subnet)):
        if entry.fields.get("pid") and os.path.exists(f"/proc/{entry.fields['pid']}/ns/net"):
            return entry
    return None


def _free_subnet_hint(ipr: Any, bad: IPv4Network) -> str:
    taken = [net for net, _ in _host_networks(ipr, ())]
    for third in range(200, 255):
        cand = IPv4Network(f"10.{third}.0.0/{max(bad.prefixlen, 24)}")
        if not any(cand.overlaps(t) for t in taken):
            return f"choose a free private range, e.g. {SUBNET_ENV}={cand}"
    return f"choose a free private range in {SUBNET_ENV}"


def _host_networks(ipr: Any, ignore: Iterable[str]) -> list[tuple[IPv4Network, str]]:
    """The host's IPv4 routes and addresses (but the default route), with
    where each comes from, skipping the interfaces in `ignore`."""
    skip = set(ignore)
    names = {m["index"]: m.get("IFLA_IFNAME") for m in ipr.get_links()}
    out = []
    for msg in ipr.get_routes(family=socket.AF_INET, table=254):
        dev = names.get(msg.get("RTA_OIF"))
        if msg["dst_len"] == 0 or dev in skip or OUR_LINK.match(dev or ""):
            continue
        net = IPv4Network(f"{msg.get('RTA_DST')}/{msg['dst_len']}", strict=False)
        out.append((net, f"route {net} dev {dev}"))
    for msg in ipr.get_addr(family=socket.AF_INET):
        dev = names.get(msg["index"])
        if dev in skip or OUR_LINK.match(dev or ""):
            continue
        local = msg.get("IFA_LOCAL")
        out.append((IPv4Network(f"{local}/32"), f"address {local} on {dev}"))
    return out


def check_subnet_free(config: NetConfig) -> None:
    """Refuse a subnet that overlaps a route or address the host already has:
    the jails would take over those destinations, or be unreachable."""
    with rtnl() as ipr:
        for net, where in _host_networks(ipr, (config.bridge,)):
            if net.overlaps(config.subnet):
                raise JailshellError(f"the jail subnet {config.subnet} collides with the host's {where}",
                                     hint=_free_subnet_hint(ipr, config.subnet))


def _leaving(fields: dict[str, Any]) -> bool:
    """An entry whose registration is gone is being undone: its owner marks it
    done in the journal only after the undo returns. Two jails leaving at once
    would otherwise each see the other still there, and neither would remove
    the bridge. (Registrations are made under net_lock right after the entry,
    so a live entry never lacks one there.)"""
    reg = fields.get("reg")
    if not reg:
        return False
    return net_registry.REGISTRY.is_dir() and not os.path.exists(str(reg))


def remove_bridge_if_unused(fields: dict[str, Any]) -> None:
    name = fields["name"]
    with net_lock():
        net_registry.unregister(fields)  # under the lock: see _leaving
        others = live_entries("link", lambda f: f.get("role") == "bridge" and f.get("name") == name,
                               exclude_token=fields.get("token"))
        if not others:
            delete_bridge(name)


def delete_bridge(name: str) -> None:
    delete_link(name)
    fw.remove_bridge_forwarding(name)


def undo_sysctl(fields: dict[str, Any]) -> None:
    key = fields["key"]
    with net_lock():
        net_registry.unregister(fields)  # under the lock: see _leaving
        if live_entries("sysctl", lambda f: f.get("key") == key, exclude_token=fields.get("token")):
            return  # another jail still needs it; the last one restores it
        if fw.read_sysctl(key) != fields["original"]:
            fw.write_sysctl(key, fields["original"])


def undo_lease(fields: dict[str, Any]) -> None:
    """Nothing to remove: the address lives on the jail's interface and goes
    with it. Marking the entry done is what frees the address for others."""
    net_registry.unregister(fields)
