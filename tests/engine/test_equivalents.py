"""Truth in teaching: the raw commands jailshell shows, run with util-linux,
do what the engine did. Two jails are brought to the same state, one by the
engine, one by pasting the shown commands into a shell; their kernel state
must match."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from jailshell.engine import equivalents as eq
from jailshell.engine import inspect
from jailshell.engine.images.store import ImageStore
from jailshell.engine.jail import Jail
from jailshell.engine.namespaces import NAMESPACES, ns_inode
from jailshell.engine.run import RunSpec, namespaces_for

pytestmark = pytest.mark.root


def sh(cmd: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def twins() -> Iterator[tuple[Jail, Jail]]:
    a, b = Jail.create(), Jail.create()
    try:
        yield a, b
    finally:
        a.close()
        b.close()


def mount_shape(j: Jail) -> list[tuple[str, str, str]]:
    """The jail's mount table without the parts that differ by nature (ids, the overlay's dirs)."""
    root = str(j.rootfs)
    return sorted((m.target.replace(root, "ROOT"), m.fstype, m.options)
                  for m in inspect.mounts_of(j.pid) if m.fstype != "overlay")


def test_unshare_command_isolates_the_same_namespaces(twins: tuple[Jail, Jail]) -> None:
    jail, _ = twins
    kinds = ["uts", "pid", "mnt", "ipc", "net", "cgroup"]
    for kind in kinds:
        jail.unshare(kind)
    shown = eq.for_unshare(jail, "cgroup").raw[0]
    assert shown.startswith("unshare --uts --pid --mount --ipc --net --cgroup --fork")
    # Run what is shown, with a probe instead of the interactive shell.
    probe = shown.rsplit(" sh", 1)[0] + " sh -c 'for n in " + " ".join(n.proc_name for n in NAMESPACES) + \
        "; do readlink /proc/self/ns/$n; done; echo $$'"
    res = sh(probe)
    assert res.returncode == 0, res.stderr
    *links, pid1 = res.stdout.split()
    me = os.getpid()
    for ns, link in zip(NAMESPACES, links, strict=True):
        raw_isolated = link != os.readlink(f"/proc/{me}/ns/{ns.proc_name}")
        engine_isolated = ns_inode(jail.pid, ns) != ns_inode(me, ns)
        assert raw_isolated == engine_isolated, ns.kind
    assert pid1 == "1"


def test_hostname_mount_and_pivot_commands_target_the_live_jail(twins: tuple[Jail, Jail]) -> None:
    engine, raw = twins
    for j in twins:
        for kind in ("uts", "pid", "mnt"):
            j.unshare(kind)
    engine.sethostname("twin")
    res = sh(eq.for_sethostname(raw, "twin").raw[0])
    assert res.returncode == 0, res.stderr
    assert raw.info()["hostname"] == engine.info()["hostname"] == "twin"

    for what in ("proc", "tmp", "dev", "devpts", "shm"):
        shown = eq.for_mount(raw, what).raw
        engine.mount(what)
        for cmd in shown:
            res = sh(cmd)
            assert res.returncode == 0, f"{cmd}: {res.stderr}"
    assert mount_shape(raw) == mount_shape(engine)
    # /dev holds the same nodes either way.
    assert sorted(os.listdir(f"/proc/{raw.pid}/root{raw.rootfs}/dev")) == \
        sorted(os.listdir(f"/proc/{engine.pid}/root{engine.rootfs}/dev"))

    engine.pivot_root()
    shown = eq.for_pivot_root(raw).raw[0]
    res = sh(shown)
    assert res.returncode == 0, f"{shown}: {res.stderr}"
    assert mount_shape(raw) == mount_shape(engine)
    # The holder's root moved too: pivot_root applies to every process whose root was the old one.
    raw.state.root_mode = "pivot"
    assert raw.exec(["cat", "/etc/os-release"]).stdout == engine.exec(["cat", "/etc/os-release"]).stdout
    # And proc, mounted by the raw command, shows the jail's own PIDs.
    assert raw.exec(["sh", "-c", "cat /proc/1/comm"]).stdout.strip() == "jsh-holder"


def test_exec_command_enters_the_jail(twins: tuple[Jail, Jail]) -> None:
    jail, _ = twins
    for kind in ("uts", "pid", "mnt", "net"):
        jail.unshare(kind)
    jail.sethostname("entered")
    jail.mount("proc")
    jail.pivot_root()
    shown = eq.for_exec(jail, ["sh", "-c", "hostname; echo $$; ls /sys/class/net 2>/dev/null | wc -l"]).raw[0]
    res = sh(shown)
    assert res.returncode == 0, res.stderr
    host_side = res.stdout.split()
    engine_side = jail.exec(["sh", "-c", "hostname; echo $$; ls /sys/class/net 2>/dev/null | wc -l"]).stdout.split()
    assert host_side[0] == engine_side[0] == "entered"
    assert int(host_side[1]) > 1 and int(engine_side[1]) > 1  # inside the jail's PID namespace, not PID 1


def test_run_command_line_builds_the_same_container() -> None:
    image = ImageStore().resolve()
    root = Path(tempfile.mkdtemp(prefix="jsh-eqroot-"))
    try:
        shutil.copytree(image.rootfs, root, symlinks=True, dirs_exist_ok=True)
        spec = RunSpec(argv=["sh", "-c", "echo $$; hostname; grep -E ' /(proc|sys|dev|tmp|dev/pts|dev/shm) ' "
                             "/proc/self/mountinfo | awk '{print $5}' | sort | tr '\\n' ' '"],
                       hostname="same")
        shown = eq.for_run(spec, namespaces_for(spec), str(root), image.ref).raw[0]
        res = sh(shown)
        assert res.returncode == 0, f"{shown}\n{res.stderr}"
        raw_out = res.stdout.splitlines()

        from jailshell.engine.run import run

        out_dir = Path(tempfile.mkdtemp(prefix="jsh-eqout-"))
        try:
            spec.argv = ["sh", "-c", f"{{ {spec.argv[2]}; }} > /o/out"]
            spec.volumes = [(str(out_dir), "/o", False)]
            assert run(spec).status == 0
            engine_out = (out_dir / "out").read_text().splitlines()
        finally:
            shutil.rmtree(out_dir)
        assert raw_out[0] == engine_out[0] == "1"
        assert raw_out[1] == engine_out[1] == "same"
        assert raw_out[2].split() == [m for m in engine_out[2].split() if m != "/o"]
    finally:
        with open("/proc/self/mountinfo") as fh:
            assert str(root) not in fh.read()
        shutil.rmtree(root)
