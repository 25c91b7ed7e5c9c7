"""Where the learner is in the course, and moving through it.

The position is the *next* step to run. The jail is rebuilt whenever it does
not hold exactly what the lesson expects before that step (another lesson, a
jump with `step ID`, a resumed session, an undo): a fresh jail, the lesson's
setup, then every earlier step of the lesson, replayed quietly. So a learner
who joins late or breaks something is never stuck.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jailshell.commands.results import (
    CheckOutcome,
    LessonList,
    LessonStepView,
    Message,
    Position,
    Preview,
    Results,
    Welcome,
)
from jailshell.errors import InvalidInput, JailshellError

if TYPE_CHECKING:
    from jailshell.commands.workspace import Workspace
    from jailshell.lessons.progress import Progress
    from jailshell.lessons.spec import Course, Try


class Tutor:
    def __init__(self, course: Course, progress: Progress):
        self.course = course
        self.progress = progress
        self.li, self.si = 0, 0
        self.resumed = False
        saved = progress.course(course.id).position
        if saved:
            found = course.find(f"{saved[0]}/{saved[1]}")
            if found:
                self.li, self.si = found
                self.resumed = found != (0, 0)
        # (lesson index, steps done) the live jail was built for; None: unknown.
        self.jail_holds: tuple[int, int] | None = None
        # The task of the step just run, until the learner solves it.
        self.open_try: tuple[Position, Try] | None = None

    # -- where ---------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.li >= len(self.course.lessons)

    def at(self, li: int, si: int) -> Position:
        lesson = self.course.lessons[li]
        return Position(lesson, li + 1, lesson.steps[si], si + 1, len(self.course.lessons))

    def position(self) -> Position | None:
        return None if self.finished else self.at(self.li, self.si)

    def preview(self, *, lesson_changed: bool = False) -> Preview:
        return Preview(self.position(), self.course, lesson_changed)

    def welcome(self) -> Welcome:
        notes = [self.progress.warning] if self.progress.warning else []
        return Welcome(self.course, self.position(), self.resumed, notes)

    def lessons(self) -> LessonList:
        done = {k: set(v) for k, v in self.progress.course(self.course.id).done.items()}
        pos = self.position()
        return LessonList(self.course, done, (pos.lesson.id, pos.step.id) if pos else None)

    def _save(self) -> None:
        pos = self.position()
        self.progress.set_position(self.course.id, (pos.lesson.id, pos.step.id) if pos else None)
        self.progress.save()

    # -- the jail the lesson expects ------------------------------------------------------

    def _lines_before(self, li: int, si: int) -> list[tuple[str, tuple[str, str] | None]]:
        lesson = self.course.lessons[li]
        out: list[tuple[str, tuple[str, str] | None]] = [(line, None) for line in lesson.setup]
        for step in lesson.steps[:si]:
            out += [(line, (lesson.id, step.id)) for line in step.run]
        return out

    def rebuild(self, ws: Workspace, li: int, si: int) -> list[str]:
        """A fresh jail holding the lesson's setup and its steps before si. Returns notes."""
        lines = self._lines_before(li, si)
        had_jail = ws.session.jail is not None
        self.jail_holds = None
        ws.replay(lines)
        self.jail_holds = (li, si)
        lesson = self.course.lessons[li]
        if si:
            return [f"A fresh jail was built for you: setup and steps 1–{si} of “{lesson.title}” replayed "
                    f"({len(lines)} commands)."]
        if had_jail:
            return [f"“{lesson.title}” starts on a fresh jail."]
        return []

    # -- moving ---------------------------------------------------------------------------

    def run_pending(self, ws: Workspace) -> Any:
        pos = self.position()
        if pos is None:
            return Results([Message(self.course.final, "ok"),
                            Message("The course is done. `lessons` lists them all; `step ID` replays any step.")])
        notes: list[str] = []
        if self.jail_holds != (self.li, self.si) or not ws.session.running:
            notes = self.rebuild(ws, self.li, self.si)
        results: list[Any] = []
        ws.origin = (pos.lesson.id, pos.step.id)
        try:
            for line in pos.step.run:
                try:
                    results.append(ws.run_line(line))
                except JailshellError as exc:
                    # The step stays pending; the jail holds part of it, so the next try rebuilds.
                    self.jail_holds = None
                    results.append(Message(f"{line}: {exc.message}", "error", exc.hint))
                    return LessonStepView(pos, results, None, None, notes)
                except KeyboardInterrupt:
                    self.jail_holds = None
                    raise
        finally:
            ws.origin = None
        check = ws.evaluate(pos.step.check) if pos.step.check else None
        self.progress.mark_done(self.course.id, pos.lesson.id, pos.step.id)
        self.open_try = (pos, pos.step.try_) if pos.step.try_ else None
        self._advance()
        self._save()
        if self.li == pos.lesson_no - 1:
            self.jail_holds = (self.li, self.si)
        return LessonStepView(pos, results, check, self.preview(lesson_changed=self.li != pos.lesson_no - 1), notes)

    def _advance(self) -> None:
        self.si += 1
        if self.si >= len(self.course.lessons[self.li].steps):
            self.li, self.si = self.li + 1, 0

    def goto(self, ws: Workspace, li: int, si: int) -> Results:
        self.li, self.si = li, si
        self.open_try = None
        notes = self.rebuild(ws, li, si)
        self._save()
        return Results([*(Message(n) for n in notes), self.preview()])

    def goto_ref(self, ws: Workspace, ref: str) -> Results:
        found = self.course.find(ref, None if self.finished else self.li)
        if found is None:
            raise InvalidInput(f"no lesson or step '{ref}'", hint="`lessons` lists them; use LESSON or LESSON/STEP")
        return self.goto(ws, *found)

    def back(self, ws: Workspace) -> Results:
        li, si = self.li, self.si
        if self.finished:
            li, si = len(self.course.lessons) - 1, len(self.course.lessons[-1].steps) - 1
        elif si > 0:
            si -= 1
        elif li > 0:
            li -= 1
            si = len(self.course.lessons[li].steps) - 1
        else:
            raise InvalidInput("this is the first step of the course")
        return self.goto(ws, li, si)

    def reset(self, ws: Workspace, everything: bool) -> Results:
        if everything or self.finished:
            self.progress.reset(self.course.id)
            return Results([Message("Progress cleared: the course starts over.", "ok"), *self.goto(ws, 0, 0).items])
        lesson = self.course.lessons[self.li]
        self.progress.reset(self.course.id, lesson.id)
        return Results([Message(f"“{lesson.title}” starts over.", "ok"), *self.goto(ws, self.li, 0).items])

    def forget_jail(self) -> None:
        """The jail no longer holds what the lesson expects (undo, reset of the jail)."""
        self.jail_holds = None

    # -- checks and hints -----------------------------------------------------------------

    def last_done(self) -> Position | None:
        if self.finished:
            lesson = self.course.lessons[-1]
            return self.at(len(self.course.lessons) - 1, len(lesson.steps) - 1)
        if self.si > 0:
            return self.at(self.li, self.si - 1)
        return None

    def hint(self) -> Message:
        if self.open_try and self.open_try[1].hint:
            return Message(self.open_try[1].hint, "info")
        pos = self.position()
        if pos and pos.step.hint:
            return Message(pos.step.hint)
        if pos:
            return Message(f"Press Enter to run: {'; '.join(pos.step.run)}")
        return Message("No hint here: the course is done.")

    def check(self, ws: Workspace) -> list[CheckOutcome]:
        """The check of the last step run, and the open task's."""
        out = []
        last = self.last_done()
        if last and last.step.check and self.jail_holds is not None:
            out.append(ws.evaluate(last.step.check))
        if self.open_try:
            out.append(ws.evaluate(self.open_try[1].check, "try"))
        return out

    def try_solved(self, ws: Workspace) -> Message | None:
        """After each command the learner types: did it solve the open task?"""
        if self.open_try is None or not ws.session.running:
            return None
        outcome = ws.evaluate(self.open_try[1].check, "try")
        if not outcome.ok:
            return None
        task = self.open_try[1].task
        self.open_try = None
        return Message(f"Task done: {task.splitlines()[0]} ({outcome.detail})", "ok")
