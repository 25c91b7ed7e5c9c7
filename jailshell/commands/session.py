"""The learner's live jail and the record of what was done to it.

The record (`done`) is what makes `undo`, `step ID` and `script` possible:
every engine command that succeeded is kept with the line that did it and the
equivalents shown for it, so the same jail can be rebuilt from scratch on a
fresh one, and the raw commands can be handed out as a script.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jailshell.engine.equivalents import Equivalents
    from jailshell.engine.inspect import Snapshot
    from jailshell.engine.jail import Jail


@dataclass
class Done:
    line: str  # the REPL command that did it
    op: str  # the engine operation
    params: dict[str, Any] = field(default_factory=dict)
    equivalents: Equivalents | None = None
    # A REPL line that takes it back in the kernel, or None: then only a fresh jail can.
    revert: str | None = None
    why_not: str = ""  # why the kernel cannot take it back
    origin: tuple[str, str] | None = None  # (lesson, step) that ran it, None when typed freely
    # The jail's PID and root mode the equivalents were made for (`script` rewrites them).
    pid: int = 0
    root_mode: str = "host"


class JailSession:
    def __init__(self, factory: Callable[[str | None], Jail], image: str | None = None):
        self._factory = factory
        self.image = image
        self.jail: Jail | None = None
        self.done: list[Done] = []
        self.baseline: Snapshot | None = None  # right after creation: what `diff` compares with

    @property
    def running(self) -> bool:
        return self.jail is not None and self.jail.alive

    def ensure(self) -> tuple[Jail, bool]:
        """The live jail, created on first use. Returns (jail, created now)."""
        if self.jail is not None and self.jail.alive:
            return self.jail, False
        return self.fresh(), True

    def fresh(self, image: str | None = None) -> Jail:
        """Close the current jail (if any) and start a new one, with nothing done to it."""
        self.close()
        if image is not None:
            self.image = image
        jail = self._factory(self.image)
        self.jail = jail
        self.done = []
        from jailshell.engine import inspect

        self.baseline = inspect.snapshot(jail)
        return jail

    def record(self, done: Done) -> None:
        self.done.append(done)

    def close(self) -> None:
        jail, self.jail = self.jail, None
        self.done = []
        self.baseline = None
        if jail is not None:
            jail.close()
