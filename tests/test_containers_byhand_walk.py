"""The lines `walk` shows for a container's cgroup and bridge network, run by
hand on a second container, leave the kernel as the engine left the first.

- cgroup (`docker run -m 64m --pids-limit 20 --cpus 0.5`): the walked mkdir,
  limit writes and `echo PID > cgroup.procs` replace the cgroup step of the
  by-hand plan of a second container (every other step by its shown lines
  too). Same cgroup directories, same values in the limit files, PID 1 in
  them, and the cgroup namespace rooted there.
- network (`--network bridge -p HOST:80`): the walked ip/nsenter/nft lines,
  aimed at a second container (its PID, its id in the names, its own address
  and host port) that the engine started with no network. Same interfaces,
  addresses and routes as the kernel reports them (`ip -j`), the same bridge
  port and NAT rules; the host and each container ping each other, a second
  host the test makes reaches each one through its own host port, and the
  shown socat line relays 127.0.0.1 to the second one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jailshell.engine import containers, dockerline
from jailshell.engine.containers import Creation, StepOutcome, Streams
from jailshell.engine.images.store import ImageStore
from jailshell.engine.journal import undo_dir, undo_mount
from tests import course_raw
from tests.test_containers_byhand import by_hand_script
from tests.test_course_labs import _fetch, _free_port, _second_host, _unused_link, start_shown_proxy

pytestmark = pytest.mark.root

LIMITS = "-m 64m --pids-limit 20 --cpus 0.5"
# Every limit file the kernel has for memory, swap, pids and cpu, v1 and v2.
LIMIT_FILES = ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.max", "memory.swap.max",
               "pids.max", "cpu.max", "cpu.cfs_quota_us", "cpu.cfs_period_us")


def _walked(line: str) -> tuple[containers.Record, dict[str, StepOutcome], dockerline.Plan]:
    """`docker run -d LINE` by the engine, step by step: its record, each step
    as `walk` reports it (StepOutcome.raw is what the REPL shows), and the
    plan shown before the first step."""
    spec = dockerline.parse("run -d " + line).spec
    assert spec is not None
    creation = Creation(spec)
    shown: dict[str, StepOutcome] = {}
    containers.run(creation, on_step=lambda o: shown.__setitem__(o.step.key, o),
                   streams=Streams(out=lambda b: None, err=lambda b: None))
    return containers.Record.load(creation.layout), shown, creation.plan


@pytest.fixture()
def names() -> Iterator[list[str]]:
    made = [f"walk-engine-{os.getpid()}", f"walk-raw-{os.getpid()}"]
    yield made
    for name in reversed(made):  # the by-hand one first: its veth leaves the bridge before the engine's goes
        with contextlib.suppress(Exception):
            containers.rm(name, force=True)


# -- cgroup -----------------------------------------------------------------------------------------------


def _cgroup_dirs(cid: str) -> list[Path]:
    found = []
    for mount in Path("/sys/fs/cgroup").iterdir():
        for d in (mount / "jailshell" / cid, Path("/sys/fs/cgroup/jailshell") / cid):
            if d.is_dir() and d not in found:
                found.append(d)
    return sorted(found)


def _proc_cgroup(pid: int, cid: str) -> list[str]:
    return sorted(Path(f"/proc/{pid}/cgroup").read_text().replace(cid, "ID").splitlines())


def _children(pid: int) -> list[int]:
    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _by_hand_cgroup_lines(walked: StepOutcome, a_id: str, b_id: str) -> tuple[list[str], list[str]]:
    """The walked cgroup lines aimed at B (its id; `$$`, the shell that then
    runs unshare, for the PID); and the lines left out: a mkdir of the shared
    `jailshell` parent, which the engine's container made and still uses."""
    run, skipped = [], []
    for raw in walked.raw:
        cmd = raw.replace(a_id, b_id)
        cmd = re.sub(rf"^echo {walked.pid} >", "echo $$ >", cmd)
        if cmd.startswith("mkdir ") and b_id not in cmd and Path(cmd.split()[-1]).is_dir():
            skipped.append(cmd)
            continue
        run.append(cmd)
    assert any(c.startswith("echo $$ > ") and c.endswith("/cgroup.procs") for c in run), walked.raw
    return run, skipped


def test_walked_cgroup_lines_by_hand_make_the_same_cgroup(names: list[str]) -> None:
    engine_name, _ = names
    a, shown, a_plan = _walked(f"--name {engine_name} {LIMITS} --network none busybox sleep 1000")
    assert a.pid and a.state == "running"
    walked = shown["cgroup"]
    writes = [r for r in walked.raw if r.startswith("echo ") and not r.endswith("/cgroup.procs")]
    assert len(writes) >= 3, walked.raw  # memory, pids, cpu
    # The plan shown before walking promised the same writes and joins, and the same directories.
    planned = a_plan.step("cgroup")
    assert planned is not None
    promised = [r.replace(dockerline.PID_PLACEHOLDER, str(walked.pid)) for r in planned.raw]
    assert [r for r in promised if not r.startswith("mkdir ")] == [r for r in walked.raw if not r.startswith("mkdir ")]
    assert {r.split()[-1] for r in promised if r.startswith("mkdir ")} == \
        {r.split()[-1] for r in walked.raw if r.startswith("mkdir ") and a.id in r}

    # B: the by-hand plan of the same line, its cgroup step replaced by A's walked lines.
    spec = dockerline.parse(f"run --network none {LIMITS} busybox sh -c 'echo ready; exec sleep 1000'").spec
    assert spec is not None
    layout = dockerline.Layout.of(containers.new_id())
    b_id = layout.id
    plan = dockerline.plan_for(spec, layout, dockerline.ImageFacts.from_image(ImageStore().resolve("busybox")))
    cg_lines, skipped = _by_hand_cgroup_lines(walked, a.id, b_id)
    assert all("/jailshell" in s and s.rsplit("/", 1)[-1] == "jailshell" for s in skipped), skipped
    script = by_hand_script(plan, cg_lines)
    assert all(c in script for c in cg_lines)
    proc = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stderr is not None
        # Bounded: a by-hand line that hangs fails the test instead of stalling it.
        assert select.select([proc.stdout], [], [], 60)[0], "the by-hand container did not start in 60 s"
        assert proc.stdout.readline() == "ready\n", proc.stderr.read()
        (b_pid,) = _children(proc.pid)  # unshare --fork: its child is PID 1
        # The same directories, PID 1 in each of them, the same limits, value for value.
        a_dirs, b_dirs = _cgroup_dirs(a.id), _cgroup_dirs(b_id)
        assert a_dirs and [str(d).replace(a.id, "ID") for d in a_dirs] == [str(d).replace(b_id, "ID")
                                                                            for d in b_dirs]
        assert _proc_cgroup(a.pid, a.id) == _proc_cgroup(b_pid, b_id)
        for d in b_dirs:
            assert b_pid in {int(x) for x in (d / "cgroup.procs").read_text().split()}, d
        written = {r.split(" > ", 1)[1].rsplit("/", 1)[-1] for r in writes}
        compared = 0
        for d_a, d_b in zip(a_dirs, b_dirs, strict=True):
            for name in sorted(set(LIMIT_FILES) | written):
                if (d_a / name).exists():
                    assert (d_a / name).read_text() == (d_b / name).read_text(), f"{d_b}/{name}"
                    compared += name in written
        assert compared == len(written), (compared, written)
        # The join came before unshare: each container's cgroup namespace is rooted at its cgroup.
        inside = [subprocess.run(["nsenter", "--target", str(pid), "--mount", "--pid", "--cgroup", "cat",
                                  "/proc/1/cgroup"], capture_output=True, text=True, check=True).stdout
                  for pid in (a.pid, b_pid)]
        assert inside[0] == inside[1] and all(line.endswith(":/") for line in inside[0].splitlines()), inside
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in _live_children(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.communicate(timeout=10)
        with contextlib.suppress(FileNotFoundError):
            undo_mount({"target": str(layout.rootfs)})
        undo_dir({"path": str(layout.run)})
        undo_dir({"path": str(layout.data)})
        for d in _cgroup_dirs(b_id):
            deadline = time.monotonic() + 5
            while True:  # a killed process leaves its cgroup a moment later
                try:
                    d.rmdir()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)


def _live_children(pid: int) -> list[int]:
    try:
        return _children(pid)
    except OSError:
        return []


# -- bridge network and a published port --------------------------------------------------------------------

SERVE = "sh -c 'mkdir -p /www; echo {page} > /www/index.html; exec httpd -f -p 80 -h /www'"


def _ip_json(pid: int, *args: str) -> Any:
    res = subprocess.run(["nsenter", "--target", str(pid), "--net", "ip", "-j", *args], capture_output=True,
                         text=True, check=True)
    return json.loads(res.stdout or "[]")


def _generic(value: Any, subs: dict[str, str]) -> Any:
    """A structure from `ip -j` with the container's own names and address made generic."""
    text = json.dumps(value, sort_keys=True)
    for old, new in subs.items():
        text = re.sub(rf"(?<![0-9a-z.]){re.escape(old)}(?![0-9a-z])", new, text)
    return json.loads(text)


def _interfaces(pid: int, subs: dict[str, str]) -> list[dict[str, Any]]:
    """What the kernel says of each interface inside: name, kind, state, flags, mtu, addresses."""
    kinds = {link["ifname"]: (link.get("linkinfo") or {}).get("info_kind") for link in _ip_json(pid, "-d", "link")}
    out = []
    for link in _ip_json(pid, "addr"):
        out.append({"ifname": link["ifname"], "kind": kinds.get(link["ifname"]), "flags": sorted(link["flags"]),
                    "operstate": link.get("operstate"), "mtu": link.get("mtu"), "link_type": link.get("link_type"),
                    # An IPv6 link-local address comes from the interface's random MAC: only that there is one.
                    "addr": sorted((a["family"], "LINKLOCAL" if a["family"] == "inet6" and a.get("scope") == "link"
                                    else a["local"], a["prefixlen"], a.get("scope"), a.get("broadcast", ""))
                                   for a in link.get("addr_info", []))})
    return _generic(sorted(out, key=lambda i: i["ifname"]), subs)


def _routes(pid: int, subs: dict[str, str]) -> list[dict[str, Any]]:
    return _generic(sorted(_ip_json(pid, "-4", "route"), key=lambda r: json.dumps(r, sort_keys=True)), subs)


def _host_end(name: str) -> dict[str, Any]:
    (link,) = json.loads(subprocess.run(["ip", "-j", "-d", "link", "show", "dev", name], capture_output=True,
                                        text=True, check=True).stdout)
    info = link.get("linkinfo") or {}
    return {"kind": info.get("info_kind"), "slave": info.get("info_slave_kind"), "master": link.get("master"),
            "operstate": link.get("operstate"), "flags": sorted(link["flags"]), "mtu": link.get("mtu")}


def _nat_rules(cid: str, subs: dict[str, str]) -> list[str]:
    from jailshell.engine import net_firewall

    return sorted(_generic(net_firewall.rules_of(cid), subs))


def _pings(pid: int, addr: str, gateway: str) -> tuple[bool, bool]:
    """Host -> container, container -> host (the bridge's address): one packet each, 2 s at most."""
    there = subprocess.run(["ping", "-c", "1", "-W", "2", addr], capture_output=True, timeout=10, check=False)
    back = subprocess.run(["nsenter", "--target", str(pid), "--net", "ping", "-c", "1", "-W", "2", gateway],
                          capture_output=True, timeout=10, check=False)
    return there.returncode == 0, back.returncode == 0


def _free_address(a_addr: str) -> str:
    """An address of the bridge's subnet that no container has."""
    taken = {(r.network or {}).get("address") for r in containers.records() if r.state == "running"}
    prefix = a_addr.rsplit(".", 1)[0]
    return next(f"{prefix}.{n}" for n in range(250, 200, -1) if f"{prefix}.{n}" not in taken)


def test_walked_bridge_and_publish_lines_by_hand_make_the_same_network(names: list[str]) -> None:
    engine_name, raw_name = names
    a_port, b_port = _free_port(), _free_port()
    while b_port == a_port:
        b_port = _free_port()
    a, shown, _ = _walked(f"--name {engine_name} --network bridge -p {a_port}:80 busybox "
                       + SERVE.format(page="engine"))
    b, _, _ = _walked(f"--name {raw_name} --network none busybox " + SERVE.format(page="by-hand"))
    assert a.pid and b.pid and a.network and a.network.get("address")
    walked = shown["network"]
    a_addr, bridge = a.network["address"], a.network["bridge"]
    b_addr = _free_address(a_addr)
    gateway = next(r.split()[-1] for r in walked.raw if " route add default via " in r)
    a_short, b_short = a.id[:6], b.id[:6]
    proxy = [r for r in walked.raw if r.startswith("socat ")]
    assert len(proxy) == 1, walked.raw

    def for_b(raw: str) -> str:
        cmd = raw.replace(a.id, b.id).replace(f"jsh{a_short}", f"jsh{b_short}")
        cmd = re.sub(rf"(--target |netns ){walked.pid}(?![0-9])", rf"\g<1>{b.pid}", cmd)
        cmd = re.sub(rf"(?<![0-9.]){re.escape(a_addr)}(?![0-9])", b_addr, cmd)
        return re.sub(rf"(?<![0-9]){a_port}(?![0-9])", str(b_port), cmd)

    host_a, host_b = f"jsh{a_short}h", f"jsh{b_short}h"
    socat: subprocess.Popen[bytes] | None = None
    ran: list[str] = []
    try:
        for raw in walked.raw:
            if raw in proxy:
                continue
            cmd = for_b(raw)
            res = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=30,
                                 stdin=subprocess.DEVNULL)
            ran.append(cmd)
            # The bridge and its address are the host's, made for the engine's container: "exists" is their state.
            exists = "File exists" in res.stderr or "already assigned" in res.stderr
            assert res.returncode == 0 or (bridge in cmd and b_short not in cmd and exists), \
                f"`{cmd}` failed ({res.returncode}): {res.stderr.strip()}"
        assert any(c.startswith("ip link add ") and " type veth " in c for c in ran), ran
        assert any("masquerade" in c or "MASQUERADE" in c for c in ran), ran
        assert any(" dnat " in c or "DNAT" in c for c in ran), ran
        # The kernel's view, inside and on the host.
        a_subs = {a_addr: "ADDR", a.id: "ID", a_short: "SHORT", str(a_port): "PORT"}
        b_subs = {b_addr: "ADDR", b.id: "ID", b_short: "SHORT", str(b_port): "PORT"}
        assert _interfaces(a.pid, a_subs) == _interfaces(b.pid, b_subs)
        assert [i["ifname"] for i in _interfaces(b.pid, b_subs)] == ["eth0", "lo"]
        assert _routes(a.pid, a_subs) == _routes(b.pid, b_subs)
        assert _host_end(host_a) == _host_end(host_b)
        assert _host_end(host_b)["master"] == bridge
        assert _nat_rules(a.id, a_subs) == _nat_rules(b.id, b_subs) != []
        # Traffic between the host and each container, and from a second host through each host port.
        assert _pings(a.pid, a_addr, gateway) == (True, True)
        assert _pings(b.pid, b_addr, gateway) == (True, True)
        host_side, peer_side = _unused_link()
        with _second_host(host_side, peer_side) as netns:
            assert "engine" in _fetch(host_side, a_port, netns)
            assert "by-hand" in _fetch(host_side, b_port, netns)
        # The userland proxy, as shown, for connections from this host.
        assert "engine" in _fetch("127.0.0.1", a_port)
        assert _fetch("127.0.0.1", b_port).startswith("ERROR")  # DNAT never sees the host's own connections
        socat = start_shown_proxy(for_b(proxy[0]), b_port)
        if socat is None:
            return
        assert "by-hand" in _fetch("127.0.0.1", b_port)
    finally:
        if socat is not None:
            course_raw.stop(socat)
        with contextlib.suppress(Exception):
            containers.rm(b.id, force=True)  # its veth goes with its network namespace
        subprocess.run(["ip", "link", "del", host_b], capture_output=True, check=False)
        subprocess.run(["nft", "delete", "table", "ip", f"jailshell_{b.id}"], capture_output=True, check=False)
        if shutil.which("iptables"):
            from jailshell.engine import net_firewall

            for rule in net_firewall.iptables_rules("nat"):
                if b.id in rule or b_addr in rule:
                    subprocess.run(["iptables", "-t", "nat", *shlex.split(rule.replace("-A ", "-D ", 1))],
                                   capture_output=True, check=False)
