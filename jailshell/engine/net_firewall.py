"""Firewall rules for jails: masquerade out, DNAT in, as nftables or iptables.

Each jail gets its own nft table, `ip jailshell_<id>`: removing the jail's
rules is one `nft delete table`, and two jails (or two jailshell processes)
never edit the same rule list. Docker keeps one shared chain because dockerd
outlives its containers; a jail here lives and dies with its owner.

iptables is the fallback where the nft command is missing (older distributions
with iptables-legacy): the same rules, each marked with a comment naming the
jail so `jailshell cleanup` can find them.

A rule set is planned first (the commands shown to the learner) and then
applied from that very plan, so what is shown is what runs: the nft commands
are executed together as one `nft -f -` transaction, all or nothing.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from jailshell.engine import net_registry
from jailshell.engine.journal import Journal
from jailshell.errors import JailshellError

TABLE_PREFIX = "jailshell_"
COMMENT_PREFIX = "jailshell:"


def table_name(jail_id: str) -> str:
    return TABLE_PREFIX + jail_id


def _run(argv: list[str], what: str, stdin: str | None = None) -> str:
    res = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        msg = (res.stderr or res.stdout).strip().splitlines()
        raise JailshellError(f"{what} failed: {msg[0] if msg else f'exit status {res.returncode}'}",
                             hint="see `" + shlex.join(argv) + "`" + (" with the commands shown above" if stdin else ""))
    return res.stdout


@dataclass(frozen=True)
class NftRules:
    table: str
    commands: tuple[str, ...]  # nft syntax; `add table`/`add chain` are idempotent

    @property
    def raw(self) -> list[str]:
        # nft joins its arguments into one command, so each line pastes as is.
        return ["nft " + shlex.quote(c) for c in self.commands]

    def apply(self, journal: Journal) -> None:
        mine = any(e.kind == "nft" and e.fields.get("table") == self.table for e in journal.pending())
        entry = None if mine else net_registry.record(journal, "nft", family="ip", table=self.table)
        try:
            _run(["nft", "-f", "-"], f"nft (table ip {self.table})", stdin="\n".join(self.commands) + "\n")
        except BaseException:
            if entry is not None:
                # A failed transaction changes nothing, so a table we did not have is still not there.
                net_registry.release(journal, entry)
            raise


@dataclass(frozen=True)
class IptablesRules:
    rules: tuple[tuple[str, str, tuple[str, ...]], ...]  # (table, chain, rule spec)

    @property
    def raw(self) -> list[str]:
        return [shlex.join(["iptables", "-t", t, "-A", c, *spec]) for t, c, spec in self.rules]

    def apply(self, journal: Journal) -> None:
        added = []
        try:
            for table, chain, spec in self.rules:
                if iptables_has(table, chain, spec):
                    continue
                entry = net_registry.record(journal, "iptables", table=table, chain=chain, rule=list(spec))
                try:
                    _run(["iptables", "-t", table, "-A", chain, *spec], "iptables")
                except BaseException:
                    net_registry.release(journal, entry)
                    raise
                added.append(entry)
        except BaseException:
            for entry in reversed(added):  # nothing half-created
                journal.undo(entry)
            raise


Rules = NftRules | IptablesRules


def iptables_has(table: str, chain: str, spec: tuple[str, ...] | list[str]) -> bool:
    return subprocess.run(["iptables", "-t", table, "-C", chain, *spec], capture_output=True,
                          check=False).returncode == 0


@dataclass(frozen=True)
class Firewall:
    """The rules of one jail, for one backend ("nft" or "iptables")."""

    backend: str
    jail_id: str

    @classmethod
    def choose(cls, wanted: str, jail_id: str) -> Firewall:
        if wanted not in ("auto", "nft", "iptables"):
            raise JailshellError(f"unknown firewall backend {wanted!r}", hint="auto, nft or iptables")
        for backend in (("nft", "iptables") if wanted == "auto" else (wanted,)):
            if shutil.which(backend):
                return cls(backend, jail_id)
        raise JailshellError(
            "NAT and published ports need the nft command (or iptables), and neither is installed",
            hint="sudo apt-get install nftables",
        )

    @property
    def table(self) -> str:
        return table_name(self.jail_id)

    @property
    def comment(self) -> str:
        return COMMENT_PREFIX + self.jail_id

    def masquerade(self, jail_ip: IPv4Address, subnet: IPv4Network) -> Rules:
        # Docker writes `-s 172.17.0.0/16 ! -o docker0 -j MASQUERADE`. Matching
        # "leaves the jail subnet" instead of an interface name also covers a
        # jail reached over a plain veth (no bridge), and never rewrites traffic
        # between two jails.
        if self.backend == "nft":
            return NftRules(self.table, (
                f"add table ip {self.table}",
                f"add chain ip {self.table} postrouting {{ type nat hook postrouting priority srcnat; }}",
                f"add rule ip {self.table} postrouting ip saddr {jail_ip} ip daddr != {subnet} masquerade",
            ))
        return IptablesRules((("nat", "POSTROUTING", (
            "-s", str(jail_ip), "!", "-d", str(subnet), "-m", "comment", "--comment", self.comment,
            "-j", "MASQUERADE")),))

    def dnat(self, host_ip: IPv4Address | None, host_port: int, jail_ip: IPv4Address, jail_port: int,
             bridge: str) -> Rules:
        # Connections from other machines arrive through prerouting: rewrite the
        # destination to the jail. Traffic from the jails' own bridge is left to
        # the proxy, as docker does, so a jail can reach a published port of
        # another jail without hairpin NAT. A host address of None means every
        # local address (`-p 8080:80`), as docker's `--dst-type LOCAL`.
        if self.backend == "nft":
            where = f"ip daddr {host_ip}" if host_ip else "fib daddr type local"
            return NftRules(self.table, (
                f"add table ip {self.table}",
                f"add chain ip {self.table} prerouting {{ type nat hook prerouting priority dstnat; }}",
                f"add rule ip {self.table} prerouting iifname != {bridge} {where} tcp dport {host_port} "
                f"dnat to {jail_ip}:{jail_port}",
            ))
        where_args = ("-d", str(host_ip)) if host_ip else ("-m", "addrtype", "--dst-type", "LOCAL")
        return IptablesRules((("nat", "PREROUTING", (
            "!", "-i", bridge, *where_args, "-p", "tcp", "--dport", str(host_port), "-m", "comment",
            "--comment", self.comment, "-j", "DNAT", "--to-destination", f"{jail_ip}:{jail_port}")),))


def rules_of(jail_id: str) -> list[str]:
    """The live rules of one jail, as text, from whichever backend holds them."""
    out: list[str] = []
    table = table_name(jail_id)
    if shutil.which("nft") and table in nft_tables():
        res = subprocess.run(["nft", "list", "table", "ip", table], capture_output=True, text=True, check=False)
        out += [line.strip() for line in res.stdout.splitlines() if " dnat " in line or "masquerade" in line]
    if shutil.which("iptables"):
        out += [r for r in iptables_rules("nat") if f"{COMMENT_PREFIX}{jail_id}" in r]
    return out


def nft_tables() -> list[str]:
    """Names of the `ip` family nft tables that are ours."""
    if not shutil.which("nft"):
        return []
    res = subprocess.run(["nft", "list", "tables", "ip"], capture_output=True, text=True, check=False)
    names = [line.split()[-1] for line in res.stdout.splitlines() if line.startswith("table ")]
    return [n for n in names if n.startswith(TABLE_PREFIX)]


def iptables_rules(table: str) -> list[str]:
    if not shutil.which("iptables"):
        return []
    res = subprocess.run(["iptables", "-t", table, "-S"], capture_output=True, text=True, check=False)
    return res.stdout.splitlines()


def delete_nft_table(table: str) -> None:
    if table not in nft_tables():
        return
    _run(["nft", "delete", "table", "ip", table], f"nft delete table ip {table}")


def delete_iptables_rule(table: str, chain: str, spec: list[str] | tuple[str, ...]) -> None:
    while iptables_has(table, chain, spec):  # -A twice by hand adds two: remove every copy
        _run(["iptables", "-t", table, "-D", chain, *spec], "iptables -D")


def our_iptables_rules() -> list[tuple[str, str, list[str]]]:
    """(table, chain, spec) of every iptables rule carrying a jailshell comment."""
    found = []
    for table in ("nat", "filter"):
        for line in iptables_rules(table):
            words = shlex.split(line)
            if len(words) > 2 and words[0] == "-A" and any(w.startswith(COMMENT_PREFIX) for w in words):
                found.append((table, words[1], words[2:]))
    return found


def forward_blocked() -> bool:
    """Does the host drop forwarded packets by default? Docker (and ufw) set
    the iptables FORWARD policy to DROP, and with br_netfilter loaded even
    packets between two ports of one bridge pass that chain: jails on the
    bridge could not reach each other, nor the world."""
    return bool(shutil.which("iptables")) and "-P FORWARD DROP" in iptables_rules("filter")


def bridge_forward_rules(bridge: str) -> list[tuple[str, ...]]:
    """What docker adds for docker0, for our bridge: everything from the
    jails, and to them only replies and connections to published ports
    (conntrack state DNAT)."""
    comment = ("-m", "comment", "--comment", COMMENT_PREFIX + bridge)
    return [("-i", bridge, *comment, "-j", "ACCEPT"),
            ("-o", bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED,DNAT", *comment, "-j", "ACCEPT")]


def veth_forward_rules(host_end: str, comment: str) -> IptablesRules:
    """The bridge's FORWARD rules (bridge_forward_rules) for one jail's veth
    that is not on the bridge, marked as that jail's (journaled one by one)."""
    mark = ("-m", "comment", "--comment", comment)
    return IptablesRules((("filter", "FORWARD", ("-i", host_end, *mark, "-j", "ACCEPT")),
                          ("filter", "FORWARD", ("-o", host_end, "-m", "conntrack", "--ctstate",
                                                 "RELATED,ESTABLISHED,DNAT", *mark, "-j", "ACCEPT"))))


def bridge_forward_commands(bridge: str) -> list[str]:
    # -I: before anything in FORWARD that could drop them (docker's isolation chains).
    return [shlex.join(["iptables", "-I", "FORWARD", *spec]) for spec in bridge_forward_rules(bridge)]


def allow_bridge_forwarding(bridge: str) -> None:
    for spec in bridge_forward_rules(bridge):
        if not iptables_has("filter", "FORWARD", spec):
            _run(["iptables", "-I", "FORWARD", *spec], "iptables -I FORWARD")


def remove_bridge_forwarding(bridge: str) -> None:
    if shutil.which("iptables"):
        for spec in bridge_forward_rules(bridge):
            delete_iptables_rule("filter", "FORWARD", spec)


def sysctl_path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


def read_sysctl(key: str) -> str:
    with open(sysctl_path(key)) as fh:
        return fh.read().strip()


def write_sysctl(key: str, value: str) -> None:
    with open(sysctl_path(key), "w") as fh:
        fh.write(value + "\n")


def undo_iptables(fields: dict[str, Any]) -> None:
    delete_iptables_rule(fields["table"], fields["chain"], fields["rule"])
    net_registry.unregister(fields)
