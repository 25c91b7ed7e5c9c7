"""The bottom toolbar: the jail's status at a glance (after pgcli's pgtoolbar:
a closure returning (style class, text) pairs; colours live in the style).

It is redrawn every second, so it only reads what is cheap: the engine's own
record of the jail, seven /proc/PID/ns inodes and a few cgroup counter files,
never a request to the jail.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prompt_toolkit.formatted_text import StyleAndTextTuples

from jailshell.ui.guard import checked_styles, report

if TYPE_CHECKING:
    from jailshell.commands.workspace import Workspace

Tokens = StyleAndTextTuples


def isolated_kinds(pid: int) -> list[str]:
    from jailshell.engine.namespaces import NAMESPACES, ns_inode

    me = os.getpid()
    return [ns.kind for ns in NAMESPACES if ns_inode(pid, ns) not in (None, ns_inode(me, ns))]


def cgroup_usage(cg: Any) -> str:
    """`cgroup mem 1.2 MiB/64.0 MiB tasks 2/20 cpu 0.5`: a few small reads of the cgroup's files."""
    from jailshell.engine.cgroup_limits import human_bytes

    try:
        st = cg.stats()
    except OSError:
        return "cgroup: gone"
    parts = ["cgroup"]
    if st.memory_current is not None:
        limit = f"/{human_bytes(st.memory_max)}" if isinstance(st.memory_max, int) else ""
        parts.append(f"mem {human_bytes(st.memory_current)}{limit}")
    if st.pids_current is not None:
        parts.append(f"tasks {st.pids_current}" + (f"/{st.pids_max}" if st.pids_max not in (None, "max") else ""))
    if isinstance(st.cpu_max, float):
        parts.append(f"cpu {st.cpu_max:g}")
    if st.oom_kill:
        parts.append(f"OOM kills {st.oom_kill}")
    return " ".join(parts)


def root_label(ws: Workspace, jail: Any) -> str:
    """`chroot $LAB/root`: how the jail's root was switched and, after `chroot
    DIR`, to which directory (under this session's $LAB written so)."""
    mode = str(jail.state.root_mode)
    root = getattr(jail.state, "root", None)
    if mode == "host" or not root:
        return mode
    lab = ws._lab[0] if ws._lab is not None else None
    if lab is not None and (root == str(lab) or root.startswith(f"{lab}/")):
        root = "$LAB" + root[len(str(lab)):]
    return f"{mode} {root}"


def create_toolbar_tokens_func(ws: Workspace, *, present: bool = False) -> Callable[[], Tokens]:
    def safe_tokens() -> Tokens:
        # Drawn inside prompt_toolkit's render loop every second: an exception
        # here would end the learner's session. The guard shows it once; the
        # status line says it is unavailable, and why, for as long as it is.
        try:
            return checked_styles(get_toolbar_tokens())
        except Exception as exc:
            report("status line", exc)
            return [("class:bottom-toolbar.off", f" status unavailable ({type(exc).__name__}: {exc})")]

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
                    sep, ("class:bottom-toolbar", "root: " + root_label(ws, jail))]
            if jail.state.hostname:
                out += [sep, ("class:bottom-toolbar", f"hostname: {jail.state.hostname}")]
            if jail.state.mounts:
                out += [sep, ("class:bottom-toolbar", "mounted: " + " ".join(jail.state.mounts))]
            if jail.cgroup is not None:
                out += [sep, ("class:bottom-toolbar.cgroup", cgroup_usage(jail.cgroup))]
        tutor = ws.tutor
        if tutor is not None:
            pos = tutor.position()
            text = f"{pos.lesson.id} {pos.step_no}/{pos.steps_total}" if pos else "course done"
            out += [sep, ("class:bottom-toolbar.lesson", text)]
        if not present:
            from jailshell.ui.app import enter_line

            enter = {"walk": " walk the docker plan  ", "next": " next step  "}.get(enter_line(ws) or "")
            out += [sep, *([("class:bottom-toolbar.key", "Enter"), ("class:bottom-toolbar", enter)] if enter else []),
                    ("class:bottom-toolbar.key", "F1"), ("class:bottom-toolbar", " help  "),
                    ("class:bottom-toolbar.key", "F2"), ("class:bottom-toolbar", " state")]
        return out

    return safe_tokens
