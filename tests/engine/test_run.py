"""`jailshell run`: all steps at once, for real, and the CLI's errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from jailshell.engine.images.store import ImageStore
from jailshell.engine.run import RunSpec, run
from tests.unprivileged import as_nobody

pytestmark = pytest.mark.root

JAILSHELL = [sys.executable, "-m", "jailshell"]


def run_out(*argv: str, hostname: str | None = None) -> tuple[int, str]:
    """Run a command in a container, capturing its output through a bind-mounted file."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "out"
        out.touch()
        script = "{ " + " ".join(argv) + "; } > /out/out 2>&1"
        res = run(RunSpec(argv=["sh", "-c", script], hostname=hostname, volumes=[(d, "/out", False)]))
        return res.status, out.read_text()


def test_true_and_exit_status() -> None:
    assert run(RunSpec(argv=["/bin/true"])).status == 0
    assert run(RunSpec(argv=["sh", "-c", "exit 42"])).status == 42



def test_pid_1_cannot_be_killed_from_inside() -> None:
    # The kernel drops signals a PID namespace's init has no handler for when
    # they come from inside, even SIGKILL: sh as PID 1 survives `kill -9 $$`.
    status, out = run_out("kill -9 $$; echo survived")
    assert (status, out) == (0, "survived\n")


def test_pid_1_hostname_network_and_mounts_inside() -> None:
    status, out = run_out("echo pid=$$; hostname; cat /sys/class/net/*/operstate | wc -l; ls /sys/class/net;"
                          " grep -E ' (/proc|/sys|/dev|/dev/pts|/dev/shm|/tmp) ' /proc/self/mountinfo | awk '{print $5, $6}'",
                          hostname="boxy")
    assert status == 0, out
    lines = out.splitlines()
    assert lines[0] == "pid=1"
    assert lines[1] == "boxy"
    assert lines[3] == "lo"  # --network none: only loopback
    mounts = dict(line.split(" ", 1) for line in lines[4:])
    assert mounts["/sys"].startswith("ro,")
    assert set(mounts) >= {"/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/tmp"}


def test_host_sees_no_mount_and_no_directory_after() -> None:
    with open("/proc/self/mountinfo") as fh:
        before = fh.read()
    run(RunSpec(argv=["sh", "-c", "mount -t tmpfs x /mnt"]))
    with open("/proc/self/mountinfo") as fh:
        assert fh.read() == before
    containers = Path(os.environ["JAILSHELL_RUN_DIR"]) / "containers"
    assert not containers.exists() or not any(containers.iterdir())


def test_without_rm_the_container_layer_is_kept() -> None:
    res = run(RunSpec(argv=["sh", "-c", "echo kept > /root/f"], rm=False))
    kept = Path(os.environ["JAILSHELL_DATA_DIR"]) / "containers" / res.container_id
    try:
        assert (kept / "upper/root/f").read_text() == "kept\n"
        assert json.loads((kept / "container.json").read_text())["image"] == "busybox:latest"
    finally:
        subprocess.run(["rm", "-rf", str(kept)], check=True)


@pytest.fixture
def world_tmp() -> Iterator[Path]:
    """A temp dir an unprivileged user can reach (pytest's tmp_path is root-only)."""
    d = Path(tempfile.mkdtemp(prefix="jsh-rootless-"))
    os.chmod(d, 0o755)
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=True)


def test_rootless_run_as_an_unprivileged_user(world_tmp: Path) -> None:
    """The same command as uid 65534 with no capabilities: a user namespace gives it the rest."""
    tmp_path = world_tmp
    image = ImageStore().resolve()
    data = tmp_path / "data"
    subprocess.run(["cp", "-a", str(image.path.parent.parent.parent), str(data)], check=True)
    rundir = tmp_path / "run"
    out = tmp_path / "out"
    for p in (tmp_path, rundir, out):
        p.mkdir(exist_ok=True)
        os.chmod(p, 0o777)
    subprocess.run(["chmod", "-R", "a+rX", str(data)], check=True)
    status, output = as_nobody(
        lambda: run(RunSpec(argv=["sh", "-c", "id -u > /out/id; cat /proc/self/uid_map > /out/map; hostname > /out/h"],
                            hostname="rootless", volumes=[(str(out), "/out", False)])).status,
        env={"JAILSHELL_RUN_DIR": str(rundir), "JAILSHELL_DATA_DIR": str(data)},
    )
    assert status == 0, output
    assert (out / "id").read_text().strip() == "0"
    assert (out / "map").read_text().split() == ["0", "65534", "1"]
    assert (out / "h").read_text().strip() == "rootless"


def cli(*args: str, user: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*JAILSHELL, *args], capture_output=True, text=True, timeout=60,
                          user=user, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})


def test_cli_run_returns_the_command_status() -> None:
    res = cli("run", "--rm", "--", "sh", "-c", "echo hi; exit 7")
    assert res.returncode == 7
    assert res.stdout == "hi\n"


@pytest.mark.parametrize(("args", "status", "message"), [
    (("run", "--rm", "--image", "nosuch:1", "--", "true"), 1, "unknown image 'nosuch:1'"),
    (("run", "--rm", "--", "no-such-cmd"), 127, "no-such-cmd: command not found in image busybox:latest"),
    (("run", "--rm", "-v", "relative:/x", "--", "true"), 2, "invalid volume"),
    (("run", "--rm", "-e", "NOEQUALS", "--", "true"), 2, "invalid environment variable"),
])
def test_cli_errors_are_one_clear_line(args: tuple[str, ...], status: int, message: str) -> None:
    res = cli(*args)
    assert res.returncode == status
    assert message in res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("jailshell: error: ")


def test_run_path_imports_no_ui_or_network_modules() -> None:
    code = (
        "import sys\n"
        "from jailshell.cli import main\n"
        "status = main(['run', '--rm', '--', '/bin/true'])\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'prompt_toolkit', 'rich', 'pygments', 'pyroute2', "
        "'yaml', 'psutil'})\n"
        "print(status, heavy)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "0 []", res.stdout + res.stderr


def _jailshell_cgroups() -> list[str]:
    out = []
    for root, dirs, _ in os.walk("/sys/fs/cgroup"):
        out += [os.path.join(root, d) for d in dirs if "jailshell" in d]
        dirs[:] = [d for d in dirs if root == "/sys/fs/cgroup" or "jailshell" in d]
    return out


def test_memory_limit_oom_kills_and_is_reported() -> None:
    before = _jailshell_cgroups()
    res = run(RunSpec(argv=["sh", "-c", "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"],
                      memory="32m"))
    assert res.status == 137  # SIGKILL from the OOM killer
    assert res.oom_killed
    assert res.cgroup_stats.memory_max == 32 * 1024 * 1024
    assert _jailshell_cgroups() == before


def test_pids_limit_stops_forks_inside() -> None:
    status, out = run_out("for i in 1 2 3 4 5 6 7 8; do sleep 2 & done 2>/dev/null; sleep 0.2; "
                          "ls /proc | grep -c '^[0-9]'", )
    assert status == 0 and int(out.split()[-1]) >= 9  # unlimited: sh + 8 sleeps + ls/grep
    with tempfile.TemporaryDirectory() as d:
        res = run(RunSpec(argv=["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 2 & done 2>/o/err; kill $(jobs -p); true"],
                          pids_limit="4", volumes=[(d, "/o", False)]))
        assert "can't fork" in (Path(d) / "err").read_text()
    assert res.cgroup_stats.pids_denied and res.cgroup_stats.pids_denied > 0


@pytest.mark.parametrize(("flag", "value"), [("memory", "lots"), ("pids_limit", "-3"), ("cpus", "0")])
def test_invalid_limits_create_nothing(flag: str, value: str) -> None:
    from jailshell.errors import InvalidInput

    before = _jailshell_cgroups()
    with pytest.raises(InvalidInput):
        run(RunSpec(argv=["true"], **{flag: value}))
    assert _jailshell_cgroups() == before
    containers = Path(os.environ["JAILSHELL_RUN_DIR"]) / "containers"
    assert not containers.exists() or not any(containers.iterdir())
