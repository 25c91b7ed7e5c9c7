"""The plain `jailshell run` (jailshell/engine/runfast.py run_plain): the
same container as run.run(), the journal module's format and guarantees,
and none of the heavy imports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jailshell import paths
from jailshell.engine import journal, runfast
from jailshell.engine.images.store import Image, ImageStore
from jailshell.engine.namespaces import BY_KIND

pytestmark = pytest.mark.root

REPO = str(Path(__file__).resolve().parents[2])

# What a container looks like from inside: PID, hostname length, env, cwd,
# mounts with their options, interfaces up, /dev, capabilities and signals.
PROBE = ("echo pid=$$ $(hostname | wc -c); pwd; env | sort; cut -d' ' -f5,6 /proc/self/mountinfo;"
         " ip link | grep -c UP; ls /dev; grep -E '^(Cap|Sig)' /proc/self/status; exit 3")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jailshell", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": REPO})


def test_the_tables_it_copies_agree_with_the_engine() -> None:
    assert {kind: ns.flag for kind, ns in BY_KIND.items()} == runfast.NS_FLAGS
    assert runfast.run_dir() == str(paths.run_dir())
    assert runfast.data_dir() == str(paths.data_dir())
    image = ImageStore().resolve()
    assert os.path.join(runfast.data_dir(), "images", *runfast.DEFAULT_REF) == str(image.path)
    assert Image("x", "y", Path("/")).env() == [runfast.DEFAULT_PATH]
    assert runfast.process_starttime(os.getpid()) == journal.process_starttime(os.getpid())


def test_plain_and_full_path_make_the_same_container() -> None:
    ImageStore().resolve()  # the plain path needs the image built
    plain = cli("run", "--rm", "--", "sh", "-c", PROBE)
    full = cli("run", "--rm", "--image", "busybox", "--", "sh", "-c", PROBE)  # --image: run.run()
    assert plain.returncode == full.returncode == 3, plain.stderr + full.stderr
    assert plain.stdout == full.stdout
    assert "pid=1 13\n" in plain.stdout and "/proc/kcore" not in plain.stdout


def test_plain_run_imports_nothing_heavy() -> None:
    ImageStore().resolve()
    code = ("import sys\n"
            "from jailshell.cli import main\n"
            "status = main(['run', '--rm', '--', '/bin/true'])\n"
            "heavy = {'argparse', 'dataclasses', 'inspect', 'pathlib', 'typing', 'shutil', 'socket',\n"
            "         'jailshell.engine.run', 'jailshell.engine.journal', 'jailshell.engine.images.store'}\n"
            "print(status, sorted(heavy & set(sys.modules)))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": REPO})
    assert res.stdout.strip() == "0 []", res.stdout + res.stderr


def test_journal_lines_are_the_journal_modules(tmp_path: Path) -> None:
    j = runfast.MiniJournal("run-test")
    d = j.record("dir", path=str(tmp_path / "c"))
    p = j.record("process", pid=os.getpid(), starttime=runfast.process_starttime(os.getpid()))
    loaded = journal.Journal.load(Path(j.path))
    assert [(e.id, e.kind, e.fields) for e in loaded.pending()] == [
        (d, "dir", {"path": str(tmp_path / "c")}),
        (p, "process", {"pid": os.getpid(), "starttime": journal.process_starttime(os.getpid())}),
    ]
    assert journal.owner_of(Path(j.path)) == (os.getpid(), journal.process_starttime(os.getpid()))
    j.release(p)
    assert [e.id for e in journal.Journal.load(Path(j.path)).pending()] == [d]
    j.release(d)
    assert not os.path.exists(j.path)


def test_what_the_container_wrote_is_removed_too() -> None:
    ImageStore().resolve()
    res = cli("run", "--rm", "--", "sh", "-c", "mkdir -p /a/b; echo x > /a/b/f; ln -s / /a/l; chmod 000 /a")
    assert res.returncode == 0, res.stderr
    containers = paths.run_dir() / "containers"
    assert not containers.exists() or not any(containers.iterdir())
    assert not list((paths.run_dir() / "journal").glob("*-run-*.jsonl"))


def test_kill_9_of_jailshell_then_cleanup() -> None:
    """The container dies with jailshell (PR_SET_PDEATHSIG); its directory, journaled, goes with cleanup."""
    ImageStore().resolve()
    proc = subprocess.Popen([sys.executable, "-m", "jailshell", "run", "--rm", "--", "sleep", "60"],
                            env={**os.environ, "PYTHONPATH": REPO})
    containers = paths.run_dir() / "containers"
    deadline = time.monotonic() + 10
    while not (containers.is_dir() and any(containers.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # the container is running sleep by now
    cdir = next(containers.iterdir())
    pending = [e for p in journal.journals() for e in journal.Journal.load(p).pending()]
    assert {e.kind for e in pending} == {"dir", "process"}
    sleepers = [e.fields["pid"] for e in pending if e.kind == "process"]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 3
    while any(os.path.exists(f"/proc/{pid}") for pid in sleepers) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in sleepers), "the container outlived jailshell"
    res = cli("cleanup")
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"dir {cdir}" in res.stdout
    assert not cdir.exists()
    assert not [e for p in journal.journals() for e in journal.Journal.load(p).pending()]


def test_options_it_does_not_take_go_to_run_run() -> None:
    base = {"image": None, "rm": True, "userns": False, "volumes": [], "network": "none", "publish": [], "links": [],
            "memory": None, "pids_limit": None, "cpus": None}
    assert runfast.plain_enough(**base)  # type: ignore[arg-type]
    for key, value in (("image", "busybox"), ("rm", False), ("userns", True), ("volumes", ["/a:/b"]),
                       ("network", "bridge"), ("publish", ["1:2"]), ("links", ["a"]), ("memory", "64m"),
                       ("pids_limit", "5"), ("cpus", "1")):
        assert not runfast.plain_enough(**{**base, key: value}), key  # type: ignore[arg-type]


def test_no_middle_process_only_when_no_other_thread_could_fork_into_the_container() -> None:
    import threading

    kinds = list(runfast.DEFAULT_NAMESPACES)
    assert runfast.can_fork_into_new_pid_ns(kinds) == (len(os.listdir("/proc/self/task")) == 1)
    assert not runfast.can_fork_into_new_pid_ns(["user", *kinds])
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert not runfast.can_fork_into_new_pid_ns(kinds)
    finally:
        stop.set()
        t.join()


def test_with_another_thread_alive_the_middle_process_is_kept(tmp_path: Path) -> None:
    import threading

    from jailshell.engine.run import RunSpec, run

    out = tmp_path / "out"
    out.touch()
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        res = run(RunSpec(argv=["sh", "-c", "echo $$ $PPID > /out/out; exit 5"], volumes=[(str(tmp_path), "/out", False)]))
    finally:
        stop.set()
        t.join()
    assert res.status == 5
    assert out.read_text() == "1 0\n"


def test_without_the_image_built_it_leaves_the_run_to_run_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JAILSHELL_DATA_DIR", str(tmp_path / "empty"))
    assert runfast.run_plain(["/bin/true"], env=[], workdir=None, hostname=None, name=None) is None
    assert not (tmp_path / "empty").exists()
