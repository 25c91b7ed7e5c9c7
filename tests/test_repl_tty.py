"""`jailshell` end to end in a real pseudo-terminal (pexpect), the way a
learner meets it: the welcome, Enter running the lesson's steps with their
docker and raw blocks and a changed namespace row, the toolbar, `shell` into
the jail and back with the jail as it was, Ctrl-C at the prompt and during a
step, Ctrl-D asking before it tears the jail down, and the host clean after."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

pytestmark = pytest.mark.root

COURSE = Path(__file__).parent / "data" / "course.yaml"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]|\r")
PROMPT = r"jailshell(\[[^\]]*\])?> "


class Term:
    """jailshell on a pty; everything it printed, without terminal escapes, in .seen."""

    def __init__(self, tmp: Path, *args: str):
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "TERM": "xterm", "NO_COLOR": "1",
               "JAILSHELL_STATE_DIR": str(tmp / "state"), "COLUMNS": "120", "LINES": "40"}
        self.p = pexpect.spawn(sys.executable, ["-m", "jailshell", "--lessons", str(COURSE), *args], env=env,
                               timeout=30, encoding="utf-8", dimensions=(40, 120), cwd=str(tmp))
        self.tmp = tmp
        self.seen = ""
        self.pos = 0  # how far expect() has read

    def expect(self, pattern: str, timeout: float = 30) -> str:
        """Wait for pattern in the plain text (escapes removed) after what was
        matched before; returns the text from there up to the end of the match."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.compile(pattern).search(self.seen, self.pos)
            if m:
                got = self.seen[self.pos:m.end()]
                self.pos = m.end()
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{pattern!r} did not appear; last output:\n{self.seen[-3000:]}")
            try:
                chunk = self.p.read_nonblocking(65536, timeout=min(left, 0.5))
            except pexpect.TIMEOUT:
                continue
            except pexpect.EOF:
                raise AssertionError(f"jailshell ended before {pattern!r}; last output:\n{self.seen[-3000:]}")
            if "\x1b[6n" in chunk:
                # prompt_toolkit asks where the cursor is, as a real terminal would answer:
                # without it, it cannot keep the bottom toolbar at the bottom.
                self.p.send("\x1b[40;1R")
            self.seen += ANSI.sub("", chunk)

    def prompt(self) -> str:
        return self.expect(PROMPT)

    def type(self, line: str) -> None:
        self.p.send(line + "\r")

    def close(self) -> None:
        """Leave the way a learner would, so the jail is torn down even when a test failed."""
        if self.p.isalive():
            self.p.sendcontrol("c")
            self.p.send("quit --yes\r")
            try:
                self.p.expect(pexpect.EOF, timeout=20)
            except pexpect.TIMEOUT:
                pass
        self.p.close(force=True)


@pytest.fixture
def term(tmp_path: Path) -> Iterator[Term]:
    t = Term(tmp_path)
    try:
        yield t
    finally:
        t.close()


def _flat(text: str) -> str:
    return " ".join(text.split())


def _host_mentions(jail_id: str) -> list[str]:
    with open("/proc/self/mountinfo") as fh:
        return [line for line in fh if jail_id in line]


def test_a_learner_runs_three_steps_enters_the_jail_and_leaves(term: Term) -> None:
    welcome = term.prompt()
    assert "You are at lesson 1/3" in _flat(welcome) and "Enter runs: create" in _flat(welcome)

    term.type("")  # Enter: step 1, create
    out = term.expect(r"check shared uts")
    m = re.search(r"Jail (\w+) started: PID (\d+)", _flat(out))
    assert m, out
    jail_id, pid = m.group(1), int(m.group(2))
    term.prompt()
    term.type("")  # step 2: unshare uts
    out = term.expect(r"check isolated uts")
    assert "docker · on the host" in out and "raw · on the host, in a second root terminal" in out
    uts = [line for line in out.splitlines() if line.strip().startswith("uts ") and "→" in line]
    assert uts and "isolated" in uts[0], out
    term.prompt()
    term.type("")  # step 3: hostname jail
    out = term.expect(r"check hostname-is jail")
    assert re.search(r"jail\s+vm → jail|jail\s+\S+ → jail", out), out
    term.prompt()
    term.expect(r"isolated: uts │ root: host │ hostname: jail")  # the toolbar, below the prompt

    # `shell`: the learner's terminal goes to a shell in the jail, and comes back.
    term.type("shell")
    term.expect(r"Entering the jail")
    term.expect(r"# ")  # the jail's shell prompt
    term.type("echo inside-$((6*7)) $(hostname)")
    term.expect(r"inside-42 jail")
    term.type("exit")
    term.expect(r"Back from the jail \(exit status 0\)")
    term.prompt()
    term.type("hostname")
    out = term.expect(r"jail\s+jail")
    assert "A new jail was started" not in out
    term.prompt()

    # Ctrl-C at the prompt clears the line.
    term.p.send("unshar")
    time.sleep(0.3)
    term.p.sendcontrol("c")
    term.type("hint")
    out = term.expect(r"`hostname box` sets it")  # the open task's hint
    assert "unknown command" not in out

    # Ctrl-C during a step stops the step, not the REPL; the jail stays.
    term.prompt()
    term.type("exec sleep 30")
    time.sleep(1.5)  # (nothing is shown until the step is done)
    t0 = time.monotonic()
    term.p.sendcontrol("c")
    term.expect(r"Interrupted\. The jail keeps every step")
    assert time.monotonic() - t0 < 10
    term.prompt()
    assert os.path.exists(f"/proc/{pid}")
    term.type("ns")
    out = term.expect(r"cgroup\s+\d+\s+\d+\s+shared")
    assert "A new jail was started" not in out

    # Ctrl-D asks first, then tears everything down.
    term.prompt()
    term.p.sendcontrol("d")
    term.expect(r"The jail \(PID \d+\) is running\. Quit and tear it down\? \[Y/n\]")
    term.type("y")
    term.p.expect(pexpect.EOF, timeout=30)
    term.p.close()
    assert term.p.exitstatus == 0, term.seen[-2000:]
    assert not os.path.exists(f"/proc/{pid}")
    assert not _host_mentions(jail_id)
    progress = term.tmp / "state" / "progress.json"
    assert '"hostname"' in progress.read_text()


def test_ctrl_d_answered_no_keeps_the_session_and_quit_asks_too(term: Term) -> None:
    term.prompt()
    term.type("")
    term.expect(r"check shared uts")
    term.prompt()
    term.p.sendcontrol("d")
    term.expect(r"Quit and tear it down\?")
    term.type("n")
    term.prompt()
    term.type("cgroup pids=50")
    term.expect(r"task limit\s+50 ")
    term.prompt()
    term.expect(r"cgroup mem \S+ \S+ tasks \d+/50")  # the toolbar shows the cgroup's usage
    term.type("quit")
    term.expect(r"Quit and tear it down\?")
    term.type("")  # the default is yes
    term.p.expect(pexpect.EOF, timeout=30)
    term.p.close()
    assert term.p.exitstatus == 0
    assert "Still here." not in term.seen


def test_without_a_jail_ctrl_d_leaves_at_once(term: Term) -> None:
    term.prompt()
    term.p.sendcontrol("d")
    term.p.expect(pexpect.EOF, timeout=15)
    term.p.close()
    assert term.p.exitstatus == 0
    assert "tear it down" not in term.seen


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM])
def test_closing_the_terminal_tears_the_jail_down(term: Term, sig: int) -> None:
    term.prompt()
    term.type("")
    out = term.expect(r"check shared uts")
    m = re.search(r"Jail (\w+) started: PID (\d+)", _flat(out))
    assert m, out
    term.prompt()
    term.type("cgroup pids=30")
    term.expect(r"task limit")
    term.prompt()
    cgroup_dirs = [line.strip() for line in term.seen.splitlines() if line.strip().startswith("/sys/fs/cgroup/")]
    assert cgroup_dirs
    term.p.kill(sig)  # what the terminal does when its window is closed (SIGHUP)
    term.p.expect(pexpect.EOF, timeout=30)
    term.p.close()
    assert term.p.signalstatus is None and term.p.exitstatus == 128 + sig
    assert not os.path.exists(f"/proc/{m.group(2)}")
    assert not _host_mentions(m.group(1))
    assert not any(os.path.exists(d) for d in cgroup_dirs)
