"""`docker ...` typed at the jailshell prompt: the plan, walked one real step at a
time, the container's output, and the lifecycle commands, as data for the UI."""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jailshell.commands.builtin import build_workspace
from jailshell.commands.results import Handover, Message, Results, StepReport
from jailshell.commands.workspace import Workspace
from jailshell.context import AppContext
from jailshell.engine import containers
from jailshell.engine.namespaces import ns_inode
from jailshell.errors import InvalidInput, JailshellError
from jailshell.ui.app import run_piped

pytestmark = pytest.mark.root


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    out = io.StringIO()
    ctx = AppContext.for_streams(out, width=100, state_dir=tmp_path)
    w = build_workspace(ctx, with_course=False)
    yield w
    if _pending(w):
        w.run_line("walk abort")
    w.close()
    for rec in containers.records():
        containers.rm(rec.id, force=True)


def _pending(w: Workspace) -> bool:
    from jailshell.commands import docker_cmds

    return w in docker_cmds._PENDING


def flat(result: Any) -> list[Any]:
    if isinstance(result, Results):
        return [x for item in result.items for x in flat(item)]
    return [result]


def test_docker_run_shows_the_plan_and_walk_takes_one_real_step_at_a_time(ws: Workspace) -> None:
    items = flat(ws.run_line("docker run --name walker --network none -h walker busybox sh -c 'echo hi from $$'"))
    assert isinstance(items[0], Message) and items[0].text.endswith("by hand: 10 steps")
    assert " 1. image busybox:latest" in items[1].text and "exec sh -c" in items[1].text
    assert not containers.records()  # nothing is done before the first walk

    first = flat(ws.run_line("walk"))
    assert [type(x) for x in first] == [StepReport] and "step 1/" in first[0].line
    second = flat(ws.run_line("walk"))[0]
    assert "overlay root" in second.line
    rec = containers.resolve("walker")
    holder = int(rec.pid or 0)
    assert ns_inode(holder, "uts") == ns_inode(os.getpid(), "uts")  # a process, not isolated yet
    assert any(f"PID {holder}" in n for n in second.notes)

    reports: list[StepReport] = []
    while True:
        step = flat(ws.run_line("walk"))
        reports += [x for x in step if isinstance(x, StepReport)]
        if any(isinstance(x, StepReport) and x.op == "docker-unshare" for x in step):
            pid = int(containers.resolve("walker").pid or 0)
            assert ns_inode(pid, "uts") != ns_inode(os.getpid(), "uts")  # now it is
        if any(isinstance(x, Message) and "exited with status" in x.text for x in step):
            break
    assert reports[-1].op == "docker-exec"
    assert all(r.equivalents is not None and r.equivalents.raw for r in reports)
    unshare = next(r for r in reports if r.op == "docker-unshare")
    assert unshare.equivalents and unshare.equivalents.raw[0].startswith("unshare --mount --uts")
    assert "hi from 1" in ws.ctx.stdout.getvalue()  # type: ignore[attr-defined]
    assert containers.resolve("walker").exit_code == 0


def test_enter_on_an_empty_line_walks_the_pending_plan(ws: Workspace) -> None:
    from jailshell.ui.app import Repl

    repl = Repl(ws.ctx, ws, history=False)
    ws.run_line("docker run --name entered --network none busybox true")
    out = ws.ctx.stdout
    for n in (1, 2):
        assert repl.handle("") is False
        assert f"step {n}/10" in out.getvalue()  # type: ignore[attr-defined]
    assert containers.resolve("entered").state == "creating"  # step 2 started its process
    ws.run_line("walk abort")
    assert repl.handle("") is False  # nothing pending and no course: Enter does nothing
    assert "step 3/10" not in out.getvalue()  # type: ignore[attr-defined]


def test_at_the_prompt_the_exec_step_is_shown_before_the_output(ws: Workspace,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from jailshell.ui.app import Repl

    monkeypatch.setattr(type(ws.ctx), "interactive", property(lambda self: True))
    Repl(ws.ctx, ws, history=False).handle("docker run --all --name shown --network none busybox sh -c 'echo OUT$((1+1))PUT'")
    text = ws.ctx.stdout.getvalue()  # type: ignore[attr-defined]
    assert text.index("step 10/10") < text.index("Starting shown") < text.index("OUT2PUT") < text.index("exited")


def test_run_all_and_the_lifecycle_commands(ws: Workspace) -> None:
    items = flat(ws.run_line("docker run -d --name bg --all --network none busybox sleep 1000"))
    assert sum(isinstance(x, StepReport) for x in items) == 10
    assert containers.resolve("bg").state == "running"
    ps = "\n".join(x.text for x in flat(ws.run_line("docker ps")) if isinstance(x, Message))
    assert "bg" in ps and "Up" in ps and "CONTAINER ID" in ps
    out = flat(ws.run_line("docker exec bg sh -c 'echo $$; hostname'"))
    assert isinstance(out[0], StepReport) and out[0].equivalents is not None
    assert out[1].text.split("\n")[1] == containers.resolve("bg").id
    # The shown raw command, run by hand, lands where docker exec did: same namespaces as PID 1,
    # its cgroups, its root, the same environment.
    probe = ("for n in pid mnt uts net ipc cgroup; do readlink /proc/self/ns/$n; done; "
             "cat /proc/self/cgroup | sort; ls /; env | grep -v '^PS1=' | sort")
    engine = flat(ws.run_line(f"docker exec -w /tmp bg sh -c {shlex.quote(probe + '; pwd')}"))
    report = engine[0]
    assert isinstance(report, StepReport) and report.equivalents is not None
    raw = report.equivalents.raw[0]
    assert "nsenter --target" in raw and "cgroup.procs" in raw and "env -i " in raw
    by_hand = subprocess.run(["sh", "-c", raw], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert by_hand.returncode == 0, by_hand.stderr
    assert by_hand.stdout.rstrip("\n") == engine[1].text, (by_hand.stdout, engine[1].text)
    assert by_hand.stdout.rstrip("\n").endswith("/tmp")
    stop = [x.text for x in flat(ws.run_line("docker stop -t 1 bg")) if isinstance(x, Message)]
    assert any("no handler for SIGTERM" in t for t in stop) and any("SIGKILL after 1 s" in t for t in stop)
    assert containers.resolve("bg").exit_code == 137
    flat(ws.run_line("docker rm bg"))
    assert containers.records() == []


def test_walk_abort_removes_the_half_built_container(ws: Workspace) -> None:
    ws.run_line("docker run --name half --network none busybox true")
    for _ in range(4):
        ws.run_line("walk")
    rec = containers.resolve("half")
    assert rec.state == "creating"
    ws.run_line("walk abort")
    deadline = time.monotonic() + 10
    while containers.records() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert containers.records() == []
    assert not rec.layout.run.exists() and not rec.layout.data.exists()


def test_without_a_terminal_interactive_runs_are_refused(ws: Workspace) -> None:
    with pytest.raises(InvalidInput, match="-i needs a terminal"):
        ws.run_line("docker run -it busybox sh")
    with pytest.raises(JailshellError, match="no docker plan"):
        ws.run_line("walk")


def test_explain_shows_the_plan_and_does_nothing(ws: Workspace) -> None:
    msg = ws.run_line("explain docker run -m 64m --network none busybox true")
    assert isinstance(msg, Message) and "exec true as PID 1" in msg.text and "cgroup" in msg.text
    assert containers.records() == []


def test_piped_lines_run_a_container_end_to_end(tmp_path: Path) -> None:
    out = io.StringIO()
    lines = ("docker run --all --rm --name piped --network none busybox sh -c 'echo piped output; exit 3'\n"
             "docker run --all --rm --network none busybox echo after the image --all is the commands\n"
             "docker ps -a\n")
    ctx = AppContext.for_streams(out, width=100, state_dir=tmp_path, stdin=io.StringIO(lines))
    run_piped(ctx, build_workspace(ctx, with_course=False))
    text = out.getvalue()
    assert "piped output" in text and "piped exited with status 3" in text
    assert "after the image --all is the commands" in text
    assert containers.records() == []


def test_a_terminal_command_is_handed_over(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    ws.run_line("docker run --all -d -it --name tty --network none busybox sh")
    monkeypatch.setattr(type(ws.ctx), "interactive", property(lambda self: True))
    h = ws.run_line("docker attach tty")
    assert isinstance(h, Handover) and "Ctrl-P Ctrl-Q" in h.banner
    ws.run_line("docker run --all --name ended --network none busybox true")
    for line in ("docker exec -it ended sh", "docker attach ended"):
        with pytest.raises(JailshellError, match="container ended is not running"):
            ws.run_line(line)  # refused before the terminal would be handed over
