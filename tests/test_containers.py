"""Containers and their life cycle, on the real kernel: each test checks kernel
facts (/proc, the mount table, cgroup files, the journal), not jailshell's word."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jailshell.engine import containers, dockerline
from jailshell.engine.containers import Creation, Streams
from jailshell.engine.journal import journals, process_alive
from jailshell.engine.namespaces import ns_inode

pytestmark = pytest.mark.root

JAILSHELL = [sys.executable, "-m", "jailshell"]


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*JAILSHELL, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})


class Capture:
    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.notices: list[str] = []

    @property
    def streams(self) -> Streams:
        return Streams(out=self.out.extend, err=self.err.extend, notice=self.notices.append)


def run(line: str, capture: Capture | None = None) -> tuple[containers.Record | None, int | None]:
    """`docker run LINE` through the engine; (record if it still exists, exit code or None)."""
    spec = dockerline.parse("run " + line).spec
    assert spec is not None
    creation = Creation(spec)
    code = containers.run(creation, streams=(capture or Capture()).streams)
    rec = containers.Record.load(creation.layout) if creation.layout.record.exists() else None
    return rec, code


def wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def leftovers(cid: str) -> list[str]:
    """Everything of container cid that could still be on the host."""
    found = []
    layout = dockerline.Layout.of(cid)
    for p in (layout.data, layout.run):
        if os.path.lexists(p):
            found.append(f"dir {p}")
    with open("/proc/self/mountinfo") as fh:
        found += [f"mount {line.split()[4]}" for line in fh if cid in line]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cid in cmdline:
            found.append(f"process {pid} {cmdline}")
    found += [f"journal {j}" for j in journals() if cid in j.name]
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        found += [f"cgroup {root}/{d}" for d in dirs if d == cid]
        dirs[:] = [d for d in dirs if root.count("/") < 5]
    found += [f"link {name}" for name in os.listdir("/sys/class/net") if name.startswith(f"jsh{cid[:6]}")]
    return found


@pytest.fixture(autouse=True)
def no_containers_left() -> Iterator[None]:
    yield
    for rec in containers.records():
        containers.rm(rec.id, force=True)


def nspid(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    return []


def gone(pid: int) -> bool:
    """Exited: reaped, or a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return stat[stat.rindex(b")") + 2:][:1] == b"Z"


def ancestors(pid: int) -> list[int]:
    out = []
    while pid > 1:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        pid = int(stat[stat.rindex(b")") + 2:].split()[1])
        out.append(pid)
    return out


# --- a container outlives who started it ---------------------------------------------------------


def test_detached_container_keeps_running_after_the_process_that_started_it_exits() -> None:
    res = cli("docker", "-q", "run", "-d", "--name", "bg", "--network", "none", "busybox", "sleep", "1000")
    assert res.returncode == 0, res.stderr
    cid = res.stdout.strip()
    rec = containers.resolve("bg")
    assert rec.id == cid and rec.state == "running"
    pid = int(rec.pid or 0)
    assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x001000\x00"
    assert nspid(pid)[-1] == 1  # PID 1 of its own namespace
    assert os.getpid() not in ancestors(pid)  # not under this test, nor under the CLI that is gone
    assert rec.supervisor in ancestors(pid)
    # Its journal belongs to its supervisor, a live process: cleanup leaves it alone.
    owned = [j for j in journals() if j.name.endswith(f"-ctr-{cid}.jsonl")]
    assert len(owned) == 1 and owned[0].name.startswith(f"{rec.supervisor}-")
    from jailshell.engine.cleanup import cleanup

    report = cleanup()
    assert not any(cid in r for r in report.removed)
    assert process_alive(pid, rec.starttime)
    assert containers.resolve("bg").state == "running"


def test_a_container_run_detached_at_the_prompt_outlives_the_repl() -> None:
    lines = "docker run --all -d --name fromrepl --network none busybox sleep 1000\n"
    repl = subprocess.run([*JAILSHELL, "repl"], input=lines, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert repl.returncode == 0, repl.stdout + repl.stderr
    assert "fromrepl runs in the background" in repl.stdout
    rec = containers.resolve("fromrepl")  # the REPL process is gone by now
    assert rec.state == "running"
    pid = int(rec.pid or 0)
    assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"sleep\x001000\x00"
    assert os.getpid() not in ancestors(pid) and rec.supervisor in ancestors(pid)


# --- stop, kill, and PID 1 ------------------------------------------------------------------------


def test_stop_escalates_to_sigkill_when_pid1_has_no_sigterm_handler() -> None:
    rec, _ = run("-d --name stubborn --network none busybox sleep 1000")
    assert rec is not None and rec.pid
    assert not containers.catches(rec.pid, signal.SIGTERM)
    why = containers.why_dropped(rec.pid, signal.SIGTERM)
    assert why is not None and "no handler for SIGTERM" in why
    t0 = time.monotonic()
    report = containers.stop("stubborn", timeout=1)
    elapsed = time.monotonic() - t0
    assert elapsed >= 1.0 and report.seconds >= 1.0
    assert report.killed and report.exit_code == 137  # 128 + SIGKILL, as docker reports it
    assert report.note and "SigCgt" in report.note
    assert not process_alive(rec.pid, rec.starttime)
    assert containers.resolve("stubborn").state == "exited"


def test_stop_is_quick_when_pid1_handles_sigterm() -> None:
    rec, _ = run("-d --name polite --network none busybox sh -c 'trap \"exit 5\" TERM; "
                 "while :; do sleep 0.05; done'")
    assert rec is not None and rec.pid
    assert wait_for(lambda: containers.catches(int(rec.pid or 0), signal.SIGTERM))
    report = containers.stop("polite", timeout=5)
    assert not report.killed and report.note is None
    assert report.seconds < 2 and report.exit_code == 5


def test_a_pid_namespace_init_gets_only_the_signals_it_handles() -> None:
    rec, _ = run("-d --name init --network none busybox sleep 1000")
    assert rec is not None and rec.pid
    # The same program, not PID 1, in the same container: SIGTERM kills it.
    assert containers.exec_in("init", ["sleep", "1000"], detach=True) is None
    other = next(int(p) for p in os.listdir("/proc") if p.isdigit() and nspid(int(p))[-1:] == [2]
                 and ns_inode(p, "pid") == ns_inode(rec.pid, "pid"))
    os.kill(other, signal.SIGTERM)
    assert wait_for(lambda: gone(other))
    # PID 1 without a handler: SIGTERM and SIGINT from the host are dropped...
    assert containers.kill("init", signal.SIGTERM) is not None
    assert containers.kill("init", signal.SIGINT) is not None
    time.sleep(0.3)
    assert process_alive(rec.pid, rec.starttime)
    # ...SIGKILL from an ancestor namespace is forced.
    assert containers.kill("init", signal.SIGKILL) is None
    assert wait_for(lambda: containers.resolve("init").state == "exited")
    assert containers.resolve("init").exit_code == 137


def test_the_exit_code_is_pid_1_s() -> None:
    assert run("--rm --network none busybox sh -c 'exit 42'")[1] == 42
    assert run("--rm --network none busybox true")[1] == 0


def test_a_missing_command_is_127_and_rm_leaves_nothing() -> None:
    spec = dockerline.parse("run --rm --network none busybox no-such-command").spec
    assert spec is not None
    creation = Creation(spec)
    with pytest.raises(containers.JailshellError) as info:
        containers.run(creation)
    assert info.value.status == 127 and "executable file not found" in info.value.message
    assert leftovers(creation.layout.id) == []


# --- logs ---------------------------------------------------------------------------------------------


def test_logs_hold_what_the_process_printed() -> None:
    cap = Capture()
    rec, code = run("--name talker --network none busybox sh -c 'echo out1; echo err1 >&2; echo out2'", cap)
    assert code == 0 and rec is not None
    assert (bytes(cap.out), bytes(cap.err)) == (b"out1\nout2\n", b"err1\n")
    logged = Capture()
    containers.logs("talker", streams=logged.streams)
    assert (bytes(logged.out), bytes(logged.err)) == (b"out1\nout2\n", b"err1\n")
    lines = [json.loads(x) for x in rec.layout.log.read_text().splitlines()]
    # In docker's json-file format; the order between the two pipes is whichever the kernel made ready first.
    assert [x["log"] for x in lines if x["stream"] == "stdout"] == ["out1\n", "out2\n"]
    assert [x["log"] for x in lines if x["stream"] == "stderr"] == ["err1\n"]
    tail = Capture()
    containers.logs("talker", tail=1, timestamps=True, streams=tail.streams)
    shown = (bytes(tail.out) + bytes(tail.err)).decode()
    assert shown == f"{lines[-1]['time']} {lines[-1]['log']}" and shown.startswith("20")


def test_logs_follow_prints_as_it_comes_until_the_container_stops(tmp_path: Path) -> None:
    # The container prints its second line only once the follower has shown the
    # first: follow must print while the container runs, then end when it stops.
    run(f"-d --name ticker --network none -v {tmp_path}:/sync busybox sh -c "
        "'echo tick 1; while [ ! -e /sync/go ]; do sleep 0.02; done; echo tick 2'")
    cap = Capture()

    def out(data: bytes) -> None:
        cap.out.extend(data)
        if bytes(cap.out) == b"tick 1\n":
            assert containers.resolve("ticker").state == "running"
            (tmp_path / "go").touch()

    containers.logs("ticker", follow=True, streams=Streams(out=out, err=cap.err.extend), poll=0.02)
    assert bytes(cap.out) == b"tick 1\ntick 2\n"
    assert containers.resolve("ticker").state == "exited"


def test_logs_follow_ends_on_a_line_its_dead_writer_never_finished() -> None:
    rec, _ = run("--name cut --network none busybox true")
    assert rec is not None
    with open(rec.layout.log, "ab") as fh:
        fh.write(b'{"log": "half a li')  # a supervisor killed in the middle of a write
    cap = Capture()
    containers.logs("cut", follow=True, streams=cap.streams, poll=0.02)  # returns: the writer is gone
    assert bytes(cap.out) == b""


# --- rm ---------------------------------------------------------------------------------------------


def test_rm_leaves_nothing_behind() -> None:
    rec, _ = run("-d --name doomed -m 64m --pids-limit 30 --network none busybox sleep 1000")
    assert rec is not None
    cid, pid = rec.id, int(rec.pid or 0)
    found = leftovers(cid)
    assert any(f.startswith("mount ") for f in found) and any(f.startswith("cgroup ") for f in found)
    with pytest.raises(containers.JailshellError, match="cannot remove a running container"):
        containers.rm("doomed")
    containers.rm("doomed", force=True)
    assert not process_alive(pid, rec.starttime)
    assert leftovers(cid) == []
    with pytest.raises(containers.JailshellError, match="no such container"):
        containers.resolve("doomed")


def test_run_rm_removes_the_container_when_it_exits() -> None:
    spec = dockerline.parse("run --rm --network none busybox true").spec
    assert spec is not None
    creation = Creation(spec)
    assert containers.run(creation) == 0
    assert leftovers(creation.layout.id) == []


def test_bridge_network_is_removed_with_the_container() -> None:
    rec, _ = run("-d --name netted busybox sleep 1000")
    assert rec is not None and rec.network and rec.network["address"]
    out = containers.exec_output("netted", ["ip", "-4", "addr", "show", "eth0"])
    assert rec.network["address"] in out.stdout
    assert any(name.startswith(f"jsh{rec.id[:6]}") for name in os.listdir("/sys/class/net"))
    containers.rm("netted", force=True)
    assert leftovers(rec.id) == []


def test_prune_removes_what_is_not_running() -> None:
    run("--name done1 --network none busybox true")
    run("-d --name alive --network none busybox sleep 1000")
    report = containers.prune()
    assert report.removed == ["done1"]
    assert [r.name for r in containers.records()] == ["alive"]


# --- create / start -------------------------------------------------------------------------------


def test_create_sets_the_jail_up_and_start_execs_the_command() -> None:
    spec = dockerline.parse("create --name made -h made --network none busybox sh -c "
                            "'echo pid=$$ host=$(hostname); cat /proc/1/cmdline; true'").spec
    assert spec is not None
    rec = containers.create(spec)
    assert rec.state == "created"
    pid = int(rec.pid or 0)
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "jsh-holder"  # waiting, not the command yet
    for kind in ("mnt", "uts", "ipc", "net", "pid", "cgroup"):
        assert ns_inode(pid, kind) != ns_inode(os.getpid(), kind), kind
    assert "bin" in os.listdir(f"/proc/{pid}/root") and "tests" not in os.listdir(f"/proc/{pid}/root")
    cap = Capture()
    assert containers.start("made", attach=True, streams=cap.streams) == 0
    first, cmdline = bytes(cap.out).split(b"\n", 1)
    assert first == b"pid=1 host=made"
    assert cmdline.startswith(b"sh\0-c\0echo pid=$$")  # PID 1 is the command itself
    assert containers.resolve("made").state == "exited"


def test_start_after_stop_keeps_the_writable_layer() -> None:
    cap = Capture()
    rec, code = run("--name keeper --network none busybox sh -c 'cat /root/count 2>/dev/null; "
                    "echo again >> /root/count'", cap)
    assert code == 0 and bytes(cap.out) == b""
    again = Capture()
    assert containers.start("keeper", attach=True, streams=again.streams) == 0
    assert bytes(again.out) == b"again\n"
    assert rec is not None and (rec.layout.upper / "root/count").read_text() == "again\nagain\n"


# --- exec, export, limits -----------------------------------------------------------------------------


def test_exec_enters_the_running_container() -> None:
    rec, _ = run("-d --name host1 -h host1 --network none busybox sleep 1000")
    assert rec is not None
    res = containers.exec_output("host1", ["sh", "-c", "hostname; echo $$; tr '\\0' ' ' < /proc/1/cmdline"])
    assert res.stdout.split("\n")[:3] == ["host1", res.stdout.split("\n")[1], "sleep 1000 "]
    assert int(res.stdout.split("\n")[1]) > 1
    assert containers.exec_output("host1", ["sh", "-c", "exit 3"]).returncode == 3
    assert containers.exec_output("host1", ["id", "-u"], user="nobody").stdout.strip() == "65534"
    assert containers.exec_output("host1", ["pwd"], workdir="/tmp").stdout.strip() == "/tmp"


def test_user_workdir_env_and_a_read_only_volume(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("from the host\n")
    # Anybody may write there: only the read-only bind mount keeps nobody from it.
    tmp_path.chmod(0o777)
    cap = Capture()
    rec, code = run(f"--name who --network none -u nobody -w /srv/app -e A=1 -v {tmp_path}:/data:ro busybox sh -c "
                    "'id -u; id -g; pwd; echo $A $HOME; cat /data/f; touch /data/x || echo read-only'", cap)
    assert code == 0, bytes(cap.err)
    assert bytes(cap.out).decode().splitlines() == ["65534", "65534", "/srv/app", "1 /nonexistent", "from the host",
                                                    "read-only"]
    assert not (tmp_path / "x").exists()
    assert rec is not None
    with pytest.raises(containers.JailshellError, match="unable to find user nosuch") as info:
        run("--rm --name nouser --network none -u nosuch busybox true")
    assert info.value.status == 127


def test_export_is_a_flat_tar_of_the_container_root() -> None:
    rec, code = run("--name exported --network none busybox sh -c 'echo data > /root/file; rm /bin/vi'")
    assert code == 0
    buf = io.BytesIO()
    count = containers.export("exported", buf)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tf:
        names = tf.getnames()
        member = tf.extractfile("root/file")
        assert member is not None and member.read() == b"data\n"
    assert len(names) == count
    assert "bin/sh" in names and "bin/vi" not in names  # the layer's whiteout hides the image's file
    assert not any(n.startswith("proc/") for n in names)
    assert rec is not None and leftovers(rec.id) == [f"dir {rec.layout.data}"]  # the temporary mount is gone


def test_limits_are_written_to_the_container_s_cgroup() -> None:
    rec, _ = run("-d --name limited -m 64m --pids-limit 20 --cpus 0.5 --network none busybox sleep 1000")
    assert rec is not None and rec.cgroup_procs
    dirs = {Path(p).parent for p in rec.cgroup_procs}
    values = {}
    for d in dirs:
        for name in ("memory.limit_in_bytes", "memory.max", "pids.max", "cpu.cfs_quota_us", "cpu.max"):
            if (d / name).exists():
                values[name] = (d / name).read_text().split()
        assert str(rec.pid) in (d / "cgroup.procs").read_text().split()
    assert values.get("memory.limit_in_bytes", values.get("memory.max")) == ["67108864"]
    assert values["pids.max"] == ["20"]
    assert values.get("cpu.cfs_quota_us", values.get("cpu.max", [""])[:1]) == ["50000"]
    # Inside, the cgroup namespace makes the container's cgroup the root.
    assert all(line.endswith(":/") for line in
               containers.exec_output("limited", ["cat", "/proc/self/cgroup"]).stdout.split())


def test_the_supervisor_killed_the_container_dies_and_cleanup_removes_it() -> None:
    rec, _ = run("-d --name orphan --network none busybox sleep 1000")
    assert rec is not None and rec.supervisor
    os.kill(rec.supervisor, signal.SIGKILL)
    assert wait_for(lambda: not process_alive(int(rec.supervisor or 0), rec.supervisor_start))
    assert wait_for(lambda: not process_alive(int(rec.pid or 0), rec.starttime))  # PDEATHSIG, via the holder
    assert containers.resolve("orphan").state == "dead"
    from jailshell.engine.cleanup import cleanup

    report = cleanup()
    assert f"mount {rec.layout.rootfs}" in report.removed
    containers.rm("orphan")
    assert leftovers(rec.id) == []


def test_the_cli_runs_attached_and_returns_the_exit_code() -> None:
    res = cli("docker", "-q", "run", "--rm", "--network", "none", "busybox", "sh", "-c", "echo hi; echo ho >&2; exit 3")
    assert (res.returncode, res.stdout, res.stderr) == (3, "hi\n", "ho\n")
    res = cli("docker", "run", "--rm", "--network", "none", "busybox", "true")
    assert res.returncode == 0 and " 1. image busybox:latest" in res.stderr  # the plan, then the run


def test_the_lifecycle_as_jailshell_subcommands(tmp_path: Path) -> None:
    made = cli("create", "--name", "cycle", "--network", "none", "busybox", "sh", "-c",
               "echo started; trap 'echo bye; exit 4' TERM; while :; do sleep 0.05; done")
    assert made.returncode == 0, made.stderr
    cid = made.stdout.strip()
    assert "the last step, exec, is `start`" in made.stderr  # the plan, without its exec
    assert cli("ps", "-a", "-q").stdout.split() == [cid] and cli("ps", "-q").stdout == ""
    assert cli("start", "cycle").returncode == 0
    assert wait_for(lambda: containers.catches(int(containers.resolve("cycle").pid or 0), signal.SIGTERM))
    assert "Up " in cli("ps").stdout
    stopped = cli("stop", "-t", "5", "cycle")
    assert stopped.returncode == 0 and "stopped by SIGTERM" in stopped.stderr and "exit code 4" in stopped.stderr
    assert cli("logs", "cycle").stdout == "started\nbye\n"
    assert "Exited (4)" in cli("ps", "-a").stdout
    tar = tmp_path / "cycle.tar"
    assert cli("docker", "export", "-o", str(tar), "cycle").returncode == 0
    with tarfile.open(tar) as tf:
        assert "bin/busybox" in tf.getnames()
    images = cli("docker", "image", "ls").stdout.splitlines()
    assert images[0].split() == ["REPOSITORY", "TAG", "SIZE", "SOURCE"] and images[1].startswith("busybox")
    assert "docker commands: run, create" in cli("docker", "version").stdout
    pruned = cli("prune", "-f")
    assert pruned.returncode == 0 and pruned.stdout.splitlines() == ["Deleted Containers:", "cycle"]
    assert leftovers(cid) == []


def test_system_prune_finishes_off_a_container_whose_supervisor_was_killed() -> None:
    rec, _ = run("-d --name wreck --network none busybox sleep 1000")
    assert rec is not None and rec.supervisor
    os.kill(rec.supervisor, signal.SIGKILL)
    assert wait_for(lambda: containers.resolve("wreck").state == "dead")
    assert any(f.startswith("mount ") for f in leftovers(rec.id))  # what the dead supervisor left
    res = cli("docker", "system", "prune", "-f")
    assert res.returncode == 0, res.stderr
    assert "wreck" in res.stdout.splitlines()
    assert leftovers(rec.id) == []

