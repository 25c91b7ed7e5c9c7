"""The `cgroup` REPL command: limits and usage of the live jail's cgroup,
with docker's flags and the raw file writes for cgroup v1 and v2.

The root tests use the real kernel: the limits are read back from the
cgroup files, enforced on processes in the jail, and the raw commands shown
are run by sh to build a second cgroup that must hold the same values."""

from __future__ import annotations

import io
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jailshell.commands import cgroup_cmds
from jailshell.commands.builtin import build_workspace, default_registry
from jailshell.commands.results import CgroupFiles, CgroupView, Message, Results, StateView, StepReport
from jailshell.commands.workspace import Workspace
from jailshell.context import AppContext
from jailshell.engine.cgroup_layout import Hierarchy, Layout, detect
from jailshell.engine.cgroup_limits import parse_limits
from jailshell.engine.cgroups import Cgroup
from jailshell.errors import InvalidInput, JailshellError
from jailshell.lessons.checks import default_checks
from jailshell.lessons.loader import CourseError, parse_course
from jailshell.ui.completer import CommandCompleter
from jailshell.ui.render import render_to
from jailshell.ui.toolbar import create_toolbar_tokens_func
from tests.test_lessons import TINY_HEADER

COURSE = TINY_HEADER + """\
      - id: a
        title: First
        text: Limit it.
        run:
          - cgroup create
          - cgroup memory=64M pids=20 cpu=0.5
      - id: b
        title: Second
        text: Limit it wrongly.
        run: cgroup memory=lots
      - id: c
        title: Third
        text: Typo.
        run: cgroup craete
"""


def test_bad_limits_in_a_lesson_are_lint_errors_at_their_line() -> None:
    reg = default_registry()
    with pytest.raises(CourseError) as exc:
        parse_course(COURSE, "c.yaml", check_command=reg.check_lesson_line, check_check=default_checks().validate)
    lines = exc.value.lines
    assert any(line.startswith("c.yaml:20:") and "memory=lots: not a size" in line for line in lines), lines
    assert any(line.startswith("c.yaml:24:") and "unknown word 'craete'" in line for line in lines), lines
    assert not any(":15:" in line or ":16:" in line for line in lines)  # the good step


def test_parsing_the_command_line() -> None:
    reg = default_registry()
    assert reg.resolve("cgroups").name == "cgroup"
    for bad, words in (("cgroup files now", "takes nothing more"), ("cgroup pids=0", "at least 1"),
                       ("cgroup cpu=half", "not a number of CPUs"), ("cgroup pids=5 pids=6", "given twice"),
                       ("cgroup swap=1g", "not a limit jailshell sets")):
        with pytest.raises(InvalidInput, match=words):
            reg.parse(bad)
    assert reg.parse("cgroup memory=64M pids=max")[1] == {"what": ["memory=64M", "pids=max"]}  # type: ignore[index]
    # More CPUs than this machine has is refused when run, not when a course is linted elsewhere.
    assert reg.parse("cgroup cpu=512") is not None


def test_completion_offers_the_words_and_the_limit_keys(tmp_path: Path) -> None:
    ctx = AppContext.for_streams(io.StringIO(), state_dir=tmp_path)
    comp = CommandCompleter(build_workspace(ctx, with_course=False))
    from prompt_toolkit.document import Document

    words = [c.text for c in comp.get_completions(Document("cgroup "), None)]  # type: ignore[arg-type]
    assert words == ["create", "join", "files", "show", "set", "memory=", "pids=", "cpu="]
    words = [c.text for c in comp.get_completions(Document("cgroup memory=64M p"), None)]  # type: ignore[arg-type]
    assert words == ["pids="]


def render(result: object) -> str:
    buf = io.StringIO()
    render_to(AppContext.for_streams(buf, width=80, state_dir=Path("/nonexistent")).console, result)
    return buf.getvalue()


def test_files_table_names_both_versions_and_the_docker_flags() -> None:
    files = cgroup_cmds.files()
    assert isinstance(files, CgroupFiles)
    out = render(files)
    for v1, v2, flag in (("memory.limit_in_bytes", "memory.max", "--memory"), ("cpu.cfs_quota_us", "cpu.max", "--cpus"),
                         ("pids.max", "pids.max", "--pids-limit"), ("memory.memsw.limit_in_bytes",
                                                                    "memory.swap.max", "--memory-swap")):
        row = next(line for line in out.splitlines() if v1 in line)
        assert v2 in row and flag in row, row
    assert "This machine:" in " ".join(out.split())
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80


def _fake(layout: Layout) -> Cgroup:
    cg = Cgroup("feedbeef", layout, journal=None)  # type: ignore[arg-type]  # only looked at
    for c in ("memory", "pids", "cpu"):
        h = layout.hierarchy(c)
        assert h is not None
        cg.dirs[c] = h.mount / "jailshell" / "feedbeef"
    return cg


V1 = Layout("v1", Path("/sys/fs/cgroup"), "tmpfs", (
    Hierarchy(1, Path("/sys/fs/cgroup/memory"), ("memory",)), Hierarchy(1, Path("/sys/fs/cgroup/pids"), ("pids",)),
    Hierarchy(1, Path("/sys/fs/cgroup/cpu,cpuacct"), ("cpu", "cpuacct"))))
V2 = Layout("v2", Path("/sys/fs/cgroup"), "cgroup2", (),
            Hierarchy(2, Path("/sys/fs/cgroup"), ("cpuset", "cpu", "io", "memory", "pids")))


def test_the_other_version_is_shown_for_comparison() -> None:
    limits = parse_limits("memory=64M pids=20 cpu=0.5")
    title, lines = cgroup_cmds._other_version(_fake(V1), 4242, limits, True) or ("", [])
    assert title == "cgroup v2"
    assert lines == [
        "echo '+memory +pids +cpu' > /sys/fs/cgroup/cgroup.subtree_control",
        "mkdir -p /sys/fs/cgroup/jailshell",
        "echo '+memory +pids +cpu' > /sys/fs/cgroup/jailshell/cgroup.subtree_control",
        "mkdir -p /sys/fs/cgroup/jailshell/feedbeef",
        "echo 20 > /sys/fs/cgroup/jailshell/feedbeef/pids.max",
        "echo '50000 100000' > /sys/fs/cgroup/jailshell/feedbeef/cpu.max",
        "echo 67108864 > /sys/fs/cgroup/jailshell/feedbeef/memory.max",
        "echo 67108864 > /sys/fs/cgroup/jailshell/feedbeef/memory.swap.max    # swap on top, as docker allows",
        "echo 4242 > /sys/fs/cgroup/jailshell/feedbeef/cgroup.procs",
    ]
    title, lines = cgroup_cmds._other_version(_fake(V2), 4242, parse_limits("pids=7 cpu=2"), False) or ("", [])
    assert title == "cgroup v1"
    assert lines == ["echo 7 > /sys/fs/cgroup/pids/jailshell/feedbeef/pids.max",
                     "echo 100000 > /sys/fs/cgroup/cpu,cpuacct/jailshell/feedbeef/cpu.cfs_period_us",
                     "echo 200000 > /sys/fs/cgroup/cpu,cpuacct/jailshell/feedbeef/cpu.cfs_quota_us"]


# -- on the real kernel ---------------------------------------------------------------------

needs_controllers = pytest.mark.skipif(bool(detect().missing()), reason="memory, pids or cpu controller missing")


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    ctx = AppContext.for_streams(io.StringIO(), width=80, state_dir=tmp_path)
    w = build_workspace(ctx, with_course=False)
    try:
        yield w
    finally:
        w.close()


def _read(path: Path) -> str:
    return path.read_text().strip()


@pytest.mark.root
@needs_controllers
def test_show_before_a_cgroup_says_how_to_make_one(ws: Workspace) -> None:
    res = ws.run_line("cgroup")
    assert isinstance(res, Results)
    msg, state = res.items
    assert isinstance(msg, Message) and "no cgroup of its own yet" in msg.text and "cgroup create" in (msg.hint or "")
    assert isinstance(state, StateView) and state.sections == ("cgroup",)


@pytest.mark.root
@needs_controllers
def test_create_then_limits_are_written_read_back_and_shown(ws: Workspace) -> None:
    made = ws.run_line("cgroup create")
    assert isinstance(made, StepReport) and made.op == "cgroup"
    jail = ws.session.jail
    assert jail is not None and jail.cgroup is not None
    cg: Cgroup = jail.cgroup
    dirs = cg.paths
    for d in dirs:
        assert str(jail.pid) in _read(d / "cgroup.procs").split()
    assert f"/jailshell/{jail.id}" in Path(f"/proc/{jail.pid}/cgroup").read_text()
    assert made.equivalents is not None
    raw = made.equivalents.raw
    assert any(line == f"mkdir -p {d}" for d in dirs for line in raw)
    assert all(f"echo {jail.pid} > {d}/cgroup.procs" in raw for d in dirs)
    assert "counted, not limited" in made.equivalents.docker
    # The membership row changed, and the view lists the counters with their files.
    assert "cgroup" in made.touched() and any(c.section == "cgroup" for c in made.changes)
    assert made.cgroup is not None and made.cgroup.before is None

    rep = ws.run_line("cgroup memory=64M pids=20 cpu=0.5")
    assert isinstance(rep, StepReport) and rep.equivalents is not None and rep.cgroup is not None
    v = {key: cg.layout.version_of(key) for key in ("memory", "pids", "cpu")}
    mem = cg.dirs["memory"] / ("memory.limit_in_bytes" if v["memory"] == 1 else "memory.max")
    assert _read(mem) == str(64 << 20)
    assert _read(cg.dirs["pids"] / "pids.max") == "20"
    if v["cpu"] == 1:
        assert _read(cg.dirs["cpu"] / "cpu.cfs_quota_us") == "50000"
    else:
        assert _read(cg.dirs["cpu"] / "cpu.max") == "50000 100000"
    assert rep.equivalents.docker.startswith("docker update --memory 64m --pids-limit 20 --cpus 0.5 CONTAINER")
    assert f"echo 20 > {cg.dirs['pids'] / 'pids.max'}" in rep.equivalents.raw
    assert not any(line.startswith("mkdir") for line in rep.equivalents.raw)  # made already
    assert rep.cgroup.before is not None and rep.cgroup.before["task limit"] == "max"
    assert rep.cgroup.other is not None and rep.cgroup.other[0] in ("cgroup v1", "cgroup v2")
    out = render(rep)
    assert "task limit          max → 20" in out and "pids.max" in out
    assert re.search(r"raw · the same on cgroup v[12]", out)
    # `state` includes it; the toolbar shows usage against the limits.
    state = ws.run_line("state")
    assert isinstance(state, StateView) and isinstance(state.cgroup, CgroupView)
    bar = "".join(t for _, t in create_toolbar_tokens_func(ws)())
    assert re.search(r"cgroup mem \S+ \S+/64\.0 MiB tasks 1/20 cpu 0\.5", bar), bar


@pytest.mark.root
@needs_controllers
def test_limits_hold_for_what_runs_in_the_jail(ws: Workspace) -> None:
    ws.run_line("cgroup pids=4")  # makes the cgroup on the way
    jail = ws.session.jail
    assert jail is not None
    inside = jail.exec(["cat", "/proc/self/cgroup"])
    assert f"pids:/jailshell/{jail.id}" in inside.stdout or f"::/jailshell/{jail.id}" in inside.stdout
    res = jail.exec(["sh", "-c", "for i in 1 2 3 4 5 6 7 8; do sleep 3 & done; wait"], timeout=30)
    assert res.returncode != 0 or "fork" in res.stderr.lower(), res
    stats = jail.cgroup.stats()
    assert stats.pids_denied and stats.pids_denied > 0
    shown = render(ws.run_line("cgroup"))
    assert re.search(r"forks refused\s+[1-9]", shown)


@pytest.mark.root
@needs_controllers
def test_the_raw_commands_build_a_cgroup_with_the_same_values(ws: Workspace) -> None:
    rep = ws.run_line("cgroup memory=32M pids=9 cpu=0.25")
    assert isinstance(rep, StepReport) and rep.equivalents is not None
    jail = ws.session.jail
    assert jail is not None
    cg: Cgroup = jail.cgroup
    # The same lines for another cgroup and another process: what a learner would paste.
    other = f"{jail.id}raw"
    sleeper = subprocess.Popen(["sleep", "60"])
    lines = [line.replace(f"/jailshell/{jail.id}", f"/jailshell/{other}").replace(f"echo {jail.pid} >",
                                                                                   f"echo {sleeper.pid} >")
             for line in rep.equivalents.raw]
    made = [Path(str(p).replace(f"/jailshell/{jail.id}", f"/jailshell/{other}")) for p in cg.paths]
    try:
        res = subprocess.run(["sh", "-ec", "\n".join(lines)], capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        compared = []
        for d, mine in zip(made, cg.paths, strict=True):
            for f in mine.iterdir():
                if f.name.endswith(("max", "limit_in_bytes", "_us")):
                    assert _read(d / f.name) == _read(f), f.name
                    compared.append(f.name)
            assert str(sleeper.pid) in _read(d / "cgroup.procs").split()
        assert {"pids.max"} <= set(compared) and len(compared) >= 4, compared
    finally:
        sleeper.kill()
        sleeper.wait()
        for d in made:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


@pytest.mark.root
@needs_controllers
def test_undo_puts_a_limit_back_or_replays_without_the_cgroup(ws: Workspace) -> None:
    ws.run_line("cgroup pids=20")
    ws.run_line("cgroup pids=30")
    jail = ws.session.jail
    assert jail is not None
    undone = ws.run_line("undo")
    assert isinstance(undone, Results) and "Undone in place: `cgroup pids=20`" in undone.items[0].text
    assert _read(jail.cgroup.dirs["pids"] / "pids.max") == "20" and ws.session.jail is jail
    dirs = jail.cgroup.paths
    msg = ws.run_line("undo")
    assert isinstance(msg, Message) and "does not move a jail back out of its cgroup" in msg.text
    assert ws.session.jail is not jail and ws.session.jail is not None and ws.session.jail.cgroup is None
    assert not any(d.exists() for d in dirs)  # the old jail's cgroup went with it


@pytest.mark.root
@needs_controllers
def test_a_refused_limit_leaves_the_jail_as_it_was(ws: Workspace) -> None:
    ws.run_line("cgroup create")
    jail = ws.session.jail
    assert jail is not None
    before = len(ws.session.done)
    with pytest.raises(JailshellError):
        ws.run_line(f"cgroup cpu={(os.cpu_count() or 1) + 1}")
    assert len(ws.session.done) == before and jail.cgroup.stats().cpu_max == "max"


@pytest.mark.root
@needs_controllers
def test_closing_the_jail_removes_its_cgroup(ws: Workspace) -> None:
    ws.run_line("cgroup memory=16M")
    jail = ws.session.jail
    assert jail is not None
    dirs = jail.cgroup.paths
    assert all(d.is_dir() for d in dirs)
    ws.close()
    assert not any(d.exists() for d in dirs)


@pytest.mark.root
@needs_controllers
def test_the_take_home_script_makes_its_own_cgroup_and_removes_it(ws: Workspace, tmp_path: Path) -> None:
    for line in ("unshare pid", "unshare mnt", "mount proc", "chroot", "cgroup pids=12"):
        ws.run_line(line)
    target = tmp_path / "s.sh"
    ws.run_line(f"script {target}")
    text = target.read_text()
    jail = ws.session.jail
    assert jail is not None and f"/jailshell/{jail.id}" not in text and "/jailshell/take-home-$$" in text
    res = subprocess.run(["sh", str(target), "cat", "/proc/1/cgroup"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert re.search(r":(pids)?:/jailshell/take-home-\d+$", res.stdout, re.M), res.stdout
    layout = detect()
    pids = layout.hierarchy("pids")
    assert pids is not None
    assert not list((pids.mount / "jailshell").glob("take-home-*"))


@pytest.mark.root
@needs_controllers
def test_set_join_and_show_spellings(ws: Workspace) -> None:
    reg = default_registry()
    with pytest.raises(InvalidInput, match="needs limits"):
        cgroup_cmds.validate(reg.parse("cgroup set")[1])
    joined = ws.run_line("cgroup join")
    assert isinstance(joined, StepReport) and joined.op == "cgroup"
    jail = ws.session.jail
    assert jail is not None and jail.cgroup is not None
    rep = ws.run_line("cgroup set pids=12")
    assert isinstance(rep, StepReport)
    assert _read(jail.cgroup.dirs["pids"] / "pids.max") == "12"
    assert isinstance(ws.run_line("cgroup show"), CgroupView)
