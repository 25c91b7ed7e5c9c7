"""Networking a live jail by hand, against the real kernel.

Traffic stays on this machine: between the host and namespaces these tests
create (jails, and an "outside" namespace standing in for the internet),
or on loopback. Every test checks that the host's interfaces, nft tables,
ip_forward and named namespaces are exactly as before.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jailshell.engine import cleanup as cleanup_mod
from jailshell.engine import journal as jmod
from jailshell.engine import net_firewall as fw
from jailshell.engine import net_registry
from jailshell.engine import network as net
from jailshell.engine.jail import Jail
from jailshell.engine.network import JailNet, NetConfig, PortMapping
from jailshell.errors import InvalidInput, JailshellError

root = pytest.mark.root

# Answers every connection with "TOKEN PEER_ADDRESS": who the server saw is the point of the NAT tests.
SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen()
while True:
    c, a = s.accept()
    c.sendall(("%s %s\\n" % (sys.argv[2], a[0])).encode())
    c.close()
"""
CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
print(c.makefile().read().strip())
"""
OUTSIDE_HOST, OUTSIDE_PEER = "198.51.100.1", "198.51.100.2"  # TEST-NET-2: the test's stand-in for the internet


# --- helpers ------------------------------------------------------------------------------


def net_state() -> dict[str, object]:
    return {
        "links": sorted(os.listdir("/sys/class/net")),
        "nft": sorted(fw.nft_tables()),
        "iptables": sorted(" ".join(r[2]) for r in fw.our_iptables_rules()),
        "ip_forward": fw.read_sysctl(net.FORWARDING),
        "netns": sorted(os.listdir(net.NETNS_DIR)) if net.NETNS_DIR.exists() else None,
    }


def pending() -> list[str]:
    return [e.describe() for p in jmod.journals() for e in jmod.Journal.load(p).pending()]


def ping(ip: str, jail: Jail | None = None) -> bool:
    argv = ["ping", "-c", "3", "-i", "0.2", "-W", "1", ip]
    if jail is not None:
        return jail.exec(argv, timeout=10).returncode == 0
    return subprocess.run(argv, capture_output=True, timeout=10).returncode == 0


def fetch(host: str, port: int) -> str:
    with socket.create_connection((host, port), timeout=3) as c:
        return c.makefile().read().strip()


def wait_listening(host: str, port: int) -> None:
    deadline = time.monotonic() + 5
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def sh(cmd: str) -> None:
    subprocess.run(cmd, shell=True, check=True, capture_output=True, timeout=10)


@pytest.fixture
def host_clean() -> Iterator[None]:
    before, journaled = net_state(), pending()
    yield
    assert net_state() == before, "the host's network is not as it was"
    assert pending() == journaled


@pytest.fixture
def jails(host_clean: None) -> Iterator[Callable[..., tuple[Jail, JailNet]]]:
    """Make jails with their own net namespace (and the host's root, so host
    tools such as python run inside; chroot=True for the image's busybox)."""
    made: list[Jail] = []

    def make(chroot: bool = False, config: NetConfig | None = None) -> tuple[Jail, JailNet]:
        j = Jail.create()
        made.append(j)
        j.unshare("net")
        if chroot:
            j.unshare("mnt")
            j.chroot()
        return j, JailNet.for_jail(j, config)

    yield make
    for j in reversed(made):
        j.close()


@pytest.fixture
def outside() -> Iterator[int]:
    """A namespace standing in for the world beyond the host: a veth from the
    host (198.51.100.1) to it (198.51.100.2). Yields its PID."""
    proc = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        deadline = time.monotonic() + 5
        while os.stat(f"/proc/{proc.pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        sh(f"ip link add jstout0 type veth peer name jstout1 && ip link set jstout1 netns {proc.pid}"
           f" && ip addr add {OUTSIDE_HOST}/24 dev jstout0 && ip link set jstout0 up")
        sh(f"nsenter --target {proc.pid} --net sh -c 'ip addr add {OUTSIDE_PEER}/24 dev jstout1"
           " && ip link set jstout1 up && ip link set lo up'")
        yield proc.pid
    finally:
        subprocess.run(["ip", "link", "del", "jstout0"], capture_output=True)
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def server_in(pid: int, port: int, token: str) -> Iterator[None]:
    proc = subprocess.Popen(["nsenter", "--target", str(pid), "--net", sys.executable, "-c", SERVER, str(port), token])
    try:
        deadline = time.monotonic() + 5
        while b":%04X " % port not in Path(f"/proc/{pid}/net/tcp").read_bytes():
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        yield
    finally:
        proc.kill()
        proc.wait()


# --- input, no root needed ------------------------------------------------------------------


@pytest.mark.parametrize("text, why", [
    ("10.0.0.0/33", "invalid subnet"), ("10.199.0.5/24", "host bits"), ("banana", "invalid subnet"),
    ("8.8.8.0/24", "not a private range"), ("fd00::/64", "IPv6"), ("10.0.0.0/30", "too small"),
])
def test_bad_subnets_are_refused_with_a_reason(text: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why) as exc:
        NetConfig.create(text)
    assert exc.value.hint


def test_default_subnet_avoids_docker_and_podman_and_the_environment_overrides_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(net.SUBNET_ENV, raising=False)
    cfg = NetConfig.create()
    for taken in ("172.16.0.0/12", "10.88.0.0/15", "192.168.0.0/16", "10.0.2.0/24"):
        assert not cfg.subnet.overlaps(net.parse_subnet(taken))
    assert str(cfg.gateway) == "10.199.0.1" and cfg.bridge == "jailshell0"
    monkeypatch.setenv(net.SUBNET_ENV, "192.168.77.0/24")
    assert str(NetConfig.create().gateway_cidr) == "192.168.77.1/24"
    assert str(NetConfig.create("10.5.0.0/16").subnet) == "10.5.0.0/16"


@pytest.mark.parametrize("text", ["8080", "a:80", "0:80", "8080:70000", "1.2.3:8080:80", "8080:80/udp", "1:2:3:4"])
def test_bad_port_mappings_are_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        PortMapping.parse(text)


def test_port_mappings_parse_like_docker() -> None:
    assert PortMapping.parse("8080:80") == PortMapping(8080, 80)
    pm = PortMapping.parse("127.0.0.1:8080:80/tcp")
    assert (pm.host_port, pm.jail_port, str(pm.host_ip), str(pm)) == (8080, 80, "127.0.0.1", "127.0.0.1:8080:80")


def test_interface_names_are_prefixed_and_fit_the_kernel_limit() -> None:
    h, j = net.interface_names("a1b2c3d4")
    assert (h, j) == ("jsha1b2c3h", "jsha1b2c3j")
    assert len(h) <= net.IFNAMSIZ
    with pytest.raises(InvalidInput):
        net.check_ifname("eth0/../x")
    with pytest.raises(InvalidInput):
        net.check_ifname("a" * 16)


def test_network_modes_have_docker_equivalents() -> None:
    for mode in net.MODES:
        assert f"--network {mode}" in net.docker_network_flag(mode).docker
    with pytest.raises(InvalidInput):
        net.docker_network_flag("overlay")


# --- the steps, as root ---------------------------------------------------------------------


@root
def test_network_none_has_only_lo_and_it_is_up(jails: Callable[..., tuple[Jail, JailNet]]) -> None:
    j, n = jails()
    before = n.show().jail.interface("lo")
    assert before is not None and not before.up  # a new net namespace's lo starts down
    steps = n.connect("none")
    assert [s.op for s in steps] == ["lo_up"]
    view = n.show()
    assert view.jail.names == ["lo"]
    lo = view.jail.interface("lo")
    assert lo is not None and lo.up and "127.0.0.1/8" in [a.cidr for a in lo.addresses]
    assert ping("127.0.0.1", j)
    assert steps[0].equivalents.raw == [f"nsenter --target {j.pid} --net ip link set lo up"]


@root
def test_veth_with_addresses_pings_both_ways(jails: Callable[..., tuple[Jail, JailNet]]) -> None:
    j, n = jails()
    n.lo_up()
    step = n.veth()
    assert step.equivalents.raw[:2] == [f"ip link add {n.host_end} type veth peer name {n.jail_end}",
                                        f"ip link set {n.jail_end} netns {j.pid}"]
    n.addr()
    ip, gw = str(n.address), str(n.config.gateway)
    assert ping(ip), "host -> jail over the veth"
    assert ping(gw, j), "jail -> host over the veth"
    view = n.show()
    host_end = view.host.interface(n.host_end)
    eth0 = view.jail.interface("eth0")
    assert host_end and host_end.kind == "veth" and host_end.up and host_end.peer_elsewhere
    assert [str(a) for a in host_end.addresses if a.family == socket.AF_INET] == [f"{gw} peer {ip}/32"]
    assert eth0 and eth0.kind == "veth" and f"{ip}/24" in [a.cidr for a in eth0.addresses]
    assert view.jail.names == ["lo", "eth0"]
    assert f"{ip}/32 dev {n.host_end} proto kernel scope link src {gw}" in [str(r) for r in view.host.routes]


def shape(side: net.Side, n: JailNet) -> tuple[object, ...]:
    """A side's interfaces and routes that concern jail n, with n's own
    names and address replaced, so two jails can be compared."""
    def norm(text: str) -> str:
        return text.replace(n.host_end, "HOST_END").replace(str(n.address), "JAIL_IP")

    names = ("lo", "eth0", n.host_end)
    ifs = sorted((norm(i.name), i.kind, i.up, i.state, i.mtu,
                  sorted(norm(str(a)) for a in i.addresses if a.family == socket.AF_INET))
                 for i in side.interfaces if i.name in names)
    routes = sorted(norm(str(r)) for r in side.routes if r.dev in names)
    return tuple(ifs), tuple(routes)


@root
def test_raw_commands_build_the_same_network_as_the_engine(jails: Callable[..., tuple[Jail, JailNet]]) -> None:
    """The twin: jail A through the engine; jail B by running the raw commands
    the engine shows for it, in a shell. Their interfaces, addresses and
    routes must be the same (up to names and addresses)."""
    _, a = jails()
    _, b = jails()
    for op in ("lo_up", "veth", "addr", "route"):
        getattr(a, op)()
    try:
        # Each plan follows on from what the commands before it did in the kernel.
        for op in ("lo_up", "veth", "addr", "route"):
            for cmd in getattr(b, op)(dry_run=True).equivalents.raw:
                subprocess.run(shlex.split(cmd), check=True, capture_output=True, timeout=10)
        b.refresh()
        assert (b.inside, b.bridged) == ("eth0", False) and b.address is not None and b.address != a.address
        va, vb = a.show(), b.show()
        assert shape(va.jail, a) == shape(vb.jail, b)
        assert shape(va.host, a) == shape(vb.host, b)
        assert ping(str(b.address))
    finally:
        # B's veth is in no journal: it goes with B's namespace, but not before the check below.
        subprocess.run(["ip", "link", "del", b.host_end], capture_output=True)


@root
def test_two_jails_on_the_bridge_reach_each_other_and_the_last_one_removes_it(
        jails: Callable[..., tuple[Jail, JailNet]]) -> None:
    ja, a = jails()
    jb, b = jails()
    for n in (a, b):
        n.lo_up()
        n.veth()
        n.bridge()
        n.addr()
    assert a.address != b.address
    assert ping(str(b.address), ja) and ping(str(a.address), jb)
    assert ping(str(a.address)), "host -> jail through the bridge"
    host = net.host_side()
    bridge = host.interface("jailshell0")
    assert bridge and bridge.kind == "bridge" and "10.199.0.1/24" in [x.cidr for x in bridge.addresses]
    ports = {i.name for i in host.interfaces if i.master == "jailshell0"}
    assert ports == {a.host_end, b.host_end}
    ja.close()
    assert net.host_side().interface("jailshell0") is not None, "b still uses the bridge"
    assert ping(str(a.config.gateway), jb)
    jb.close()
    assert net.host_side().interface("jailshell0") is None


@root
def test_published_port_is_reachable_from_localhost(jails: Callable[..., tuple[Jail, JailNet]]) -> None:
    j, n = jails()
    n.connect("bridge")
    j.spawn([sys.executable, "-c", SERVER, "80", "hello-from-jail"])
    wait_listening(str(n.address), 80)
    port = free_port()
    step = n.publish(f"{port}:80")
    assert step.equivalents.docker.startswith(f"docker run -it -p {port}:80 ")
    assert any(f"tcp dport {port} dnat to {n.address}:80" in r for r in step.equivalents.raw)
    token, peer = fetch("127.0.0.1", port).split()
    # From the host itself the proxy connects, from the bridge's address.
    assert (token, peer) == ("hello-from-jail", str(n.config.gateway))
    assert any(f"dport {port} dnat to {n.address}:80" in r for r in n.show().firewall)
    j.close()
    assert not port_open(port), "the proxy outlived its jail"


@root
def test_published_port_is_dnat_for_other_machines_and_nat_masquerades_outgoing(
        jails: Callable[..., tuple[Jail, JailNet]], outside: int) -> None:
    j, n = jails()
    port = free_port()
    n.connect("bridge", publish=[f"{port}:80"])
    assert fw.read_sysctl(net.FORWARDING) == "1"
    assert f"ip saddr {n.address} ip daddr != 10.199.0.0/24 masquerade" in n.show().firewall
    j.spawn([sys.executable, "-c", SERVER, "80", "in-jail"])
    wait_listening(str(n.address), 80)
    # In: a machine outside connects to the host's address; the jail sees that machine (DNAT, no proxy).
    res = subprocess.run(["nsenter", "--target", str(outside), "--net", sys.executable, "-c", CLIENT, OUTSIDE_HOST,
                          str(port)], capture_output=True, text=True, timeout=10)
    assert res.stdout.split() == ["in-jail", OUTSIDE_PEER], res.stderr
    # Out: the jail connects to the outside machine, which sees the host's address (masquerade).
    with server_in(outside, 9000, "outside"):
        res2 = j.exec([sys.executable, "-c", CLIENT, OUTSIDE_PEER, "9000"], timeout=10)
        assert res2.stdout.split() == ["outside", OUTSIDE_HOST], res2.stderr


@root
def test_link_puts_the_other_jail_in_etc_hosts_and_the_name_resolves(
        jails: Callable[..., tuple[Jail, JailNet]]) -> None:
    _, web = jails(chroot=True)
    jcli, cli = jails(chroot=True)
    web.connect("bridge")
    with pytest.raises(InvalidInput, match="no jail named 'nope'"):
        cli.connect("bridge", links=["nope"], peers={"web": web})
    assert cli.inside is None
    steps = cli.connect("bridge", links=["web:db"], peers={"web": web, "cli": cli})
    assert steps[-1].equivalents.docker.startswith("docker run -it --link web:db ")
    hosts = (jcli.rootfs / "etc/hosts").read_text()
    assert f"{web.address}\tdb web" in hosts.splitlines()
    assert "localhost" in hosts  # the image's lines stay
    res = jcli.exec(["ping", "-c", "1", "-W", "1", "db"], timeout=10)
    assert res.returncode == 0, res.stdout + res.stderr
    assert str(web.address) in res.stdout
    cli.link("web", {"web": web})
    cli.link("web", {"web": web})  # linking again replaces its line, never duplicates it
    assert (jcli.rootfs / "etc/hosts").read_text().count(str(web.address)) == 2  # "db web" and "web"


@root
def test_name_netns_makes_the_jail_reachable_with_ip_netns(jails: Callable[..., tuple[Jail, JailNet]]) -> None:
    _, n = jails()
    n.lo_up()
    step = n.name_netns()
    name = step.details["name"]
    res = subprocess.run(["ip", "-n", name, "-br", "link"], capture_output=True, text=True, check=True)
    assert res.stdout.split()[0] == "lo"
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()[0] == name


# --- errors leave nothing behind -------------------------------------------------------------


@root
def test_a_port_in_use_is_refused_and_nothing_is_created(jails: Callable[..., tuple[Jail, JailNet]]) -> None:
    j, n = jails()
    n.connect("bridge")
    state, entries = net_state(), [e.id for e in j.journal.pending()]
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(InvalidInput, match=f"host port {port} is already in use") as exc:
            n.publish(f"{port}:80")
        assert exc.value.hint and "ss -ltnp" in exc.value.hint
    assert net_state() == state
    assert [e.id for e in j.journal.pending()] == entries
    assert not n.published
    assert not any(f"dport {port}" in r for r in n.show().firewall)


@root
def test_steps_out_of_order_or_on_a_missing_jail_are_clear_errors(
        jails: Callable[..., tuple[Jail, JailNet]]) -> None:
    _, n = jails()
    for op, why in (("addr", "no veth"), ("bridge", "no veth"), ("nat", "no veth"), ("route", "no veth")):
        with pytest.raises(JailshellError, match=why) as exc:
            getattr(n, op)()
        assert exc.value.hint
    with pytest.raises(InvalidInput):
        n.veth(inside="bad name")
    n.veth()
    with pytest.raises(InvalidInput, match="not a usable address"):
        n.addr("10.200.0.5")
    with pytest.raises(InvalidInput, match="invalid address"):
        n.addr("10.199.0.300")
    with pytest.raises(InvalidInput, match="the gateway"):
        n.addr("10.199.0.1")
    # A jail that never unshared net: refused, the host's network untouched.
    host_jail = Jail.create()
    try:
        with pytest.raises(JailshellError, match="no network namespace of its own"):
            JailNet.for_jail(host_jail).lo_up()
        dead = JailNet(host_jail.pid, "dead0001", host_jail.journal)
    finally:
        host_jail.close()
    with pytest.raises(JailshellError, match="is gone"):
        dead.veth()


@root
def test_a_subnet_that_collides_with_a_host_route_is_refused(jails: Callable[..., tuple[Jail, JailNet]]) -> None:
    sh("ip link add jsttest0 type veth peer name jsttest1 && ip addr add 10.197.0.1/16 dev jsttest0"
       " && ip link set jsttest0 up && ip link set jsttest1 up")
    try:
        j, n = jails(config=NetConfig.create("10.197.3.0/24"))
        n.veth()
        entries = [e.id for e in j.journal.pending()]
        for op in ("addr", "bridge"):
            with pytest.raises(JailshellError, match=re.escape("collides with the host's route 10.197.0.0/16 dev jsttest0")) as exc:
                getattr(n, op)()
            assert exc.value.hint and "JAILSHELL_SUBNET=" in exc.value.hint
        assert [e.id for e in j.journal.pending()] == entries
        assert net.host_side().interface("jailshell0") is None
    finally:
        sh("ip link del jsttest0")


@root
def test_dry_run_shows_every_command_and_changes_nothing(jails: Callable[..., tuple[Jail, JailNet]]) -> None:
    j, n = jails()
    state, entries = net_state(), len(j.journal.pending())
    raw = [*n.lo_up(dry_run=True).equivalents.raw, *n.veth(dry_run=True).equivalents.raw]
    assert f"nsenter --target {j.pid} --net ip link set {n.jail_end} name eth0" in raw
    n.veth()
    n.bridge()
    n.addr()
    state, entries = net_state(), len(j.journal.pending())
    nat = n.nat(dry_run=True).equivalents.raw
    assert nat[0] == f"nsenter --target {j.pid} --net ip route add default via 10.199.0.1"
    assert any(c.startswith("nft 'add rule ip jailshell_") and "masquerade" in c for c in nat)
    n.publish("127.0.0.1:8080:80", dry_run=True)
    assert net_state() == state and len(j.journal.pending()) == entries


# --- crash and cleanup ---------------------------------------------------------------------


@root
def test_cleanup_removes_what_a_killed_jailshell_left(host_clean: None) -> None:
    """A jailshell killed with SIGKILL mid-lesson: its jail dies (and its
    veth with its namespace); bridge, nft table, ip_forward and proxy are
    left, until `jailshell cleanup` replays its journal."""
    port, forwarding = free_port(), fw.read_sysctl(net.FORWARDING)
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(r)
            jail = Jail.create()
            jail.unshare("net")
            JailNet.for_jail(jail).connect("bridge", publish=[f"127.0.0.1:{port}:80", f"{port + 1}:81"])
            os.write(w, b"k")
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    os.close(w)
    ok = os.read(r, 1)
    os.close(r)
    os.waitpid(child, 0)
    assert ok == b"k", "the child could not set up its jail"
    deadline = time.monotonic() + 3
    while [x for x in os.listdir("/sys/class/net") if x.startswith("jsh")]:  # the namespace dies asynchronously
        assert time.monotonic() < deadline, "the jail's veth outlived its namespace"
        time.sleep(0.02)
    assert "jailshell0" in os.listdir("/sys/class/net")
    assert fw.read_sysctl(net.FORWARDING) == "1" and fw.nft_tables()
    deadline = time.monotonic() + 3
    while port_open(port):  # the proxies exit by themselves: their lifeline closed with their owner
        assert time.monotonic() < deadline, "the proxy outlived its jailshell"
        time.sleep(0.05)
    report = cleanup_mod.cleanup()
    assert not report.failed, report.failed
    assert any(r.startswith("nft") for r in report.removed), report.removed
    # ip_forward is journaled (and put back) only when the jail was the one to turn it on.
    assert any(r.startswith("sysctl") for r in report.removed) == (forwarding == "0"), report.removed


@root
def test_leftovers_without_a_journal_are_found_and_removed(host_clean: None) -> None:
    made_dir = not net.NETNS_DIR.exists()
    sh("ip link add jsh0badh type veth peer name jsh0badj && nft add table ip jailshell_0bad0bad"
       " && ip netns add jsh-0bad0bad")
    try:
        found = net.find_leftovers()
        assert {"link jsh0badh", "link jsh0badj", "nft jailshell_0bad0bad",
                f"netns {net.NETNS_DIR}/jsh-0bad0bad"} <= set(found)
        for item in ("link jsh0badh", "nft jailshell_0bad0bad", f"netns {net.NETNS_DIR}/jsh-0bad0bad"):
            net.remove_leftover(item)
        assert not [f for f in net.find_leftovers() if "0bad" in f]
    finally:
        if made_dir:  # `ip netns add` made it, and bind-mounted it onto itself
            subprocess.run(["umount", str(net.NETNS_DIR)], capture_output=True)
            subprocess.run(["rmdir", str(net.NETNS_DIR)], capture_output=True)


@root
@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_on_a_docker_like_host_jails_still_reach_each_other_and_all_rules_go(backend: str) -> None:
    """Docker sets the iptables FORWARD policy to DROP, and with br_netfilter
    that drops even traffic between two ports of our bridge. Played in a
    private network namespace, so the host's own firewall is never touched;
    with iptables, it is also the backend used where nft is missing."""
    res = subprocess.run(["unshare", "--net", sys.executable, "-c", SANDBOX_SCENARIO, backend], capture_output=True,
                         text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.split()[-1] == "ok", res.stdout


SANDBOX_SCENARIO = """
import subprocess, sys
from jailshell.engine.jail import Jail
from jailshell.engine.network import JailNet, NetConfig, host_side
from jailshell.engine import net_firewall as fw

def rules():
    return subprocess.run(["iptables-save"], capture_output=True, text=True).stdout

backend = sys.argv[1]
subprocess.run(["iptables", "-P", "FORWARD", "DROP"], check=True)
fw.write_sysctl("net.ipv4.ip_forward", "0")  # this namespace's own copy, inherited from the host
a, b = Jail.create(), Jail.create()
try:
    nets = []
    for j in (a, b):
        j.unshare("net")
        nets.append(JailNet.for_jail(j, NetConfig.create(firewall=backend)))
    steps = nets[0].connect("bridge", publish=["18080:80"]) + nets[1].connect("bridge")
    assert a.exec(["ping", "-c", "3", "-i", "0.2", "-W", "1", str(nets[1].address)]).returncode == 0, "a -> b"
    now = rules()
    assert now.count("jailshell:jailshell0") == 2, now
    shown = [c for s in steps for c in s.equivalents.raw]
    assert sum(c.startswith("iptables -I FORWARD") for c in shown) == 2, shown
    mine = [r for r in now.splitlines() if "jailshell:" + a.id in r]
    if backend == "iptables":
        assert fw.nft_tables() == [], "iptables only"
        assert any("MASQUERADE" in r for r in mine) and any("DNAT" in r and "18080" in r for r in mine), mine
        assert sum(c.startswith("iptables -t nat -A") for c in shown) == 3, shown  # 2 masquerade, 1 DNAT
    else:
        assert not mine and sorted(fw.nft_tables()) == sorted("jailshell_" + j.id for j in (a, b)), fw.nft_tables()
    assert fw.read_sysctl("net.ipv4.ip_forward") == "1"
    a.close()
    # b still needs the bridge and forwarding: the first to leave must not take them away.
    assert fw.read_sysctl("net.ipv4.ip_forward") == "1" and "jailshell0" in host_side().names
    assert b.exec(["ping", "-c", "1", "-W", "1", str(nets[1].config.gateway)]).returncode == 0
finally:
    a.close()
    b.close()
assert fw.read_sysctl("net.ipv4.ip_forward") == "0" and "jailshell0" not in host_side().names
left = rules()
assert "jailshell" not in left and fw.nft_tables() == [], left
print("ok")
"""


@root
def test_rootless_jail_brings_its_lo_up_through_its_user_namespace() -> None:
    from tests.unprivileged import as_nobody, nobody_state

    with nobody_state() as (_base, env):
        def scenario() -> int:
            j = Jail.create()
            try:
                j.unshare("user")
                j.unshare("net")
                n = JailNet.for_jail(j)
                try:
                    n.veth()
                    return 10
                except JailshellError as exc:
                    assert "needs root" in str(exc)
                n.lo_up()
                with open(f"/proc/{j.pid}/net/fib_trie") as fh:  # 127.0.0.1 is a local route only while lo is up
                    return 0 if "127.0.0.1" in fh.read() else 11
            finally:
                j.close()

        status, out = as_nobody(scenario, env=env)
        assert status == 0, out


# --- the raw commands, run for real, give the engine's network: bridge and NAT too --------------


def nat_shape(n: JailNet, port: int) -> list[str]:
    return sorted(r.replace(str(n.address), "JAIL_IP").replace(f"dport {port} ", "dport PORT ")
                  for r in fw.rules_of(n.id))


@root
def test_raw_bridge_and_nat_commands_build_the_same_network_as_the_engine(
        jails: Callable[..., tuple[Jail, JailNet]]) -> None:
    """Jail B is networked first, only by running the raw commands shown for
    it (so they also create the bridge); jail A then by the engine. Same
    interfaces, bridge ports, routes and NAT rules, up to names and addresses."""
    forwarding = fw.read_sysctl(net.FORWARDING)
    jb, b = jails()
    ja, a = jails()
    pa, pb = free_port(), free_port()
    try:
        plans: list[Callable[[], net.NetStep]] = [
            lambda: b.lo_up(dry_run=True), lambda: b.veth(dry_run=True), lambda: b.bridge(dry_run=True),
            # An explicit address: B holds no lease, so the engine would hand its address to A too.
            lambda: b.addr("10.199.0.200", dry_run=True), lambda: b.nat(dry_run=True),
            lambda: b.publish(f"{pb}:80", dry_run=True)]
        shown = []
        for plan in plans:  # each plan follows on from what the commands before it did in the kernel
            for cmd in plan().equivalents.raw:
                shown.append(cmd)
                if cmd.startswith("socat "):
                    continue  # the userland proxy (for 127.0.0.1) is a process, not kernel state
                subprocess.run(shlex.split(cmd.split("    #")[0]), check=True, capture_output=True, timeout=10)
        assert "ip link add jailshell0 type bridge" in shown
        b.refresh()
        assert (b.inside, b.bridged, str(b.address)) == ("eth0", True, "10.199.0.200")
        a.connect("bridge", publish=[f"{pa}:80"])
        assert a.bridged and a.address != b.address
        va, vb = a.show(), b.show()
        assert shape(va.jail, a) == shape(vb.jail, b)
        assert shape(va.host, a) == shape(vb.host, b)
        bridge = va.host.interface("jailshell0")
        assert bridge is not None and bridge.up and "10.199.0.1/24" in [x.cidr for x in bridge.addresses]
        assert {i.name for i in va.host.interfaces if i.master == "jailshell0"} >= {a.host_end, b.host_end}
        assert nat_shape(a, pa) == nat_shape(b, pb) and len(nat_shape(a, pa)) == 2  # masquerade, DNAT
        assert fw.read_sysctl(net.FORWARDING) == "1"
        assert ping(str(b.address), ja) and ping(str(a.address), jb), "the two jails meet on the bridge"
    finally:
        # B's pieces are in no journal: the test removes them (A's go with A's journal).
        subprocess.run(["ip", "link", "del", b.host_end], capture_output=True)
        fw.delete_nft_table(fw.table_name(b.id))
        ja.close()
        subprocess.run(["ip", "link", "del", "jailshell0"], capture_output=True)
        fw.write_sysctl(net.FORWARDING, forwarding)


# --- the REPL's `net` commands ------------------------------------------------------------------


@pytest.fixture
def ws(host_clean: None, tmp_path: Path) -> Iterator[object]:
    import io

    from jailshell.commands.builtin import build_workspace
    from jailshell.context import AppContext

    w = build_workspace(AppContext.for_streams(io.StringIO(), width=120, state_dir=tmp_path), with_course=False)
    yield w
    w.close()


def report_of(result: object) -> object:
    from jailshell.commands.results import Results

    return result.items[0] if isinstance(result, Results) else result


@root
def test_repl_net_steps_network_the_jail_and_show_the_engines_own_commands(ws: Any) -> None:
    from jailshell.commands.results import Message, Results, StepReport

    with pytest.raises(JailshellError, match="no network namespace of its own") as exc:
        ws.run_line("net")
    assert exc.value.hint == "run `unshare net` first"
    ws.run_line("unshare net")
    jail = ws.session.jail
    reports = {}
    for line in ("net up lo", "net veth", "net bridge", "net addr", "net nat"):
        r = ws.run_line(line)
        assert isinstance(r, StepReport) and r.equivalents is not None, line
        reports[line] = r
        assert ws.session.done[-1].equivalents is r.equivalents  # what `script` writes is what was shown
    n = net.JailNet.for_jail(jail)
    n.refresh()
    assert (n.inside, n.bridged) == ("eth0", True) and n.address is not None
    veth = reports["net veth"]
    assert veth.equivalents is not None and reports["net nat"].equivalents is not None
    assert veth.equivalents.raw[:2] == [f"ip link add {n.host_end} type veth peer name {n.jail_end}",
                                        f"ip link set {n.jail_end} netns {jail.pid}"]
    assert "--network bridge" in veth.equivalents.docker
    assert [c for c in veth.changes if c.section == "interfaces"], "the step shows the interfaces it made"
    assert any("masquerade" in c for c in reports["net nat"].equivalents.raw)
    assert ping(str(n.address)) and ping(str(n.config.gateway), jail)
    # A server in the jail, published on the host, reached through 127.0.0.1.
    jail.spawn([sys.executable, "-c", SERVER, "80", "repl-jail"])
    wait_listening(str(n.address), 80)
    port = free_port()
    pub = ws.run_line(f"net publish {port}:80")
    assert pub.equivalents.docker.startswith(f"docker run -it -p {port}:80 ")
    assert fetch("127.0.0.1", port).split()[0] == "repl-jail"
    with pytest.raises(JailshellError, match="already published"):
        ws.run_line(f"net publish {port}:81")
    shown = ws.run_line("net")
    assert isinstance(shown, Results)
    text = next(i for i in shown.items if isinstance(i, Message)).text
    assert f"{n.address}/24" in text and f"{n.host_end}" in text and "<- the jail's cable" in text
    assert f"dport {port} dnat to {n.address}:80" in text
    assert report_of(shown).equivalents.raw[2] == f"nsenter --target {jail.pid} --net ip -br addr"  # type: ignore[attr-defined]
    from jailshell.commands import script

    written = script.build(ws.session)
    assert f'ip link set {n.jail_end} netns "$JAIL"' in written and "nsenter --target \"$JAIL\" --net" in written
    ws.close()
    assert not port_open(port)


@root
def test_repl_net_bad_input_is_a_clear_error_and_changes_nothing(ws: Any) -> None:
    ws.run_line("unshare net")
    state, done = net_state(), len(ws.session.done)
    for line, why in (("net up eth0", "lo only"), ("net veth a b", "takes"), ("net publish 8080", "invalid port"),
                      ("net frob", "unknown what"), ("net addr", "no veth"), ("net link nope", "no container named")):
        with pytest.raises(JailshellError, match=why) as exc:
            ws.run_line(line)
        assert exc.value.hint, line
    ws.run_line("net veth")
    with pytest.raises(JailshellError, match="invalid address"):
        ws.run_line("net addr 10.199.0.300")
    ws.run_line("net addr")
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        before = net_state()
        with pytest.raises(JailshellError, match=f"host port {port} is already in use"):
            ws.run_line(f"net publish {port}:80")
        assert net_state() == before
    assert len(ws.session.done) == done + 2  # only `net veth` and `net addr`
    assert state["nft"] == net_state()["nft"]
    assert ws.registry.check_lesson_line("net publish 8080:80") is None
    assert ws.registry.check_lesson_line("net bogus") is not None


# --- `jailshell run --network ... -p ... --link ...` and the docker lines -------------------------


JAILSHELL = [sys.executable, "-m", "jailshell"]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*JAILSHELL, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})


def test_run_network_options_are_checked_before_anything_is_made() -> None:
    from jailshell.engine.run import RunSpec, run

    for kw, why in (({"network": "overlay"}, "unknown network mode"), ({"publish": ["8080:80"]}, "needs --network"),
                    ({"network": "host", "links": ["web"]}, "needs --network"),
                    ({"network": "bridge", "publish": ["80"]}, "invalid port mapping"),
                    ({"network": "bridge", "links": ["bad name!"]}, "invalid --link")):
        with pytest.raises(InvalidInput, match=why):
            run(RunSpec(argv=["true"], **kw))


@root
def test_run_network_none_host_and_bridge(host_clean: None) -> None:
    res = cli("run", "--rm", "--", "sh", "-c", "ip -o link | cut -d: -f2")
    assert res.returncode == 0 and res.stdout.split() == ["lo"], res.stderr
    res = cli("run", "--rm", "--network", "host", "--", "cat", "/proc/self/net/dev")
    host_links = sorted(os.listdir("/sys/class/net"))
    assert sorted(x.split(":")[0].strip() for x in res.stdout.splitlines()[2:]) == host_links, res.stderr
    res = cli("run", "--rm", "--timings", "--network", "bridge", "--", "sh", "-c",
              "ip -o -4 addr show eth0; ip route; ping -c 3 -i 0.2 -W 1 10.199.0.1 >/dev/null && echo PING-OK")
    assert res.returncode == 0, res.stderr
    assert "10.199.0." in res.stdout and "default via 10.199.0.1 dev eth0" in res.stdout
    assert "PING-OK" in res.stdout
    assert "network: " in res.stderr and "masquerade" in res.stderr


@root
def test_run_publish_reaches_a_server_in_the_container_from_localhost(host_clean: None) -> None:
    port = free_port()
    # The container's server answers one connection and exits: then `run` returns and removes everything.
    proc = subprocess.Popen([*JAILSHELL, "run", "--rm", "--network", "bridge", "-p", f"127.0.0.1:{port}:80", "--",
                             "sh", "-c", "echo published-hello | nc -l -p 80"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ,
                                                                    "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        deadline, got = time.monotonic() + 15, ""
        while not got:
            assert time.monotonic() < deadline, "the published port never answered"
            with contextlib.suppress(OSError):
                got = fetch("127.0.0.1", port)
            time.sleep(0.05)
        assert got == "published-hello"
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            cli("cleanup")  # what the killed jailshell left
    assert not port_open(port)


@root
def test_run_port_in_use_and_unknown_link_fail_with_nothing_left(host_clean: None) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = cli("run", "--rm", "--network", "bridge", "-p", f"127.0.0.1:{port}:80", "--", "echo", "RAN")
        assert res.returncode != 0 and f"host port {port} is already in use" in res.stderr
        assert "RAN" not in res.stdout and "Traceback" not in res.stderr
    res = cli("run", "--rm", "--network", "bridge", "--link", "nosuchbox", "--", "echo", "RAN")
    assert res.returncode != 0 and "no container named 'nosuchbox'" in res.stderr and "RAN" not in res.stdout
    res = cli("run", "--rm", "-p", "8080:80", "--", "echo", "RAN")
    assert res.returncode != 0 and "needs --network bridge" in res.stderr


@root
def test_docker_lines_publish_and_link_and_run_links_to_them(ws: Any) -> None:
    """`docker run -d -p ... --name web` through the unrolled planner, then
    `--link web:db` from another docker line, from `jailshell run`, and from
    the REPL's `net link`: the name resolves to web's address in each."""
    port = free_port()
    res = cli("docker", "-q", "run", "-d", "--name", "web", "-p", f"{port}:80", "busybox", "sh", "-c",
              "mkdir /w && echo web-page > /w/i && exec httpd -f -p 80 -h /w")
    try:
        assert res.returncode == 0, res.stderr
        deadline, got = time.monotonic() + 10, ""
        while not got:
            assert time.monotonic() < deadline, "web never answered on its published port"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=3) as c:
                c.sendall(b"GET /i HTTP/1.0\r\n\r\n")
                got = c.makefile(errors="replace").read()
            time.sleep(0.05)
        assert "web-page" in got
        res = cli("docker", "-q", "run", "--rm", "--link", "web:db", "busybox", "wget", "-qO-", "http://db/i")
        assert res.returncode == 0 and res.stdout.strip() == "web-page", res.stderr
        res = cli("run", "--rm", "--network", "bridge", "--link", "web:db", "--", "sh", "-c",
                  "grep -w db /etc/hosts && grep -c localhost /etc/hosts && wget -qO- http://db/i")
        lines = res.stdout.split("\n")
        assert res.returncode == 0 and lines[0].endswith("\tdb web") and lines[2] == "web-page", res.stdout + res.stderr
        ws.run_line("unshare net")
        ws.run_line("unshare mnt")
        ws.run_line("chroot")
        for line in ("net up lo", "net veth", "net bridge", "net addr"):
            ws.run_line(line)
        link = ws.run_line("net link web:db")
        assert link.equivalents.docker.startswith("docker run -it --link web:db ")
        out = ws.run_line("exec wget -qO- http://db/i").output
        assert out.stdout.strip() == "web-page", out.stderr
    finally:
        cli("docker", "rm", "-f", "web")


@root
def test_cleanup_after_kill_9_of_run_with_bridge_and_published_port(host_clean: None) -> None:
    port = free_port()
    proc = subprocess.Popen([*JAILSHELL, "run", "--rm", "--network", "bridge", "-p", f"{port}:80", "--", "sleep", "30"],
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        deadline = time.monotonic() + 15
        while not port_open(port):
            assert time.monotonic() < deadline, "run never published its port"
            time.sleep(0.05)
        assert "jailshell0" in os.listdir("/sys/class/net") and fw.nft_tables()
    finally:
        proc.kill()  # SIGKILL: no finally, no journal replay
        proc.wait()
    deadline = time.monotonic() + 5
    while port_open(port) or [x for x in os.listdir("/sys/class/net") if x.startswith("jsh")]:
        assert time.monotonic() < deadline, "the container's process, veth or proxy outlived jailshell"
        time.sleep(0.05)
    res = cli("cleanup")
    assert res.returncode == 0, res.stdout + res.stderr
    # The host_clean fixture checks the rest: bridge, nft tables, ip_forward, journals.


@root
@pytest.mark.parametrize("backend", ["nft", "iptables"])
def test_nat_over_a_plain_veth_forwards_past_a_forward_drop_policy(backend: str) -> None:
    """Docker's FORWARD DROP also stops a jail on a veth of its own (no
    bridge) from reaching beyond the host: `net nat` then adds that veth's
    FORWARD rules, journaled, and they go with the jail. Played in a private
    network namespace with its own "outside" namespace behind it."""
    res = subprocess.run(["unshare", "--net", sys.executable, "-c", VETH_NAT_SCENARIO, backend], capture_output=True,
                         text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1])))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.split()[-1] == "ok", res.stdout


VETH_NAT_SCENARIO = """
import os, subprocess, sys, time
from jailshell.engine.jail import Jail
from jailshell.engine.network import JailNet, NetConfig

def sh(cmd):
    subprocess.run(cmd, shell=True, check=True, capture_output=True, timeout=10)

def rules():
    return subprocess.run(["iptables-save"], capture_output=True, text=True).stdout

def ping(j):
    return j.exec(["ping", "-c", "2", "-i", "0.2", "-W", "1", "198.51.100.2"], timeout=10).returncode == 0

sh("iptables -P FORWARD DROP && ip link set lo up")
outside = subprocess.Popen(["unshare", "--net", "sleep", "60"])
j = Jail.create()
try:
    deadline = time.monotonic() + 5
    while os.stat(f"/proc/{outside.pid}/ns/net").st_ino == os.stat("/proc/self/ns/net").st_ino:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    sh(f"ip link add jstout0 type veth peer name jstout1 && ip link set jstout1 netns {outside.pid}"
       " && ip addr add 198.51.100.1/24 dev jstout0 && ip link set jstout0 up")
    sh(f"nsenter --target {outside.pid} --net sh -c 'ip addr add 198.51.100.2/24 dev jstout1 && ip link set jstout1 up'")
    j.unshare("net")
    n = JailNet.for_jail(j, NetConfig.create(firewall=sys.argv[1]))
    n.lo_up()
    n.veth()
    n.addr()
    step = n.nat()
    shown = [c for c in step.equivalents.raw if c.startswith("iptables -t filter -A FORWARD -i " + n.host_end)]
    assert len(shown) == 1, step.equivalents.raw
    assert rules().count("jailshell:" + j.id) >= 2, rules()
    assert ping(j), "jail -> outside through the host"
    sh("iptables -D FORWARD " + shown[0].split(" -A FORWARD ", 1)[1])  # the control: without it, no way out
    assert not ping(j), "the FORWARD rule made no difference"
finally:
    j.close()
    outside.kill()
    outside.wait()
assert "jailshell" not in rules() and n.host_end not in os.listdir("/sys/class/net"), rules()
print("ok")
"""


@root
def test_run_link_reaches_a_named_run_jail_in_another_terminal(host_clean: None) -> None:
    """`jailshell run --name srv --network bridge ...` in one terminal,
    `jailshell run --network bridge --link srv ...` in another: the name is
    found through the address lease the first one holds."""
    from jailshell.engine import net_shared

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    server = subprocess.Popen([*JAILSHELL, "run", "--rm", "--name", "srv", "--network", "bridge", "--", "sh", "-c",
                               "echo named-hello | nc -l -p 80"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        subnet = NetConfig.create().subnet
        deadline = time.monotonic() + 15
        while True:
            held = net_shared.named_lease("srv", subnet)
            with contextlib.suppress(OSError):  # busybox nc listens on :: (tcp6)
                if held is not None and any(b":0050 " in Path(f"/proc/{held.fields['pid']}/net/{t}").read_bytes()
                                            for t in ("tcp", "tcp6")):
                    break
            assert time.monotonic() < deadline and server.poll() is None, "the named jail never listened"
            time.sleep(0.05)
        res = cli("run", "--rm", "--network", "bridge", "--link", "srv:backend", "--", "sh", "-c",
                  "grep backend /etc/hosts; nc backend 80")
        assert res.returncode == 0, res.stderr
        lines = res.stdout.splitlines()
        assert lines[0] == f"{held.fields['address']}\tbackend srv" and lines[-1] == "named-hello", res.stdout
        _, err = server.communicate(timeout=15)
        assert server.returncode == 0, err
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
            cli("cleanup")  # what the killed jailshell left
    assert net_shared.named_lease("srv", subnet) is None


OTHER_RUN_DIR_JAIL = """
import sys
from jailshell.engine.jail import Jail
from jailshell.engine.network import JailNet

j = Jail.create()
try:
    j.unshare("net")
    n = JailNet.for_jail(j)
    n.connect("bridge")
    print(n.address, n.host_end, flush=True)
    sys.stdin.readline()
finally:
    j.close()
"""


@root
def test_jailshells_with_other_run_dirs_share_the_bridge_but_never_an_address(
        jails: Callable[..., tuple[Jail, JailNet]], tmp_path: Path) -> None:
    """The bridge and the subnet are the host's: a jailshell with another run
    directory (another JAILSHELL_RUN_DIR) must not get the same address, see
    the other's live veth as a leftover, or remove the bridge under it."""
    other = subprocess.Popen([sys.executable, "-c", OTHER_RUN_DIR_JAIL], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "JAILSHELL_RUN_DIR": str(tmp_path / "run2"),
                                  "PYTHONPATH": str(Path(__file__).parents[1])})
    try:
        assert other.stdout is not None and other.stdin is not None
        their_address, their_veth = other.stdout.readline().split()
        j, n = jails()
        n.connect("bridge")
        assert str(n.address) != their_address
        assert not [f for f in net.find_leftovers() if their_veth in f or "jailshell0" in f]
        j.close()
        assert "jailshell0" in os.listdir("/sys/class/net"), "the other jailshell's jail still uses the bridge"
        assert ping(their_address)
        other.stdin.write("\n")
        other.stdin.flush()
        assert other.wait(timeout=15) == 0
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    assert "jailshell0" not in os.listdir("/sys/class/net")
    assert not [r for r in net_registry.REGISTRY.glob("*.reg") if r.read_text().startswith(str(tmp_path))]


@root
def test_run_network_bridge_without_root_is_refused_before_anything_is_made() -> None:
    from jailshell.errors import NeedsRoot
    from tests.unprivileged import as_nobody

    def scenario() -> int:
        try:
            net.check_run_options("bridge", ["8080:80"], [])
        except NeedsRoot as exc:
            return 0 if "--network bridge" in str(exc) else 11
        return 10

    status, out = as_nobody(scenario)
    assert status == 0, out
