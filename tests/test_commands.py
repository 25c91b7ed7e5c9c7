"""The command registry: names, aliases, parsing, typos, and what lessons may run."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import pytest

from jailshell.commands.builtin import default_registry
from jailshell.commands.registry import Arg, Command, Registry, UnknownCommand
from jailshell.commands.workspace import step_not_interruptible
from jailshell.errors import InvalidInput


def _nothing(ws: object, args: dict[str, object]) -> None:
    return None


def test_each_registry_is_its_own_object() -> None:
    a, b = default_registry(), default_registry()
    a.add(Command("extra", _nothing, "only in a"))
    assert "extra" in a and "extra" not in b


def test_aliases_resolve_to_the_same_command() -> None:
    reg = default_registry()
    assert reg.resolve("pivot_root") is reg.resolve("pivot-root") is reg.resolve("pivot")
    assert reg.resolve("exit").name == "quit"
    assert reg.resolve("?").name == "help"


def test_every_engine_operation_is_a_command() -> None:
    names = set(default_registry().names(aliases=False))
    assert {"unshare", "hostname", "chroot", "pivot-root", "mount", "umount", "ns", "ps", "mounts", "diff",
            "state", "shell", "exec", "next", "back", "step", "lessons", "hint", "reset", "help", "quit", "undo",
            "script", "progress", "check"} <= names


def test_unknown_command_suggests_the_closest() -> None:
    with pytest.raises(UnknownCommand) as exc:
        default_registry().parse("unshar uts")
    assert exc.value.message == "unknown command 'unshar' — did you mean 'unshare'?"
    with pytest.raises(UnknownCommand) as exc:
        default_registry().parse("xyzzy")
    assert exc.value.message == "unknown command 'xyzzy'"


def test_a_name_cannot_be_taken_twice() -> None:
    reg = Registry([Command("one", _nothing, "x", aliases=("o",))])
    with pytest.raises(ValueError, match="taken"):
        reg.add(Command("other", _nothing, "y", aliases=("o",)))


def test_arguments_are_parsed_and_checked() -> None:
    reg = default_registry()
    cmd, args = reg.parse("unshare uts")  # type: ignore[misc]
    assert cmd.name == "unshare" and args == {"kind": "uts"}
    assert reg.parse("exec sh -c 'echo hi there'")[1] == {"cmd": ["sh", "-c", "echo hi there"]}  # type: ignore[index]
    assert reg.parse("   ") is None and reg.parse("# a comment") is None
    with pytest.raises(InvalidInput, match="did you mean 'uts'"):
        reg.parse("unshare utz")
    with pytest.raises(InvalidInput) as exc:
        reg.parse("unshare")
    assert exc.value.hint == "usage: unshare KIND"
    with pytest.raises(InvalidInput, match="unexpected 'extra'"):
        reg.parse("chroot extra")
    with pytest.raises(InvalidInput, match="No closing quotation"):
        reg.parse("exec echo 'unclosed")


def test_an_optional_word_can_belong_to_a_later_argument() -> None:
    reg = default_registry()
    assert reg.parse("reset --yes")[1] == {"scope": None, "yes": "--yes"}  # type: ignore[index]
    assert reg.parse("reset all -y")[1] == {"scope": "all", "yes": "-y"}  # type: ignore[index]


def test_usage_shows_choices_and_optional_words() -> None:
    cmd = Command("x", _nothing, "h", (Arg("a", choices=("p", "q")), Arg("b", optional=True), Arg("c", rest=True)))
    assert cmd.usage == "x p|q [B] C..."


def test_lessons_may_run_engine_commands_but_not_navigation() -> None:
    reg = default_registry()
    assert reg.check_lesson_line("unshare uts") is None
    assert reg.check_lesson_line("exec ps") is None
    assert "cannot be run by a lesson" in (reg.check_lesson_line("next") or "")
    assert "cannot be run by a lesson" in (reg.check_lesson_line("shell") or "")
    assert "did you mean 'mount'" in (reg.check_lesson_line("mout proc") or "")
    assert "unknown what" in (reg.check_lesson_line("mount prok") or "")


def test_ctrl_c_waits_for_the_holder_exchange_to_finish() -> None:
    reached_end = False
    with pytest.raises(KeyboardInterrupt), step_not_interruptible():
        os.kill(os.getpid(), signal.SIGINT)
        reached_end = True  # not interrupted in the middle
    assert reached_end
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.root
def test_lab_directory_is_journaled_private_to_the_session_and_removed(tmp_path: Path) -> None:
    from jailshell.commands.builtin import build_workspace
    from jailshell.context import AppContext
    from jailshell.engine import journal

    ctx = AppContext.for_streams(io.StringIO(), state_dir=tmp_path / "state")
    ws = build_workspace(ctx, keep_progress=False, with_course=False)
    other = build_workspace(ctx, keep_progress=False, with_course=False)
    try:
        line = ws.expand("export $LAB/a.tar")
        lab = ws.lab
        assert line == f"export {lab}/a.tar" and lab.is_dir()
        assert other.lab != lab  # two sessions never share one
        # Written down before it existed: a crash leaves it to `jailshell cleanup`.
        pending = [e.fields.get("path") for p in journal.journals() for e in journal.Journal.load(p).pending()]
        assert str(lab) in pending
        (lab / "root").mkdir()
        (lab / "root" / "file").write_text("x")
    finally:
        ws.close()
        other.close()
    assert not lab.exists()
    assert other._lab is None
    pending = [e.fields.get("path") for p in journal.journals() for e in journal.Journal.load(p).pending()]
    assert str(lab) not in pending
