"""What command handlers return: plain data, rendered by jailshell.ui.render.

Keeping handlers free of presentation is what lets the same command run in
the REPL, from piped input, in `jailshell play` and in tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jailshell.commands.registry import Command
    from jailshell.engine.equivalents import Equivalents
    from jailshell.engine.inspect import Change, Snapshot
    from jailshell.engine.jail import ExecResult
    from jailshell.lessons.spec import Course, Lesson, Step


@dataclass
class Message:
    text: str
    level: str = "info"  # info | ok | warn | error
    hint: str | None = None


@dataclass
class StepReport:
    """One command done on the live jail, with the state before and after."""

    line: str  # the command as the learner typed it (or the lesson ran it)
    op: str  # the engine operation
    where: str  # where it ran: "host" (changes the jail from outside) or "jail"
    equivalents: Equivalents | None
    before: Snapshot | None = None
    after: Snapshot | None = None
    changes: list[Change] = field(default_factory=list)
    # The state sections this operation is about: shown even when nothing in them changed.
    shows: tuple[str, ...] = ()
    output: ExecResult | None = None
    notes: list[str] = field(default_factory=list)
    # Limits and usage of the jail's cgroup, before and after (the cgroup command).
    cgroup: CgroupView | None = None

    def touched(self) -> list[str]:
        """Sections to show: the ones the operation is about, then any other that changed."""
        out = list(self.shows)
        for c in self.changes:
            if c.section not in out and (not self.shows or c.section != "processes"):
                out.append(c.section)
        return out


@dataclass
class StateView:
    snapshot: Snapshot
    sections: tuple[str, ...]
    title: str = "live state"
    cgroup: CgroupView | None = None  # the jail's cgroup limits and usage, when it has a cgroup


@dataclass
class CgroupView:
    """The limits and counters of the jail's cgroup (`cgroup`), read from its files."""

    name: str  # jailshell/<jail id>
    layout: str  # one line: cgroup version and where each controller is
    rows: list[tuple[str, str, str]]  # (what, value now, file it was read from)
    dirs: list[str]  # the cgroup's directories (v1: one per hierarchy)
    before: dict[str, str] | None = None  # what -> value before the step that changed it
    # The same step on the other cgroup version: ("cgroup v2", commands), to compare.
    other: tuple[str, list[str]] | None = None
    docker: str = ""  # docker's way to see the same numbers


@dataclass
class CgroupFiles:
    """Which file holds which knob on cgroup v1 and on v2, and the docker flag for it."""

    rows: list[tuple[str, str, str, str]]  # (what, v1 file, v2 file, docker flag or command)
    here: dict[str, int]  # controller -> the version this machine uses for it
    layout: str


@dataclass
class DiffView:
    changes: list[Change]
    since: str


@dataclass
class CheckOutcome:
    name: str  # the check as written in the lesson: "isolated uts"
    ok: bool
    detail: str
    kind: str = "step"  # "step": the step did what it says; "try": the learner's task


@dataclass
class Position:
    """A step of the course: where the learner is, or what comes next."""

    lesson: Lesson
    lesson_no: int  # 1-based
    step: Step
    step_no: int  # 1-based
    lessons_total: int

    @property
    def steps_total(self) -> int:
        return len(self.lesson.steps)

    @property
    def ref(self) -> str:
        return f"{self.lesson.id}/{self.step.id}"


@dataclass
class Welcome:
    course: Course
    position: Position | None  # None: the whole course is done
    resumed: bool = False
    notes: list[str] = field(default_factory=list)


@dataclass
class Preview:
    """What the next step will do, and how to make it happen."""

    position: Position | None
    course: Course
    lesson_changed: bool = False  # the next step is the first of another lesson (a fresh jail)


@dataclass
class LessonStepView:
    position: Position
    results: list[Any]  # StepReport / Message per command of the step
    check: CheckOutcome | None = None
    next: Preview | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class LessonList:
    course: Course
    done: dict[str, set[str]]  # lesson id -> ids of steps done
    current: tuple[str, str] | None


@dataclass
class HelpView:
    commands: list[Command]
    detail: Command | None = None


@dataclass
class Confirm:
    """A question for the learner before something that cannot be taken back."""

    question: str
    on_yes: Callable[[], Any]
    on_no: Any = None
    default: bool = False


@dataclass
class Quit:
    status: int = 0


@dataclass
class Results:
    items: list[Any]


@dataclass
class Handover:
    """The learner's terminal goes to a program in the jail (`shell`); the UI
    shows the banner, steps aside, calls run() and renders what it returns."""

    banner: str
    run: Callable[[], Any]
    equivalents: Equivalents | None = None
