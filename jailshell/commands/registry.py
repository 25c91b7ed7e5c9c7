"""REPL commands as frozen records in a registry object (after pgspecial).

A Command names its handler, its arguments and its help; the registry
resolves names and aliases, parses a typed line into arguments, and suggests
the closest name for a typo. Handlers return data (jailshell.commands.results);
the UI decides how it looks. Every test builds its own registry.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from jailshell.errors import InvalidInput

if TYPE_CHECKING:
    from jailshell.commands.workspace import Workspace

Args = dict[str, Any]
Handler = Callable[["Workspace", Args], Any]
# Choices known without the live state (validated in lessons) or computed from it (completion only).
Choices = tuple[str, ...] | Callable[["Workspace"], Iterable[str]] | None


@dataclass(frozen=True)
class Arg:
    name: str
    help: str = ""
    choices: Choices = None
    optional: bool = False
    rest: bool = False  # takes every remaining word (exec CMD ARGS...)

    @property
    def usage(self) -> str:
        word = self.name.upper() + ("..." if self.rest else "")
        if isinstance(self.choices, tuple) and len(self.choices) <= 4:
            word = "|".join(self.choices)
        return f"[{word}]" if self.optional else word


@dataclass(frozen=True)
class Command:
    name: str
    handler: Handler = field(repr=False, compare=False)
    help: str
    args: tuple[Arg, ...] = ()
    aliases: tuple[str, ...] = ()
    group: str = "jail"  # jail | inspect | course | session: how `help` groups them
    # Where what it does happens: "host" (it changes the jail from outside) or "jail" (runs inside it).
    where: str = "host"
    # May appear in a lesson step's `run` list (navigation and interactive commands may not).
    in_lessons: bool = True
    # Hands the learner's terminal to another program (shell): impossible on piped input.
    needs_tty: bool = False
    # Checks the parsed arguments beyond their choices (`cgroup memory=lots`), so
    # a lesson's typo is a lint error at its line, not a failure in class.
    validate: Callable[[Args], None] | None = field(default=None, repr=False, compare=False)

    @property
    def usage(self) -> str:
        return " ".join([self.name, *(a.usage for a in self.args)])

    def parse(self, words: list[str]) -> Args:
        """Words after the command name -> {arg name: value}; usage errors as InvalidInput."""
        out: Args = {}
        words = list(words)
        for n, arg in enumerate(self.args):
            if arg.optional and words and isinstance(arg.choices, tuple) and words[0] not in arg.choices and any(
                    isinstance(later.choices, tuple) and words[0] in later.choices for later in self.args[n + 1:]):
                out[arg.name] = None  # `reset --yes`: the word belongs to a later argument
                continue
            if arg.rest:
                if not words and not arg.optional:
                    raise self._usage_error(f"'{self.name}' needs {arg.name.upper()}")
                out[arg.name] = words
                words = []
                break
            if not words:
                if not arg.optional:
                    raise self._usage_error(f"'{self.name}' needs {arg.name.upper()}")
                out[arg.name] = None
                continue
            value = words.pop(0)
            if isinstance(arg.choices, tuple) and value not in arg.choices:
                close = difflib.get_close_matches(value, arg.choices, n=1)
                also = f" — did you mean '{close[0]}'?" if close else ""
                raise InvalidInput(f"'{self.name}': unknown {arg.name} '{value}'{also}",
                                   hint="one of: " + ", ".join(arg.choices))
            out[arg.name] = value
        if words:
            raise self._usage_error(f"'{self.name}': unexpected '{' '.join(words)}'")
        if self.validate is not None:
            self.validate(out)
        return out

    def _usage_error(self, message: str) -> InvalidInput:
        return InvalidInput(message, hint=f"usage: {self.usage}")


class UnknownCommand(InvalidInput):
    def __init__(self, name: str, suggestion: str | None):
        also = f" — did you mean '{suggestion}'?" if suggestion else ""
        super().__init__(f"unknown command '{name}'{also}", hint="`help` lists every command")
        self.name = name
        self.suggestion = suggestion


def split_line(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=True)
    except ValueError as exc:  # an unclosed quote
        raise InvalidInput(f"cannot read that line: {exc}", hint="close the quote") from None


class Registry:
    def __init__(self, commands: Iterable[Command] = ()) -> None:
        self._commands: dict[str, Command] = {}
        self._names: dict[str, str] = {}  # name or alias -> name
        for cmd in commands:
            self.add(cmd)

    def add(self, cmd: Command) -> Command:
        for word in (cmd.name, *cmd.aliases):
            if word in self._names:
                raise ValueError(f"command name '{word}' is taken by '{self._names[word]}'")
            self._names[word] = cmd.name
        self._commands[cmd.name] = cmd
        return cmd

    def __iter__(self) -> Iterator[Command]:
        return iter(self._commands.values())

    def __contains__(self, name: object) -> bool:
        return name in self._names

    def __len__(self) -> int:
        return len(self._commands)

    def get(self, name: str) -> Command | None:
        real = self._names.get(name)
        return self._commands[real] if real else None

    def names(self, *, aliases: bool = True) -> list[str]:
        return list(self._names) if aliases else list(self._commands)

    def suggest(self, name: str) -> str | None:
        close = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.6)
        return close[0] if close else None

    def resolve(self, name: str) -> Command:
        cmd = self.get(name)
        if cmd is None:
            raise UnknownCommand(name, self.suggest(name))
        return cmd

    def parse(self, line: str) -> tuple[Command, Args] | None:
        """A typed line -> (command, arguments); None for an empty line or a comment."""
        words = split_line(line)
        if not words:
            return None
        cmd = self.resolve(words[0])
        return cmd, cmd.parse(words[1:])

    def check_lesson_line(self, line: str) -> str | None:
        """Why a lesson may not run this line, or None: what the lesson loader asks."""
        try:
            parsed = self.parse(line)
        except InvalidInput as exc:
            return exc.message
        if parsed is None:
            return "empty command"
        cmd = parsed[0]
        if not cmd.in_lessons:
            return f"'{cmd.name}' cannot be run by a lesson step (it is for the learner to type)"
        return None
