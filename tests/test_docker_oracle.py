"""The oracle: the same docker command line, run by a real Docker engine and by jailshell.

A dockerd of this session's own (temporary data root, exec root and socket,
no bridge, no iptables) gets the very image jailshell runs (`docker import`
of the embedded busybox rootfs, under the same name), then each command line
runs both ways and what the kernel shows of the two containers is compared:
namespaces, PID 1, hostname, mounts, /dev, environment, exit codes, signals,
cgroup limits. Where jailshell differs on purpose, BY_DESIGN says why, and
the test checks that the difference is really there (so the list stays true).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from jailshell.engine import containers
from jailshell.engine.images.store import ImageStore
from jailshell.engine.journal import process_alive
from jailshell.engine.namespaces import NAMESPACES, ns_inode

pytestmark = [pytest.mark.docker, pytest.mark.root]

IMAGE = "busybox:latest"  # the same name on both sides: the command lines are the same words
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

BY_DESIGN = {
    "mount /etc/hostname, /etc/hosts, /etc/resolv.conf":
        "docker bind-mounts files it writes for name resolution; jailshell writes none into the jail",
    "mount /sys/fs/cgroup":
        "docker mounts the cgroup hierarchies (read-only) into the container; jailshell leaves /sys/fs/cgroup "
        "as the image has it: the cgroup is looked at from the host, which is the lesson",
    "cgroup namespace on cgroup v1":
        "docker's default on a cgroup v1 host is --cgroupns=host; jailshell always gives a new one, as docker "
        "does on cgroup v2",
    "capabilities":
        "docker drops to its default capability set; jailshell leaves root in the jail root's full set "
        "(it teaches namespaces, mounts and cgroups, not capabilities)",
    "seccomp":
        "docker applies its default seccomp profile; jailshell applies none",
}

PROBE = ("hostname; ls /sys/class/net; "
         "awk '{for (i = 7; i <= NF; i++) if ($i == \"-\") print $5, $6, $(i + 1)}' /proc/self/mountinfo | sort; "
         "echo DEV $(ls -A /dev); env | sort; echo PID $$")


@dataclass
class Engine:
    client: str
    env: dict[str, str]
    root: Path

    def __call__(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([self.client, *args], capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: exit {res.returncode}: {res.stderr}")
        return res

    def pid(self, cid: str) -> int:
        return int(self("inspect", "-f", "{{.State.Pid}}", cid).stdout)

    def exit_code(self, cid: str) -> int:
        return int(self("inspect", "-f", "{{.State.ExitCode}}", cid).stdout)


def ours(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jailshell", "docker", "-q", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})


def _install_docker() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"],
                 ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker.io"]):
        res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {res.stderr.strip()[-500:]}")


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"the Docker oracle cannot run: {reason}")
    pytest.skip(f"the Docker oracle cannot run: {reason}")


@pytest.fixture(scope="module")
def docker() -> Iterator[Engine]:
    if shutil.which("dockerd") is None:
        try:
            _install_docker()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
            _unavailable(f"docker.io is not installed and apt-get could not install it ({exc})")
    dockerd = shutil.which("dockerd")
    # The client of the same package (another `docker` may come first on PATH).
    client = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else shutil.which("docker")
    if dockerd is None or client is None:
        _unavailable("no dockerd or docker client after installing docker.io")
    assert dockerd is not None and client is not None
    root = Path(tempfile.mkdtemp(prefix="jsh-oracle-"))
    sock = root / "docker.sock"
    parent = f"/jsh-oracle-{secrets.token_hex(3)}"  # its own cgroup parent, removed at the end
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}", "DOCKER_CONFIG": str(root / "client")}
    log = open(root / "dockerd.log", "wb")  # noqa: SIM115 - open while dockerd runs
    proc = subprocess.Popen(
        [dockerd, "--data-root", str(root / "data"), "--exec-root", str(root / "exec"), "--pidfile",
         str(root / "docker.pid"), "-H", f"unix://{sock}", "--bridge=none", "--iptables=false", "--ip6tables=false",
         "--cgroup-parent", parent],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    engine = Engine(client, env, root)
    try:
        deadline = time.monotonic() + 30
        while engine("info", check=False, timeout=10).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (root / "dockerd.log").read_text(errors="replace").strip().splitlines()[-5:]
                _unavailable("dockerd did not start: " + " | ".join(tail))
            time.sleep(0.2)
        rootfs = ImageStore().resolve(IMAGE).rootfs
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE)
        res = subprocess.run([client, "import", "-c", 'CMD ["/bin/sh"]', "-c",
                              "ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin", "-", IMAGE],
                             stdin=tar.stdout, capture_output=True, text=True, env=env, timeout=120)
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait()
        assert res.returncode == 0, res.stderr
        yield engine
    finally:
        left = engine("ps", "-aq", check=False).stdout.split()
        if left:
            engine("rm", "-f", *left, check=False)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        with open("/proc/self/mountinfo") as fh:
            under = sorted({line.split()[4] for line in fh if line.split()[4].startswith(str(root))}, reverse=True)
        for target in under:
            subprocess.run(["umount", "-l", target], check=False)
        shutil.rmtree(root, ignore_errors=True)
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            with contextlib.suppress(OSError):
                (hierarchy / parent.lstrip("/")).rmdir()


@pytest.fixture(autouse=True)
def clean_ours() -> Iterator[None]:
    yield
    for rec in containers.records():
        containers.rm(rec.id, force=True)


def both_detached(engine: Engine, *args: str) -> tuple[str, int, containers.Record]:
    """`run -d ARGS` both ways: docker's id and PID 1, and our record."""
    d = engine("run", "-d", *args)
    o = ours("run", "-d", *args)
    assert o.returncode == 0, o.stderr
    return d.stdout.strip(), engine.pid(d.stdout.strip()), containers.resolve(o.stdout.strip())


def isolated(pid: int) -> set[str]:
    me = os.getpid()
    return {ns.kind for ns in NAMESPACES if ns_inode(pid, ns) != ns_inode(me, ns)}


def nspid(pid: int) -> list[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(x) for x in line.split()[1:]]
    return []


def test_namespaces_and_pid_1(docker: Engine) -> None:
    cid, dpid, rec = both_detached(docker, "--network", "none", IMAGE, "sleep", "1000")
    opid = int(rec.pid or 0)
    cgroupns = docker("inspect", "-f", "{{.HostConfig.CgroupnsMode}}", cid).stdout.strip()
    expected = {"cgroup"} if cgroupns == "host" else set()  # BY_DESIGN["cgroup namespace on cgroup v1"]
    assert isolated(dpid) ^ isolated(opid) == expected
    assert isolated(opid) == {"mnt", "uts", "ipc", "net", "pid", "cgroup"}
    assert Path(f"/proc/{dpid}/cmdline").read_bytes() == Path(f"/proc/{opid}/cmdline").read_bytes() == \
        b"sleep\x001000\x00"
    assert nspid(dpid)[-1] == nspid(opid)[-1] == 1
    # Default hostname: the short container id, both ways.
    assert docker("exec", cid, "hostname").stdout.strip() == cid[:12]
    assert containers.exec_output(rec.id, ["hostname"]).stdout.strip() == rec.id[:12]


def test_what_a_process_sees_inside(docker: Engine) -> None:
    args = ("run", "--rm", "--network", "none", "-h", "oracle", "-e", "GREETING=hi", IMAGE, "sh", "-c", PROBE)
    d, o = docker(*args), ours(*args)
    assert o.returncode == d.returncode == 0, o.stderr
    dl, ol = d.stdout.splitlines(), o.stdout.splitlines()
    docker_only = {"/etc/hostname", "/etc/hosts", "/etc/resolv.conf"}  # BY_DESIGN["mount /etc/..."]
    dmounts = {x for x in dl if x.startswith("/")}
    omounts = {x for x in ol if x.startswith("/")}
    extra = {m for m in dmounts - omounts if m.split()[0] in docker_only or m.split()[0].startswith("/sys/fs/cgroup")}
    assert {m.split()[0] for m in extra} >= docker_only  # the difference is real
    assert dmounts - extra == omounts
    for point, opts in (("/proc", "rw,nosuid,nodev,noexec"), ("/sys", "ro,nosuid,nodev,noexec"),
                        ("/dev", "rw,nosuid"), ("/dev/pts", "rw,nosuid,noexec"), ("/dev/shm", "rw,nosuid,nodev,noexec"),
                        ("/proc/sys", "ro,nosuid,nodev,noexec")):
        assert any(m.split()[0] == point and m.split()[1].startswith(opts) for m in omounts), point
    rest = [x for x in ol if not x.startswith("/")]
    assert rest == [x for x in dl if not x.startswith("/")]  # hostname, interfaces, /dev, env, PID 1
    assert "oracle" in rest and "lo" in rest and "PID 1" in rest and "GREETING=hi" in rest


@pytest.mark.parametrize("user", [(), ("-u", "nobody"), ("-u", "1234"), ("-u", "nobody:root")])
def test_user_groups_workdir_and_environment(docker: Engine, user: tuple[str, ...]) -> None:
    args = ("run", "--rm", "--network", "none", *user, "-w", "/srv/app", "-e", "A=1", IMAGE, "sh", "-c",
            "id; pwd; ls -ld /srv/app; env | sort")
    d, o = docker(*args), ours(*args)
    assert o.returncode == d.returncode == 0, o.stderr

    def seen(out: str) -> list[str]:  # HOSTNAME is each container's own id
        return [x for x in out.splitlines() if not x.startswith("HOSTNAME=")]

    assert seen(o.stdout) == seen(d.stdout)
    # docker exec runs as the container's user, in its groups, too.
    cid, _pid, rec = both_detached(docker, "--network", "none", *user, IMAGE, "sleep", "1000")
    assert containers.exec_output(rec.id, ["id"]).stdout == docker("exec", cid, "id").stdout


def test_exit_codes(docker: Engine) -> None:
    for args in (("sh", "-c", "exit 42"), ("true",), ("no-such-command",)):
        line = ("run", "--rm", "--network", "none", IMAGE, *args)
        assert docker(*line, check=False).returncode == ours(*line).returncode, args
    assert ours("run", "--rm", "--network", "none", IMAGE, "no-such-command").returncode == 127


def test_stop_and_signals(docker: Engine) -> None:
    cid, dpid, rec = both_detached(docker, "--network", "none", IMAGE, "sleep", "1000")
    # PID 1 has no SIGTERM handler: the kernel drops it, from both engines.
    docker("kill", "-s", "TERM", cid)
    assert ours("kill", "-s", "TERM", rec.id).returncode == 0
    time.sleep(0.3)
    assert process_alive(dpid, None) and process_alive(int(rec.pid or 0), rec.starttime)
    t0 = time.monotonic()
    docker("stop", "-t", "1", cid)
    d_took = time.monotonic() - t0
    t0 = time.monotonic()
    assert ours("stop", "-t", "1", rec.id).returncode == 0
    o_took = time.monotonic() - t0
    assert d_took >= 1.0 and o_took >= 1.0  # SIGKILL after the timeout, both ways
    assert docker.exit_code(cid) == containers.resolve(rec.id).exit_code == 137
    # With a handler, SIGTERM ends it at once, with the handler's exit code.
    line = ("--network", "none", IMAGE, "sh", "-c", "trap 'exit 5' TERM; while :; do sleep 0.05; done")
    cid, dpid, rec = both_detached(docker, *line)
    # Stopped only once both shells have their trap (a handler for SIGTERM) in place.
    deadline = time.monotonic() + 10
    while not (containers.catches(dpid, signal.SIGTERM) and containers.catches(int(rec.pid or 0), signal.SIGTERM)):
        assert time.monotonic() < deadline, "the trap was never set"
        time.sleep(0.02)
    docker("stop", "-t", "5", cid)
    assert ours("stop", "-t", "5", rec.id).returncode == 0
    assert docker.exit_code(cid) == containers.resolve(rec.id).exit_code == 5


def _hierarchy(ctrls: str) -> Path | None:
    """The directory of one /proc/PID/cgroup line's hierarchy."""
    if not ctrls:  # the cgroup v2 line
        return next((p for p in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))
                     if (p / "cgroup.controllers").exists()), None)
    for name in (ctrls, *ctrls.split(",")):
        d = Path("/sys/fs/cgroup") / name.removeprefix("name=")
        if d.is_dir():
            return d
    return None


def _cgroup_files(pid: int) -> dict[str, str]:
    """Limit files of the process's cgroups, as the host sees them."""
    out = {}
    names = ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.max", "memory.swap.max", "pids.max",
             "cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.max")
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        base = _hierarchy(ctrls)
        for name in names if base is not None else ():
            f = base / path.lstrip("/") / name  # type: ignore[operator]
            if f.exists():
                out[name] = f.read_text().strip()
    return out


def test_cgroup_limits_written(docker: Engine) -> None:
    _cid, dpid, rec = both_detached(docker, "--network", "none", "-m", "64m", "--pids-limit", "20", "--cpus", "0.5",
                                    IMAGE, "sleep", "1000")
    dfiles, ofiles = _cgroup_files(dpid), _cgroup_files(int(rec.pid or 0))
    common = set(dfiles) & set(ofiles)
    assert {"pids.max"} <= common and ({"memory.limit_in_bytes"} <= common or {"memory.max"} <= common)
    assert {k: dfiles[k] for k in common} == {k: ofiles[k] for k in common}
    assert ofiles.get("memory.limit_in_bytes", ofiles.get("memory.max")) == str(64 << 20)


def test_the_differences_by_design_are_real(docker: Engine) -> None:
    line = ("run", "--rm", "--network", "none", IMAGE, "grep", "-E", "^(CapEff|Seccomp):", "/proc/self/status")
    d = dict(x.split(":\t") for x in docker(*line).stdout.splitlines())
    o = dict(x.split(":\t") for x in ours(*line).stdout.splitlines())
    assert d["CapEff"] != o["CapEff"] and int(o["CapEff"], 16) > int(d["CapEff"], 16)  # BY_DESIGN["capabilities"]
    assert (d["Seccomp"], o["Seccomp"]) == ("2", "0")  # BY_DESIGN["seccomp"]
