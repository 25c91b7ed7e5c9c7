"""The REPL in-process: prompt_toolkit reads from a pipe, draws on a dummy
output, and everything the learner would read is rendered into a buffer."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from jailshell.commands.builtin import build_workspace
from jailshell.commands.registry import Command
from jailshell.commands.workspace import Workspace
from jailshell.context import AppContext
from jailshell.ui.app import Repl, run_piped
from jailshell.ui.completer import CommandCompleter
from jailshell.ui.lexer import lex_line
from jailshell.ui.toolbar import create_toolbar_tokens_func

# The REPL is tested on a course of its own, so the shipped one can change freely.
COURSE = Path(__file__).parent / "data" / "course.yaml"
F1 = "\x1bOP"
CTRL_C, CTRL_D = "\x03", "\x04"
# A fixed course: these tests are about the REPL, not about the shipped course's contents.
COURSE = Path(__file__).parent / "data" / "course.yaml"


class Session:
    """One REPL run: keys in, rendered text and exit status out."""

    def __init__(self, state: Path, *, lessons: Path | None = COURSE):
        self.buf = io.StringIO()
        self.ctx = AppContext.for_streams(self.buf, width=100, state_dir=state, stdin_isatty=True,
                                          stdout_isatty=True)
        self.ws: Workspace = build_workspace(self.ctx, lessons=lessons)

    def run(self, keys: str, before: Any = None) -> tuple[str, int]:
        with create_pipe_input() as inp:
            inp.send_text(keys)
            inp.close()
            repl = Repl(self.ctx, self.ws, pt_input=inp, pt_output=DummyOutput(), history=False)
            if before is not None:
                before(repl)
            status = repl.run()
        return self.buf.getvalue(), status


def flat(text: str) -> str:
    """Rendered text with its line wrapping undone, for matching whole sentences."""
    return " ".join(text.split())


@pytest.fixture
def session(tmp_path: Path) -> Session:
    return Session(tmp_path / "state")


# -- without a jail -------------------------------------------------------------------------


def test_welcome_says_where_the_learner_is_and_how_to_move(session: Session) -> None:
    out, status = session.run(CTRL_D)
    assert "jailshell · Containers by hand" in out
    assert "You are at lesson 1/" in out and "Enter runs: create" in out
    for word in ("next", "back", "step ID", "lessons", "hint", "reset", "help", "quit"):
        assert word in out
    assert status == 0


def test_unknown_command_suggests_and_the_session_goes_on(session: Session) -> None:
    out, _ = session.run("unshar uts\rhelp\r" + CTRL_D)
    assert "error: unknown command 'unshar' — did you mean 'unshare'?" in flat(out)
    assert "the jail, step by step" in flat(out)  # help ran afterwards


def test_ctrl_c_at_the_prompt_clears_the_line(session: Session) -> None:
    out, _ = session.run("unshar" + CTRL_C + "lessons\r" + CTRL_D)
    assert "unknown command" not in out
    assert "uts-and-pid" in out


def test_function_key_runs_help(session: Session) -> None:
    out, _ = session.run(F1 + CTRL_D)
    assert "the jail, step by step" in out


def test_tab_completes_a_command(session: Session) -> None:
    out, _ = session.run("less\t\r" + CTRL_D)
    assert "UTS and PID namespaces, one at a time" in out  # `lessons` ran


def test_a_bug_in_a_command_is_shown_and_the_session_survives(session: Session) -> None:
    def boom(ws: object, args: dict[str, object]) -> None:
        raise RuntimeError("kaboom")

    session.ws.registry.add(Command("boom", boom, "a broken command"))
    out, _ = session.run("boom\rhint\r" + CTRL_D)
    assert "RuntimeError: kaboom" in flat(out) and "bug in jailshell" in flat(out)
    assert "Press Enter on an empty line to run the step." in flat(out)  # the hint after it


def test_usage_errors_and_bad_step_refs(session: Session) -> None:
    out, status = session.run("unshare\rstep nowhere\r" + CTRL_D)
    assert "error: 'unshare' needs KIND" in flat(out) and "hint: usage: unshare KIND" in flat(out)
    assert "error: no lesson or step 'nowhere'" in flat(out)
    assert status == 2


def test_progress_is_resumed_by_id(session: Session, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "progress.json").write_text(json.dumps(
        {"format": 1, "courses": {"containers-by-hand": {"position": ["uts-and-pid", "hostname"], "done": {}}}}))
    out, _ = Session(state).run(CTRL_D)
    assert "Welcome back. You are at lesson 1/3 · step 3/5" in flat(out)
    (state / "progress.json").write_text("{not json")
    out, _ = Session(state).run(CTRL_D)
    assert "your progress file was damaged" in flat(out) and "You are at lesson 1/3 · step 1/5" in flat(out)


def test_completion_of_commands_and_arguments(session: Session) -> None:
    comp = CommandCompleter(session.ws)

    def words(text: str) -> list[str]:
        return [c.text for c in comp.get_completions(Document(text), None)]  # type: ignore[arg-type]

    assert words("uns") == ["unshare"]
    assert words("unshare ") == ["uts", "pid", "mnt", "ipc", "net", "user", "cgroup", "mount", "network",
                                 "hostname", "users"]
    assert words("mount p") == ["proc"]
    assert "uts-and-pid/hostname" in words("step uts-and-pid/")
    assert words("chroot /nonexistent/") == []


def test_chroot_completes_directories_as_the_command_reads_them(session: Session, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    comp = CommandCompleter(session.ws)

    def words(text: str) -> list[str]:
        return [c.text for c in comp.get_completions(Document(text), None)]  # type: ignore[arg-type]

    (tmp_path / "roots" / "alpine").mkdir(parents=True)
    (tmp_path / "roots" / "busybox").mkdir()
    (tmp_path / "roots" / "notes.txt").write_text("x")
    (tmp_path / "roots" / ".hidden").mkdir()
    assert words(f"chroot {tmp_path}/roots/") == ["alpine/", "busybox/"]  # directories only, no dot-files
    assert words(f"chroot {tmp_path}/roots/b") == ["busybox/"]
    assert words(f"untar {tmp_path}/roots/n") == ["notes.txt"]  # a file argument lists files too
    monkeypatch.chdir(tmp_path)
    assert words("chroot roots/a") == ["alpine/"]  # relative to where jailshell runs, as `chroot` reads it
    assert words("chroot $L") == []  # no lab yet: completing must not make one
    lab = session.ws.lab
    try:
        (lab / "root").mkdir()
        assert words("chroot $L") == ["$LAB/"]
        assert words("chroot $LAB/r") == ["root/"]
    finally:
        session.ws.close()


def test_lexer_marks_known_and_unknown_commands(session: Session) -> None:
    reg = session.ws.registry
    assert lex_line("unshare uts  # why", reg) == [("class:command", "unshare"), ("", " "),
                                                   ("class:argument", "uts"), ("", " "), ("", " "),
                                                   ("class:comment", "# why")]
    assert lex_line("unshar", reg)[0] == ("class:command.unknown", "unshar")
    assert lex_line("reset --yes", reg)[-1] == ("class:option", "--yes")


def test_toolbar_without_a_jail(session: Session) -> None:
    text = "".join(t for _, t in create_toolbar_tokens_func(session.ws)())
    assert "no jail yet" in text and "uts-and-pid 1/5" in text


def test_piped_input_runs_through_the_same_dispatcher(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    ctx = AppContext.for_streams(out, width=80, state_dir=tmp_path, stdin=io.StringIO("lessons\n# a comment\n\n"
                                                                                       "unshar uts\nhint\n"))
    ctx.stderr = err
    status = run_piped(ctx, build_workspace(ctx, lessons=COURSE))
    assert "uts-and-pid" in out.getvalue() and "Press Enter" in out.getvalue()
    assert err.getvalue().startswith("jailshell: line 4: unknown command 'unshar' — did you mean 'unshare'?")
    assert status == 2  # the last failure's status (a usage error)
    assert "\x1b[" not in out.getvalue()  # plain output


def test_shell_needs_a_terminal(tmp_path: Path) -> None:
    err = io.StringIO()
    ctx = AppContext.for_streams(io.StringIO(), state_dir=tmp_path, stdin=io.StringIO("shell\n"))
    ctx.stderr = err
    assert run_piped(ctx, build_workspace(ctx, lessons=COURSE)) == 1
    assert "'shell' needs a terminal" in err.getvalue()


# -- on the real kernel ---------------------------------------------------------------------

@pytest.mark.root
def test_enter_runs_the_first_steps_with_blocks_and_state(session: Session, tmp_path: Path) -> None:
    out, status = session.run("\r\r\r" + "quit --yes\r")
    assert out.count("jailshell · this prompt") == 3
    assert "docker · on the host" in out and "raw · on the host, in a second root terminal" in out
    uts = [line for line in out.splitlines() if line.strip().startswith("uts ") and "→" in line]
    assert uts and "isolated" in uts[0]
    assert "jail   vm → jail" in out
    assert out.count("✓ check") == 3 and status == 0
    saved = json.loads((tmp_path / "state" / "progress.json").read_text())["courses"]["containers-by-hand"]
    assert saved["position"] == ["uts-and-pid", "unshare-pid"]
    assert saved["done"]["uts-and-pid"] == ["start", "unshare-uts", "hostname"]
    assert session.ws.session.jail is None  # torn down on quit


@pytest.mark.root
def test_kernel_refusals_are_explained_and_change_nothing(session: Session) -> None:
    out, status = session.run("ns\rmount proc\rhostname nope\r" + CTRL_D)
    assert "error: refusing to mount proc: the jail has no mnt namespace yet, so the mount would appear on " \
           "the host" in flat(out)
    assert "hint: run `unshare mnt` first" in flat(out)
    assert "refusing to set the hostname: the jail has no uts namespace yet" in flat(out)
    assert out.count("The jail is as it was before this command.") == 2
    assert status == 1


@pytest.mark.root
def test_task_is_recognised_when_done_and_check_reports(session: Session) -> None:
    out, _ = session.run("\r\r\rhostname box\rcheck\rquit -y\r")
    assert "Task done: Give the jail another name, `box`" in flat(out)
    assert "✗ check hostname-is jail: host 'vm', jail 'box'" in flat(out)


@pytest.mark.root
def test_undo_in_place_and_by_replay(session: Session) -> None:
    out, _ = session.run("\r\r\rundo\rundo\rns\rquit -y\r")
    assert "Undone in place: `hostname vm` took back `hostname jail`." in flat(out)
    assert "`unshare uts` cannot be taken back in place: a process cannot leave a namespace" in flat(out)
    assert "A fresh jail was started instead and the 0 commands before it were replayed on it." in flat(out)
    last_ns = out.rsplit("namespaces: host vs jail", 1)[1]
    assert "shared" in next(line for line in last_ns.splitlines() if line.strip().startswith("uts "))


@pytest.mark.root
def test_step_id_replays_earlier_steps_on_a_fresh_jail(session: Session) -> None:
    out, _ = session.run("step uts-and-pid/unshare-pid\r\rback\rquit -y\r")
    assert "setup and steps 1–3 of “UTS and PID namespaces, one at a time” replayed (3 commands)" in flat(out)
    assert "✓ check pid1" in flat(out)
    assert "steps 1–3" in flat(out.rsplit("back", 1)[1])  # back: rebuilt up to step 4 again


@pytest.mark.root
def test_reset_and_quit_ask_first(session: Session) -> None:
    # (The questions are drawn by prompt_toolkit on its own output; what they decide shows here.)
    out, _ = session.run("\r\rreset\rn\rreset\ry\r" + CTRL_D + "n\r" + "hint\r" + "quit\ry\r")
    assert "Nothing was reset." in flat(out) and "“UTS and PID namespaces, one at a time” starts over." in flat(out)
    # Ctrl-D asked (answered no), so the session went on to `hint`, then `quit` asked and was answered yes.
    assert "Press Enter on an empty line to run the step." in flat(out)
    assert session.ws.session.jail is None


@pytest.mark.root
def test_ctrl_c_during_a_step_stops_the_step_not_the_repl(session: Session) -> None:
    def interrupt_when_sleeping() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as fh:
                        if fh.read() == b"sleep\x0017\x00":
                            os.kill(os.getpid(), signal.SIGINT)
                            return
                except OSError:
                    pass
            time.sleep(0.05)

    watcher = threading.Thread(target=interrupt_when_sleeping, daemon=True)
    t0 = time.monotonic()
    out, _ = session.run("ns\rexec sleep 17\rexec echo still-here\rquit -y\r", before=lambda r: watcher.start())
    assert time.monotonic() - t0 < 15
    assert "Interrupted." in out and "still-here" in out


@pytest.mark.root
def test_script_is_a_runnable_take_home(session: Session, tmp_path: Path) -> None:
    target = tmp_path / "take-home.sh"
    out, _ = session.run(f"\r\r\r\rstep mounts-and-proc/ps-inside\rscript {target}\rquit -y\r")
    assert f"Wrote {target}" in out
    text = target.read_text()
    assert text.startswith("#!/bin/sh\n") and "# 2. hostname jail" in text
    res = subprocess.run(["sh", str(target), "sh", "-c", "hostname; cat /proc/1/comm; ls /proc | grep -c '^[0-9]'"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split()[-3:]
    assert lines[0] == "jail" and lines[1] == "sleep" and int(lines[2]) <= 4


WALK_COURSE = """\
format_version: 1
id: walker
title: Walker
welcome: Hello.
final: Bye.
lessons:
  - id: one
    title: One
    summary: A plan walked by the lesson.
    steps:
      - id: plan
        title: The plan
        text: docker run, by hand.
        run: docker run --name walked --network none busybox true
      - id: walk
        title: Its first step
        text: The lesson walks it.
        run: walk
"""


def test_enter_walks_a_docker_plan_unless_the_lesson_walks_it(session: Session, tmp_path: Path) -> None:
    from jailshell.commands import docker_cmds
    from jailshell.ui.app import enter_line

    ws = session.ws
    assert enter_line(ws) == "next"
    docker_cmds._PENDING[ws] = object()  # type: ignore[assignment]  # a plan is being walked
    try:
        assert enter_line(ws) == "walk"
        bar = "".join(t for _, t in create_toolbar_tokens_func(ws)())
        assert "Enter walk the docker plan" in bar
        course = tmp_path / "walk.yaml"
        course.write_text(WALK_COURSE)
        walker = Session(tmp_path / "state2", lessons=course)
        assert walker.ws.tutor is not None
        walker.ws.tutor.li, walker.ws.tutor.si = 0, 1  # the lesson's next step is `walk`
        docker_cmds._PENDING[walker.ws] = object()  # type: ignore[assignment]
        assert enter_line(walker.ws) == "next"
    finally:
        docker_cmds._PENDING.pop(ws, None)
    free = Session(tmp_path / "state3", lessons=None)
    free.ws.tutor = None
    assert enter_line(free.ws) is None  # no course, no plan: Enter does nothing


def test_history_is_the_learner_s_and_theirs_under_sudo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pwd

    from jailshell import paths

    user = next(u for u in pwd.getpwall() if u.pw_uid not in (0, os.getuid()) and u.pw_dir not in ("", "/"))
    monkeypatch.delenv("JAILSHELL_STATE_DIR", raising=False)
    monkeypatch.setenv("SUDO_USER", user.pw_name)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "root-xdg"))
    if os.geteuid() == 0:
        # Under sudo, root's XDG_STATE_HOME is not the learner's: their home is used.
        assert paths.user_state_dir() == Path(user.pw_dir) / ".local/state/jailshell"
    monkeypatch.setenv("SUDO_UID", str(user.pw_uid))
    monkeypatch.setenv("SUDO_GID", str(user.pw_gid))
    s = Session(tmp_path / "state")
    with create_pipe_input() as inp:
        inp.send_text("lessons\r" + CTRL_D)
        inp.close()
        Repl(s.ctx, s.ws, pt_input=inp, pt_output=DummyOutput(), history=True).run()
    hist = tmp_path / "state" / "history"
    assert "+lessons" in hist.read_text()
    if os.geteuid() == 0:
        assert (hist.stat().st_uid, (tmp_path / "state").stat().st_uid) == (user.pw_uid, user.pw_uid)
    again = Session(tmp_path / "state")
    with create_pipe_input() as inp:
        inp.send_text("\x1b[A\r" + CTRL_D)  # Up recalls the last line of the earlier session
        inp.close()
        Repl(again.ctx, again.ws, pt_input=inp, pt_output=DummyOutput(), history=True).run()
    assert "uts-and-pid" in again.buf.getvalue()


@pytest.mark.root
def test_presenter_mode_asks_before_each_step_and_shows_both_sides(tmp_path: Path) -> None:
    s = Session(tmp_path / "state")
    s.ctx.present = True
    out, _ = s.run("\r" + "n\r" + "\r" + "y\r" + "\r" + "\r" + "quit --yes\r")
    # The first Enter was answered no: nothing ran; the next two ran steps 1 and 2.
    assert out.count("✓ check") == 2 and "check shared uts" in out and "check isolated uts" in out
    assert "HOST" in out and "JAIL" in out  # side by side
    assert "Move: Enter runs the step" not in out  # less chrome


def test_a_broken_status_line_does_not_end_the_session(session: Session) -> None:
    class Broken:
        alive = True

        @property
        def pid(self) -> int:
            raise RuntimeError("no pid")

    session.ws.session.jail = Broken()  # type: ignore[assignment]
    text = "".join(t for _, t in create_toolbar_tokens_func(session.ws)())
    assert "status unavailable (RuntimeError: no pid)" in text
    session.ws.session.jail = None


@pytest.mark.root
def test_cgroup_usage_is_shown_live_while_a_command_runs(session: Session) -> None:
    from rich.console import Console

    # A terminal, as the learner's is: rich redraws the live line in place (and
    # draws nothing live into a file or a pipe).
    session.ctx._console = Console(file=session.buf, width=100, force_terminal=True, no_color=True, highlight=False)
    out, _ = session.run("cgroup create\rcgroup pids=20\rexec sleep 1\rquit -y\r")
    frames = re.findall(r"live · cgroup[^\x1b\r\n]*", out)
    # Redrawn while `sleep 1` ran (four times a second), with the jail's tasks against its limit.
    assert len(frames) >= 2 and all("/20" in f for f in frames), out[-2000:]


# -- a failure in what prompt_toolkit calls never ends the session ---------------------------------

INTERNAL = "jailshell: internal error in the {}: RuntimeError: {} (a bug in jailshell, not your mistake: please " \
           "report it"


def _raise(message: str) -> Any:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(message)
    return broken


def test_a_broken_completer_is_shown_and_the_session_goes_on(session: Session,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import jailshell.ui.completer

    monkeypatch.setattr(jailshell.ui.completer, "completions", _raise("no completions today"))
    out, _ = session.run("less\t\t\r" + "help\r" + CTRL_D)
    assert flat(INTERNAL.format("completer", "no completions today")) in flat(out)
    assert flat(out).count("internal error in the completer") == 1  # once, not at every Tab
    assert "unknown command 'less'" in flat(out)  # the line was run as typed, uncompleted
    assert "the jail, step by step" in flat(out)  # and the next command ran


def test_a_broken_lexer_is_shown_once_and_lines_are_drawn_plain(session: Session,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import jailshell.ui.lexer

    monkeypatch.setattr(jailshell.ui.lexer, "lex_line", _raise("cannot colour"))
    out, status = session.run("lessons\r" + "help\r" + CTRL_D)
    assert flat(out).count(flat(INTERNAL.format("lexer", "cannot colour"))) == 1  # drawn at every key: shown once
    assert "uts-and-pid" in out and "the jail, step by step" in out and status == 0


def test_a_bad_style_from_our_tokens_is_shown_and_drawn_unstyled(session: Session,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import jailshell.ui.lexer

    monkeypatch.setattr(jailshell.ui.lexer, "lex_line", lambda line, reg: [("#zz", line)])
    out, _ = session.run("help\r" + CTRL_D)
    assert "jailshell: internal error in the style: ValueError" in flat(out)
    assert "the jail, step by step" in out


def test_a_broken_prompt_status_line_or_key_is_shown_and_the_session_goes_on(
        session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    import jailshell.ui.app
    import jailshell.ui.keys

    monkeypatch.setattr(jailshell.ui.app, "prompt_tokens", _raise("no prompt"))
    monkeypatch.setattr(jailshell.ui.keys, "run_command", _raise("no key"))
    real_enter_line = jailshell.ui.app.enter_line

    def enter_line(ws: Workspace) -> str | None:
        import inspect

        if any(f.function == "get_toolbar_tokens" for f in inspect.stack()[1:3]):
            raise RuntimeError("no status")
        return real_enter_line(ws)

    monkeypatch.setattr(jailshell.ui.app, "enter_line", enter_line)
    out, _ = session.run(F1 + "lessons\r" + CTRL_D)
    for where, what in (("prompt", "no prompt"), ("status line", "no status"), ("key binding for F1", "no key")):
        assert flat(INTERNAL.format(where, what)) in flat(out), where
    assert "uts-and-pid" in out  # `lessons` ran after all three


def test_a_prompt_that_cannot_be_drawn_falls_back_to_a_plain_one(session: Session,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import jailshell.ui.style

    # Not a style at all: prompt_toolkit fails inside its own drawing, outside every guarded callback.
    monkeypatch.setattr(jailshell.ui.style, "prompt_style", lambda: object())
    out, _ = session.run("lessons\r" + "help\r" + CTRL_D)
    assert "jailshell: internal error in the prompt: AttributeError" in flat(out)
    assert "uts-and-pid" in out and "the jail, step by step" in out
