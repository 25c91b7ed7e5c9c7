"""`jailshell handout LESSON [--format md|html] [-o FILE]`: a lesson as a
printable handout with every command, generated from the course itself."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("lesson", metavar="LESSON", help="lesson id or number (`all` for every lesson)")
    p.add_argument("--format", choices=("md", "html"), default="md", help="Markdown (default) or HTML")
    p.add_argument("-o", "--output", type=Path, default=None, metavar="FILE", help="write here (default: stdout)")
    p.add_argument("--lessons", dest="lessons_file", type=Path, default=None, metavar="FILE", help="another course")
    p.add_argument("--image", default=None, metavar="REF", help="image for the jail the commands are made on")


def run(args: argparse.Namespace) -> int:
    import io
    import sys

    from jailshell.commands.builtin import build_workspace
    from jailshell.context import AppContext
    from jailshell.errors import JailshellError
    from jailshell.lessons import handout
    from jailshell.lessons.cli_play import _pick

    # The throwaway jail's screens are not wanted: its output goes nowhere.
    ctx = AppContext.from_environment(stdout=io.StringIO(), stdout_isatty=False, stdin_isatty=False)
    ws = build_workspace(ctx, lessons=args.lessons_file, image=args.image, keep_progress=False)
    assert ws.tutor is not None
    course = ws.tutor.course
    picked = range(len(course.lessons)) if args.lesson == "all" else [_pick(course, args.lesson)]
    parts = []
    try:
        for li in picked:
            lesson = course.lessons[li]
            try:
                shown: handout.Shown | None = handout.collect(ws, lesson)
            except JailshellError as exc:
                print(f"jailshell: handout without docker/raw commands: {exc.message}", file=sys.stderr)
                shown = None
            parts.append(handout.markdown(course, lesson, shown))
    finally:
        ws.close()
    text = "\n\n".join(parts)
    if args.format == "html":
        title = course.title if len(parts) > 1 else f"{course.title}: {course.lessons[picked[0]].title}"
        text = handout.to_html(text, title)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
        print(f"jailshell: wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
