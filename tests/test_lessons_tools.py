"""`jailshell lint`, `play` and `handout`, and `jailshell --lessons FILE`, on
a course of the tests' own (tests/data/course.yaml), so they are proven
whatever the shipped course holds at the moment."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from jailshell.cli import main

COURSE = Path(__file__).parent / "data" / "course.yaml"


def test_lint_accepts_a_good_course_and_names_its_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", str(COURSE)]) == 0
    assert f"{COURSE}: ok — “Containers by hand”: 3 lessons, 11 steps, 2 tasks" in capsys.readouterr().out


def test_lint_reports_every_problem_with_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    text = COURSE.read_text()
    text = text.replace("run: cgroup memory=64M pids=20 cpu=0.5", "run: cgroup memory=64Q")
    text = text.replace("check: pid1\n", "check: pid-one\n", 1)
    text = text.replace("      - id: two-pids", "      - id: unshare-pid", 1)
    bad.write_text(text)
    assert main(["lint", str(COURSE), str(bad)]) == 1
    captured = capsys.readouterr()
    assert f"{COURSE}: ok" in captured.out  # each file on its own
    err = captured.err.splitlines()
    lines = {i + 1: line for i, line in enumerate(text.splitlines())}

    def at(fragment: str) -> int:
        return next(n for n, line in lines.items() if fragment in line)

    assert any(e.startswith(f"{bad}:{at('cgroup memory=64Q')}:") and "memory=64Q: not a size" in e for e in err), err
    assert any(e.startswith(f"{bad}:{at('check: pid-one')}:") and "unknown check 'pid-one'" in e for e in err), err
    assert any(e.startswith(f"{bad}:") and "step id 'unshare-pid' is used twice (first at line" in e
               for e in err), err


def test_the_repl_refuses_a_broken_course_with_file_and_line(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(COURSE.read_text().replace("run: unshare uts\n", "run: unshar uts\n", 1))
    assert main(["--lessons", str(bad)]) == 1
    err = capsys.readouterr().err
    assert re.search(rf"{re.escape(str(bad))}:\d+: step 'unshare-uts': .*unknown command 'unshar' — did you mean "
                     r"'unshare'\?", err), err


@pytest.mark.root
def test_play_runs_the_cgroup_lesson_with_every_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["play", "limits", "--check", "--lessons", str(COURSE)]) == 0
    out = capsys.readouterr()
    assert "played 1 lesson: every step ran, every check passed" in out.err
    assert "docker update --memory 64m --pids-limit 20 --cpus 0.5 CONTAINER" in out.out
    assert "task limit" in out.out and "raw · the same on cgroup v" in out.out


@pytest.mark.root
def test_play_speed_paces_the_steps(capsys: pytest.CaptureFixture[str]) -> None:
    from jailshell.lessons.cli_play import STEP_PAUSE

    t0 = time.monotonic()
    assert main(["play", "1", "--speed", "0", "--lessons", str(COURSE)]) == 0
    fast = time.monotonic() - t0
    t0 = time.monotonic()
    assert main(["play", "1", "--speed", "10", "--lessons", str(COURSE)]) == 0
    paced = time.monotonic() - t0
    steps = 5
    assert paced - fast > 0.8 * steps * STEP_PAUSE / 10, (fast, paced)
    assert main(["play", "nowhere", "--lessons", str(COURSE)]) == 2
    assert "no lesson 'nowhere'" in capsys.readouterr().err


@pytest.mark.root
def test_handout_of_an_instructor_s_course(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["handout", "limits", "--lessons", str(COURSE)]) == 0
    md = capsys.readouterr().out
    assert md.startswith("# Containers by hand — lesson 3: Limits with a cgroup")
    assert "\ncgroup memory=64M pids=20 cpu=0.5\n" in md
    assert "echo $JAIL > /sys/fs/cgroup/" in md and "/jailshell/$JAILID/" in md
    assert re.search(r"--target \d|/proc/\d|echo \d+ > .*cgroup.procs", md) is None
    out = tmp_path / "h.html"
    assert main(["handout", "all", "--format", "html", "-o", str(out), "--lessons", str(COURSE)]) == 0
    page = out.read_text()
    assert page.startswith("<!doctype html>") and page.count("<h1>") == 3
