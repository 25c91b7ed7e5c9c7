"""Everything a command handler may use, and the one dispatcher.

The REPL, piped input, `jailshell play` and the tests all go through
Workspace.run_line, so a command behaves the same wherever it is typed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jailshell.commands.registry import Registry
from jailshell.commands.results import CheckOutcome, Results, StepReport
from jailshell.commands.session import JailSession
from jailshell.errors import JailshellError

if TYPE_CHECKING:
    from jailshell.commands.tutor import Tutor
    from jailshell.context import AppContext
    from jailshell.engine.journal import Entry, Journal
    from jailshell.lessons.checks import CheckRegistry

# Written in a command line or a lesson, $LAB is this session's own directory
# on the host: where exports, unpacked roots and an escape's marks go, so a
# lesson never writes into the host's shared directories and can be replayed.
LAB = "$LAB"


@contextlib.contextmanager
def step_not_interruptible() -> Iterator[None]:
    """Hold Ctrl-C while one request to the jail's holder is in flight.

    A request and its reply are one exchange on the holder's socket: cut in
    between, the next request would read the previous reply. The step is
    short (one syscall in the holder); the interrupt is delivered right after
    it, between steps, where the jail's state is whole."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if caught:
        raise KeyboardInterrupt


class Workspace:
    def __init__(self, ctx: AppContext, registry: Registry, checks: CheckRegistry, tutor: Tutor | None = None,
                 image: str | None = None):
        self.ctx = ctx
        self.registry = registry
        self.checks = checks
        self.tutor = tutor
        self.session = JailSession(ctx.jail_factory, image)
        # While rebuilding a jail from the record, no snapshots and no output.
        self.replaying = False
        # The lesson step whose commands are running (recorded with what they do).
        self.origin: tuple[str, str] | None = None
        self._lab: tuple[Path, Journal, Entry] | None = None

    @property
    def lab(self) -> Path:
        """$LAB, made on first use. It is journaled before it exists, so a
        crash leaves nothing `jailshell cleanup` cannot find, and removed
        (with anything mounted below it) when the session ends."""
        if self._lab is None:
            from jailshell import paths
            from jailshell.engine.journal import Journal

            base = paths.ensure_dir(paths.run_dir() / "labs", 0o755)
            token = secrets.token_hex(3)
            path = base / f"{os.getpid()}-{token}"
            # A journal of its own: one process may hold several workspaces.
            journal = Journal.for_owner(tag=f"lab-{token}")
            entry = journal.record("dir", path=str(path))
            path.mkdir(mode=0o755)
            self._lab = (path, journal, entry)
        return self._lab[0]

    def expand(self, text: str) -> str:
        return text.replace(LAB, str(self.lab)) if LAB in text else text

    def run_line(self, line: str) -> Any:
        """Parse and run one command line; returns the handler's result (None for
        a blank line). User errors are raised as JailshellError."""
        parsed = self.registry.parse(self.expand(line))
        if parsed is None:
            return None
        cmd, args = parsed
        if cmd.needs_tty and not self.ctx.interactive:
            raise JailshellError(f"'{cmd.name}' needs a terminal (input is not one here)",
                                 hint="use `exec CMD` to run a command in the jail")
        result = cmd.handler(self, args)
        if isinstance(result, StepReport) and not self.replaying and self.origin is None and self.tutor is not None:
            solved = self.tutor.try_solved(self)
            if solved is not None:
                return Results([result, solved])
        return result

    def replay(self, lines: Iterable[tuple[str, tuple[str, str] | None]]) -> int:
        """Start a fresh jail and run these (line, lesson step or None) on it
        quietly. Returns how many ran; a failure stops the replay (the jail then
        holds the lines before it) and is raised."""
        self.session.fresh()
        self.replaying, saved = True, self.origin
        count = 0
        try:
            for line, origin in lines:
                self.origin = origin
                self.run_line(line)
                count += 1
        finally:
            self.replaying, self.origin = False, saved
        return count

    def evaluate(self, check: str, kind: str = "step") -> CheckOutcome:
        jail, _ = self.session.ensure()
        v = self.checks.evaluate(self.expand(check), jail)
        return CheckOutcome(check, v.ok, v.detail, kind)

    def close(self) -> None:
        try:
            self.session.close()
        finally:
            if self._lab is not None:
                _path, journal, entry = self._lab
                self._lab = None
                journal.undo(entry)
