"""The course as typed data (what lessons.yaml holds, after the loader checked it)."""

from __future__ import annotations

from dataclasses import dataclass

FORMAT_VERSION = 1


@dataclass(frozen=True)
class Try:
    """A task for the learner, with a check that recognises success."""

    task: str
    check: str
    hint: str | None = None
    # Commands that do the task: `play --check` runs them to prove the check
    # fails before and passes after, so a check that cannot fail is caught.
    solution: tuple[str, ...] = ()


@dataclass(frozen=True)
class Step:
    id: str
    title: str
    text: str  # Markdown
    run: tuple[str, ...]  # REPL commands, the same a learner may type
    check: str | None = None  # a named predicate on live state: "isolated uts"
    hint: str | None = None
    try_: Try | None = None
    line: int = 0


@dataclass(frozen=True)
class Lesson:
    id: str
    title: str
    summary: str
    steps: tuple[Step, ...]
    # Commands run silently on the fresh jail before the first step, so a
    # lesson can start where an earlier one left the jail.
    setup: tuple[str, ...] = ()
    line: int = 0

    def step_index(self, step_id: str) -> int | None:
        for i, s in enumerate(self.steps):
            if s.id == step_id:
                return i
        return None


@dataclass(frozen=True)
class Course:
    format_version: int
    id: str
    title: str
    welcome: str
    final: str
    lessons: tuple[Lesson, ...]
    source: str = ""

    def lesson_index(self, lesson_id: str) -> int | None:
        for i, lesson in enumerate(self.lessons):
            if lesson.id == lesson_id:
                return i
        return None

    def find(self, ref: str, current_lesson: int | None = None) -> tuple[int, int] | None:
        """'LESSON', 'LESSON/STEP', 'STEP' (in the current lesson, else the first
        lesson that has it) or a 1-based step number in the current lesson."""
        lesson_id, sep, step_id = ref.partition("/")
        if sep:
            li = self.lesson_index(lesson_id)
            if li is None:
                return None
            si = self.lessons[li].step_index(step_id)
            return None if si is None else (li, si)
        li = self.lesson_index(ref)
        if li is not None:
            return li, 0
        order = list(range(len(self.lessons)))
        if current_lesson is not None:
            if ref.isdigit() and 1 <= int(ref) <= len(self.lessons[current_lesson].steps):
                return current_lesson, int(ref) - 1
            order.remove(current_lesson)
            order.insert(0, current_lesson)
        for li in order:
            si = self.lessons[li].step_index(ref)
            if si is not None:
                return li, si
        return None

    def refs(self) -> list[str]:
        return [lesson.id for lesson in self.lessons] + [f"{lesson.id}/{s.id}" for lesson in self.lessons
                                                         for s in lesson.steps]
