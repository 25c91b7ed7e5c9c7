"""The teaching REPL: how soon it answers, and what it costs.

Rows (group "repl"):
  first_prompt  from exec of `jailshell` in a pseudo-terminal to its prompt drawn on it
  step          one lesson step (unshare uts): executed on a live jail and rendered, in one process
  peak_rss      the REPL process's peak resident memory after three lesson steps (ru_maxrss)

  python -m bench.bench_repl [--quick]     prints the rows as JSON (needs root: the steps are real)
"""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import sys
import tempfile
import time
from pathlib import Path

from bench.common import BenchError, Context, Row, failed, timed_row

G = "repl"
TARGET_MS = 300.0
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>]")
PROMPT = b"jailshell> "


def _jailshell() -> str:
    return str(Path(sys.executable).with_name("jailshell"))


class Pty:
    """jailshell on a pseudo-terminal of its own, read without blocking."""

    def __init__(self, argv: list[str], env: dict[str, str]):
        self.t0 = time.perf_counter()
        pid, fd = pty.fork()
        if pid == 0:
            os.execve(argv[0], argv, env)
        self.pid, self.fd = pid, fd
        self.seen = b""

    def expect(self, needle: bytes, timeout: float = 20.0) -> float:
        """Seconds from the start until needle appears in the (escape-free) output."""
        deadline = time.perf_counter() + timeout
        while True:
            if needle in _ANSI.sub(b"", self.seen):
                return time.perf_counter() - self.t0
            left = deadline - time.perf_counter()
            if left <= 0:
                tail = _ANSI.sub(b"", self.seen)[-300:].decode(errors="replace")
                raise BenchError(f"no {needle.decode()!r} within {timeout} s; last output: {tail!r}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise BenchError("jailshell exited early: " + _ANSI.sub(b"", self.seen)[-300:].decode(
                        errors="replace"))
                self.seen += chunk

    def send(self, data: bytes) -> None:
        self.seen = b""
        os.write(self.fd, data)

    def finish(self, timeout: float = 20.0) -> tuple[int, int]:
        """Wait for the end: (exit status, peak RSS in KiB)."""
        deadline = time.perf_counter() + timeout
        while True:
            pid, status, usage = os.wait4(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status), usage.ru_maxrss
            if time.perf_counter() > deadline:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
                raise BenchError("jailshell did not exit")
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                try:
                    os.read(self.fd, 65536)
                except OSError:
                    pass


def _env(state: Path) -> dict[str, str]:
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="100", LINES="40", JAILSHELL_STATE_DIR=str(state))
    env.pop("NO_COLOR", None)
    return env


def first_prompt(runs: int, warmup: int = 1) -> list[float]:
    samples = []
    for i in range(warmup + runs):
        with tempfile.TemporaryDirectory(prefix="jsh-bench-repl-") as state:
            term = Pty([_jailshell()], _env(Path(state)))
            elapsed = term.expect(PROMPT)
            term.send(b"\x04")  # Ctrl-D: no jail yet, so no question
            code, _ = term.finish()
            if code != 0:
                raise BenchError(f"jailshell exited {code} after Ctrl-D")
        if i >= warmup:
            samples.append(elapsed)
    return samples


def peak_rss_kib() -> int:
    """Three lesson steps (Enter x3) in a real pty, then quit: the process's peak RSS."""
    with tempfile.TemporaryDirectory(prefix="jsh-bench-repl-") as state:
        term = Pty([_jailshell()], _env(Path(state)))
        term.expect(PROMPT)
        for _ in range(3):
            term.send(b"\r")
            term.expect(b"Next:")
            term.expect(b"> ")
        term.send(b"quit --yes\r")
        code, rss = term.finish()
        if code != 0:
            raise BenchError(f"jailshell exited {code}")
        return rss


def step_times(runs: int) -> list[float]:
    """`unshare uts` as lesson step 2, run by the tutor and rendered to a buffer."""
    from jailshell.commands.builtin import build_workspace
    from jailshell.context import AppContext
    from jailshell.ui.render import Renderer

    samples = []
    with tempfile.TemporaryDirectory(prefix="jsh-bench-repl-") as state:
        buf = io.StringIO()
        ctx = AppContext.for_streams(buf, width=100, state_dir=Path(state))
        ws = build_workspace(ctx)
        tutor = ws.tutor
        assert tutor is not None
        renderer = Renderer(ctx.console)
        try:
            for _ in range(runs):
                tutor.goto(ws, 0, 1)  # a fresh jail holding step 1; not measured
                t0 = time.perf_counter()
                renderer.render(tutor.run_pending(ws))
                samples.append(time.perf_counter() - t0)
                buf.seek(0)
                buf.truncate()
        finally:
            ws.close()
    return samples


def run(ctx: Context) -> list[Row]:
    rows = []
    try:
        samples = first_prompt(ctx.runs(20, 3))
        row = timed_row("repl.first_prompt", G, "jailshell: exec to the first prompt drawn in a pty", samples,
                        note=f"target < {TARGET_MS:.0f} ms")
        rows.append(row)
    except BenchError as exc:
        rows.append(failed("repl.first_prompt", G, "jailshell: exec to the first prompt drawn in a pty", str(exc)))
    try:
        rows.append(timed_row("repl.step", G, "one lesson step (unshare uts): execute + render", step_times(
            ctx.runs(20, 3))))
    except BenchError as exc:
        rows.append(failed("repl.step", G, "one lesson step (unshare uts): execute + render", str(exc)))
    try:
        rss = peak_rss_kib()
        rows.append(Row("repl.peak_rss", G, "REPL peak RSS after three lesson steps", "MiB", rss / 1024, n=1))
    except BenchError as exc:
        rows.append(failed("repl.peak_rss", G, "REPL peak RSS after three lesson steps", str(exc), "MiB"))
    return rows


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    with tempfile.TemporaryDirectory(prefix="jsh-bench-") as work:
        ctx = Context(quick=quick, work=Path(work), env=dict(os.environ), docker=False)
        for var, sub in (("JAILSHELL_RUN_DIR", "run"), ("JAILSHELL_DATA_DIR", "data")):
            os.environ.setdefault(var, str(Path(work) / sub))
        rows = run(ctx)
    print(json.dumps([r.to_json() for r in rows], indent=1))
    return 0 if all(r.status == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
