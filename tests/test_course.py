"""Proofs for the shipped course (lessons.yaml), on the real kernel.

- `jailshell play --all --check` plays every lesson: every step runs, every
  step's check passes, every task's check fails before its solution and
  passes after it; and the host is as clean afterwards as before.
- Every raw command the lessons on namespaces, mounts, chroot, pivot_root and
  user namespaces show is run by hand against a second jail, which must end
  in the same kernel state as the engine's (tests/course_raw.py).
- `jailshell handout all` renders every lesson, with its docker and raw commands.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from jailshell.commands.builtin import build_workspace, load_course
from jailshell.context import AppContext
from jailshell.engine import rootless
from tests import course_raw, hoststate

# The lessons this file proves by hand (the docker, cgroup and network labs have their own).
BY_HAND = ("what-docker-run-does", "image-is-a-tarball", "chroot", "namespaces", "mounts", "pivot-root", "rootless")


# Seconds a whole `jailshell play --all` may take; a slow machine (the cgroup v2
# VM of tests/kernel, emulated without KVM) sets JAILSHELL_TEST_PLAY_TIMEOUT.
PLAY_TIMEOUT = float(os.environ.get("JAILSHELL_TEST_PLAY_TIMEOUT", "540"))


def jailshell(*args: str, cwd: Path, timeout: float = PLAY_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jailshell", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"})


def test_course_has_the_lessons_in_the_issue_order() -> None:
    ids = [lesson.id for lesson in load_course().lessons]
    mine = [i for i in ids if i in BY_HAND]
    assert mine == list(BY_HAND)
    assert ids[:6] == list(BY_HAND[:6]) and ids[-1] == "rootless"
    for lesson in load_course().lessons:
        assert any(step.try_ is not None and step.try_.hint and step.try_.solution for step in lesson.steps), lesson.id
        assert all(step.check for step in lesson.steps), lesson.id


def test_every_docker_command_of_the_workflow_is_shown() -> None:
    lines = [line for lesson in load_course().lessons for step in lesson.steps
             for line in (*step.run, *(step.try_.solution if step.try_ else ()))]
    text = "\n".join(lines)
    for wanted in ("docker version", "docker help", "docker image ls", "docker run --all -d ", "--name ",
                   "docker export -o ", "docker ps", "docker ps -a", "docker stop", "docker rm -f",
                   "explain docker run -it "):
        assert wanted in text, wanted


@pytest.mark.root
def test_play_all_check_passes_and_leaves_the_host_clean(tmp_path: Path) -> None:
    before = hoststate.snapshot()
    res = jailshell("play", "--all", "--check", "--speed", "0", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "every check passed" in res.stderr
    assert not hoststate.snapshot().leaks_since(before)


@pytest.mark.root
def test_play_of_these_lessons_passes(tmp_path: Path) -> None:
    res = jailshell("play", "--check", "--speed", "0", *BY_HAND, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"played {len(BY_HAND)} lessons" in res.stderr


@pytest.mark.root
@pytest.mark.parametrize("lesson_id", ["what-docker-run-does", "image-is-a-tarball", "chroot", "namespaces", "mounts",
                                       "pivot-root", "rootless"])
def test_raw_commands_make_the_same_kernel_state(lesson_id: str, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ctx_a = AppContext.for_streams(open(os.devnull, "w"), state_dir=tmp_path / "a")  # noqa: SIM115
    ctx_b = AppContext.for_streams(open(os.devnull, "w"), state_dir=tmp_path / "b")  # noqa: SIM115
    ws_a = build_workspace(ctx_a, keep_progress=False)
    ws_b = build_workspace(ctx_b, keep_progress=False)
    course = load_course()
    lesson = course.lessons[course.lesson_index(lesson_id) or 0]
    assert lesson.id == lesson_id
    try:
        proofs = course_raw.prove_lesson(ws_a, ws_b, lesson)
    finally:
        ws_a.close()
        ws_b.close()
    problems = [f"{p.ref}: {x}" for p in proofs for x in p.problems]
    assert not problems, "\n".join(problems)
    ran = [cmd for p in proofs for cmd in p.raw_run + p.probed]
    assert ran, "no raw command was run"
    if lesson_id in ("namespaces", "mounts", "pivot-root"):
        assert any(cmd.startswith("unshare ") for cmd in ran) or lesson_id != "namespaces"
        assert any(cmd.startswith("nsenter ") for cmd in ran)


@pytest.mark.root
def test_rootless_shell_equivalent_agrees_with_the_engine() -> None:
    if not (shutil.which("setpriv") and shutil.which("unshare")):
        pytest.skip("util-linux setpriv/unshare not installed")
    probe = rootless.probe()
    ok, detail = rootless.expected(probe)
    assert ok, detail
    res = subprocess.run(["sh", "-c", rootless.shell_equivalent()], capture_output=True, text=True, timeout=30,
                         stdin=subprocess.DEVNULL)
    if probe["userns"] != "ok":
        assert res.returncode != 0  # the kernel refuses util-linux just the same
        return
    out = res.stdout.split("\n")
    assert " ".join(out[0].split()) == probe["uid_map"]
    assert out[1:8] == ["deny", "0", "rootless", "tmpfs ok", "pid 1", "mknod refused",
                        f"{rootless.SECRET} refused"], res.stdout + res.stderr


@pytest.mark.root
def test_rootless_check_can_fail_as_root() -> None:
    # As root (no drop), mknod succeeds and the shadow file opens: the check's rule must say no.
    ok, detail = rootless.expected(rootless.probe(uid=0, gid=0))
    assert not ok, detail


@pytest.mark.root
def test_handout_renders_every_lesson(tmp_path: Path) -> None:
    res = jailshell("handout", "all", "-o", str(tmp_path / "h.md"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "handout without docker/raw commands" not in res.stderr
    text = (tmp_path / "h.md").read_text()
    for lesson in load_course().lessons:
        assert lesson.title in text
    assert "nsenter --target $JAIL" in text and "unshare --uts" in text
    html = jailshell("handout", "all", "--format", "html", "-o", str(tmp_path / "h.html"), cwd=tmp_path)
    assert html.returncode == 0, html.stderr[-3000:]


@pytest.mark.root
def test_the_new_checks_fail_when_the_kernel_disagrees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ctx = AppContext.for_streams(open(os.devnull, "w"), state_dir=tmp_path / "s")  # noqa: SIM115
    ws = build_workspace(ctx, keep_progress=False)
    try:
        for line in ("unshare uts", "unshare pid", "unshare mnt", "mount proc", "chroot"):
            ws.run_line(line)
        (tmp_path / "not-a-tar").write_text("hello")

        def verdict(check: str) -> bool:
            return ws.evaluate(check).ok

        assert not verdict("container-running no-such-container")
        assert verdict("container-gone no-such-container")
        assert not verdict("image-present no-such-image")
        assert not verdict("tar-has not-a-tar bin/sh") and not verdict("tar-has missing.tar bin/sh")
        assert not verdict("upper-has nothing-written-here")
        # Its own PID namespace and proc: the host's processes are not there.
        assert not verdict("sees-host-processes") and verdict("sees-only-jail-processes")
        assert not verdict("masked /proc/sys")
        ws.run_line("exec touch /now-written")
        assert verdict("upper-has now-written")
        ws.run_line("mask")
        assert verdict("masked /proc/sys")
    finally:
        ws.close()
