"""Tab completion: command names (with their help as meta), then each
argument's choices, fixed (namespace kinds, mount names) or from the live
session (step ids of the course, what is mounted), and host paths for the
arguments that name one (`chroot ROOT`, `untar FILE DIR`, ...)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document

from jailshell.ui.guard import guarded_iter

if TYPE_CHECKING:
    from jailshell.commands.workspace import Workspace

# (command, argument) -> what the argument names on the host: a directory
# only, or any file. Paths are completed as the command will read them: ~,
# $LAB and relative to where jailshell was started.
PATH_ARGS = {
    ("chroot", "root"): "dir",
    ("untar", "file"): "file",
    ("untar", "dir"): "dir",
    ("export", "file"): "file",
    ("save", "file"): "file",
    ("import", "file"): "file",
}
LAB = "$LAB"


class CommandCompleter(Completer):
    def __init__(self, ws: Workspace):
        self.ws = ws

    @guarded_iter("completer")
    def get_completions(self, document: Document, complete_event: CompleteEvent) -> Iterable[Completion]:
        # Called by prompt_toolkit on Tab: the guard shows a failure and completes nothing.
        return completions(self.ws, document.text_before_cursor)


def completions(ws: Workspace, text: str) -> Iterator[Completion]:
    text = text.lstrip()
    words = text.split()
    ending = not text or text[-1].isspace()
    prefix = "" if ending else words[-1]
    registry = ws.registry
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
    kind = PATH_ARGS.get((cmd.name, arg.name))
    if kind is not None:
        yield from path_completions(ws, prefix, dirs_only=kind == "dir")
        return
    choices = arg.choices
    values = choices if isinstance(choices, tuple) else list(choices(ws)) if callable(choices) else []
    for value in dict.fromkeys(values):
        if value.startswith(prefix):
            yield Completion(value, -len(prefix), display_meta=arg.help or None)


def path_completions(ws: Workspace, word: str, *, dirs_only: bool) -> Iterator[Completion]:
    """Entries of the directory WORD is in, completing its last component.
    Directories end in '/', so Tab goes on down the tree."""
    lab = ws._lab[0] if ws._lab is not None else None
    if LAB.startswith(word) and word and lab is not None:
        yield Completion(LAB + "/", -len(word), display_meta="this session's lab directory")
        return
    real = word
    if word.startswith(LAB):
        if lab is None:
            return  # no lab yet: nothing in it (completing must not create it)
        real = str(lab) + word[len(LAB):]
    real = os.path.expanduser(real)
    parent, base = os.path.split(real)
    try:
        names = sorted(os.listdir(parent or "."))
    except OSError:
        return
    for name in names:
        if not name.startswith(base) or (name.startswith(".") and not base.startswith(".")):
            continue
        is_dir = os.path.isdir(os.path.join(parent or ".", name))
        if dirs_only and not is_dir:
            continue
        yield Completion(name + ("/" if is_dir else ""), -len(base), display=name + ("/" if is_dir else ""))
