"""Commands that move through the course and manage the session: next, back,
step, lessons, hint, check, undo, reset, script, progress, help, quit."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from jailshell.commands.registry import Arg, Args, Command
from jailshell.commands.results import Confirm, HelpView, Message, Quit, Results
from jailshell.errors import InvalidInput, JailshellError

if TYPE_CHECKING:
    from jailshell.commands.tutor import Tutor
    from jailshell.commands.workspace import Workspace


def _tutor(ws: Workspace) -> Tutor:
    if ws.tutor is None:
        raise InvalidInput("no course is loaded", hint="start jailshell with --lessons FILE")
    return ws.tutor


def _confirmed(ws: Workspace, args: Args) -> bool:
    # Piped input and `--yes` have already said what they mean.
    return bool(args.get("yes")) or not ws.ctx.interactive


def cmd_next(ws: Workspace, args: Args) -> Any:
    return _tutor(ws).run_pending(ws)


def cmd_back(ws: Workspace, args: Args) -> Any:
    return _tutor(ws).back(ws)


def cmd_step(ws: Workspace, args: Args) -> Any:
    return _tutor(ws).goto_ref(ws, args["ref"])


def cmd_lessons(ws: Workspace, args: Args) -> Any:
    return _tutor(ws).lessons()


def cmd_hint(ws: Workspace, args: Args) -> Any:
    return _tutor(ws).hint()


def cmd_check(ws: Workspace, args: Args) -> Any:
    outcomes = _tutor(ws).check(ws)
    if not outcomes:
        return Message("Nothing to check yet: run a step first (Enter).")
    return Results(list(outcomes))


def cmd_undo(ws: Workspace, args: Args) -> Any:
    done = ws.session.done
    if not ws.session.running or not [d for d in done if d.op != "create"]:
        raise InvalidInput("nothing to undo: no step has been done to this jail")
    last = done[-1]
    tutor = ws.tutor
    if tutor is not None and last.origin is not None:
        # The lesson step it came from is pending again; Enter rebuilds and reruns it.
        found = tutor.course.find(f"{last.origin[0]}/{last.origin[1]}")
        if found:
            tutor.li, tutor.si = found
            tutor.open_try = None
        tutor.forget_jail()
    if last.revert:
        try:
            report = ws.run_line(last.revert)
        except JailshellError as exc:
            note = f"Taking it back in place failed ({exc.message})"
        else:
            del ws.session.done[-2:]  # the step and its reversal cancel out
            return Results([Message(f"Undone in place: `{last.revert}` took back `{last.line}`.", "ok"), report])
    else:
        note = f"`{last.line}` cannot be taken back in place: {last.why_not}"
    lines = [(d.line, d.origin) for d in done[:-1] if d.op != "create"]
    ws.replay(lines)
    return Message(f"{note}. A fresh jail was started instead and the {len(lines)} commands before it were "
                   "replayed on it.", "warn")


def cmd_reset(ws: Workspace, args: Args) -> Any:
    tutor = _tutor(ws)
    everything = args.get("scope") == "all"
    if _confirmed(ws, args):
        return tutor.reset(ws, everything)
    what = "all your progress, and start the course over" if everything else \
        "this lesson and start it over on a fresh jail"
    return Confirm(f"Reset {what}?", lambda: tutor.reset(ws, everything), Message("Nothing was reset."))


def cmd_script(ws: Workspace, args: Args) -> Message:
    from jailshell.commands import script
    from jailshell.context import own_by_invoking_user

    path = Path(args.get("file") or "jailshell-session.sh")
    text = script.build(ws.session, path.name)
    try:
        path.write_text(text, encoding="utf-8")
        path.chmod(0o755)
    except OSError as exc:
        raise JailshellError(f"cannot write {path}: {exc.strerror}") from None
    own_by_invoking_user(path)
    steps = len([d for d in ws.session.done if d.op != "create"])
    return Message(f"Wrote {path}: the raw commands of the {steps} steps done so far, with comments. "
                   f"Run it as root: sudo sh {path}", "ok")


def cmd_progress(ws: Workspace, args: Args) -> Any:
    tutor = _tutor(ws)
    action, file = args.get("action") or "show", args.get("file")
    if action == "show":
        return tutor.lessons()
    if action == "export":
        dest = Path(file or "jailshell-progress.json")
        tutor.progress.export(dest)
        return Message(f"Progress written to {dest}; on another machine: progress import {dest}", "ok")
    if not file:
        raise InvalidInput("progress import needs FILE")
    added = tutor.progress.import_(Path(file))
    tutor.progress.save()
    saved = tutor.progress.course(tutor.course.id).position
    found = tutor.course.find(f"{saved[0]}/{saved[1]}") if saved else None
    if found and found != (tutor.li, tutor.si):
        tutor.li, tutor.si = found
        tutor.forget_jail()
    return Results([Message(f"Imported {file}: {added} steps new here.", "ok"), tutor.preview()])


def cmd_help(ws: Workspace, args: Args) -> HelpView:
    name = args.get("command")
    if name:
        return HelpView(list(ws.registry), ws.registry.resolve(name))
    return HelpView(list(ws.registry))


def cmd_quit(ws: Workspace, args: Args) -> Any:
    if ws.session.running and not _confirmed(ws, args):
        jail = ws.session.jail
        assert jail is not None
        return Confirm(f"The jail (PID {jail.pid}) is running. Quit and tear it down?", lambda: Quit(0),
                       Message("Still here."), default=True)
    return Quit(0)


def commands() -> list[Command]:
    def refs(ws: Workspace) -> list[str]:
        if ws.tutor is None:
            return []
        course = ws.tutor.course
        here = course.lessons[ws.tutor.li].steps if not ws.tutor.finished else ()
        return [s.id for s in here] + course.refs()

    def names(ws: Workspace) -> list[str]:
        return ws.registry.names(aliases=False)

    yes = Arg("yes", "do not ask", ("--yes", "-y"), optional=True)
    return [
        Command("next", cmd_next, "run the next step of the lesson (Enter on an empty line does the same)",
                aliases=("n",), group="course", in_lessons=False),
        Command("back", cmd_back, "go back one step (the jail is rebuilt up to it)", aliases=("b", "prev"),
                group="course", in_lessons=False),
        Command("step", cmd_step, "jump to a step: STEP, N, LESSON or LESSON/STEP (earlier steps are replayed "
                "on a fresh jail)", (Arg("ref", "step id", refs),), ("goto",), group="course", in_lessons=False),
        Command("lessons", cmd_lessons, "the lessons and steps, with what is done", aliases=("ls",),
                group="course", in_lessons=False),
        Command("hint", cmd_hint, "a hint for the current step or task", group="course", in_lessons=False),
        Command("check", cmd_check, "check the last step and the open task against the live kernel state",
                group="course", in_lessons=False),
        Command("undo", cmd_undo, "take back the last step (or rebuild without it where the kernel cannot)",
                group="course", in_lessons=False),
        Command("reset", cmd_reset, "start this lesson (or `all`: the whole course) over; asks first",
                (Arg("scope", "lesson or all", ("lesson", "all"), optional=True), yes), group="course",
                in_lessons=False),
        Command("script", cmd_script, "write the raw commands done so far as a runnable, commented shell script",
                (Arg("file", "where to write it (default jailshell-session.sh)", optional=True),), group="session",
                in_lessons=False),
        Command("progress", cmd_progress, "show progress, or export/import it to carry it to another machine",
                (Arg("action", "show, export or import", ("show", "export", "import"), optional=True),
                 Arg("file", optional=True)), group="session", in_lessons=False),
        Command("help", cmd_help, "all commands, or one in detail", (Arg("command", "a command", names,
                                                                         optional=True),),
                ("?", "h"), group="session", in_lessons=False),
        Command("quit", cmd_quit, "leave jailshell (the jail is torn down; asks first)", (yes,), ("exit", "q"),
                group="session", in_lessons=False),
    ]
