"""Colours, in one place: the rich theme for what is printed, the
prompt_toolkit style for the prompt line and the toolbar. Only names are
used elsewhere (pgcli's way: the toolbar returns (class, text) pairs)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prompt_toolkit.styles import Style
    from rich.theme import Theme

RICH_STYLES = {
    "js.title": "bold",
    "js.rule": "cyan",
    "js.label": "bold cyan",
    "js.where": "cyan",
    "js.jailshell": "bold green",
    "js.note": "dim",
    "js.changed": "bold yellow",
    "js.isolated": "green",
    "js.shared": "dim",
    "js.ok": "green",
    "js.warn": "yellow",
    "js.error": "bold red",
    "js.hint": "italic",
    "js.key": "bold",
    "js.task": "magenta",
    "js.done": "green",
    "js.current": "bold yellow",
}

PROMPT_STYLES = {
    "prompt": "ansicyan bold",
    "prompt.jail": "ansigreen bold",
    "command": "ansigreen bold",
    "command.unknown": "ansired",
    "argument": "",
    "option": "ansiyellow",
    "comment": "italic ansibrightblack",
    "bottom-toolbar": "noreverse bg:#303030 #d0d0d0",
    "bottom-toolbar.jail": "bg:#303030 #87d787 bold",
    "bottom-toolbar.off": "bg:#303030 #a0a0a0 italic",
    "bottom-toolbar.ns": "bg:#303030 #ffd75f",
    "bottom-toolbar.lesson": "bg:#303030 #87afff",
    "bottom-toolbar.cgroup": "bg:#303030 #d7afff",
    "bottom-toolbar.key": "bg:#303030 #ffffff bold",
    "bottom-toolbar.sep": "bg:#303030 #606060",
}


# Presenter mode (a projector): everything bold (the console's base style),
# no dim greys (washed out on a screen across the room), changed rows in
# reverse video, which stands out on a dark or a light background alike.
PRESENT_STYLES = {
    **RICH_STYLES,
    "js.title": "bold underline",
    "js.rule": "bold cyan",
    "js.where": "bold cyan",
    "js.note": "bold",
    "js.changed": "bold reverse",
    "js.isolated": "bold green",
    "js.shared": "bold",
    "js.ok": "bold green",
    "js.warn": "bold yellow",
    "js.hint": "bold italic",
    "js.key": "bold underline",
    "js.task": "bold magenta",
    "js.done": "bold green",
    "js.current": "bold reverse",
}


def rich_theme(*, present: bool = False) -> Theme:
    from rich.theme import Theme

    return Theme(PRESENT_STYLES if present else RICH_STYLES)


def prompt_style(styles: dict[str, str] | None = None) -> Style:
    """The prompt_toolkit style. A bad rule is shown (jailshell.ui.guard) and
    the prompt drawn unstyled, not the session ended. (The style strings our
    callbacks hand prompt_toolkit while it draws are checked by the guard.)"""
    from prompt_toolkit.styles import Style

    from jailshell.ui.guard import report

    try:
        return Style.from_dict(PROMPT_STYLES if styles is None else styles)
    except Exception as exc:
        report("style", exc)
        return Style([])
