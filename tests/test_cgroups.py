"""cgroups that really limit, on the real kernel of whatever machine runs this.

The same file runs on the development host (a v1/v2 hybrid) and inside a
pure cgroup v2 VM (tests/kernel/run-v2.sh, which sets JAILSHELL_EXPECT_CGROUP=v2
so a VM that booted the wrong way fails instead of testing v1 twice).
Processes are started on the host and put in the cgroup before they exec
(like `echo $$ > cgroup.procs; exec ...`), so each demonstration measures
the cgroup alone.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jailshell.engine import cgroups
from jailshell.engine.cgroup_layout import CGROUP2_SUPER_MAGIC, detect, fs_magic
from jailshell.engine.cgroup_limits import (
    Limits,
    format_size,
    parse_cpus,
    parse_limits,
    parse_memory,
    parse_pids,
    parse_size,
)
from jailshell.engine.cgroups import Cgroup
from jailshell.engine.journal import Journal
from jailshell.errors import InvalidInput, JailshellError
from tests.unprivileged import as_nobody

MiB = 1 << 20
NCPU = os.cpu_count() or 1


def new_name() -> str:
    return "t" + secrets.token_hex(4)


def read(path: str | Path) -> str:
    return Path(path).read_text().strip()


# --- parsing: no root needed ---------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [
    ("64M", 64 * MiB), ("64m", 64 * MiB), ("1g", 1 << 30), ("1G", 1 << 30), ("67108864", 67108864),
    ("512k", 512 * 1024), ("1.5g", 3 << 29), ("64MiB", 64 * MiB), ("64mb", 64 * MiB), (67108864, 67108864),
])
def test_sizes_in_docker_units(text: str | int, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize(("text", "words"), [
    ("lots", "not a size"), ("-64M", "negative"), ("0", "more than 0"), ("512k", "smallest"),
    ("64 M B", "not a size"), ("1e9", "not a size"), ("", "not a size"), ("99999999t", "larger"),
])
def test_bad_memory_is_a_clear_error(text: str, words: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        parse_memory(text)
    assert words in exc.value.message and exc.value.hint


def test_pids_and_cpus() -> None:
    assert parse_pids("20") == 20 and parse_pids("max") == "max" and parse_pids(" MAX ") == "max"
    for bad, words in (("0", "at least 1"), ("-1", "negative"), ("lots", "not a number"), ("2.5", "not a number")):
        with pytest.raises(InvalidInput, match=words):
            parse_pids(bad)
    assert parse_cpus("0.5") == 0.5 and parse_cpus("0.01") == 0.01 and parse_cpus(str(NCPU)) == NCPU
    for bad, words in (("0", "smallest"), ("0.001", "smallest"), ("-1", "negative"), ("lots", "not a number"),
                       ("nan", "not a number"), ("inf", "not a number"), (str(NCPU + 1), f"only {NCPU} CPU")):
        with pytest.raises(InvalidInput, match=words):
            parse_cpus(bad)


def test_limit_specs_and_docker_flags() -> None:
    limits = parse_limits("memory=64M pids=20 cpu=0.5")
    assert limits == Limits(memory=64 * MiB, pids=20, cpus=0.5)
    assert limits.docker_flags() == ["--memory 64m", "--pids-limit 20", "--cpus 0.5"]
    assert parse_limits({"cpus": "1", "pids": "max"}).docker_flags() == ["--pids-limit -1", "--cpus 1"]
    assert parse_limits("memory=1g,cpu=0.25").docker_flags() == ["--memory 1g", "--cpus 0.25"]
    assert [format_size(n) for n in (512 * 1024, 3 << 29, 67108865)] == ["512k", "1536m", "67108865"]
    for bad, words in (("memory=lots pids=20", "memory=lots"), ("swap=1g", "not a limit"), ("memory", "key=value"),
                       ("pids=1 pids=2", "twice"), ("", "no limit")):
        with pytest.raises(InvalidInput, match=words):
            parse_limits(bad)


def test_bad_names_are_refused_before_anything_is_made() -> None:
    for bad in ("../x", "a/b", "", ".hidden", "x" * 65):
        with pytest.raises(InvalidInput, match="cgroup name"):
            Cgroup.create(bad)


# --- detection, checked against util-linux and /proc --------------------------------


def test_detection_agrees_with_stat_findmnt_and_proc() -> None:
    layout = detect()
    fstype = subprocess.run(["stat", "-f", "-c", "%T", "/sys/fs/cgroup"], capture_output=True, text=True,
                            check=True).stdout.strip()
    v2_mounts = subprocess.run(["findmnt", "-n", "-l", "-t", "cgroup2", "-o", "TARGET"], capture_output=True,
                               text=True, check=False).stdout.split()
    expected = {"cgroup2fs": "v2"}.get(fstype) or ("hybrid" if v2_mounts else "v1")
    assert layout.mode == expected
    if os.environ.get("JAILSHELL_EXPECT_CGROUP"):
        assert layout.mode == os.environ["JAILSHELL_EXPECT_CGROUP"]
    # /proc/cgroups: a controller with a hierarchy id is on v1; else the v2 root offers it.
    hierarchy = {}
    for line in read("/proc/cgroups").splitlines()[1:]:
        name, hier, _, enabled = line.split()
        hierarchy[name] = int(hier) if enabled == "1" else None
    for ctrl in ("memory", "pids", "cpu"):
        if hierarchy.get(ctrl):
            assert layout.version_of(ctrl) == 1, ctrl
        elif layout.v2 is not None and ctrl in read(layout.v2.mount / "cgroup.controllers").split():
            assert layout.version_of(ctrl) == 2, ctrl
        else:
            assert layout.hierarchy(ctrl) is None and ctrl in layout.missing()
    names = layout.files()
    if layout.version_of("memory") == 2:
        assert names["memory.limit"] == "memory.max" and names["memory.events"] == "memory.events"
    elif layout.version_of("memory") == 1:
        assert names["memory.limit"] == "memory.limit_in_bytes"
    assert layout.mode in layout.summary() or layout.mode == "v1"


def test_without_root_the_error_explains_delegation() -> None:
    def attempt() -> int:
        try:
            Cgroup.create(new_name())
        except JailshellError as exc:
            print(exc.message, "|", exc.hint)
            return 0
        return 1

    code, out = as_nobody(attempt)
    assert code == 0, out
    assert "needs root" in out and "Delegate=yes" in out


# --- creating, limiting, removing: root ---------------------------------------------


@pytest.fixture
def journal() -> Iterator[Journal]:
    j = Journal.for_owner(tag="cgtest-" + secrets.token_hex(3))
    yield j
    assert not j.pending(), [e.describe() for e in j.pending()]


@pytest.fixture
def cg(journal: Journal) -> Iterator[Cgroup]:
    c = Cgroup.create(new_name(), journal)
    try:
        yield c
    finally:
        c.remove()
    for p in c.paths:
        assert not p.exists()


def spawn_in(cg: Cgroup, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
    """Start argv already inside cg: the child joins before exec (echo $$ > cgroup.procs; exec argv)."""
    files = cg.procs_files()

    def join() -> None:
        for f in files:
            with open(f, "w") as fh:
                fh.write(str(os.getpid()))

    return subprocess.Popen(argv, preexec_fn=join, stdin=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=5)


@pytest.mark.root
def test_create_journals_every_directory_and_places_it_right(cg: Cgroup, journal: Journal) -> None:
    layout = cg.layout
    assert cg.controllers == ["memory", "pids", "cpu"]
    pending = {e.fields["path"] for e in journal.pending() if e.kind == "cgroup"}
    assert pending == {str(p) for p in cg.paths}
    for ctrl in ("memory", "pids", "cpu"):
        h = layout.hierarchy(ctrl)
        assert h is not None and cg.dirs[ctrl] == h.mount / "jailshell" / cg.name
        assert fs_magic(cg.dirs[ctrl]) == fs_magic(h.mount)
    parent = cg.paths[0].parent
    if layout.version_of("memory") == 2:
        # Controllers reach the leaf only through subtree_control at each level,
        # and the parent holds no process (the no-internal-process rule).
        assert len(cg.paths) == 1
        for level in (parent.parent, parent):
            assert {"memory", "pids", "cpu"} <= set(read(level / "cgroup.subtree_control").split()), level
        assert read(parent / "cgroup.procs") == ""
        assert {"memory", "pids", "cpu"} <= set(read(cg.paths[0] / "cgroup.controllers").split())
    else:
        assert (cg.dirs["cpuacct"] / "cpuacct.usage").exists()
    assert [op.raw for op in cg.created if op.kind == "mkdir"][-1] == f"mkdir {cg.paths[-1]}"


@pytest.mark.root
def test_limits_are_written_shown_as_raw_and_docker_and_read_back(cg: Cgroup) -> None:
    applied = cg.set("memory=64M pids=20 cpu=0.5")
    layout = cg.layout
    mem, pids, cpu = cg.dirs["memory"], cg.dirs["pids"], cg.dirs["cpu"]
    limit_file = mem / layout.file("memory.limit")
    assert f"echo 67108864 > {limit_file}" in applied.raw
    assert f"echo 20 > {pids / 'pids.max'}" in applied.raw
    assert read(limit_file) == "67108864" and read(pids / "pids.max") == "20"
    if layout.version_of("cpu") == 2:
        assert f"echo '50000 100000' > {cpu / 'cpu.max'}" in applied.raw
        assert read(cpu / "cpu.max") == "50000 100000"
    else:
        assert f"echo 50000 > {cpu / 'cpu.cfs_quota_us'}" in applied.raw
        assert read(cpu / "cpu.cfs_quota_us") == "50000" and read(cpu / "cpu.cfs_period_us") == "100000"
    swap = mem / layout.file("memory.swap")
    if swap.exists():  # docker's default: as much swap as memory on top
        assert read(swap) == str(64 * MiB if layout.version_of("memory") == 2 else 128 * MiB)
    assert applied.docker == ("--memory 64m", "--pids-limit 20", "--cpus 0.5")
    st = cg.stats()
    assert (st.memory_max, st.pids_max, st.cpu_max) == (64 * MiB, 20, 0.5)
    assert st.sources["memory_max"] == str(limit_file)
    # Raising memory above the old limit works too (v1: memsw must move first).
    cg.set("memory=256M")
    assert cg.stats().memory_max == 256 * MiB
    cg.set("pids=max")
    assert cg.stats().pids_max == "max"
    assert ("task limit", "max", str(pids / "pids.max")) in cg.stats().rows()


@pytest.mark.root
def test_a_bad_value_changes_nothing(cg: Cgroup, journal: Journal) -> None:
    cg.set("memory=64M pids=20")
    files = [Path(p) for p in sorted({op.path for op in cg.set("memory=64M pids=20 cpu=0.5").ops})]
    before = {f: read(f) for f in files}
    for bad in ("memory=32M pids=lots", "pids=10 memory=-1", "memory=lots", "cpu=0.2 pids=0", "memory=1k"):
        with pytest.raises(InvalidInput):
            cg.set(bad)
        assert {f: read(f) for f in files} == before, bad
    # A controller this cgroup does not have: refused before memory is touched.
    other = Cgroup.create(new_name(), journal, controllers=("memory",))
    try:
        other.set("memory=32M")
        with pytest.raises(InvalidInput, match="pids controller"):
            other.set("memory=16M pids=10")
        assert other.stats().memory_max == 32 * MiB
        assert "pids" not in other.dirs
    finally:
        other.remove()


@pytest.mark.root
def test_a_write_the_kernel_refuses_undoes_the_ones_before(cg: Cgroup) -> None:
    if cg.layout.version_of("memory") != 1:
        pytest.skip("only cgroup v1 refuses a memory limit below usage; v2 reclaims and OOM-kills instead")
    holder = spawn_in(cg, [sys.executable, "-c", "import time; b = b'a' * (48 << 20); print(flush=True); time.sleep(60)"],
                      stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline()
        before = cg.stats()
        with pytest.raises(JailshellError, match="EBUSY") as exc:
            cg.set("pids=10 cpu=0.5 memory=16M")
        assert exc.value.hint and "more memory" in exc.value.hint
        after = cg.stats()
        assert (after.pids_max, after.cpu_max, after.memory_max) == (before.pids_max, before.cpu_max, "max")
    finally:
        stop(holder)


@pytest.mark.root
def test_a_memory_hog_is_oom_killed_inside_the_limit_and_counted(cg: Cgroup) -> None:
    cg.set("memory=32M")
    before = cg.stats()
    # dd reads 64 MiB from /dev/zero into one buffer: every page it touches is charged.
    hog = spawn_in(cg, ["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"], stderr=subprocess.DEVNULL)
    assert hog.wait(timeout=20) == -signal.SIGKILL
    st = cg.stats()
    assert st.oom_kill is not None and before.oom_kill is not None
    assert st.oom_kill == before.oom_kill + 1
    assert st.failcnt is not None and st.failcnt > 0
    assert st.memory_peak is None or st.memory_peak <= 32 * MiB
    assert cg.pids() == []


@pytest.mark.root
def test_a_fork_bomb_stops_at_pids_max(cg: Cgroup) -> None:
    cg.set("pids=20")
    assert read(cg.dirs["pids"] / "pids.max") == "20"
    # The bomb refuses to start anywhere but in a jailshell cgroup: a second
    # guard besides pids.max being set before it runs.
    bomb = "grep -q jailshell /proc/self/cgroup || exit 99; f() { f & f & wait; }; f"
    proc = spawn_in(cg, ["sh", "-c", bomb], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            st = cg.stats()
            assert st.pids_current is not None and st.pids_current <= 20
            if st.pids_denied:
                break
            time.sleep(0.02)
        assert proc.poll() != 99, "the bomb did not find itself in the cgroup"
        # pids.events counts the forks refused because 20 tasks were there:
        # the bomb reached the limit and got no further.
        assert cg.stats().pids_denied, "no fork was refused"
    finally:
        cg.kill()
        stop(proc)
    assert cg.pids() == []


@pytest.mark.root
def test_a_busy_loop_is_throttled_to_its_quota(cg: Cgroup) -> None:
    cg.set("cpu=0.2")
    start = cg.stats()
    assert start.cpu_usage_usec is not None and start.nr_throttled == 0
    t0 = time.monotonic()
    loop = spawn_in(cg, ["sh", "-c", "while :; do :; done"])
    try:
        time.sleep(1.5)
        st = cg.stats()
        wall = time.monotonic() - t0
    finally:
        stop(loop)
    assert st.cpu_usage_usec is not None and st.nr_throttled is not None and st.throttled_usec is not None
    used = (st.cpu_usage_usec - start.cpu_usage_usec) / 1e6
    # 0.2 CPUs for `wall` seconds, and a period's worth of slack at each end.
    assert used <= 0.2 * wall + 0.1, (used, wall)
    assert used >= 0.05, (used, wall)
    assert st.nr_throttled >= 3 and st.throttled_usec > 0


@pytest.mark.root
def test_remove_kills_processes_and_takes_sub_cgroups_first(journal: Journal) -> None:
    cg = Cgroup.create(new_name(), journal, controllers=("pids",))
    sub = cg.paths[0] / "inner" / "deeper"
    os.makedirs(sub)  # inside the journaled cgroup: removed with it
    sleeper = subprocess.Popen(["sleep", "60"], preexec_fn=lambda: Path(sub / "cgroup.procs").write_text(str(os.getpid())))
    try:
        assert cg.pids() == [sleeper.pid]
        applied = cg.remove()
        assert sleeper.wait(timeout=5) == -signal.SIGKILL
    finally:
        stop(sleeper)
    rmdirs = [op.raw for op in applied.ops]
    assert rmdirs.index(f"rmdir {sub}") < rmdirs.index(f"rmdir {cg.paths[0]}")
    assert not cg.paths[0].exists()
    cg.remove()  # twice is fine


@pytest.mark.root
def test_a_name_in_use_is_refused_and_the_first_keeps_its_cgroup(cg: Cgroup, journal: Journal) -> None:
    with pytest.raises(JailshellError, match="already exists"):
        Cgroup.create(cg.name, journal)
    assert all(p.is_dir() for p in cg.paths)


@pytest.mark.root
def test_the_parent_goes_with_the_last_jail(journal: Journal) -> None:
    a = Cgroup.create(new_name(), journal, controllers=("pids",))
    b = Cgroup.create(new_name(), journal, controllers=("pids",))
    parent = a.paths[0].parent
    try:
        a.remove()
        assert parent.is_dir() and b.paths[0].is_dir()
    finally:
        b.remove()
    assert not parent.exists()


@pytest.mark.root
def test_join_moves_a_process_and_says_how(cg: Cgroup) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        applied = cg.join(sleeper.pid)
        assert applied.raw == [f"echo {sleeper.pid} > {f}" for f in cg.procs_files()]
        own = read(f"/proc/{sleeper.pid}/cgroup")
        assert f"/jailshell/{cg.name}" in own
        assert cg.pids() == [sleeper.pid] and cg.stats().pids_current == 1
    finally:
        stop(sleeper)
    with pytest.raises(JailshellError, match="ESRCH"):
        cg.join(sleeper.pid)


@pytest.mark.root
def test_the_raw_commands_rebuild_the_same_cgroup(journal: Journal) -> None:
    cg = Cgroup.create(new_name(), journal)
    try:
        applied = cg.set("memory=48M pids=30 cpu=0.25")
        script = [op.raw for op in cg.created] + applied.raw
        engine = {op.path: read(op.path) for op in applied.ops}
    finally:
        cg.remove()
    assert not any(p.exists() for p in cg.paths)
    entries = [journal.record("cgroup", path=str(p), parent=str(p.parent)) for p in cg.paths]
    try:
        subprocess.run(["sh", "-e", "-c", "\n".join(script)], check=True, timeout=10)
        assert {path: read(path) for path in engine} == engine
    finally:
        for e in entries:
            journal.undo(e)
    assert not any(p.exists() for p in cg.paths)


@pytest.mark.root
def test_a_crash_leftover_is_undone_from_the_journal_alone() -> None:
    crashed = Journal.for_owner(tag="cgcrash-" + secrets.token_hex(3))
    cg = Cgroup.create(new_name(), crashed)
    sleeper = spawn_in(cg, ["sleep", "60"])
    try:
        # What `jailshell cleanup` does after the owner died: only the file is left.
        results = Journal.load(crashed.path).undo_all()
        assert [exc for _, exc in results] == [None] * len(cg.paths)
        assert sleeper.wait(timeout=5) == -signal.SIGKILL
    finally:
        stop(sleeper)
    assert not any(p.exists() for p in cg.paths)
    assert not crashed.path.exists()  # every entry done: the journal is gone


@pytest.mark.root
def test_leftovers_outside_any_journal_are_found_and_removed(journal: Journal, tmp_path: Path) -> None:
    kept = Cgroup.create(new_name(), journal, controllers=("pids",))
    elsewhere = Journal.for_owner(run_dir=tmp_path, tag="other")
    stray = Cgroup.create(new_name(), elsewhere, controllers=("memory", "pids"))
    try:
        found = cgroups.find_leftovers()
        assert set(stray.paths) <= set(found)
        assert not set(kept.paths) & set(found)  # a running jailshell's cgroup is not a leftover
        for p in stray.paths:
            cgroups.remove_leftover(p)
        assert not any(p.exists() for p in stray.paths)
        for e in elsewhere.pending():
            elsewhere.release(e)
    finally:
        stray.remove()
        kept.remove()
    assert not set(stray.paths) & set(cgroups.find_leftovers())


@pytest.mark.root
def test_undo_only_touches_jailshell_cgroups(cg: Cgroup) -> None:
    layout = cg.layout
    memory = layout.hierarchy("memory")
    assert memory is not None
    assert cgroups._is_jailshell_cgroup(cg.dirs["memory"])
    for bad in (memory.mount, memory.mount / "jailshell", memory.mount / "jailshell" / ".." / "x",
                Path("/tmp/jailshell") / cg.name, memory.mount / "other" / cg.name):
        assert not cgroups._is_jailshell_cgroup(bad), bad
    with pytest.raises(JailshellError, match="refusing"):
        cgroups.undo_cgroup({"path": str(memory.mount)})


@pytest.mark.root
def test_doctor_line_names_mode_and_controllers() -> None:
    ok, detail, fix = cgroups.describe_host()
    layout = detect()
    assert ok == (not layout.missing()), (detail, fix)
    for ctrl in ("memory", "pids", "cpu"):
        assert ctrl in detail
    if fs_magic("/sys/fs/cgroup") == CGROUP2_SUPER_MAGIC:
        assert detail.startswith("cgroup v2")


def test_tools_the_demonstrations_use_exist() -> None:
    for tool in ("dd", "sh", "sleep", "stat", "findmnt"):
        assert shutil.which(tool), tool
