"""Tab completion: command names (with their help as meta), then each
argument's choices, fixed (namespace kinds, mount names) or from the live
session (step ids of the course, what is mounted)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

if TYPE_CHECKING:
    from jailshell.commands.workspace import Workspace


class CommandCompleter(Completer):
    def __init__(self, ws: Workspace):
        self.ws = ws

    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        text = document.text_before_cursor.lstrip()
        words = text.split()
        ending = not text or text[-1].isspace()
        prefix = "" if ending else words[-1]
        registry = self.ws.registry
        if len(words) == 0 or (len(words) == 1 and not ending):
            for cmd in registry:
                for name in (cmd.name, *cmd.aliases):
                    if name.startswith(prefix):
                        yield Completion(name, -len(prefix), display_meta=cmd.help if name == cmd.name
                                         else f"= {cmd.name}")
            return
        found = registry.get(words[0])
        if found is None or not found.args:
            return
        cmd = found
        index = len(words) - 1 if ending else len(words) - 2
        arg = cmd.args[min(index, len(cmd.args) - 1)]
        if index >= len(cmd.args) and not arg.rest:
            return
        choices = arg.choices
        values = choices if isinstance(choices, tuple) else list(choices(self.ws)) if callable(choices) else []
        for value in dict.fromkeys(values):
            if value.startswith(prefix):
                yield Completion(value, -len(prefix), display_meta=arg.help or None)
