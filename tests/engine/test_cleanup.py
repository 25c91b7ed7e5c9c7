"""kill -9 of a jailshell holding a jail, then `jailshell cleanup`: the host is clean."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jailshell.engine import journal
from tests.unprivileged import as_nobody

pytestmark = pytest.mark.root

HOLD = (
    "import time\n"
    "from jailshell.engine.jail import Jail\n"
    "j = Jail.create()\n"
    "for k in ('uts', 'pid', 'mnt', 'net'): j.unshare(k)\n"
    "j.mount('proc'); j.mount('tmp')\n"
    "print(j.pid, j.rootfs, j.dir, flush=True)\n"
    "time.sleep(120)\n"
)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jailshell", *args], capture_output=True, text=True, timeout=60)


def _mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as fh:
        return {line.split()[4] for line in fh}


def test_kill_9_then_cleanup_leaves_the_host_clean() -> None:
    before = _mount_points()
    proc = subprocess.Popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pid, rootfs, jail_dir = proc.stdout.readline().split()
    assert rootfs in _mount_points()  # the jail's overlay root is mounted on the host
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 3
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not os.path.exists(f"/proc/{pid}"), "the jail outlived jailshell"
    assert rootfs in _mount_points() and Path(jail_dir).exists()  # what the crash left

    res = cli("cleanup")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"mount {rootfs}" in res.stdout
    assert f"dir {jail_dir}" in res.stdout
    assert _mount_points() == before
    assert not Path(jail_dir).exists()
    assert not journal.journals()

    again = cli("cleanup")  # idempotent
    assert again.returncode == 0
    assert "nothing to clean up" in again.stdout


def test_cleanup_finds_leftovers_with_no_journal() -> None:
    stray = Path(os.environ["JAILSHELL_RUN_DIR"]) / "jails" / "deadbeef"
    (stray / "rootfs").mkdir(parents=True)
    res = cli("cleanup")
    assert res.returncode == 0
    assert f"dir {stray}" in res.stdout
    assert not stray.exists()


def test_cleanup_leaves_a_running_jailshell_alone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        pid, rootfs, _ = proc.stdout.readline().split()
        res = cli("cleanup")
        assert "still running" in res.stdout
        assert rootfs in _mount_points() and os.path.exists(f"/proc/{pid}")
    finally:
        proc.kill()
        proc.wait()
        cli("cleanup")


def test_a_second_concurrent_cleanup_is_refused() -> None:
    run_dir = Path(os.environ["JAILSHELL_RUN_DIR"])
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / ".cleanup.lock", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        res = cli("cleanup")
        assert res.returncode == 1
        assert res.stderr.strip().splitlines()[0] == "jailshell: error: another `jailshell cleanup` is running"
        assert "Traceback" not in res.stderr
    finally:
        os.close(fd)


def test_cleanup_and_run_need_root_and_say_so() -> None:
    from jailshell.cli import main

    status, out = as_nobody(lambda: main(["cleanup"]))
    assert status == 1
    assert out.splitlines()[0] == "jailshell: error: cleanup (unmounting, removing cgroups and interfaces) needs root (CAP_SYS_ADMIN)"
    assert "hint: run jailshell with sudo" in out
    assert "Traceback" not in out


def test_a_zombie_owner_is_dead_and_its_process_entry_is_reaped() -> None:
    # A killed owner stays in /proc as a zombie until its parent reaps it; for
    # cleanup (and leases) it is dead. undo of a process entry reaps our own zombie.
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    start = None
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
        start = int(data[data.rindex(b")") + 2:].split()[19])
        if data[data.rindex(b")") + 2:][:1] == b"Z":
            break
        time.sleep(0.005)
    assert journal.process_starttime(pid) == start  # still in /proc
    assert not journal.process_alive(pid, start)
    journal.undo_process({"pid": pid, "starttime": start})
    assert journal.process_starttime(pid) is None  # reaped
    assert journal.process_alive(os.getpid(), journal.process_starttime(os.getpid()))
