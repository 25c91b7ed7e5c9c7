"""Terminals: `run -it`, `attach` with Ctrl-P Ctrl-Q, `exec -it`, and signals
passed on by an attached client, in a real pseudo-terminal (pexpect)."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from jailshell.engine import containers, dockerline
from jailshell.engine.containers import Creation, Streams

pytestmark = pytest.mark.root

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "TERM": "dumb"}


SPAWNED: list[pexpect.spawn] = []


def spawn(*args: str) -> pexpect.spawn:
    p = pexpect.spawn(sys.executable, ["-m", "jailshell", *args], env=ENV, timeout=20, encoding="utf-8",
                      dimensions=(24, 100))
    SPAWNED.append(p)
    return p


def detached(line: str) -> containers.Record:
    spec = dockerline.parse("run -d " + line).spec
    assert spec is not None
    creation = Creation(spec)
    containers.run(creation, streams=Streams(out=lambda b: None, err=lambda b: None))
    return containers.Record.load(creation.layout)


@pytest.fixture(autouse=True)
def no_containers_left() -> Iterator[None]:
    yield
    while SPAWNED:
        SPAWNED.pop().close(force=True)
    for rec in containers.records():
        containers.rm(rec.id, force=True)


def test_run_it_gives_pid_1_a_terminal_of_the_container_s_own() -> None:
    p = spawn("docker", "-q", "run", "-it", "--name", "term", "--network", "none", "busybox", "sh")
    p.expect("# ")
    p.sendline("tty; echo rows=$(stty size)")
    p.expect(r"/dev/pts/0")  # from the container's devpts instance, not the host's
    p.expect("rows=24 100")  # the client's window size was passed on
    p.sendline("sleep 30")
    time.sleep(0.5)  # sleep is the terminal's foreground job by now
    t0 = time.monotonic()
    p.sendcontrol("c")  # the container's line discipline turns it into SIGINT for that job
    p.expect(r"\^C\r\n/ # ")
    assert time.monotonic() - t0 < 10
    p.sendline("exit 3")
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 3


def test_attach_and_detach_with_ctrl_p_ctrl_q() -> None:
    rec = detached("-it --name att --network none busybox sh")
    p = spawn("attach", "att")
    p.sendline("echo mark$((40+2))")
    p.expect("mark42")
    p.send("\x10\x11")
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 0
    assert containers.resolve("att").state == "running"
    assert containers.resolve("att").pid == rec.pid
    again = spawn("attach", "att")
    again.sendline("exit 7")
    again.expect(pexpect.EOF)
    again.close()
    assert again.exitstatus == 7
    assert containers.resolve("att").exit_code == 7


def test_exec_it_runs_a_shell_in_the_container_on_this_terminal() -> None:
    rec = detached("--name ex --network none busybox sleep 1000")
    p = spawn("exec", "-it", "ex", "sh")
    p.sendline("echo pid1=$(cat /proc/1/comm) me=$$")
    p.expect(r"pid1=sleep me=(\d+)")
    assert int(p.match.group(1)) > 1
    p.sendline("exit 4")
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 4
    assert containers.resolve("ex").pid == rec.pid


def test_ctrl_c_of_an_attached_client_goes_to_pid_1() -> None:
    p = spawn("docker", "-q", "run", "--name", "intr", "--network", "none", "busybox", "sh", "-c",
              "trap 'echo got INT; exit 9' INT; echo ready; while :; do sleep 0.05; done")
    p.expect("ready")
    p.kill(signal.SIGINT)
    p.expect("got INT")
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 9


def test_ctrl_c_twice_detaches_from_a_pid_1_that_ignores_it() -> None:
    p = spawn("docker", "run", "--name", "deaf", "--network", "none", "busybox", "sleep", "1000")
    p.expect("exec sleep 1000 as PID 1")  # the plan is printed first
    deadline = time.monotonic() + 10
    while not any(r.name == "deaf" and r.state == "running" for r in containers.records()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    rec = containers.resolve("deaf")
    p.kill(signal.SIGINT)
    p.expect("no handler for SIGINT")
    p.kill(signal.SIGINT)
    p.expect("keeps running")
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 0
    assert containers.resolve("deaf").state == "running" and rec.id == containers.resolve("deaf").id
