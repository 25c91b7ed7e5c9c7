"""The plan's raw commands, pasted into a root shell, build the same container.

The plan shown for `docker run` is run twice: once by the engine, once as the
util-linux/busybox commands it lists (host commands in a shell that then
execs the unshare step; every later command inside the shell it starts).
What a process sees from inside both containers must be the same: with the
default mounts, a hostname, an environment, and a volume (`-v`).

The lines shown for `docker stop` and `docker kill` (kill -TERM PID; sleep N;
kill -KILL PID) are run by hand on a second container like the first: it must
end as the engine's did (exit code, what PID 1 printed, its process and
cgroups gone)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jailshell.engine import cli_docker, containers, dockerline
from jailshell.engine.containers import Creation, Streams
from jailshell.engine.images.store import ImageStore
from jailshell.engine.journal import undo_dir, undo_mount

pytestmark = pytest.mark.root

# What a process sees of its container: PID, hostname, interfaces, cgroups,
# the mount table (point, options, type), /dev, environment, namespaces' owners.
PROBE = ("echo pid=$$; hostname; ls /sys/class/net; sort /proc/self/cgroup; "
         "awk '{for (i = 7; i <= NF; i++) if ($i == \"-\") print $5, $6, $(i + 1)}' /proc/self/mountinfo | sort; "
         "ls -A /dev | tr '\\n' ' '; echo; env | sort; "
         "cat /proc/1/cmdline | tr '\\0' ' '; echo; echo end")
LINE = f"run --rm --network none -h byhand -e GREETING=hi busybox sh -c {shlex.quote(PROBE)}"
# A volume, as lesson 9 shows it: a host directory bound into the root. The
# probe writes through it; both containers must leave the same file on the host.
VOLUME_LINE = ("run --rm --network none -h byhand -v DIR:/data busybox sh -c "
               + shlex.quote("echo written > /data/volume.txt; " + PROBE))


def by_engine(line: str = LINE) -> str:
    spec = dockerline.parse(line).spec
    assert spec is not None
    out = bytearray()
    code = containers.run(Creation(spec), streams=Streams(out=out.extend, err=out.extend))
    assert code == 0, out.decode()
    return out.decode()


def by_hand_script(plan: dockerline.Plan, cgroup_lines: list[str] | None = None) -> str:
    """The plan's shown commands as one shell script: the host's lines in this
    shell (which becomes the container: $$), then unshare, then the jail's
    lines in the new namespaces. cgroup_lines replace the cgroup step's."""
    host: list[str] = []
    jail: list[str] = []
    unshare = None
    for step in plan.steps:
        if step.key == "unshare":
            unshare = step.raw[0]
        elif unshare is None:
            if step.key == "cgroup" and cgroup_lines is not None:
                host += cgroup_lines
            else:
                host += [cmd.replace(dockerline.PID_PLACEHOLDER, "$$") for cmd in step.raw]
        else:
            assert step.where == "jail", step.key
            jail += step.raw
    assert unshare is not None and unshare.endswith(" sh")
    inside = "set -e\n" + "\n".join(jail)
    # The host commands' own output (the image step lists the image) is not the container's.
    return ("set -e\nexec 3>&1 >/dev/null\n" + "\n".join(host)
            + f"\nexec >&3 3>&-\nexec {unshare} -c {shlex.quote(inside)}\n")


def by_hand(plan: dockerline.Plan) -> str:
    res = subprocess.run(["sh", "-c", by_hand_script(plan)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def _by_hand_of(line: str) -> tuple[str, dockerline.Plan]:
    """LINE's plan, run by hand; its output and the plan."""
    spec = dockerline.parse(line).spec
    assert spec is not None
    layout = dockerline.Layout.of(containers.new_id())
    image = ImageStore().resolve(spec.run.image)
    plan = dockerline.plan_for(spec, layout, dockerline.ImageFacts.from_image(image))
    cgroups = [Path(c.split(" ", 2)[2]) for s in plan.steps if s.key == "cgroup" for c in s.raw
               if c.startswith("mkdir -p ")]
    try:
        hand = by_hand(plan)
    finally:
        with contextlib.suppress(FileNotFoundError):
            undo_mount({"target": str(layout.rootfs)})
        undo_dir({"path": str(layout.run)})
        undo_dir({"path": str(layout.data)})
        for cg in cgroups:
            with contextlib.suppress(FileNotFoundError, OSError):
                os.rmdir(cg)
            with contextlib.suppress(OSError):
                os.rmdir(cg.parent)  # the shared `jailshell` parent, when it is empty
    return hand, plan


def _same(engine: str, hand: str) -> None:
    assert hand.endswith("end\n") and engine.endswith("end\n")
    assert hand.splitlines()[0] == "pid=1" and hand.splitlines()[1] == "byhand"
    assert "/sys ro,nosuid,nodev,noexec,relatime sysfs" in hand
    assert hand.splitlines() == engine.splitlines(), "\n".join(__import__("difflib").unified_diff(
        engine.splitlines(), hand.splitlines(), "engine", "by hand", lineterm=""))


def test_the_plan_s_commands_build_the_same_container_by_hand() -> None:
    engine = by_engine()
    hand, _plan = _by_hand_of(LINE)
    _same(engine, hand)


def test_the_volume_lines_bind_the_host_directory_by_hand(tmp_path: Path) -> None:
    """-v DIR:/data as lesson 9 shows it (mkdir, mount --bind in the jail): the
    same mount table inside, and what the container writes lands in DIR."""
    line = VOLUME_LINE.replace("DIR:/data", f"{tmp_path}:/data", 1)
    engine = by_engine(line)
    assert (tmp_path / "volume.txt").read_text() == "written\n"
    (tmp_path / "volume.txt").unlink()
    hand, plan = _by_hand_of(line)
    volumes = next(s for s in plan.steps if s.key == "volumes")
    assert any(r.startswith("mount --bind ") and str(tmp_path) in r for r in volumes.raw), volumes.raw
    assert (tmp_path / "volume.txt").read_text() == "written\n"
    assert any(row.startswith("/data ") for row in hand.splitlines()), hand
    _same(engine, hand)


# -- docker stop and docker kill, by hand -----------------------------------------------------------------

TRAPS = "sh -c 'trap \"echo got SIGTERM, bye; exit 0\" TERM; echo serving; while true; do sleep 1; done'"


@pytest.fixture()
def two_containers() -> Iterator[list[str]]:
    """Names for the engine's container and the one ended by hand; removed after."""
    names = [f"byhand-engine-{os.getpid()}", f"byhand-raw-{os.getpid()}"]
    yield names
    for name in names:
        with contextlib.suppress(Exception):
            containers.rm(name, force=True)


def _docker(line: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = cli_docker.execute(dockerline.parse(line), cli_docker.Output(out, err, quiet=True))
    return status, out.getvalue(), err.getvalue()


def _logs(name: str) -> str:
    got = bytearray()
    containers.logs(name, streams=Streams(out=got.extend, err=got.extend))
    return got.decode()


def _cgroups_of(cid: str) -> list[str]:
    found = []
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        found += [f"{root}/{d}".replace(cid, "ID") for d in dirs if d == cid]
        dirs[:] = [d for d in dirs if root.count("/") < 5]
    return sorted(found)


def _pid_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return stat[stat.rindex(b")") + 2:][:1] == b"Z"


@pytest.mark.parametrize(("command", "verb", "code", "said"), [
    (TRAPS, "stop -t 3", 0, "got SIGTERM, bye"),  # lesson 9, step stop: the handler ends it at once
    ("sleep 1000", "stop -t 1", 137, None),  # step stop-vs-kill: SIGTERM is dropped, SIGKILL after the timeout
    ("sleep 1000", "kill", 137, None),  # its task: SIGKILL at once
])
def test_stop_and_kill_lines_by_hand_end_the_container_as_the_engine_does(
        command: str, verb: str, code: int, said: str | None, two_containers: list[str]) -> None:
    engine_name, raw_name = two_containers
    for name in two_containers:
        status, _out, err = _docker(f"run -d --name {name} --network none busybox {command}")
        assert status == 0, err
    engine, raw = containers.resolve(engine_name), containers.resolve(raw_name)
    assert engine.pid and raw.pid and engine.state == raw.state == "running"
    if said:  # its trap is set once it has printed
        deadline = time.monotonic() + 10
        while not all("serving" in _logs(n) for n in two_containers) and time.monotonic() < deadline:
            time.sleep(0.05)
    status, _out, err = _docker(f"{verb} {engine_name}")
    assert status == 0, err
    # What the engine showed, by hand, on the other container's PID 1 as the host sees it.
    if verb.startswith("stop"):
        m = re.search(r"by hand: (.*)$", err, re.M)
        assert m, err
        shown = m.group(1)
    else:
        shown = next(line.removeprefix("jailshell: ") for line in err.splitlines() if "kill -" in line)
    assert re.search(rf"kill -(TERM|KILL) {engine.pid}(?![0-9])", shown), shown
    cmd = re.sub(rf"(?<![0-9]){engine.pid}(?![0-9])", str(raw.pid), shown)
    res = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert res.returncode in (0, 1), res.stderr  # the last kill fails harmlessly when SIGTERM was enough
    deadline = time.monotonic() + 10
    while containers.resolve(raw_name).state == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    after = {n: containers.resolve(n) for n in two_containers}
    assert [(r.state, r.exit_code) for r in after.values()] == [("exited", code)] * 2, after
    assert _pid_gone(engine.pid) and _pid_gone(raw.pid)
    assert _cgroups_of(engine.id) == _cgroups_of(raw.id)
    logs = {n: _logs(n) for n in two_containers}
    assert logs[engine_name] == logs[raw_name], logs
    if said:
        assert said in logs[raw_name], logs
