"""The one guard around every piece of our code that prompt_toolkit calls
while it draws or reads keys: the completer, the lexer, the prompt message,
the status line, the key bindings and the style.

An exception there would end prompt_toolkit's application, and with it the
learner's session (or, for a completer, stop the screen at "Press ENTER to
continue..."). Guarded, a failure is shown once as one line, saying what
broke and how to report it, and the callback's plain fallback is used
instead: no colours, no completions, a plain prompt. The session goes on.

One REPL runs per process, so the guard's state is the module's; the REPL
installs where the lines go (`install`) and flushes them after each prompt.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

REPORT_HOW = "a bug in jailshell, not your mistake: please report it with this line and `jailshell --version`"

_sink: Callable[[str], None] | None = None
_seen: set[tuple[str, str]] = set()
_pending: list[str] = []
_style_ok: dict[str, bool] = {}  # style string -> whether prompt_toolkit can parse it


def install(sink: Callable[[str], None] | None) -> None:
    """Where the error lines go (the REPL's console); None: standard error.
    Starts afresh: each session shows each distinct failure once."""
    global _sink
    _sink = sink
    _seen.clear()
    _pending.clear()
    _style_ok.clear()


def message(where: str, exc: BaseException) -> str:
    return f"jailshell: internal error in the {where}: {type(exc).__name__}: {exc} ({REPORT_HOW}; the session goes on)"


def report(where: str, exc: BaseException) -> None:
    """Show a callback's failure once (a lexer fails again at every redraw)."""
    key = (where, f"{type(exc).__name__}: {exc}")
    if key in _seen:
        return
    _seen.add(key)
    _pending.append(message(where, exc))
    try:
        from prompt_toolkit.application import get_app_or_none, run_in_terminal

        app = get_app_or_none()
        if app is not None and app.is_running:
            # Printed above the prompt, which is then drawn again; if the
            # application ends first, the REPL flushes it after prompt().
            run_in_terminal(flush)
            return
    except Exception:  # the guard itself must never fail: flush below
        pass
    flush()


def flush() -> None:
    """Print what was reported and not shown yet."""
    while _pending:
        line = _pending.pop(0)
        try:
            if _sink is not None:
                _sink(line)
            else:
                print(line, file=sys.stderr)
        except Exception:  # a broken console: nothing left to show it on
            continue


def guarded(where: str, fallback: Callable[P, T]) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorate a callback: on an exception, report it and return
    fallback(*args) (called with the same arguments) instead."""
    def wrap(fn: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(fn)
        def safe(*args: P.args, **kwargs: P.kwargs) -> T:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                report(where, exc)
                return fallback(*args, **kwargs)
        return safe
    return wrap


def guarded_iter(where: str) -> Callable[[Callable[P, Iterable[T]]], Callable[P, Iterator[T]]]:
    """Decorate a generator callback (a completer): on an exception, report it
    and end the iteration with what was yielded so far."""
    def wrap(fn: Callable[P, Iterable[T]]) -> Callable[P, Iterator[T]]:
        @functools.wraps(fn)
        def safe(*args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:
                report(where, exc)
        return safe
    return wrap


def checked_styles(tokens: list[Any]) -> list[Any]:
    """(style, text) tokens our callbacks hand prompt_toolkit, with each style
    string checked once: prompt_toolkit parses them while it draws, in a
    style merged from several (so no wrapper around ours would see it), and a
    bad one there ends the session. A bad one is shown and drawn unstyled."""
    bad = False
    for token in tokens:
        style = token[0]
        ok = _style_ok.get(style)
        if ok is None:
            from prompt_toolkit.styles import Style

            try:
                Style([]).get_attrs_for_style_str(style)
                ok = True
            except Exception as exc:
                report("style", exc)
                ok = False
            _style_ok[style] = ok
        bad = bad or not ok
    if not bad:
        return tokens
    return [("", *token[1:]) if not _style_ok[token[0]] else token for token in tokens]


def nothing(*args: Any, **kwargs: Any) -> None:
    """The fallback of a callback whose result nobody uses (a key binding)."""
    return None
