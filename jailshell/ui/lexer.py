"""Colours on the input line while typing: a known command green, an unknown
one red (before Enter is pressed), options and comments set apart."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prompt_toolkit.document import Document
from prompt_toolkit.formatted_text import StyleAndTextTuples
from prompt_toolkit.lexers import Lexer

from jailshell.ui.guard import checked_styles, guarded

if TYPE_CHECKING:
    from jailshell.commands.registry import Registry


def lex_line(line: str, registry: Registry) -> StyleAndTextTuples:
    out: StyleAndTextTuples = []
    body, hash_, comment = line.partition("#")
    first = True
    word = ""
    for ch in body + " ":
        if ch.isspace():
            if word:
                if first:
                    out.append(("class:command" if word in registry else "class:command.unknown", word))
                    first = False
                else:
                    out.append(("class:option" if word.startswith("-") else "class:argument", word))
                word = ""
            out.append(("", ch))
        else:
            word += ch
    out.pop()  # the space added to flush the last word
    if hash_:
        out.append(("class:comment", hash_ + comment))
    return out


class CommandLexer(Lexer):
    def __init__(self, registry: Registry):
        self.registry = registry

    def lex_document(self, document: Document) -> Callable[[int], StyleAndTextTuples]:
        lines = document.lines

        def plain(lineno: int) -> StyleAndTextTuples:
            return [("", lines[lineno])] if lineno < len(lines) else []

        # Called by prompt_toolkit at every redraw: the guard shows a failure once
        # and the line is drawn without colours.
        @guarded("lexer", plain)
        def get_line(lineno: int) -> StyleAndTextTuples:
            return checked_styles(lex_line(lines[lineno], self.registry)) if lineno < len(lines) else []

        return get_line
