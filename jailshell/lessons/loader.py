"""Read lessons.yaml into a Course, or say exactly what is wrong and where.

The YAML is composed into nodes (not loaded into dicts) so every problem can
be reported as FILE:LINE: message — duplicate ids, unknown or misspelt keys,
unknown commands or checks, empty texts — and all of them at once, the way a
linter does. Which commands and checks exist is passed in: the lessons layer
does not import the REPL's command registry.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jailshell.errors import ExitStatus, JailshellError
from jailshell.lessons.spec import FORMAT_VERSION, Course, Lesson, Step, Try

# Each returns why the text is not acceptable, or None.
Validator = Callable[[str], "str | None"]

_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")

COURSE_KEYS = {"format_version", "id", "title", "welcome", "final", "lessons"}
LESSON_KEYS = {"id", "title", "summary", "setup", "steps"}
STEP_KEYS = {"id", "title", "text", "run", "check", "hint", "try"}
TRY_KEYS = {"task", "check", "hint", "solution"}


def default_path() -> Path:
    """The shipped course (a symlink in the package to lessons.yaml at the top of the tree)."""
    return Path(__file__).resolve().parent / "lessons.yaml"


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based; 0 when not tied to a line
    message: str


class CourseError(JailshellError):
    """Every problem found in a lessons file, each as FILE:LINE: message."""

    status = ExitStatus.ERROR

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        self.lines = [f"{source}:{p.line}: {p.message}" if p.line else f"{source}: {p.message}" for p in problems]
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{source}: {count} in the lessons file:\n  " + "\n  ".join(self.lines),
                         hint="fix them and run `jailshell lint FILE` again")


@dataclass
class _Reader:
    source: str
    check_command: Validator | None
    check_check: Validator | None
    problems: list[Problem] = field(default_factory=list)

    def problem(self, node: Any, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None and getattr(node, "start_mark", None) else 0
        self.problems.append(Problem(line, message))

    # -- node helpers ------------------------------------------------------------------

    def mapping(self, node: Any, what: str, allowed: set[str], required: tuple[str, ...]) -> dict[str, Any] | None:
        import yaml

        if not isinstance(node, yaml.MappingNode):
            self.problem(node, f"{what} must be a mapping (key: value lines)")
            return None
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            if key in out:
                self.problem(key_node, f"{what}: '{key}' is given twice")
                continue
            if key not in allowed:
                close = _close(key, allowed)
                self.problem(key_node, f"{what}: unknown key '{key}'" + (f" — did you mean '{close}'?" if close else "")
                             + f" (allowed: {', '.join(sorted(allowed))})")
                continue
            out[key] = value_node
        for key in required:
            if key not in out:
                self.problem(node, f"{what}: '{key}' is missing")
        return out

    def text(self, fields: dict[str, Any], key: str, what: str, *, required: bool = True) -> str | None:
        import yaml

        node = fields.get(key)
        if node is None:
            return None
        if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
            if required or not isinstance(node, yaml.ScalarNode):
                self.problem(node, f"{what}: '{key}' must be text")
            return None
        value = str(node.value)
        if not value.strip():
            self.problem(node, f"{what}: '{key}' is empty")
            return None
        return value.strip("\n") if "\n" in value else value.strip()

    def ident(self, fields: dict[str, Any], what: str) -> str | None:
        value = self.text(fields, "id", what)
        if value is not None and not _ID.match(value):
            self.problem(fields["id"], f"{what}: id '{value}' must be lower-case letters, digits and dashes")
            return None
        return value

    def commands(self, fields: dict[str, Any], key: str, what: str, *, required: bool) -> tuple[str, ...]:
        import yaml

        node = fields.get(key)
        if node is None:
            return ()
        items = [node] if isinstance(node, yaml.ScalarNode) else node.value if isinstance(node, yaml.SequenceNode) \
            else None
        if items is None:
            self.problem(node, f"{what}: '{key}' must be a command or a list of commands")
            return ()
        out = []
        for item in items:
            if not isinstance(item, yaml.ScalarNode) or not str(item.value).strip():
                self.problem(item, f"{what}: '{key}' entries must be non-empty commands")
                continue
            line = str(item.value).strip()
            why = self.check_command(line) if self.check_command else None
            if why:
                self.problem(item, f"{what}: '{line}': {why}")
                continue
            out.append(line)
        if required and not out and not items:
            self.problem(node, f"{what}: '{key}' has no commands")
        return tuple(out)

    def check(self, fields: dict[str, Any], what: str) -> str | None:
        value = self.text(fields, "check", what, required=False)
        if value is not None and self.check_check is not None:
            why = self.check_check(value)
            if why:
                self.problem(fields["check"], f"{what}: check '{value}': {why}")
        return value

    # -- the document ------------------------------------------------------------------

    def course(self, root: Any) -> Course | None:
        fields = self.mapping(root, "the course", COURSE_KEYS, ("format_version", "title", "welcome", "final",
                                                                 "lessons"))
        if fields is None:
            return None
        version = self._version(fields.get("format_version"))
        course_id = self.ident(fields, "the course") if "id" in fields else "course"
        title = self.text(fields, "title", "the course")
        welcome = self.text(fields, "welcome", "the course")
        final = self.text(fields, "final", "the course")
        lessons = self._lessons(fields.get("lessons"))
        if self.problems:
            return None
        assert version is not None and course_id and title and welcome and final
        return Course(version, course_id, title, welcome, final, tuple(lessons), self.source)

    def _version(self, node: Any) -> int | None:
        if node is None:
            return None
        if node.tag != "tag:yaml.org,2002:int":
            self.problem(node, "format_version must be a number")
            return None
        if int(node.value) != FORMAT_VERSION:
            self.problem(node, f"format_version {node.value} is not supported (this jailshell reads "
                               f"{FORMAT_VERSION})")
            return None
        return int(node.value)

    def _lessons(self, node: Any) -> list[Lesson]:
        import yaml

        if node is None:
            return []
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.problem(node, "'lessons' must be a non-empty list")
            return []
        seen: dict[str, int] = {}
        out = []
        for item in node.value:
            lesson = self._lesson(item)
            if lesson is None:
                continue
            if lesson.id in seen:
                self.problem(item, f"lesson id '{lesson.id}' is used twice (first at line {seen[lesson.id]})")
                continue
            seen[lesson.id] = lesson.line
            out.append(lesson)
        return out

    def _lesson(self, node: Any) -> Lesson | None:
        import yaml

        fields = self.mapping(node, "lesson", LESSON_KEYS, ("id", "title", "summary", "steps"))
        if fields is None:
            return None
        lid = self.ident(fields, "lesson")
        what = f"lesson '{lid or '?'}'"
        title = self.text(fields, "title", what)
        summary = self.text(fields, "summary", what)
        setup = self.commands(fields, "setup", f"{what} setup", required=False)
        steps_node = fields.get("steps")
        steps: list[Step] = []
        if steps_node is not None:
            if not isinstance(steps_node, yaml.SequenceNode) or not steps_node.value:
                self.problem(steps_node, f"{what}: 'steps' must be a non-empty list")
            else:
                seen: dict[str, int] = {}
                for item in steps_node.value:
                    step = self._step(item, what)
                    if step is None:
                        continue
                    if step.id in seen:
                        self.problem(item, f"{what}: step id '{step.id}' is used twice (first at line {seen[step.id]})")
                        continue
                    seen[step.id] = step.line
                    steps.append(step)
        if not (lid and title and summary and steps):
            return None
        return Lesson(lid, title, summary, tuple(steps), setup, node.start_mark.line + 1)

    def _step(self, node: Any, lesson_what: str) -> Step | None:
        fields = self.mapping(node, f"{lesson_what} step", STEP_KEYS, ("id", "title", "text", "run"))
        if fields is None:
            return None
        sid = self.ident(fields, f"{lesson_what} step")
        what = f"step '{sid or '?'}'"
        title = self.text(fields, "title", what)
        text = self.text(fields, "text", what)
        run = self.commands(fields, "run", what, required=True)
        check = self.check(fields, what)
        hint = self.text(fields, "hint", what, required=False)
        try_ = self._try(fields.get("try"), what) if "try" in fields else None
        if not (sid and title and text and run):
            return None
        return Step(sid, title, text, run, check, hint, try_, node.start_mark.line + 1)

    def _try(self, node: Any, step_what: str) -> Try | None:
        what = f"{step_what} try"
        fields = self.mapping(node, what, TRY_KEYS, ("task", "check"))
        if fields is None:
            return None
        task = self.text(fields, "task", what)
        check = self.check(fields, what)
        hint = self.text(fields, "hint", what, required=False)
        solution = self.commands(fields, "solution", f"{what} solution", required=False)
        if not (task and check):
            return None
        return Try(task, check, hint, solution)


def _close(word: str, choices: set[str]) -> str | None:
    import difflib

    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return close[0] if close else None


def parse_course(text: str, source: str = "<lessons>", *, check_command: Validator | None = None,
                 check_check: Validator | None = None) -> Course:
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        root = yaml.compose(text, Loader=loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise CourseError(source, [Problem(line, f"not valid YAML: {exc.problem or exc.context}")]) from None
    except yaml.YAMLError as exc:
        raise CourseError(source, [Problem(0, f"not valid YAML: {exc}")]) from None
    if root is None:
        raise CourseError(source, [Problem(0, "the file is empty")])
    reader = _Reader(source, check_command, check_check)
    course = reader.course(root)
    if reader.problems or course is None:
        raise CourseError(source, reader.problems)
    return course


def load_course(path: Path, *, check_command: Validator | None = None, check_check: Validator | None = None) -> Course:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise JailshellError(f"cannot read lessons file {path}: {exc.strerror}",
                             hint="check the path given to --lessons") from None
    except UnicodeDecodeError as exc:
        raise CourseError(str(path), [Problem(0, f"not UTF-8 text ({exc.reason})")]) from None
    return parse_course(text, str(path), check_command=check_command, check_check=check_check)
