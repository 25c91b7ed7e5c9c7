"""The tools jailshell is held against: finding them, installing the missing
ones, and giving them all the same root filesystem.

- unshare(1) and bwrap run straight on a directory.
- runc and crun run an OCI bundle made from that directory with `runc spec`
  (their defaults: pid, net, ipc, uts and mnt namespaces, a read-only root,
  masked /proc paths, a cgroup per container), changed only to run
  /bin/true without a terminal.
- docker gets the directory as an image (`docker import`). A daemon that is
  already running is used as it is; otherwise one is started for the run in
  a private data root, without a bridge or firewall rules, and stopped after.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.common import BenchError, Context

# crun refuses a v1/v2 hybrid host whose v2 hierarchy has any controller
# (`cgroups in hybrid mode not supported`), even if the container uses none.
CRUN_HYBRID_REFUSAL = "cgroups in hybrid mode not supported"


def which(name: str, *extra_dirs: str) -> str | None:
    for d in extra_dirs:
        if os.access(os.path.join(d, name), os.X_OK):
            return os.path.join(d, name)
    return shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := os.path.join(d, name), os.X_OK)), None)


def version(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = (res.stdout or res.stderr).strip().splitlines()
    return lines[0].strip() if lines else "?"


def apt_install(ctx: Context, package: str) -> bool:
    """Install one Debian package (the full benchmark only: --quick never installs)."""
    if ctx.quick or os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    ctx.log(f"installing {package} (apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
    res = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", package], env=env,
                         capture_output=True, text=True, check=False)
    if res.returncode != 0:
        ctx.log(f"apt-get install {package} failed: {res.stderr.strip()[-300:]}")
    return res.returncode == 0


def make_rootfs_copy(image_rootfs: Path, dest: Path) -> Path:
    """One copy of the image's root for every peer (runc may create mount
    points in it; the engine's image must stay untouched)."""
    shutil.copytree(image_rootfs, dest, symlinks=True)
    return dest


def make_bundle(runtime: str, rootfs: Path, bundle: Path) -> Path:
    """An OCI bundle: `RUNTIME spec`, then terminal off and args /bin/true."""
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "rootfs").symlink_to(rootfs)
    res = subprocess.run([runtime, "spec"], cwd=bundle, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise BenchError(f"{Path(runtime).name} spec failed: {res.stderr.strip()[-200:]}")
    cfg_path = bundle / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["process"]["terminal"] = False
    cfg["process"]["args"] = ["/bin/true"]
    cfg["root"]["path"] = str(rootfs)
    cfg_path.write_text(json.dumps(cfg, indent=2))
    return bundle


def hidden_v2_hierarchy() -> None:
    """In the calling (forked, single-threaded) process: a private mount
    namespace where the empty-but-for-hugetlb v2 hierarchy of a hybrid host is
    not mounted, so crun sees a plain cgroup v1 host, which it supports."""
    from jailshell.engine import syscalls as sc

    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    sc.umount2("/sys/fs/cgroup/unified", sc.MNT_DETACH)


def is_hybrid_with_v2_controllers() -> bool:
    try:
        return bool(Path("/sys/fs/cgroup/unified/cgroup.controllers").read_text().strip())
    except OSError:
        return False


# -- docker ---------------------------------------------------------------------------


@dataclass
class Docker:
    client: str
    env: dict[str, str]  # DOCKER_HOST for a daemon of our own
    server_version: str
    started_by_us: bool

    def cmd(self, *args: str) -> list[str]:
        return [self.client, *args]

    def run(self, *args: str, input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(self.cmd(*args), env=self.env, input=input, capture_output=True, check=False,
                              timeout=timeout)


def _docker_info(client: str, env: dict[str, str]) -> str | None:
    try:
        res = subprocess.run([client, "version", "--format", "{{.Server.Version}}"], env=env, capture_output=True,
                             text=True, check=False, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 and res.stdout.strip() else None


@contextlib.contextmanager
def docker_daemon(ctx: Context) -> Iterator[Docker]:
    """A docker daemon for the benchmark: the running one, or our own."""
    client = which("docker", "/usr/bin")  # Debian's client matches Debian's daemon
    if client:
        running = _docker_info(client, dict(os.environ))
        if running:
            yield Docker(client, dict(os.environ), running, started_by_us=False)
            return
    dockerd = which("dockerd")
    if not dockerd and apt_install(ctx, "docker.io"):
        dockerd = which("dockerd")
        client = which("docker", "/usr/bin")
    if not dockerd or not client:
        raise BenchError("no docker daemon here and docker.io could not be installed" if not ctx.quick
                         else "skipped in --quick (no daemon is started or installed)")
    home = ctx.work / "docker"
    home.mkdir()
    sock = home / "docker.sock"
    cgroup_parent = f"jsh-bench-docker-{os.getpid()}"
    argv = [dockerd, "--data-root", str(home / "data"), "--exec-root", str(home / "exec"),
            "--pidfile", str(home / "dockerd.pid"), "-H", f"unix://{sock}",
            # Nothing on the host's network: no docker0, no iptables rules.
            "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
            "--cgroup-parent", f"/{cgroup_parent}",
            "--containerd-namespace", "jsh-bench", "--containerd-plugins-namespace", "jsh-bench-plugins"]
    ctx.log("starting dockerd for this run")
    log = open(home / "dockerd.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}"}
    try:
        deadline = time.monotonic() + 60
        server = None
        while time.monotonic() < deadline and proc.poll() is None:
            server = _docker_info(client, env)
            if server:
                break
            time.sleep(0.25)
        if not server:
            tail = (home / "dockerd.log").read_text(errors="replace").strip().splitlines()[-1:]
            raise BenchError("dockerd did not start: " + (tail[0][:200] if tail else "no log"))
        yield Docker(client, env, server, started_by_us=True)
    finally:
        _stop(proc)
        log.close()
        _remove_cgroups(cgroup_parent)
        _remove_tree_without_mounts(home)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _remove_cgroups(name: str) -> None:
    root = Path("/sys/fs/cgroup")
    for ctrl in root.iterdir():
        target = ctrl / name
        if target.is_dir():
            # Children first (docker may leave empty per-container groups).
            for sub in sorted((p for p in target.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                target.rmdir()


def _remove_tree_without_mounts(path: Path) -> None:
    """rm -r, but first detach anything still mounted below path, so the
    removal can never reach through a mount into another tree."""
    from jailshell.engine import syscalls as sc

    prefix = str(path) + "/"
    with open("/proc/self/mountinfo") as fh:
        targets = [line.split()[4] for line in fh if line.split()[4].startswith(prefix)]
    for target in sorted(targets, key=len, reverse=True):
        with contextlib.suppress(OSError):
            sc.umount2(target, sc.MNT_DETACH)
    shutil.rmtree(path, ignore_errors=True)
