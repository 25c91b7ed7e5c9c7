"""Proofs for the course's later lessons (cgroups, networking, docker's
lifecycle, image layers, escape labs), on the real kernel.

- `jailshell play --check` plays each of them: every step runs, every step's
  check passes, every task's check fails before its solution and passes
  after; the host is as clean afterwards as before.
- The checks they cite fail on a jail where the kernel says otherwise.
- The raw commands these lessons show are run by hand against a second jail,
  which must end in the same kernel state as the engine's jail: mounts,
  pivot_root and exec lines through tests/course_raw.py; the cgroup and
  network lines (mkdir/echo into cgroup files, ip/nft) here, retargeted at the
  second jail's PID, id and address; the published port's DNAT rules and
  socat proxy for a second jail on its own host port, reached from a network
  namespace the test makes (a second host) and from 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jailshell.commands.builtin import build_workspace, load_course
from jailshell.commands.workspace import Workspace
from jailshell.context import AppContext
from jailshell.engine.jail import Jail
from jailshell.lessons.checks import default_checks
from tests import course_raw, hoststate

LABS = ("cgroup-limits", "networking", "putting-it-together", "images-by-hand", "escape-labs", "escape-fixes")


def jailshell(*args: str, cwd: Path, timeout: float = 540) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jailshell", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"})


@pytest.fixture()
def two_workspaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Workspace, Workspace]]:
    monkeypatch.chdir(tmp_path)
    ctx_a = AppContext.for_streams(open(os.devnull, "w"), state_dir=tmp_path / "a")  # noqa: SIM115
    ctx_b = AppContext.for_streams(open(os.devnull, "w"), state_dir=tmp_path / "b")  # noqa: SIM115
    ws_a = build_workspace(ctx_a, keep_progress=False)
    ws_b = build_workspace(ctx_b, keep_progress=False)
    try:
        yield ws_a, ws_b
    finally:
        ws_a.close()
        ws_b.close()


def lesson(lesson_id: str) -> object:
    course = load_course()
    li = course.lesson_index(lesson_id)
    assert li is not None, lesson_id
    return course.lessons[li]


def test_labs_are_in_the_course_in_order_with_tasks_and_checks() -> None:
    ids = [x.id for x in load_course().lessons]
    assert [i for i in ids if i in LABS] == list(LABS)
    assert ids.index("cgroup-limits") == 6 and ids.index("escape-fixes") == 11
    for lesson_id in LABS:
        the = load_course().lessons[ids.index(lesson_id)]
        assert all(step.check for step in the.steps), lesson_id
        assert any(s.try_ is not None and s.try_.hint and s.try_.solution for s in the.steps), lesson_id


# -- played for real --------------------------------------------------------------------------------------


@pytest.mark.root
def test_labs_play_with_every_check_and_leave_the_host_clean(tmp_path: Path) -> None:
    before = hoststate.snapshot()
    res = jailshell("play", "--check", "--speed", "0", *LABS, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert f"played {len(LABS)} lessons: every step ran, every check passed" in res.stderr
    # What the lessons claim, as the engine printed it (lines wrapped at the terminal's width).
    printed = " ".join((res.stdout + res.stderr).split())
    for shown in ("OOM kills", "Killed", "can't fork", "throttled periods", "jailshell0", "hello from the jail",
                  "got SIGTERM, bye", "exit code 137", "whiteout", "Escaped.", "No escape", "ns/mnt': Permission denied",
                  "NoNewPrivs: 1"):
        assert shown in printed, shown
    assert not hoststate.snapshot().leaks_since(before)


@pytest.mark.root
def test_the_labs_checks_fail_on_a_jail_that_has_not_done_the_steps() -> None:
    checks = default_checks()
    with Jail.create() as jail:
        for text in ("cgroup-joined", "cgroup-counter oom-kills 1", "cgroup-limit memory 32M",
                     "cgroup-counter throttled 1", "jail-iface eth0", "ping-both-ways", "on-bridge jailshell0",
                     "nat-out", "published 8080 hello from the jail", "container-state jailshell-no-such running",
                     "container-exit jailshell-no-such 0", "container-log jailshell-no-such x",
                     "host-file /nonexistent/volume.txt precious", "overlay-root", "whiteout /bin/vi",
                     "export-vs-save /nonexistent/export.tar /nonexistent/save.tar /bin/vi",
                     "host-proc-escape works /hostproc",
                     "nsenter-host works /hostproc", "caps-over-host none"):
            v = checks.evaluate(text, jail)
            assert not v.ok, f"{text}: {v.detail}"
        # No user namespace: its root has every capability over the host. (The walk of host-proc-escape
        # needs a jail root to leave; the lessons show it failing and passing on the same jail.)
        assert checks.evaluate("caps-over-host all", jail).ok
        assert checks.evaluate("container-state jailshell-no-such gone", jail).ok
        # After pivot_root the overlay is the jail's /; a deletion in it is a whiteout in its upper layer.
        jail.unshare("mnt")
        jail.pivot_root()
        assert checks.evaluate("overlay-root", jail).ok
        assert not checks.evaluate("whiteout /bin/vi", jail).ok
        assert jail.exec(["rm", "/bin/vi"]).returncode == 0
        assert checks.evaluate("whiteout /bin/vi", jail).ok


# -- raw commands by hand ---------------------------------------------------------------------------------


@pytest.mark.root
@pytest.mark.parametrize("lesson_id", ["escape-labs", "escape-fixes", "images-by-hand"])
def test_mount_and_exec_lines_make_the_same_kernel_state(lesson_id: str,
                                                         two_workspaces: tuple[Workspace, Workspace]) -> None:
    """The namespace, mount, pivot_root, mask and exec lines of each lab, by hand on a second jail."""
    ws_a, ws_b = two_workspaces
    proofs = course_raw.prove_lesson(ws_a, ws_b, lesson(lesson_id))  # type: ignore[arg-type]
    problems = [f"{p.ref}: {x}" for p in proofs for x in p.problems]
    assert not problems, "\n".join(problems)
    ran = [cmd for p in proofs for cmd in p.raw_run + p.probed]
    assert any(cmd.startswith(("nsenter ", "unshare ")) for cmd in ran), ran


@pytest.mark.root
def test_export_and_save_tar_lines_hold_what_the_engine_wrote(tmp_path: Path,
                                                               two_workspaces: tuple[Workspace, Workspace]) -> None:
    """The tar lines shown for export and save, run on the same jail: the same
    entries as the engine's tarballs, the whiteout a 0/0 device on disk and a
    .wh. file in the layer."""
    import tarfile

    ws, _ = two_workspaces
    the = lesson("images-by-hand")
    ws.replay([(line, None) for line in the.setup])  # type: ignore[attr-defined]
    ws.run_line("exec sh -c 'echo hello from the jail > /etc/motd; rm /bin/vi'")
    exported = course_raw.reports(ws.run_line(f"export {tmp_path}/engine-export.tar"))[0].equivalents
    saved = course_raw.reports(ws.run_line(f"save {tmp_path}/engine-save.tar"))[0].equivalents
    assert exported is not None and saved is not None
    raw_export = exported.raw[0].replace(f"{tmp_path}/engine-export.tar", f"{tmp_path}/raw-export.tar")
    _run(raw_export)

    def names(path: Path) -> set[str]:
        with tarfile.open(path) as tar:
            return {n.removeprefix("./").strip("/") for n in tar.getnames()} - {"", "."}

    assert names(tmp_path / "raw-export.tar") == names(tmp_path / "engine-export.tar")
    assert "bin/vi" not in names(tmp_path / "raw-export.tar") and "etc/motd" in names(tmp_path / "raw-export.tar")
    # layer2.tar: the jail's upper directory as tar sees it.
    layer_line = next(line for line in saved.raw if "layer2.tar" in line)
    _run(f"cd {tmp_path} && " + course_raw.strip_comment(layer_line))
    with tarfile.open(tmp_path / "layer2.tar") as tar:
        vi = tar.getmember("./bin/vi")
        assert vi.ischr() and (vi.devmajor, vi.devminor) == (0, 0)
        upper = {n.removeprefix("./").strip("/") for n in tar.getnames()} - {"", "."}
    with tarfile.open(tmp_path / "engine-save.tar") as tar:
        manifest = __import__("json").load(tar.extractfile("manifest.json"))
        top = tar.extractfile(manifest[0]["Layers"][-1])
        assert top is not None
        with tarfile.open(fileobj=top) as layer:
            engine_top = {n.removeprefix("./").strip("/") for n in layer.getnames()} - {"", "."}
    assert engine_top == (upper - {"bin/vi"}) | {"bin/.wh.vi"}


def _retarget(line: str, a: Jail, b: Jail) -> str:
    """course_raw.retarget, and the jail's id (cgroup and interface names) and
    the PID written to cgroup.procs."""
    line = course_raw.retarget(course_raw.strip_comment(line), a, b)
    line = line.replace(a.id, b.id).replace(a.id[:6], b.id[:6])
    return re.sub(rf"echo {a.pid} >", f"echo {b.pid} >", line)


def _run(line: str) -> None:
    res = course_raw.sh(line)
    assert res.returncode == 0, f"`{line}` failed ({res.returncode}): {res.stderr.strip()}"


def _cgroup_dirs(jail: Jail) -> list[str]:
    return [path for _ctrls, path in _proc_cgroup(jail.pid) if path.startswith("/jailshell/")]


def _proc_cgroup(pid: int) -> list[tuple[str, str]]:
    with open(f"/proc/{pid}/cgroup") as fh:
        return [(line.split(":", 2)[1], line.split(":", 2)[2].strip()) for line in fh if line.count(":") >= 2]


@pytest.mark.root
def test_cgroup_lines_by_hand_limit_the_same(two_workspaces: tuple[Workspace, Workspace]) -> None:
    """mkdir, echo LIMIT > FILE and echo PID > cgroup.procs as shown, on a second
    jail: same cgroup files, same values, and the kernel enforces them the same."""
    from jailshell.engine.cgroup_layout import detect

    ws_a, ws_b = two_workspaces
    the = lesson("cgroup-limits")
    ws_a.replay([(line, None) for line in the.setup])  # type: ignore[attr-defined]
    ws_b.replay([(line, None) for line in the.setup])  # type: ignore[attr-defined]
    a, b = ws_a.session.jail, ws_b.session.jail
    assert a is not None and b is not None
    made: list[Path] = []
    layout = detect()
    try:
        for step in the.steps:  # type: ignore[attr-defined]
            for line in step.run:
                reports = course_raw.reports(ws_a.run_line(line))
                if not line.startswith("cgroup ") or line in ("cgroup files",) or not reports:
                    continue
                eq = reports[0].equivalents
                assert eq is not None and eq.raw, line
                for raw in eq.raw:
                    cmd = _retarget(raw, a, b)
                    for word in cmd.split():
                        if word.startswith("/sys/fs/cgroup/") and f"/jailshell/{b.id}" in word and "." not in \
                                word.rsplit("/", 1)[-1]:
                            made.append(Path(word))
                    _run(cmd)
            if not any(line.startswith("cgroup ") and line != "cgroup files" for line in step.run):
                continue
            # Same membership and the same limit files, value for value.
            assert [p.replace(a.id, "ID") for p in _cgroup_dirs(a)] == [p.replace(b.id, "ID") for p in _cgroup_dirs(b)]
            assert a.cgroup is not None
            for d in a.cgroup.paths:
                other = Path(str(d).replace(a.id, b.id))
                for name in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.max",
                             "memory.swap.max", "pids.max", "cpu.max", "cpu.cfs_quota_us", "cpu.cfs_period_us"):
                    if (d / name).exists():
                        assert (d / name).read_text() == (other / name).read_text(), f"{step.id}: {name}"
        # The kernel enforces the by-hand limits: the same exec lines, shown with the cgroup join, in B.
        for line, want in (("exec sh -c 'echo 1000 > /proc/self/oom_score_adj; tail /dev/zero; echo status $?'", "status 137"),
                           ("exec sh -c 'for i in $(seq 40); do sleep 1 & done; wait'", "can't fork")):
            eq = course_raw.reports(ws_a.run_line(line))[0].equivalents
            assert eq is not None and eq.raw[0].startswith("sh -c 'echo $$ > "), eq.raw
            res = course_raw.sh(_retarget(eq.raw[0], a, b))
            assert want in res.stdout + res.stderr, res
        memory = next((p for p in made if "memory" in str(p) or layout.version_of("memory") == 2), None)
        if memory is not None:
            events = (memory / ("memory.events" if layout.version_of("memory") == 2 else "memory.oom_control"))
            kills = [int(x.split()[1]) for x in events.read_text().splitlines() if x.startswith("oom_kill ")]
            assert kills and kills[0] >= 1, events.read_text()
    finally:
        ws_b.close()  # its processes end with its PID 1: then the directories made by hand can go
        for d in sorted(set(made), key=lambda p: -len(p.parts)):
            with contextlib.suppress(FileNotFoundError, OSError):
                d.rmdir()


def _addr_of(jail: Jail) -> str:
    res = subprocess.run(["nsenter", f"--net=/proc/{jail.pid}/ns/net", "ip", "-4", "-o", "addr", "show", "dev",
                          "eth0"], capture_output=True, text=True, check=False)
    m = re.search(r"inet ([0-9.]+)/", res.stdout)
    assert m, res.stdout + res.stderr
    return m.group(1)


def _routes(jail: Jail, addr: str) -> list[str]:
    res = subprocess.run(["nsenter", f"--net=/proc/{jail.pid}/ns/net", "ip", "-4", "route"], capture_output=True,
                         text=True, check=False)
    return sorted(line.replace(addr, "ADDR").split(" proto")[0].strip() for line in res.stdout.splitlines())


@pytest.mark.root
def test_network_lines_by_hand_make_the_same_network(two_workspaces: tuple[Workspace, Workspace]) -> None:
    """The ip, sysctl and nft lines of the networking lesson (all but the
    published port: test_published_port_lines_by_hand_...), by hand
    on a second jail with its own names and address: the same interfaces,
    bridge port, routes and masquerade, and the host and that jail ping each other."""
    ws_a, ws_b = two_workspaces
    the = lesson("networking")
    checks = default_checks()
    ws_a.replay([(line, None) for line in the.setup])  # type: ignore[attr-defined]
    ws_b.replay([(line, None) for line in the.setup])  # type: ignore[attr-defined]
    a, b = ws_a.session.jail, ws_b.session.jail
    assert a is not None and b is not None
    ran: list[str] = []
    b_addr = None
    try:
        for step in the.steps:  # type: ignore[attr-defined]
            if step.id == "publish":
                continue
            for line in step.run:
                found = course_raw.reports(ws_a.run_line(line))
                if not line.startswith("net ") or line == "net" or not found or found[0].equivalents is None:
                    continue
                if b_addr is None and step.id == "addresses":
                    a_addr = _addr_of(a)
                    b_addr = a_addr.rsplit(".", 1)[0] + ".250"
                for raw in found[0].equivalents.raw:
                    cmd = _retarget(raw, a, b).replace(f"netns {a.pid}", f"netns {b.pid}")
                    if b_addr is not None:
                        cmd = re.sub(rf"(?<![0-9.]){re.escape(_addr_of(a))}(?![0-9])", b_addr, cmd)
                    res = course_raw.sh(cmd)
                    ran.append(cmd)
                    # The bridge and its address are the host's, made by the first jail: "exists" is their state.
                    assert res.returncode == 0 or "File exists" in res.stderr or "already" in res.stderr, \
                        f"`{cmd}` failed ({res.returncode}): {res.stderr.strip()}"
            if step.check and step.check != "ping-both-ways":
                for jail in (a, b):
                    v = checks.evaluate(step.check, jail)
                    assert v.ok, f"{step.id}: {step.check} on {'engine' if jail is a else 'by hand'}: {v.detail}"
        assert b_addr is not None and _addr_of(b) == b_addr
        assert _routes(a, _addr_of(a)) == _routes(b, b_addr)
        assert checks.evaluate("ping-both-ways", b).ok
        assert any(cmd.startswith("ip link add ") and " type veth " in cmd for cmd in ran), ran
        assert any("masquerade" in cmd for cmd in ran), ran
    finally:
        ws_b.close()  # its veth goes with its namespace
        subprocess.run(["nft", "delete", "table", "ip", f"jailshell_{b.id}"], capture_output=True, check=False)
        subprocess.run(["iptables", "-t", "nat", "-D", "POSTROUTING", "-s", f"{b_addr}", "-j", "MASQUERADE"],
                       capture_output=True, check=False)


# -- the published port, by hand, seen from a second host ---------------------------------------------

# A second host for the test: a network namespace of its own, cabled to the host
# by a veth pair (not to the bridge: DNAT leaves what arrives from the bridge to
# the proxy). Its /30 is the first of these documentation and private ranges
# that no route of this host covers yet.
_LINK_CANDIDATES = ("198.51.100.0/30", "203.0.113.0/30", "192.0.2.252/30", "10.254.253.0/30", "172.31.253.0/30")


def _unused_link() -> tuple[str, str]:
    import ipaddress

    res = subprocess.run(["ip", "-4", "-o", "route", "show", "table", "all"], capture_output=True, text=True,
                         check=True)
    taken = [ipaddress.ip_network(line.split()[1] if line.split()[0] in ("local", "broadcast") else line.split()[0],
                                  strict=False)
             for line in res.stdout.splitlines() if line.split() and line.split()[0] != "default"
             and not line.split()[0].startswith(("unreachable", "prohibit", "blackhole"))]
    for text in _LINK_CANDIDATES:
        net = ipaddress.ip_network(text)
        if not any(net.overlaps(t) for t in taken):
            host, peer = list(net.hosts())[:2]
            return str(host), str(peer)
    pytest.fail(f"every candidate link network is routed on this host: {_LINK_CANDIDATES}")

_GET = ("import socket, sys\n"
        "try:\n"
        "    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3) as c:\n"
        "        c.sendall(b'GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n')\n"
        "        data = b''\n"
        "        while len(data) < 65536:\n"
        "            chunk = c.recv(4096)\n"
        "            if not chunk:\n"
        "                break\n"
        "            data += chunk\n"
        "    print(data.decode('utf-8', 'replace'))\n"
        "except OSError as exc:\n"
        "    print('ERROR', exc)\n")


def start_shown_proxy(shown: str, port: int) -> subprocess.Popen[bytes] | None:
    """Start the shown `socat ... &` line as a child the test ends (course_raw.stop),
    and wait until 127.0.0.1:port answers; None (outside CI) without socat."""
    if shutil.which("socat") is None:
        # Under CI a skip would hide the proxy line: scripts/setup --test installs socat.
        assert os.environ.get("CI", "").lower() not in ("1", "true", "yes"), "socat is missing"
        return None
    line = course_raw.strip_comment(shown).rstrip(" &")
    socat = subprocess.Popen(shlex.split(line), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 5
    while _fetch("127.0.0.1", port).startswith("ERROR") and time.monotonic() < deadline:
        assert socat.poll() is None, socat.stderr.read() if socat.stderr else socat.returncode
        time.sleep(0.1)
    return socat


def _fetch(addr: str, port: int, netns: str | None = None) -> str:
    """The page at ADDR:PORT, or `ERROR ...`: from this host, or from inside NETNS."""
    cmd = [sys.executable, "-c", _GET, addr, str(port)]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False,
                          stdin=subprocess.DEVNULL).stdout


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _second_host(host_side: str, peer_side: str) -> Iterator[str]:
    """A network namespace with one veth to the host: a machine that reaches the
    host only by HOST_SIDE, its address on that link, as another machine on the LAN would."""
    name = f"jshpub{os.getpid() % 100000}"
    host_end, peer_end = f"{name}h", f"{name}p"
    steps = [["ip", "netns", "add", name],
             ["ip", "link", "add", host_end, "type", "veth", "peer", "name", peer_end],
             ["ip", "link", "set", peer_end, "netns", name],
             ["ip", "addr", "add", f"{host_side}/30", "dev", host_end],
             ["ip", "link", "set", host_end, "up"],
             ["ip", "-n", name, "addr", "add", f"{peer_side}/30", "dev", peer_end],
             ["ip", "-n", name, "link", "set", peer_end, "up"],
             ["ip", "-n", name, "link", "set", "lo", "up"]]
    try:
        for argv in steps:
            subprocess.run(argv, check=True, capture_output=True, text=True)
        yield name
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _dnat_rules(jail: Jail, addr: str, port: int) -> list[str]:
    """The jail's DNAT rules as the kernel holds them (nft or iptables), its id,
    address and host port made generic."""
    from jailshell.engine import net_firewall

    return sorted(re.sub(rf"(?<![0-9]){port}(?![0-9])", "PORT",
                         re.sub(rf"(?<![0-9.]){re.escape(addr)}(?![0-9])", "ADDR", rule.replace(jail.id, "ID")))
                  for rule in net_firewall.rules_of(jail.id) if "dnat" in rule.lower())


@pytest.mark.root
def test_published_port_lines_by_hand_answer_from_a_second_host(two_workspaces: tuple[Workspace, Workspace]) -> None:
    """The publish step's lines (DNAT rules, the socat proxy), by hand for a
    second jail on its own host port: a second host reaches that jail through
    the host's address by DNAT alone; 127.0.0.1 only once socat relays it, as
    the engine's proxy does for the first jail. Both jails answer both ways."""
    ws_a, ws_b = two_workspaces
    the = lesson("networking")
    steps = the.steps  # type: ignore[attr-defined]
    publish = next(s for s in steps if s.id == "publish")
    publish_line = next(line for line in publish.run if line.startswith("net publish "))
    a_port = int(publish_line.split()[2].split(":")[0])
    checks = default_checks()
    ws_a.replay([(line, None) for line in the.setup])  # type: ignore[attr-defined]
    ws_b.replay([(line, None) for line in the.setup])  # type: ignore[attr-defined]
    a, b = ws_a.session.jail, ws_b.session.jail
    assert a is not None and b is not None
    # A: the whole lesson by the engine. B: the steps before by the engine
    # (their lines are proven by hand above), the same server, a page of its own.
    shown: list[str] = []
    for step in steps:
        for line in step.run:
            found = course_raw.reports(ws_a.run_line(line))
            if line == publish_line:
                assert found and found[0].equivalents is not None, line
                shown = list(found[0].equivalents.raw)
            if step is not publish or not line.startswith("net publish "):
                ws_b.run_line(line)
    ws_b.run_line("exec sh -c 'echo this is jail B >> /www/index.html'")
    assert any(" dnat " in line or "DNAT" in line for line in shown), shown
    proxy = [line for line in shown if line.startswith("socat ")]
    assert len(proxy) == 1, shown
    a_addr, b_addr, b_port = _addr_of(a), _addr_of(b), _free_port()

    def for_b(raw: str) -> str:
        cmd = _retarget(raw, a, b)
        cmd = re.sub(rf"(?<![0-9.]){re.escape(a_addr)}(?![0-9])", b_addr, cmd)
        return re.sub(rf"(?<![0-9]){a_port}(?![0-9])", str(b_port), cmd)

    host_side, peer_side = _unused_link()
    socat: subprocess.Popen[bytes] | None = None
    try:
        with _second_host(host_side, peer_side) as netns:
            # The kernel's part: forwarding and DNAT, nothing listening on the host port yet.
            for raw in shown:
                if raw not in proxy:
                    _run(for_b(raw))
            assert _dnat_rules(a, a_addr, a_port) == _dnat_rules(b, b_addr, b_port)
            seen = _fetch(host_side, b_port, netns)
            assert "hello from the jail" in seen and "this is jail B" in seen, seen
            # DNAT never sees a connection from the host itself: nothing answers on 127.0.0.1 yet.
            assert _fetch("127.0.0.1", b_port).startswith("ERROR"), "127.0.0.1 answered without the proxy"
            # The engine's jail, the same two ways (its page is its own).
            for seen in (_fetch(host_side, a_port, netns), _fetch("127.0.0.1", a_port)):
                assert "hello from the jail" in seen and "this is jail B" not in seen, seen
            # The userland proxy, as shown (in the background: here a child the test ends).
            socat = start_shown_proxy(for_b(proxy[0]), b_port)
            if socat is None:
                return
            v = checks.evaluate(f"published {b_port} this is jail B", b)
            assert v.ok, v.detail
            assert checks.evaluate(publish.check, a).ok  # type: ignore[attr-defined]
            seen = _fetch(host_side, b_port, netns)  # DNAT still wins over the proxy's 0.0.0.0
            assert "this is jail B" in seen, seen
    finally:
        if socat is not None:
            course_raw.stop(socat)
        ws_b.close()  # its own table goes, and the chain added to it by hand with it
        subprocess.run(["nft", "delete", "table", "ip", f"jailshell_{b.id}"], capture_output=True, check=False)
        if shutil.which("iptables"):
            for rule in _iptables_rules_of(b.id):
                subprocess.run(["iptables", "-t", "nat", *shlex.split(rule.replace("-A ", "-D ", 1))],
                               capture_output=True, check=False)


def _iptables_rules_of(jail_id: str) -> list[str]:
    from jailshell.engine import net_firewall

    return [r for r in net_firewall.iptables_rules("nat") if jail_id in r]
