"""`jailshell play LESSON|--all [--check] [--speed S]`: the lessons played
without a learner, on real jails, printing the same screens as the REPL.
For instructors (a scripted demo) and for CI (`--check`: every step's check
must pass, and every task's check must fail before its solution and pass
after it)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jailshell.commands.workspace import Workspace
    from jailshell.lessons.spec import Lesson
    from jailshell.ui.render import Renderer

# Seconds of pause after a step at --speed 1; commands are typed at this many characters a second.
STEP_PAUSE = 1.5
TYPING = 25.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("lessons", nargs="*", metavar="LESSON", help="lesson ids or numbers")
    p.add_argument("--all", action="store_true", help="every lesson of the course")
    p.add_argument("--check", action="store_true",
                   help="exit non-zero when a check fails (and prove each task's check can fail)")
    p.add_argument("--speed", type=float, default=None, metavar="S",
                   help="pace: pauses are divided by S; 0 = no pauses (default: 1 on a terminal, 0 otherwise)")
    p.add_argument("--lessons", dest="lessons_file", type=Path, default=None, metavar="FILE", help="another course")
    p.add_argument("--image", default=None, metavar="REF", help="image for the jail")


class Player:
    def __init__(self, ws: Workspace, out: Renderer, *, check: bool, speed: float, typing: bool):
        self.ws, self.out = ws, out
        self.check, self.speed, self.typing = check, speed, typing
        self.failures: list[str] = []

    def pause(self, seconds: float) -> None:
        if self.speed > 0:
            time.sleep(seconds / self.speed)

    def type_out(self, line: str) -> None:
        if not (self.typing and self.speed > 0):
            return
        console = self.out.console
        console.print("jailshell> ", end="", style="js.note")
        for ch in line:
            console.print(ch, end="")
            console.file.flush()
            time.sleep(1 / (TYPING * self.speed))
        console.print()

    def play(self, li: int) -> None:
        from jailshell.commands.results import LessonStepView, Message

        tutor = self.ws.tutor
        assert tutor is not None
        lesson: Lesson = tutor.course.lessons[li]
        self.out.render(tutor.goto(self.ws, li, 0))
        for step in lesson.steps:
            ref = f"{lesson.id}/{step.id}"
            self.type_out("; ".join(step.run))
            view: Any = tutor.run_pending(self.ws)
            self.out.render(view)
            if not isinstance(view, LessonStepView):
                continue
            errors = [r for r in view.results if isinstance(r, Message) and r.level == "error"]
            if errors:
                self.failures.append(f"{ref}: {errors[0].text}")
                return  # the rest of the lesson builds on this step
            if view.check is not None and not view.check.ok:
                self.failures.append(f"{ref}: check '{view.check.name}' failed: {view.check.detail}")
            if self.check and step.try_ is not None:
                self.prove_task(ref, step.try_.check, step.try_.solution)
            self.pause(STEP_PAUSE)

    def prove_task(self, ref: str, check: str, solution: tuple[str, ...]) -> None:
        from jailshell.errors import JailshellError

        tutor = self.ws.tutor
        assert tutor is not None
        before = self.ws.evaluate(check, "try")
        if before.ok:
            self.failures.append(f"{ref}: the task's check '{check}' passes before the task is done")
        if not solution:
            self.failures.append(f"{ref}: the task has no solution to prove its check with")
            return
        for line in solution:
            self.type_out(line)
            try:
                self.out.render(self.ws.run_line(line))
            except JailshellError as exc:
                self.failures.append(f"{ref}: task solution '{line}' failed: {exc.message}")
                return
        after = self.ws.evaluate(check, "try")
        self.out.render(after)
        if not after.ok:
            self.failures.append(f"{ref}: the task's check '{check}' fails after its solution: {after.detail}")
        tutor.open_try = None
        tutor.forget_jail()  # the next step starts from the lesson's own state, not the solution's


def run(args: argparse.Namespace) -> int:
    import sys

    from jailshell.commands.builtin import build_workspace
    from jailshell.context import AppContext
    from jailshell.errors import InvalidInput
    from jailshell.ui.render import Renderer

    ctx = AppContext.from_environment()
    ws = build_workspace(ctx, lessons=args.lessons_file, image=args.image, keep_progress=False)
    tutor = ws.tutor
    assert tutor is not None
    course = tutor.course
    if args.all == bool(args.lessons):
        raise InvalidInput("name the lessons to play, or --all (not both)",
                           hint="lessons: " + ", ".join(lesson.id for lesson in course.lessons))
    picked = list(range(len(course.lessons))) if args.all else [_pick(course, name) for name in args.lessons]
    speed = args.speed if args.speed is not None else (1.0 if ctx.stdout_isatty else 0.0)
    player = Player(ws, Renderer(ctx.console), check=args.check, speed=speed, typing=ctx.stdout_isatty)
    try:
        for li in picked:
            player.play(li)
    finally:
        ws.close()
    if player.failures:
        print(f"\n{len(player.failures)} problem{'s' if len(player.failures) > 1 else ''}:", file=sys.stderr)
        for f in player.failures:
            print(f"  {f}", file=sys.stderr)
        return 1
    print(f"\nplayed {len(picked)} lesson{'s' if len(picked) > 1 else ''}: every step ran"
          + (", every check passed" if args.check else ""), file=sys.stderr)
    return 0


def _pick(course: Any, name: str) -> int:
    from jailshell.errors import InvalidInput

    if name.isdigit() and 1 <= int(name) <= len(course.lessons):
        return int(name) - 1
    li = course.lesson_index(name)
    if li is None:
        raise InvalidInput(f"no lesson '{name}'", hint="lessons: " + ", ".join(x.id for x in course.lessons))
    return int(li)
