"""Lessons: the loader's FILE:LINE errors, the shipped course, progress on disk,
checks on the live kernel, and play/lint/handout end to end."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

from jailshell.cli import main
from jailshell.commands.builtin import default_registry, load_course
from jailshell.lessons.checks import default_checks
from jailshell.lessons.loader import CourseError, default_path, parse_course
from jailshell.lessons.progress import Progress

# A one-lesson course up to its steps: the tests' small courses add their own.
TINY_HEADER = """\
format_version: 1
id: tiny
title: Tiny
welcome: Hello.
final: Bye.
lessons:
  - id: one
    title: One
    summary: The only lesson.
    steps:
"""

GOOD = TINY_HEADER + """\
      - id: a
        title: First
        text: Do it.
        run: unshare uts
        check: isolated uts
"""


def parse(text: str) -> object:
    reg = default_registry()
    return parse_course(textwrap.dedent(text), "course.yaml", check_command=reg.check_lesson_line,
                        check_check=default_checks().validate)


def problems(text: str) -> list[str]:
    with pytest.raises(CourseError) as exc:
        parse(text)
    return exc.value.lines


def test_a_good_course_loads() -> None:
    course = parse(GOOD)
    assert course.lessons[0].steps[0].run == ("unshare uts",)  # type: ignore[attr-defined]


def test_the_shipped_course_passes_lint() -> None:
    course = load_course()
    assert course.lessons and all(lesson.steps for lesson in course.lessons)
    assert main(["lint"]) == 0
    # The package's copy is the file at the top of the tree (a symlink), so the wheel ships the same course.
    assert default_path().resolve() == (Path(__file__).resolve().parent.parent / "lessons.yaml")


def test_every_shipped_lesson_has_a_task_with_check_hint_and_solution() -> None:
    for lesson in load_course().lessons:
        tasks = [s.try_ for s in lesson.steps if s.try_]
        assert tasks, f"lesson {lesson.id} has no task for the learner"
        for t in tasks:
            assert t.check and t.hint and t.solution, lesson.id


def test_duplicate_ids_are_reported_with_both_lines() -> None:
    bad = GOOD + (
        "  - id: one\n"
        "    title: Again\n"
        "    summary: Same id.\n"
        "    steps:\n"
        "      - id: a\n"
        "        title: X\n"
        "        text: Y\n"
        "        run: unshare pid\n"
        "      - id: a\n"
        "        title: X2\n"
        "        text: Y2\n"
        "        run: unshare mnt\n")
    lines = problems(bad)
    assert "course.yaml:24: lesson 'one': step id 'a' is used twice (first at line 20)" in lines
    assert "course.yaml:16: lesson id 'one' is used twice (first at line 7)" in lines


def test_unknown_commands_and_checks_are_reported_where_they_are() -> None:
    lines = problems(GOOD.replace("run: unshare uts", "run: [unshar uts, next]").replace(
        "check: isolated uts", "check: isolatd uts"))
    assert lines == [
        "course.yaml:14: step 'a': 'unshar uts': unknown command 'unshar' — did you mean 'unshare'?",
        "course.yaml:14: step 'a': 'next': 'next' cannot be run by a lesson step (it is for the learner to type)",
        "course.yaml:15: step 'a': check 'isolatd uts': unknown check 'isolatd' — did you mean 'isolated'?",
    ]
    assert problems(GOOD.replace("check: isolated uts", "check: isolated tus")) == [
        "course.yaml:15: step 'a': check 'isolated tus': 'tus' is not one of: uts, pid, mnt, ipc, net, user, cgroup"]


def test_empty_texts_missing_and_misspelt_keys() -> None:
    lines = problems(GOOD.replace("text: Do it.", "text: '  '").replace("summary: The only lesson.", "sumary: x"))
    assert "course.yaml:9: lesson: unknown key 'sumary' — did you mean 'summary'? (allowed: id, setup, steps, " \
           "summary, title)" in lines
    assert "course.yaml:7: lesson: 'summary' is missing" in lines
    assert "course.yaml:13: step 'a': 'text' is empty" in lines


def test_yaml_syntax_errors_and_versions() -> None:
    assert problems("format_version: 1\ntitle: [unclosed\n")[0].startswith("course.yaml:3: not valid YAML")
    assert problems(GOOD.replace("format_version: 1", "format_version: 2")) == [
        "course.yaml:1: format_version 2 is not supported (this jailshell reads 1)"]
    assert problems("") == ["course.yaml: the file is empty"]


def test_lint_command_prints_file_line_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("run: unshare uts", "run: unshare nope"))
    assert main(["lint", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:14: step 'a': 'unshare nope': 'unshare': unknown kind 'nope'" in err


def test_progress_is_saved_by_id_atomically_and_survives_damage(tmp_path: Path) -> None:
    path = tmp_path / "state" / "progress.json"
    p = Progress.load(path)
    p.mark_done("c", "l1", "s1")
    p.set_position("c", ("l1", "s2"))
    p.save()
    assert [f.name for f in path.parent.iterdir()] == ["progress.json"]  # no temporary file left behind
    again = Progress.load(path)
    assert again.course("c").position == ("l1", "s2") and again.course("c").done == {"l1": ["s1"]}

    path.write_text('{"format": 1, "courses": {"c": {"position": [1, 2]')  # cut short
    damaged = Progress.load(path)
    assert damaged.courses == {} and damaged.warning and "damaged" in damaged.warning
    assert (path.parent / "progress.json.damaged").exists()
    damaged.save()
    assert json.loads(path.read_text())["format"] == 1


def test_progress_export_and_import_merge(tmp_path: Path) -> None:
    here, there = Progress.load(tmp_path / "a.json"), Progress.load(tmp_path / "b.json")
    here.mark_done("c", "l1", "s1")
    there.mark_done("c", "l1", "s2")
    there.set_position("c", ("l2", "x"))
    there.export(tmp_path / "carried.json")
    assert here.import_(tmp_path / "carried.json") == 1
    assert here.course("c").done == {"l1": ["s1", "s2"]} and here.course("c").position == ("l2", "x")
    (tmp_path / "junk.json").write_text("[]")
    with pytest.raises(Exception, match="not a jailshell progress file"):
        here.import_(tmp_path / "junk.json")


def test_check_registry_validates_names_and_arguments() -> None:
    checks = default_checks()
    assert checks.validate("isolated uts") is None
    assert checks.validate("exec-ok test -d /proc/1") is None
    assert checks.validate("isolated") == "usage: isolated KIND"
    assert checks.validate("pid1 extra") == "usage: pid1"
    assert "unknown check" in (checks.validate("nothing-like-it") or "")


# -- on the real kernel ---------------------------------------------------------------------


@pytest.mark.root
def test_checks_see_the_kernel_not_the_bookkeeping() -> None:
    from jailshell.engine.jail import Jail

    checks = default_checks()
    with Jail.create() as jail:
        assert not checks.evaluate("isolated uts", jail).ok
        assert checks.evaluate("shared uts", jail).ok
        assert checks.evaluate("root-is host", jail).ok
        assert not checks.evaluate("pid1", jail).ok
        jail.unshare("uts")
        jail.sethostname("checked")
        assert checks.evaluate("isolated uts", jail).ok
        assert checks.evaluate("hostname-is checked", jail).ok
        assert not checks.evaluate("hostname-is other", jail).ok
        jail.unshare("pid")
        jail.unshare("mnt")
        assert checks.evaluate("pid1", jail).ok
        assert checks.evaluate("no-shared-mounts", jail).ok
        assert not checks.evaluate("mounted proc", jail).ok
        jail.mount("proc")
        assert checks.evaluate("mounted proc", jail).ok and checks.evaluate("not-on-host proc", jail).ok
        jail.chroot()
        assert checks.evaluate("root-is chroot", jail).ok and not checks.evaluate("old-root-gone", jail).ok
        assert checks.evaluate("escape-works", jail).ok
        assert checks.evaluate("sees-only-jail-processes", jail).ok
        assert checks.evaluate("exec-prints checked hostname", jail).ok
        assert checks.evaluate("exec-fails test -e /no/such/file", jail).ok
        jail.pivot_root()
        assert checks.evaluate("root-is pivot", jail).ok and checks.evaluate("old-root-gone", jail).ok
        assert checks.evaluate("escape-fails", jail).ok


@pytest.mark.root
def test_every_lesson_plays_with_every_check_passing(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the course writes files where it runs (docker export -o)
    assert main(["play", "--all", "--check"]) == 0
    out = capsys.readouterr()
    assert "every check passed" in out.err
    assert "docker" in out.out and "raw" in out.out


@pytest.mark.root
def test_play_check_fails_when_a_task_check_cannot_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    course = tmp_path / "c.yaml"
    course.write_text(GOOD + (
        "        try:\n"
        "          task: Anything.\n"
        "          check: isolated uts\n"
        "          hint: Nothing to do.\n"
        "          solution: exec true\n"))
    assert main(["play", "--all", "--check", "--lessons", str(course)]) == 1
    assert "one/a: the task's check 'isolated uts' passes before the task is done" in capsys.readouterr().err


@pytest.mark.root
def test_handout_has_every_command_of_the_lesson(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the course writes files where it runs (docker export -o)
    assert main(["handout", "namespaces"]) == 0
    md = capsys.readouterr().out
    course = load_course()
    lesson = course.lessons[course.lesson_index("namespaces") or 0]
    for step in lesson.steps:
        assert f"## {lesson.steps.index(step) + 1}. {step.title}" in md
        for line in step.run:
            assert f"\n{line}\n" in md
    assert "nsenter --target $JAIL --uts hostname jail" in md
    assert re.search(r"--target \d|/proc/\d", md) is None  # no PID of the throwaway jail is left
    out = tmp_path / "all.html"
    assert main(["handout", "all", "--format", "html", "-o", str(out)]) == 0
    page = out.read_text()
    assert page.startswith("<!doctype html>") and page.count("<h1>") == len(course.lessons)
