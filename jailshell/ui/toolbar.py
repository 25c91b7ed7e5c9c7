"""The bottom toolbar: the jail's status at a glance (after pgcli's pgtoolbar:
a closure returning (style class, text) pairs; colours live in the style).

It is redrawn every second, so it only reads what is cheap: the engine's own
record of the jail and seven /proc/PID/ns inodes, never a request to the jail.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from prompt_toolkit.formatted_text import StyleAndTextTuples

if TYPE_CHECKING:
    from jailshell.commands.workspace import Workspace

Tokens = StyleAndTextTuples


def isolated_kinds(pid: int) -> list[str]:
    from jailshell.engine.namespaces import NAMESPACES, ns_inode

    me = os.getpid()
    return [ns.kind for ns in NAMESPACES if ns_inode(pid, ns) not in (None, ns_inode(me, ns))]


def create_toolbar_tokens_func(ws: Workspace, *, present: bool = False) -> Callable[[], Tokens]:
    def get_toolbar_tokens() -> Tokens:
        sep = ("class:bottom-toolbar.sep", " │ ")
        out: Tokens = []
        jail = ws.session.jail
        if jail is None or not jail.alive:
            out.append(("class:bottom-toolbar.off", " no jail yet (the first step starts one)"))
        else:
            kinds = isolated_kinds(jail.pid)
            out += [("class:bottom-toolbar.jail", f" jail {jail.id}"), ("class:bottom-toolbar", f"  PID {jail.pid}"),
                    sep, ("class:bottom-toolbar", "isolated: "),
                    ("class:bottom-toolbar.ns", " ".join(kinds) if kinds else "nothing yet"),
                    sep, ("class:bottom-toolbar", f"root: {jail.state.root_mode}")]
            if jail.state.hostname:
                out += [sep, ("class:bottom-toolbar", f"hostname: {jail.state.hostname}")]
            if jail.state.mounts:
                out += [sep, ("class:bottom-toolbar", "mounted: " + " ".join(jail.state.mounts))]
        tutor = ws.tutor
        if tutor is not None:
            pos = tutor.position()
            text = f"{pos.lesson.id} {pos.step_no}/{pos.steps_total}" if pos else "course done"
            out += [sep, ("class:bottom-toolbar.lesson", text)]
        if not present:
            out += [sep, ("class:bottom-toolbar.key", "Enter"), ("class:bottom-toolbar", " next step  "),
                    ("class:bottom-toolbar.key", "F1"), ("class:bottom-toolbar", " help  "),
                    ("class:bottom-toolbar.key", "F2"), ("class:bottom-toolbar", " state")]
        return out

    return get_toolbar_tokens
