"""The command registry: names, aliases, parsing, typos, and what lessons may run."""

from __future__ import annotations

import io
import os
import signal
import subprocess
from pathlib import Path

import pytest

from jailshell.commands.builtin import default_registry
from jailshell.commands.registry import Arg, Command, Registry, UnknownCommand
from jailshell.commands.results import StepReport
from jailshell.commands.workspace import Workspace, step_not_interruptible
from jailshell.errors import InvalidInput, JailshellError


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
    with pytest.raises(InvalidInput, match="unexpected '/two'"):
        reg.parse("chroot /one /two")
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


# -- chroot ROOT: a root filesystem of the learner's own ------------------------------------------


@pytest.fixture
def lab_ws(tmp_path: Path):  # type: ignore[no-untyped-def]
    from jailshell.commands.builtin import build_workspace
    from jailshell.context import AppContext

    ws = build_workspace(AppContext.for_streams(io.StringIO(), width=100, state_dir=tmp_path / "state"),
                         keep_progress=False, with_course=False)
    yield ws
    ws.close()


def _report(result: object) -> StepReport:
    from jailshell.commands.results import Results

    items = result.items if isinstance(result, Results) else [result]
    found = [r for r in items if isinstance(r, StepReport)]
    assert found, result
    return found[0]


def _unpacked_root(ws: Workspace) -> Path:
    """The embedded image's files, exported from a first jail and unpacked into
    $LAB/root (lesson 2's `export` + `untar`), with a marker no image has."""
    ws.run_line("export $LAB/export.tar")
    ws.run_line("untar $LAB/export.tar $LAB/root")
    root = ws.lab / "root"
    (root / "marker-of-this-root").write_text("mine\n")
    ws.run_line("create")  # a fresh jail: the root it will chroot into is not its own
    return root


@pytest.mark.root
def test_chroot_into_an_unpacked_root_and_the_raw_command_sees_the_same(lab_ws: Workspace) -> None:
    from jailshell.ui.toolbar import create_toolbar_tokens_func

    ws = lab_ws
    root = _unpacked_root(ws)
    jail = ws.session.jail
    assert jail is not None and root != jail.rootfs
    ws.run_line("unshare mnt")
    report = _report(ws.run_line("chroot $LAB/root"))
    assert report.line == "chroot $LAB/root"  # as typed: the same directory on a replay
    assert jail.state.root_mode == "chroot" and jail.root_dir == root
    assert os.readlink(f"/proc/{jail.pid}/root") == str(root)  # the kernel's word, not the engine's
    # Inside, / is that directory.
    out = _report(ws.run_line("exec ls /")).output
    assert out is not None and "marker-of-this-root" in out.stdout.split()
    # The equivalents are built from the same ROOT, and the raw one, run, sees the marker too.
    eq = report.equivalents
    assert eq is not None and eq.raw[0] == f"unshare --mount chroot {root} sh"
    assert f"/proc/{jail.pid}/root/" in eq.raw[1] and str(root) in eq.raw[1]
    res = subprocess.run(["sh", "-c", eq.raw[0]], input="ls /\n", capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "marker-of-this-root" in res.stdout.split(), res.stderr
    # The state views say which root.
    assert ws.run_line("state").snapshot.root == str(root)
    assert "root" in ws.run_line("mounts").sections and "root" in ws.run_line("ps").sections
    bar = "".join(t for _, t in create_toolbar_tokens_func(ws)())
    assert "root: chroot $LAB/root" in bar
    # Later steps follow the new root: proc is mounted in it, pivot_root moves onto it.
    ws.run_line("mount proc")
    assert (root / "proc" / "self").exists() is False  # mounted in the jail's mount namespace only
    piv = _report(ws.run_line("pivot-root"))
    assert piv.equivalents is not None and f"mount --rbind {root} {root}" in piv.equivalents.raw[0]
    assert jail.state.root_mode == "pivot"
    listing = _report(ws.run_line("exec ls /")).output
    assert listing is not None and "marker-of-this-root" in listing.stdout.split()
    assert "1" in _report(ws.run_line("exec ls /proc")).output.stdout.split()  # type: ignore[union-attr]
    # What is made of the jail's root follows it too: export, and the take-home script's chroot.
    ws.run_line("export $LAB/again.tar")
    names = subprocess.run(["tar", "-tf", str(ws.lab / "again.tar")], capture_output=True, text=True, check=True)
    assert "marker-of-this-root" in names.stdout.split()
    ws.run_line("script $LAB/take-home.sh")
    script = (ws.lab / "take-home.sh").read_text()
    assert f"mount --rbind {root} {root} && cd {root} && pivot_root . ." in script
    # Run, it builds the same jail on the same root: PID 1's / is that directory.
    ran = subprocess.run(["sh", str(ws.lab / "take-home.sh"), "ls", "/"], capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL)
    assert ran.returncode == 0, ran.stderr
    assert "marker-of-this-root" in ran.stdout.split()


@pytest.mark.root
def test_chroot_root_is_resolved_like_a_shell_would(lab_ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = lab_ws
    root = _unpacked_root(ws)
    monkeypatch.chdir(ws.lab)
    report = _report(ws.run_line("chroot root"))  # relative to where jailshell runs
    assert report.line == "chroot $LAB/root" and ws.session.jail.root_dir == root  # type: ignore[union-attr]
    assert report.equivalents is not None and report.equivalents.raw == [
        f"chroot {root} sh", f"ls /proc/{ws.session.jail.pid}/root/    # the jail's / seen from the host: "  # type: ignore[union-attr]
        f"{root} once it is done"]
    # A second chroot is refused, with the root it already has.
    with pytest.raises(JailshellError, match=r"already switched \(chroot to .*/root\)"):
        ws.run_line("chroot /")


@pytest.mark.root
def test_chroot_refuses_what_is_no_root_and_changes_nothing(lab_ws: Workspace, tmp_path: Path) -> None:
    ws = lab_ws
    with pytest.raises(InvalidInput, match="/nonexistent: no such directory") as exc:
        ws.run_line("chroot /nonexistent")
    assert exc.value.hint and "untar" in exc.value.hint
    assert ws.session.jail is None  # refused before a jail was even started
    ws.run_line("ns")
    jail = ws.session.jail
    assert jail is not None
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidInput, match="is not a directory"):
        ws.run_line(f"chroot {tmp_path}/file")
    assert jail.state.root_mode == "host" and jail.state.root is None
    assert os.readlink(f"/proc/{jail.pid}/root") == "/"
    assert [d.op for d in ws.session.done if d.op == "chroot"] == []
    # An empty directory is a root the kernel accepts, but nothing can run in it: said plainly.
    (tmp_path / "empty").mkdir()
    report = _report(ws.run_line(f"chroot {tmp_path}/empty"))
    assert any("/bin/sh does not exist there" in n for n in report.notes)
    with pytest.raises(JailshellError, match="command not found"):
        ws.run_line("exec ls /")


def test_a_shell_is_found_inside_the_root_not_on_the_host(tmp_path: Path) -> None:
    from jailshell.engine.jail import missing_shell, resolve_inside

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "sh").symlink_to("/bin/busybox")  # absolute: inside the root, not the host's
    assert missing_shell(tmp_path) and resolve_inside(tmp_path, "/bin/sh") is None
    (tmp_path / "bin" / "busybox").write_text("#!\n")
    assert missing_shell(tmp_path) == "/bin/sh is not an executable file there"
    (tmp_path / "bin" / "busybox").chmod(0o755)
    assert missing_shell(tmp_path) is None
    assert resolve_inside(tmp_path, "/bin/../../../bin/sh") == tmp_path / "bin" / "busybox"  # '..' stops at root
