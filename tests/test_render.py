"""What the learner sees, at width 80, compared with stored snapshots.

The results rendered here are built by hand (they are what handlers return:
plain data), so each screen is fixed. JAILSHELL_UPDATE_SNAPSHOTS=1 rewrites
the files in tests/snapshots/render/; review the diff before keeping it.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import pytest

from jailshell.commands.builtin import default_registry
from jailshell.commands.cgroup_cmds import files as cgroup_files
from jailshell.commands.results import (
    CgroupFiles,
    CgroupView,
    CheckOutcome,
    DiffView,
    HelpView,
    LessonList,
    LessonStepView,
    Message,
    Position,
    Preview,
    StateView,
    StepReport,
    Welcome,
)
from jailshell.context import AppContext
from jailshell.engine.equivalents import Equivalents
from jailshell.engine.inspect import Change, MountRow, NsRow, ProcRow, Snapshot
from jailshell.engine.jail import ExecResult
from jailshell.lessons.spec import Course, Lesson, Step, Try
from jailshell.ui.render import Renderer

SNAPSHOTS = Path(__file__).parent / "snapshots" / "render"
KINDS = ("uts", "pid", "mnt", "ipc", "net", "user", "cgroup")
HOST_INODES = dict(zip(KINDS, (4026531838, 4026531836, 4026531840, 4026531839, 4026531992, 4026531837,
                               4026531835), strict=True))


def snap(isolated: dict[str, int] | None = None, *, hostname: str = "vm", pid_isolated: bool = False,
         mounts: list[MountRow] | None = None, root_mode: str = "host") -> Snapshot:
    iso = isolated or {}
    s = Snapshot(pid=4242)
    s.namespaces = [NsRow(k, HOST_INODES[k], iso.get(k, HOST_INODES[k])) for k in KINDS]
    s.hostname = {"host": "vm", "jail": hostname}
    s.processes = [ProcRow(4242, 1, "jsh-holder")] if pid_isolated else \
        [ProcRow(1, 1, "/sbin/init"), ProcRow(2, 2, "[kthreadd]"), ProcRow(4242, 4242, "jsh-holder")]
    s.host_process_count = 97
    s.mounts = mounts if mounts is not None else [
        MountRow("/", "ext4", "/dev/vda", "rw,relatime", "private"),
        MountRow("/proc", "proc", "proc", "rw,nosuid,nodev,noexec,relatime", "private")]
    s.root, s.root_mode = "/", root_mode
    s.uid_map = s.gid_map = "0 0 4294967295"
    s.cgroup = ["0::/user.slice"]
    s.interfaces = {"host": [("eth0", True), ("lo", True)], "jail": [("lo", False)]}
    return s


COURSE = Course(1, "demo", "Containers by hand", "Build **one** by hand: `unshare`, then more.", "Done.", (
    Lesson("uts-and-pid", "UTS and PID namespaces", "A hostname of its own.", (
        Step("start", "A process that is not isolated", "Nothing is isolated yet.", ("create",)),
        Step("unshare-uts", "Its own hostname namespace", "`unshare(CLONE_NEWUTS)`: a **copy** of the hostname.",
             ("unshare uts",), "isolated uts", "Press Enter.",
             Try("Rename the jail to `box`.", "hostname-is box", "hostname box", ("hostname box",))),
    )),
    Lesson("mounts", "A mount namespace", "Mounts of its own.", (
        Step("unshare-mnt", "Its own mount table", "A copy of the host's mounts.", ("unshare mnt",)),
    )),
))

UNSHARE_UTS = StepReport(
    "unshare uts", "unshare", "host",
    Equivalents("docker run -it --hostname jail busybox sh",
                ["unshare --uts sh", "readlink /proc/4242/ns/uts /proc/$$/ns/uts    # jail vs this shell"],
                note="the first line builds the jail so far from scratch"),
    before=snap(), after=snap({"uts": 4026532177}),
    changes=[Change("namespaces", "uts", (4026531838, 4026531838), (4026531838, 4026532177))],
    shows=("namespaces", "hostname"))


CG_ROWS = [("memory used", "1.2 MiB", "/sys/fs/cgroup/memory/jailshell/1a2b3c4d/memory.usage_in_bytes"),
           ("memory limit", "64.0 MiB", "/sys/fs/cgroup/memory/jailshell/1a2b3c4d/memory.limit_in_bytes"),
           ("tasks", "1", "/sys/fs/cgroup/pids/jailshell/1a2b3c4d/pids.current"),
           ("task limit", "20", "/sys/fs/cgroup/pids/jailshell/1a2b3c4d/pids.max"),
           ("cpu limit", "0.5 CPUs", "/sys/fs/cgroup/cpu/jailshell/1a2b3c4d/cpu.cfs_quota_us")]
CG_DIRS = [f"/sys/fs/cgroup/{c}/jailshell/1a2b3c4d" for c in ("memory", "pids", "cpu")]
CGROUP_STEP = StepReport(
    "cgroup pids=20", "cgroup", "host",
    Equivalents("docker update --pids-limit 20 CONTAINER    # from the start: docker run --pids-limit 20 busybox sh",
                ["echo 20 > /sys/fs/cgroup/pids/jailshell/1a2b3c4d/pids.max"], note="a cgroup is a directory"),
    before=snap(), after=snap(), shows=(),
    cgroup=CgroupView("jailshell/1a2b3c4d", "hybrid cgroup v1 + v2", CG_ROWS, CG_DIRS,
                      before={"memory used": "1.1 MiB", "memory limit": "64.0 MiB", "tasks": "1", "task limit": "max",
                              "cpu limit": "0.5 CPUs"},
                      other=("cgroup v2", ["echo 20 > /sys/fs/cgroup/jailshell/1a2b3c4d/pids.max"]),
                      docker="docker stats --no-stream CONTAINER"))


def position(li: int = 0, si: int = 1) -> Position:
    lesson = COURSE.lessons[li]
    return Position(lesson, li + 1, lesson.steps[si], si + 1, len(COURSE.lessons))


CASES: dict[str, Any] = {
    "step_unshare_uts": UNSHARE_UTS,
    "step_hostname": StepReport(
        "hostname jail", "sethostname", "host",
        Equivalents("docker run -it --hostname jail busybox sh", ["nsenter --target 4242 --uts hostname jail"]),
        before=snap({"uts": 4026532177}), after=snap({"uts": 4026532177}, hostname="jail"),
        changes=[Change("hostname", "jail", "vm", "jail")], shows=("hostname",)),
    "step_unshare_pid": StepReport(
        "unshare pid", "unshare", "host", Equivalents("docker run -it busybox sh", ["unshare --pid --fork sh"]),
        before=snap(), after=snap({"pid": 4026532178}, pid_isolated=True),
        changes=[Change("namespaces", "pid", (4026531836, 4026531836), (4026531836, 4026532178)),
                 Change("processes", "2", "[kthreadd]", None)], shows=("namespaces", "processes")),
    "step_mount_proc": StepReport(
        "mount proc", "mount", "host",
        Equivalents("docker run busybox sh    # docker mounts /proc by default",
                    ["nsenter --target 4242 --mount mount -t proc -o nosuid,nodev,noexec proc /jail/rootfs/proc"]),
        before=snap(), after=snap(mounts=[MountRow("/", "ext4", "/dev/vda", "rw", "private"),
                                          MountRow("/jail/rootfs/proc", "proc", "proc", "rw", "private")]),
        changes=[Change("mounts", "/jail/rootfs/proc", None, "proc rw private")], shows=("mounts",)),
    "step_exec": StepReport(
        "exec hostname", "exec", "jail", Equivalents("docker exec -it CONTAINER hostname",
                                                     ["nsenter --target 4242 --uts hostname"]),
        before=snap(), after=snap(), output=ExecResult(0, "jail\n", "")),
    "state_all": StateView(snap({"uts": 4026532177, "pid": 4026532178}, hostname="jail", pid_isolated=True),
                           ("namespaces", "hostname", "processes", "mounts", "root", "user", "cgroup",
                            "interfaces")),
    "diff": DiffView([Change("namespaces", "uts", (1, 1), (1, 2)), Change("hostname", "jail", "vm", "jail"),
                      Change("processes", "2", "[kthreadd]", None)], "jail 1a2b3c4d was started"),
    "welcome": Welcome(COURSE, position(0, 0)),
    "welcome_back": Welcome(COURSE, position(0, 1), resumed=True, notes=["your progress file was damaged"]),
    "preview_next_lesson": Preview(position(1, 0), COURSE, lesson_changed=True),
    "lesson_step": LessonStepView(position(0, 1), [UNSHARE_UTS], CheckOutcome("isolated uts", True,
                                                                             "uts: host 1, jail 2"),
                                  Preview(position(1, 0), COURSE, lesson_changed=True)),
    "lessons": LessonList(COURSE, {"uts-and-pid": {"start"}}, ("uts-and-pid", "unshare-uts")),
    # A fixed choice of commands: the registry grows, this screen should not have to.
    "help": HelpView([default_registry().resolve(n) for n in ("create", "unshare", "hostname", "mount", "exec", "ns",
                                                              "state", "next", "step", "lessons", "help", "quit")]),
    "cgroup_step": CGROUP_STEP,
    "cgroup_show": CgroupView("jailshell/1a2b3c4d", "hybrid cgroup v1 + v2 at /sys/fs/cgroup", CG_ROWS, CG_DIRS,
                              docker="docker stats --no-stream CONTAINER    # usage; the limits: docker inspect"),
    "cgroup_files": CgroupFiles(cgroup_files().rows, {"memory": 1, "pids": 1, "cpu": 1}, "hybrid"),
    "help_mount": HelpView(list(default_registry()), default_registry().resolve("mount")),
    "messages": [Message("done", "ok"), Message("careful", "warn"), Message("no", "error", "do this instead"),
                 CheckOutcome("hostname-is box", False, "host 'vm', jail 'jail'", "try")],
}


def render(result: Any, *, present: bool = False, present_width: int | None = None) -> str:
    buf = io.StringIO()
    ctx = AppContext.for_streams(buf, width=80, state_dir=Path("/nonexistent"))
    r = Renderer(ctx.console, present=present, present_width=present_width)
    for item in result if isinstance(result, list) else [result]:
        r.render(item)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"


# Presenter mode's screens (for a projector), at the same 80 columns.
PRESENT_CASES = ("lesson_step", "step_exec", "state_all", "messages")


@pytest.mark.parametrize("name", sorted(CASES) + [f"present_{n}" for n in PRESENT_CASES])
def test_screen_matches_snapshot(name: str) -> None:
    present = name.startswith("present_")
    got = render(CASES[name.removeprefix("present_")], present=present)
    path = SNAPSHOTS / f"{name}.txt"
    if os.environ.get("JAILSHELL_UPDATE_SNAPSHOTS") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(got)
    assert path.exists(), f"no snapshot {path}: run with JAILSHELL_UPDATE_SNAPSHOTS=1 and review it"
    assert got == path.read_text()


def test_every_line_fits_80_columns_except_commands_to_paste() -> None:
    for name, case in CASES.items():
        for line in render(case).splitlines():
            if len(line) > 80:
                assert line.startswith("    "), f"{name}: {line!r} is wider than 80 and not a code line"


def test_changed_namespace_row_is_marked_and_others_are_not() -> None:
    text = render(UNSHARE_UTS)
    rows = {line.split()[0]: line for line in text.splitlines() if line.strip().split(" ")[0] in KINDS}
    assert "4026531838 → 4026532177" in rows["uts"] and "isolated" in rows["uts"]
    assert "→" not in rows["pid"] and "shared" in rows["pid"]


def test_code_lines_are_not_broken_so_they_can_be_pasted() -> None:
    long = "nsenter --target 4242 --uts --pid --mount --root --wd sh -c " + "'" + "x" * 120 + "'"
    report = StepReport("exec sh", "exec", "jail", Equivalents("docker exec -it CONTAINER sh", [long]))
    assert f"    {long}\n" in render(report)


def test_presenter_mode_shows_host_and_jail_side_by_side() -> None:
    text = render(UNSHARE_UTS, present=True)
    header = next(line for line in text.splitlines() if "HOST" in line)
    assert "JAIL" in header and header.index("HOST") < header.index("JAIL")
    assert "the first line builds" not in text  # less chrome: no notes


def test_markup_in_lesson_text_is_shown_as_written() -> None:
    assert "[ro]" in render(Message("mount bind SOURCE TARGET [ro]"))


def test_presenter_mode_is_narrower_centred_and_spaced() -> None:
    from jailshell.ui.render import Presentation

    # The layout as a setting: two thirds of the terminal, at least 60 columns, never more than it has.
    assert Presentation.for_terminal(80) == Presentation(60, 10)
    assert Presentation.for_terminal(240) == Presentation(160, 40)
    assert Presentation.for_terminal(50) == Presentation(50, 0)
    assert Presentation.for_terminal(200, 72) == Presentation(72, 64)  # --present-width
    assert Presentation.for_terminal(100, 10) == Presentation(40, 30)  # but never unreadably narrow
    text = render(CASES["step_exec"], present=True)
    lines = [line for line in text.splitlines() if line.strip()]
    assert all(line.startswith(" " * 10) for line in lines), text  # the margin, on every line
    assert max(len(line) for line in lines if not line.startswith(" " * 14)) <= 70  # 60 columns of text
    assert "\n\n" in text and "\n\n" not in render(CASES["step_exec"])  # blank lines between blocks
    narrow = render(CASES["step_exec"], present=True, present_width=50)
    assert all(line.startswith(" " * 15) for line in narrow.splitlines() if line.strip())


def test_presenter_mode_is_bold_and_never_dim() -> None:
    from rich.console import Console

    from jailshell.ui.style import rich_theme

    def ansi(present: bool) -> str:
        buf = io.StringIO()
        console = Console(file=buf, width=80, force_terminal=True, color_system="standard", theme=rich_theme(),
                          highlight=False, markup=False, _environ={})
        Renderer(console, present=present).render(CASES["lesson_step"])
        return buf.getvalue()

    plain, present = ansi(False), ansi(True)
    dim = re.compile(r"\x1b\[(?:[0-9;]*;)?2(?:;[0-9;]*)?m")  # SGR 2: faint
    assert dim.search(plain) and not dim.search(present)
    bold = re.compile(r"\x1b\[(?:[0-9;]*;)?1(?:;[0-9;]*)?m")
    # Every visible line is drawn bold (plain text included), so it reads from the back row.
    for line in present.splitlines():
        if re.sub(r"\x1b\[[0-9;]*m|\x1b\[[0-9;]*[HJ]", "", line).strip():
            assert bold.search(line), repr(line)
    assert "\x1b[2J" in present and "\x1b[2J" not in plain  # one step per screen: cleared before it
