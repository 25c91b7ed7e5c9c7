"""The live jail against the real kernel: each step does what it says, and only that."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jailshell.engine import inspect
from jailshell.engine.jail import Jail
from jailshell.engine.namespaces import NAMESPACES, ns_inode
from jailshell.errors import JailshellError

pytestmark = pytest.mark.root


@pytest.fixture
def jail() -> Iterator[Jail]:
    j = Jail.create()
    try:
        yield j
    finally:
        j.close()


def full(j: Jail, hostname: str = "jail") -> Jail:
    for kind in ("uts", "pid", "mnt", "ipc", "net", "cgroup"):
        j.unshare(kind)
    j.sethostname(hostname)
    for what in ("proc", "sys", "tmp", "dev", "devpts", "shm"):
        j.mount(what)
    j.pivot_root()
    j.mask()
    return j


def test_each_namespace_changes_after_its_step_and_only_then(jail: Jail) -> None:
    me = os.getpid()
    for ns in NAMESPACES:
        assert ns_inode(jail.pid, ns) == ns_inode(me, ns), f"{ns.kind} isolated before any step"
    done: set[str] = set()
    for kind in ("uts", "pid", "mnt", "ipc", "net", "cgroup", "user"):
        jail.unshare(kind)
        done.add(kind)
        for ns in NAMESPACES:
            differs = ns_inode(jail.pid, ns) != ns_inode(me, ns)
            assert differs == (ns.kind in done), f"after unshare {kind}: {ns.kind} differs={differs}"


def test_pid_namespace_makes_the_holder_pid_1_and_hides_host_processes(jail: Jail) -> None:
    jail.unshare("pid")
    jail.unshare("mnt")
    jail.mount("proc")
    jail.chroot()
    res = jail.exec(["sh", "-c", "echo $$; ls /proc | grep -c '^[0-9]'; cat /proc/1/comm"])
    lines = res.stdout.split()
    assert res.returncode == 0, res.stderr
    assert lines[2] == "jsh-holder"  # PID 1 is the jail's holder
    assert int(lines[1]) <= 4  # holder, sh, ls/grep: no host process is visible
    assert str(os.getpid()) not in res.stdout.split("\n")[1]
    snap = inspect.snapshot(jail)
    assert snap.processes[0].jail_pid == 1


def test_hostname_inside_differs_and_host_is_unchanged(jail: Jail) -> None:
    host = socket.gethostname()
    with pytest.raises(JailshellError, match="rename the host"):
        jail.sethostname("nope")
    assert socket.gethostname() == host
    jail.unshare("uts")
    jail.sethostname("inside")
    assert jail.exec(["hostname"]).stdout.strip() == "inside"
    assert socket.gethostname() == host
    assert jail.info()["hostname"] == "inside"


def _host_mount_points() -> set[str]:
    with open("/proc/self/mountinfo") as fh:
        return {line.split()[4] for line in fh}


def test_mounts_inside_never_reach_the_host_and_are_private(jail: Jail) -> None:
    before = _host_mount_points()
    with pytest.raises(JailshellError, match="would appear on the host"):
        jail.mount("tmp")
    full(jail)
    assert _host_mount_points() == before
    with open(f"/proc/{jail.pid}/mountinfo") as fh:
        jail_mounts = fh.read()
    assert "shared:" not in jail_mounts
    assert " /proc " in jail_mounts and " /dev/pts " in jail_mounts
    # A mount made by a process inside stays inside too.
    res = jail.exec(["sh", "-c", "mkdir -p /mnt/x && mount -t tmpfs t /mnt/x && grep -c /mnt/x /proc/self/mountinfo"])
    assert res.stdout.strip() == "1", res.stderr
    assert _host_mount_points() == before


def test_pivot_root_leaves_no_way_back_to_the_host(jail: Jail) -> None:
    full(jail)
    marker = f"/tmp/jsh-host-marker-{os.getpid()}"
    open(marker, "w").close()
    try:
        res = jail.exec(["sh", "-c", f"ls {marker}; cd /../../..; pwd; ls /; cat /proc/1/mountinfo | wc -l"])
        assert "No such file" in res.stderr
        assert res.stdout.split()[0] == "/"
        # The chroot escape that works after chroot does not after pivot_root.
        escape = jail.chroot_escape()
        assert not escape.get("escaped") or marker.rsplit("/", 1)[1] not in escape.get("root_listing", [])
        assert not os.path.exists(f"/proc/{jail.pid}/root{marker}")
    finally:
        os.unlink(marker)


def test_chroot_alone_can_be_escaped_by_root(jail: Jail) -> None:
    jail.chroot()
    escape = jail.chroot_escape()
    assert escape["escaped"] is True
    assert "etc" in escape["root_listing"] and "proc" in escape["root_listing"]
    # The host's root has something the image does not: the directory holding this jail's run state.
    assert os.path.basename(os.environ["JAILSHELL_RUN_DIR"].split("/")[1]) in escape["root_listing"]


def test_host_kernel_files_are_masked(jail: Jail) -> None:
    full(jail)
    res = jail.exec(["sh", "-c", "wc -c < /proc/keys; echo 1 > /proc/sys/kernel/domainname; echo rc=$?"])
    assert res.stdout.split()[0] == "0"  # /proc/keys is /dev/null now
    assert "rc=1" in res.stdout  # /proc/sys is read-only
    assert "/proc/keys" in jail.state.masked


def test_pid_1_reaps_orphaned_zombies(jail: Jail) -> None:
    full(jail)
    # sh forks a child and exits at once: the grandchild is orphaned to PID 1 and,
    # when it exits, only PID 1 can reap it.
    jail.exec(["sh", "-c", "(sleep 0.2 &) ; exit 0"])
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        states = []
        for p in inspect.processes_in_pidns(jail.pid)[0]:
            try:
                with open(f"/proc/{p.host_pid}/stat") as fh:
                    states.append(fh.read().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:
                pass
        if len(states) == 1:
            break
        time.sleep(0.05)
    assert states == ["S"], f"processes left in the jail: {states}"


def test_no_descriptor_of_jailshell_leaks_into_the_jail(jail: Jail) -> None:
    with open(__file__):  # an fd jailshell holds open
        full(jail)
        res = jail.exec(["sh", "-c", "ls -l /proc/self/fd/ /proc/1/fd/"])
        assert __file__ not in res.stdout
        assert "test_jail" not in res.stdout
        fds = sorted(int(x) for x in os.listdir(f"/proc/{jail.pid}/fd"))
        targets = [os.readlink(f"/proc/{jail.pid}/fd/{fd}") for fd in fds]
        assert all(t.startswith(("socket:", "pipe:", "/dev/null")) for t in targets), targets


def test_jail_dies_when_its_parent_is_killed() -> None:
    code = (
        "import os, sys, time\n"
        "from jailshell.engine.jail import Jail\n"
        "j = Jail.create()\n"
        "j.unshare('pid'); j.unshare('uts')\n"
        "print(j.holder_pids[0], j.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pids = [int(x) for x in proc.stdout.readline().split()]
    try:
        assert all(os.path.exists(f"/proc/{p}") for p in pids)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") for p in pids):
        time.sleep(0.02)
    assert not any(os.path.exists(f"/proc/{p}") for p in pids)
    # The overlay mount and directory it left are for `jailshell cleanup` (tested in test_cleanup).
    from jailshell.engine.cleanup import cleanup

    cleanup()


def test_user_namespace_maps_root_and_is_shown(jail: Jail) -> None:
    jail.unshare("user")
    with open(f"/proc/{jail.pid}/uid_map") as fh:
        assert fh.read().split() == ["0", str(os.getuid()), "1"]
    snap = inspect.snapshot(jail)
    assert snap.uid_map == f"0 {os.getuid()} 1"


def test_mount_after_user_namespace_explains_the_ownership(jail: Jail) -> None:
    jail.unshare("mnt")
    jail.unshare("user")
    with pytest.raises(JailshellError) as info:
        jail.mount("tmp")
    assert "EPERM" in info.value.message
    assert info.value.hint and "user namespace" in info.value.hint
    jail.unshare("mnt")  # a mount namespace owned by the jail's user namespace
    jail.mount("tmp")


def test_refuses_host_changing_steps_without_their_namespace(jail: Jail) -> None:
    with pytest.raises(JailshellError, match="every process on the host"):
        jail.pivot_root()
    assert os.readlink(f"/proc/{jail.pid}/root") == "/"


def test_snapshot_diff_shows_only_what_the_step_changed(jail: Jail) -> None:
    before = inspect.snapshot(jail)
    jail.unshare("uts")
    jail.sethostname("diffme")
    after = inspect.snapshot(jail)
    changes = inspect.diff(before, after)
    sections = {(c.section, c.key) for c in changes}
    assert ("namespaces", "uts") in sections
    assert ("hostname", "jail") in sections
    assert not any(s == "namespaces" and k != "uts" for s, k in sections)


def test_shell_command_not_found_is_a_clear_error(jail: Jail) -> None:
    full(jail)
    with pytest.raises(JailshellError, match="command not found"):
        jail.exec(["no-such-command"])


def test_closing_twice_and_killed_holder(jail: Jail) -> None:
    os.kill(jail.pid, signal.SIGKILL)
    time.sleep(0.05)
    with pytest.raises(JailshellError, match="holder"):
        jail.unshare("uts")
    jail.close()
    jail.close()
    assert not os.path.exists(jail.dir)


def test_rootless_live_jail_user_namespace_first(tmp_path: object) -> None:
    """As uid 65534: every step is refused until the user namespace, then all work."""
    from tests.unprivileged import as_nobody, nobody_state

    with nobody_state() as (base, env):
        def scenario() -> int:
            j = Jail.create()
            try:
                try:
                    j.unshare("uts")
                    return 10
                except JailshellError as exc:
                    assert exc.hint and "unshare user" in exc.hint
                for kind in ("user", "uts", "pid", "mnt", "ipc", "net"):
                    j.unshare(kind)
                j.sethostname("rootless")
                for what in ("proc", "sys", "tmp", "dev"):
                    j.mount(what)
                j.pivot_root()
                res = j.exec(["sh", "-c", "id -u; hostname; cat /proc/1/uid_map; echo hi > /dev/null && echo devok"])
                print(res.stdout, res.stderr)
                assert res.stdout.split() == ["0", "rootless", "0", "65534", "1", "devok"]
            finally:
                j.close()
            return 0

        status, out = as_nobody(scenario, env=env)
        assert status == 0, out
        assert not any((base / "run" / "jails").iterdir())


def test_an_upper_directory_on_overlayfs_is_named_as_the_reason(tmp_path: Path) -> None:
    # jailshell inside a container: its data directory is on an overlay, which overlayfs refuses
    # as an upper layer. The kernel says only EINVAL; the hint says why.
    from jailshell.engine import steps
    from jailshell.engine import syscalls as sc

    assert steps.fs_type("/proc/self") == "proc"
    for sub in ("lower", "upper", "work", "merged", "inner"):
        (tmp_path / sub).mkdir()
    sc.mount("overlay", str(tmp_path / "merged"), "overlay", 0,
             f"lowerdir={tmp_path / 'lower'},upperdir={tmp_path / 'upper'},workdir={tmp_path / 'work'}")
    try:
        (tmp_path / "merged/upper").mkdir()
        assert steps.fs_type(str(tmp_path / "merged/upper")) == "overlay"
        assert "itself on overlayfs" in steps.overlay_upper_hint(str(tmp_path / "merged/upper"))
        assert "itself on overlayfs" not in steps.overlay_upper_hint(str(tmp_path / "upper"))
    finally:
        sc.umount2(str(tmp_path / "merged"), sc.MNT_DETACH)
