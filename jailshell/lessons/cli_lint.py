"""`jailshell lint [FILE...]`: check lessons files the way jailshell reads them
(every problem as FILE:LINE: message); without FILE, the shipped course."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", type=Path, metavar="FILE", help="lessons files (default: the shipped course)")


def run(args: argparse.Namespace) -> int:
    import sys

    from jailshell.commands.builtin import load_course
    from jailshell.lessons.loader import CourseError, default_path

    status = 0
    for path in args.files or [default_path()]:
        try:
            course = load_course(path)
        except CourseError as exc:
            for line in exc.lines:
                print(line, file=sys.stderr)
            status = 1
            continue
        steps = sum(len(lesson.steps) for lesson in course.lessons)
        tasks = sum(1 for lesson in course.lessons for s in lesson.steps if s.try_)
        print(f"{path}: ok — “{course.title}”: {len(course.lessons)} lessons, {steps} steps, {tasks} tasks")
    return status
