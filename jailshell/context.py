"""One injectable context for everything the REPL and the lesson tools touch
outside themselves: streams, whether they are terminals, where user state
lives, how a jail is made, and the rich console built on top of them.

Tests build their own (`AppContext.for_streams(...)`) the way httpie's tests
build a MockEnvironment, so nothing reads the real terminal or the real home.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from jailshell import paths

if TYPE_CHECKING:
    from rich.console import Console

    from jailshell.engine.jail import Jail


def _create_jail(image: str | None = None) -> Jail:
    from jailshell.engine.jail import Jail

    return Jail.create(image)


@dataclass
class AppContext:
    stdin: IO[str] = field(default_factory=lambda: sys.stdin)
    stdout: IO[str] = field(default_factory=lambda: sys.stdout)
    stderr: IO[str] = field(default_factory=lambda: sys.stderr)
    stdin_isatty: bool = False
    stdout_isatty: bool = False
    state_dir: Path = field(default_factory=paths.user_state_dir)
    # None: the terminal's width. Tests fix it so renderings are stable.
    width: int | None = None
    color: bool = True
    # Presenter mode: one step per screen, confirm each command, larger output.
    present: bool = False
    # The engine handle: how a fresh jail is made. The only way the UI gets one.
    jail_factory: Callable[[str | None], Jail] = _create_jail
    _console: Console | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_environment(cls, **overrides: Any) -> AppContext:
        overrides.setdefault("stdin_isatty", _isatty(sys.stdin))
        overrides.setdefault("stdout_isatty", _isatty(sys.stdout))
        ctx = cls(**overrides)
        if "NO_COLOR" in os.environ:
            ctx.color = False
        return ctx

    @classmethod
    def for_streams(cls, stdout: IO[str], *, width: int = 80, state_dir: Path, **overrides: Any) -> AppContext:
        """A context writing to a buffer: what tests and `--plain` output use."""
        return cls(stdout=stdout, stderr=stdout, width=width, color=False, state_dir=state_dir, **overrides)

    @property
    def interactive(self) -> bool:
        return self.stdin_isatty and self.stdout_isatty

    @property
    def history_path(self) -> Path:
        return self.state_dir / "history"

    @property
    def progress_path(self) -> Path:
        return self.state_dir / "progress.json"

    @property
    def console(self) -> Console:
        """The rich console, built (and rich imported) on first use only."""
        if self._console is None:
            from rich.console import Console

            from jailshell.ui.style import rich_theme

            self._console = Console(
                file=self.stdout,
                width=self.width,
                force_terminal=self.stdout_isatty and self.color,
                no_color=not self.color,
                color_system="auto" if self.color else None,
                highlight=False,
                # Lesson texts and commands are shown as written: "[ro]" is not a style tag.
                markup=False,
                emoji=False,
                theme=rich_theme(),
                # Plain output (pipes, tests) must not depend on the caller's $COLUMNS.
                _environ={} if self.width is not None else None,
            )
        return self._console


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def own_by_invoking_user(path: Path) -> None:
    """Under sudo, files in the learner's home must stay theirs, not root's:
    a later run without sudo has to be able to read and replace them."""
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if os.geteuid() != 0 or not uid or not gid or "JAILSHELL_STATE_DIR" in os.environ:
        return
    try:
        os.chown(path, int(uid), int(gid))
    except (OSError, ValueError):
        pass


def ensure_state_dir(path: Path) -> Path:
    missing = []
    p = path
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    paths.ensure_dir(path, 0o700)
    for created in missing:
        own_by_invoking_user(created)
    return path
