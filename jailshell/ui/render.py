"""How command results look: rich renderables printed to the context's console.

One function per result type (`render` dispatches). Code blocks are labelled
with what they are (jailshell, docker, raw) and where they run (this prompt,
the host, the jail); raw commands are printed without borders and without
hard line breaks, so they can be copied and pasted into a second terminal.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any, cast

from rich import box
from rich.console import Console
from rich.padding import Padding
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from jailshell.commands.results import (
    CgroupFiles,
    CgroupView,
    CheckOutcome,
    DiffView,
    Handover,
    HelpView,
    LessonList,
    LessonStepView,
    Message,
    Position,
    Preview,
    Results,
    StateView,
    StepReport,
    Welcome,
)

if TYPE_CHECKING:
    from jailshell.engine.equivalents import Equivalents
    from jailshell.engine.inspect import Change, Snapshot

# How many changed rows of a long section (processes, mounts) a step shows.
MAX_ROWS = 12
WHERE = {
    "prompt": "this prompt",
    "host": "on the host",
    "host-terminal": "on the host, in a second root terminal",
    "jail": "in the jail",
}
SECTION_TITLES = {
    "namespaces": "namespaces: inode of /proc/PID/ns/KIND, host vs jail",
    "hostname": "hostname",
    "processes": "processes",
    "mounts": "mount table of the jail",
    "root": "root directory",
    "user": "user namespace ID maps",
    "cgroup": "cgroup membership (/proc/PID/cgroup)",
    "interfaces": "network interfaces",
}
COMMAND_WHERE = {"jail": "runs in the jail", "host": "acts on the jail from the host"}


@dataclass(frozen=True)
class Presentation:
    """Presenter mode's layout, for a projector. A terminal program cannot make
    its font larger (the instructor zooms the terminal: Ctrl-+); what it can do
    is what makes that zoom work: fewer columns of text, so a zoomed screen
    still holds a whole line, in the middle of the screen, where the back row
    can see it; bold, high-contrast text with no dim greys (a projector washes
    them out); a blank line between blocks; one step per screen."""

    width: int  # columns of text
    margin: int  # blank columns to the left of it (the block is centred)
    spacing: bool = True  # a blank line after each block
    clear_each_step: bool = True  # each step starts on a clear screen

    MIN_WIDTH = 40
    DEFAULT_MIN = 60  # no default narrower than this: tables need it

    @classmethod
    def for_terminal(cls, columns: int, width: int | None = None) -> Presentation:
        """WIDTH columns (--present-width) or two thirds of the terminal, never
        fewer than 60 (nor than the terminal has), centred."""
        wanted = width if width is not None else max(cls.DEFAULT_MIN, columns * 2 // 3)
        text = max(min(cls.MIN_WIDTH, columns), min(wanted, columns))
        return cls(text, (columns - text) // 2)


class _Indented:
    """A file that starts every line with MARGIN spaces: how presenter mode
    moves rich's output (tables, panels, rules) away from the screen's edge."""

    def __init__(self, file: IO[str], margin: int):
        self.file = file
        self.pad = " " * margin
        self.at_line_start = True

    def write(self, text: str) -> int:
        if not self.pad:
            return self.file.write(text)
        out = []
        for line in text.splitlines(keepends=True):
            if self.at_line_start and line != "\n":
                out.append(self.pad)
            out.append(line)
            self.at_line_start = line.endswith("\n")
        self.file.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self.file.flush()

    def isatty(self) -> bool:
        return bool(getattr(self.file, "isatty", lambda: False)())

    @property
    def encoding(self) -> str:
        return str(getattr(self.file, "encoding", None) or "utf-8")


def presenter_console(base: Console, layout: Presentation) -> tuple[Console, _Indented]:
    """A console like BASE (same stream, same colour system) laid out for a
    projector: LAYOUT.width columns after LAYOUT.margin blank ones, bold, and
    the presenter theme (jailshell.ui.style.PRESENT_STYLES)."""
    from jailshell.ui.style import rich_theme

    out = _Indented(base.file, layout.margin)
    console = Console(file=cast("IO[str]", out), width=layout.width, force_terminal=base.is_terminal, no_color=base.no_color,
                      color_system=base.color_system,  # type: ignore[arg-type]
                      highlight=False, markup=False, emoji=False, theme=rich_theme(present=True), style="bold",
                      _environ={})
    return console, out


class Renderer:
    def __init__(self, console: Console, *, present: bool = False, present_width: int | None = None):
        self.present = present
        self.layout: Presentation | None = None
        self._indented: _Indented | None = None
        if present:
            self.layout = Presentation.for_terminal(console.width, present_width)
            console, self._indented = presenter_console(console, self.layout)
        self.console = console
        utf = (console.encoding or "").lower().startswith("utf")
        self.ok_mark, self.bad_mark, self.arrow = ("✓", "✗", "→") if utf else ("ok", "FAIL", "->")
        self.here_mark, self.todo_mark = ("▶", "·") if utf else (">", ".")

    def render(self, result: Any) -> None:
        if result is None:
            return
        handler: Callable[[Any], None] | None = getattr(self, "_" + type(result).__name__, None)
        if handler is None:
            self.console.print(Text(repr(result)))
            return
        handler(result)

    # -- small pieces ----------------------------------------------------------------------

    def gap(self) -> None:
        """Presenter mode: a blank line between blocks (the room reads from afar)."""
        if self.layout is not None and self.layout.spacing:
            self.console.print()

    def new_screen(self) -> None:
        """Presenter mode: the next step starts on a clear screen."""
        if self.layout is None or not self.layout.clear_each_step:
            return
        self.console.clear()
        if self._indented is not None:
            self._indented.at_line_start = True  # the cursor is home: the first line needs its margin too

    def _Results(self, r: Results) -> None:
        for item in r.items:
            self.render(item)

    def _Message(self, m: Message) -> None:
        style = {"ok": "js.ok", "warn": "js.warn", "error": "js.error"}.get(m.level, "")
        prefix = {"ok": f"{self.ok_mark} ", "warn": "! ", "error": "error: "}.get(m.level, "")
        self.console.print(Text(prefix + m.text, style=style))
        if m.hint:
            self.console.print(Text(f"  hint: {m.hint}", style="js.hint"))

    def error(self, message: str, hint: str | None = None, unchanged: bool = False) -> None:
        self._Message(Message(message, "error", hint))
        if unchanged:
            self.console.print(Text("  The jail is as it was before this command.", style="js.note"))

    def _CheckOutcome(self, c: CheckOutcome) -> None:
        what = "task" if c.kind == "try" else "check"
        mark, style = (self.ok_mark, "js.ok") if c.ok else (self.bad_mark, "js.error")
        line = Text.assemble((f"{mark} {what} ", style), (c.name, "js.key"), (f": {c.detail}", ""))
        self.console.print(line)

    def label(self, what: str, where: str) -> Text:
        return Text.assemble(("  " + what, "js.label"), (" · " + WHERE.get(where, where), "js.where"))

    def code(self, lines: Iterable[str], language: str = "bash") -> None:
        for line in lines:
            text = Text("    ") + (self._highlight(line) if language == "bash" else _jailshell_line(line))
            self.console.print(text, soft_wrap=True)

    def _highlight(self, line: str) -> Text:
        from rich.syntax import Syntax

        theme: Any = _present_syntax_theme() if self.present else "ansi_dark"
        text = Syntax(line, "bash", theme=theme, background_color="default").highlight(line)
        text.rstrip()
        return text

    def markdown(self, text: str) -> None:
        from rich.markdown import Markdown

        self.console.print(Padding(Markdown(text), (0, 0, 0, 2)))

    def paragraphs(self, text: str) -> None:
        """Plain paragraphs with **bold** and `code`: what the welcome screen needs,
        without importing a Markdown parser before the first prompt."""
        for i, para in enumerate(p for p in text.split("\n\n") if p.strip()):
            if i:
                self.console.print()
            self.console.print(Padding(_inline(" ".join(para.split())), (0, 0, 0, 2)))

    # -- a step on the jail ----------------------------------------------------------------

    def blocks(self, line: str, where: str, eq: Equivalents | None) -> None:
        self.console.print(self.label("jailshell", "prompt").append(f" ({COMMAND_WHERE[where]})", style="js.note"))
        self.code([line], "jailshell")
        self.gap()
        if eq is None:
            return
        if eq.docker:
            self.console.print(self.label("docker", "host"))
            self.code([eq.docker])
            self.gap()
        if eq.raw:
            self.console.print(self.label("raw", "host-terminal" if eq.where == "host" else eq.where))
            self.code(eq.raw)
            self.gap()
        if eq.note and not self.present:
            self.console.print(Padding(Text(eq.note, style="js.note"), (0, 0, 0, 4)))

    def _StepReport(self, r: StepReport) -> None:
        self.console.print(Rule(Text(r.line, style="js.jailshell"), align="left", style="js.rule"))
        for note in r.notes:
            self.console.print(Text(note, style="js.note"))
        self.blocks(r.line, r.where, r.equivalents)
        if r.output is not None:
            status = "" if r.output.returncode == 0 else f" (exit status {r.output.returncode})"
            self.console.print(self.label("output", "jail").append(status, style="js.warn"))
            out = (r.output.stdout + r.output.stderr).rstrip("\n")
            for line in out.splitlines() or ["(no output)"]:
                self.console.print(Text("    " + line), soft_wrap=True)
            self.gap()
        if r.after is not None:
            if self.present:
                self.side_by_side(r.after, r.changes)
            else:
                for section in r.touched():
                    self.section(section, r.after, [c for c in r.changes if c.section == section], before=r.before)
        if r.cgroup is not None:
            self.cgroup(r.cgroup)

    # -- live state ------------------------------------------------------------------------

    def section(self, name: str, snap: Snapshot, changes: list[Change], *, before: Snapshot | None = None) -> None:
        """One section of the live state. With `before` (after a step): what the
        step changed, highlighted; without: all of it."""
        table = getattr(self, "_table_" + name)(snap, changes, before)
        if table is not None:
            self.console.print(Text(SECTION_TITLES.get(name, name), style="js.title"))
            self._print_table(table)

    def _print_table(self, table: Table) -> None:
        # The caption as a line of its own: under a narrow table rich would wrap it to the table's width.
        caption, table.caption = table.caption, None
        self.console.print(Padding(table, (0, 0, 0, 2)))
        if caption:
            self.console.print(Padding(Text(str(caption), style="js.note"), (0, 0, 0, 2)))

    def _table(self, *columns: str) -> Table:
        t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1),
                  show_header=any(columns))
        for c in columns:
            t.add_column(c, overflow="fold")
        return t

    def _was(self, before: Any, after: Any) -> str:
        return f"{_fmt(before)} {self.arrow} {_fmt(after)}"

    def _table_namespaces(self, snap: Snapshot, changes: list[Change], before: Snapshot | None) -> Table:
        changed = {c.key: c for c in changes}
        t = self._table("namespace", "host", "jail", "")
        for row in snap.namespaces:
            c = changed.get(row.kind)
            jail = self._was(c.before[1] if c.before else None, row.jail) if c else _fmt(row.jail)
            status = Text("isolated", style="js.isolated") if row.isolated else Text("shared", style="js.shared")
            t.add_row(row.kind, _fmt(row.host), jail, status, style="js.changed" if c else None)
        return t

    def _table_hostname(self, snap: Snapshot, changes: list[Change], before: Snapshot | None) -> Table:
        changed = {c.key: c for c in changes}
        t = self._table("", "")
        for side in ("host", "jail"):
            c = changed.get(side)
            value = snap.hostname.get(side, "")
            t.add_row(side, self._was(c.before, c.after) if c else value, style="js.changed" if c else None)
        return t

    def _table_root(self, snap: Snapshot, changes: list[Change], before: Snapshot | None) -> Table:
        changed = {c.key: c for c in changes}
        t = self._table("", "")
        rows = {"mode": snap.root_mode, "root": f"{snap.root}  (readlink /proc/{snap.pid}/root)"}
        for key, value in rows.items():
            c = changed.get(key)
            t.add_row(key, self._was(c.before, c.after) if c else value, style="js.changed" if c else None)
        return t

    def _table_user(self, snap: Snapshot, changes: list[Change], before: Snapshot | None) -> Table:
        changed = {c.key: c for c in changes}
        t = self._table("map", "inside outside count")
        for key, value in (("uid_map", snap.uid_map), ("gid_map", snap.gid_map)):
            c = changed.get(key)
            t.add_row(key, self._was(c.before, c.after) if c else value, style="js.changed" if c else None)
        return t

    def _table_cgroup(self, snap: Snapshot, changes: list[Change], before: Snapshot | None) -> Table | None:
        rows = snap.sections()["cgroup"]
        changed = {c.key: c for c in changes}
        if before is not None and not changed:
            return None
        t = self._table("hierarchy", "cgroup of the jail's process")
        for key, value in rows.items():
            c = changed.get(key)
            t.add_row(key, self._was(c.before, c.after) if c else value, style="js.changed" if c else None)
        return t

    def _table_processes(self, snap: Snapshot, changes: list[Change], before: Snapshot | None) -> Table:
        t = self._table("PID on the host", "PID in the jail", "command")
        isolated = _pid_isolated(snap)
        rows = snap.processes if isolated else snap.processes[:MAX_ROWS]
        if before is not None and not isolated:
            rows = []  # the jail still sees every host process: nothing of its own to list
        for p in rows:
            t.add_row(str(p.host_pid), "" if p.jail_pid is None else str(p.jail_pid), p.command)
        seen = f"the jail sees {len(snap.processes)} of the host's {snap.host_process_count} processes" \
            if isolated else f"no PID namespace yet: the jail sees all {snap.host_process_count} processes of the host"
        if before is not None and _pid_isolated(snap) != _pid_isolated(before):
            seen = f"before: the jail saw all {before.host_process_count} processes of the host; now {seen}"
        elif not isolated and before is None and len(snap.processes) > MAX_ROWS:
            seen += f" (first {MAX_ROWS} shown)"
        t.caption = seen
        return t

    def _table_mounts(self, snap: Snapshot, changes: list[Change], before: Snapshot | None) -> Table:
        if before is not None:
            t = self._table("mount point", "before", "after")
            return self._changes_table(t, changes, unchanged=len(snap.mounts))
        t = self._table("mount point", "type", "propagation")
        for m in snap.mounts:
            t.add_row(m.target, m.fstype, m.propagation,
                      style="js.warn" if m.propagation.startswith("shared") else None)
        shared = sum(1 for m in snap.mounts if m.propagation.startswith("shared"))
        t.caption = f"{len(snap.mounts)} mounts" + (f"; {shared} shared with the host's (propagate both ways)"
                                                    if shared else "")
        return t

    def _table_interfaces(self, snap: Snapshot, changes: list[Change], before: Snapshot | None) -> Table:
        if before is not None:
            t = self._table("side", "interface", f"before {self.arrow} after")
            rows = [c for c in changes if c.section == "interfaces"]
            for c in rows:
                side, _, name = c.key.partition(":")
                t.add_row(side, name, self._was(c.before or "absent", c.after or "absent"), style="js.changed")
            if not rows:
                jail = ", ".join(f"{n} ({'up' if up else 'down'})" for n, up in snap.interfaces.get("jail", []))
                t.add_row("jail", jail or "-", "")
            return t
        t = self._table("side", "interface", "state")
        for side in ("host", "jail"):
            for name, up in snap.interfaces.get(side, []):
                t.add_row(side, name, "up" if up else "down")
        return t

    def _changes_table(self, t: Table, changes: list[Change], unchanged: int) -> Table:
        """Mounts a step added, removed or changed (the rest is listed by `mounts`)."""
        for c in changes[:MAX_ROWS]:
            t.add_row(c.key, _fmt(c.before or "absent"), _fmt(c.after or "absent"), style="js.changed")
        notes = ["no change"] if not changes else []
        if len(changes) > MAX_ROWS:
            notes.append(f"{len(changes) - MAX_ROWS} more changes")
        others = unchanged - sum(1 for c in changes if c.after)
        if others > 0:
            notes.append(f"{others} other mounts unchanged (`mounts` lists them)")
        t.caption = "; ".join(notes)
        return t

    def side_by_side(self, snap: Snapshot, changes: list[Change]) -> None:
        """Presenter mode: the host and the jail as two panes, changed lines highlighted."""
        from rich.columns import Columns
        from rich.panel import Panel

        changed = {(c.section, c.key) for c in changes}
        host, jail = Text(), Text()
        for row in snap.namespaces:
            style = "js.changed" if ("namespaces", row.kind) in changed else ""
            host.append(f"{row.kind:<7}{_fmt(row.host)}\n", style=style)
            jail.append(f"{row.kind:<7}{_fmt(row.jail)}\n", style=style or ("js.isolated" if row.isolated else ""))
        for side, text in (("host", host), ("jail", jail)):
            style = "js.changed" if ("hostname", side) in changed else ""
            text.append(f"\nhostname  {snap.hostname.get(side, '')}\n", style=style)
        pid_isolated = _pid_isolated(snap)
        host.append(f"processes {snap.host_process_count}\n")
        jail.append(f"processes {len(snap.processes) if pid_isolated else snap.host_process_count}\n")
        host.append("root      /\n\n")  # as many lines as the jail's pane: the panels end level
        where = f" {snap.root}" if snap.root not in ("", "/") else ""  # after `chroot DIR`: which directory
        jail.append(f"root      {snap.root_mode}{where}\n",
                    style="js.changed" if ("root", "mode") in changed else "")
        mounts_changed = any(s == "mounts" for s, _ in changed)
        jail.append(f"mounts    {len(snap.mounts)}\n", style="js.changed" if mounts_changed else "")
        width = max(24, (self.console.width - 1) // 2)
        self.console.print(Columns([Panel(host, title="HOST", width=width), Panel(jail, title="JAIL", width=width)]))
        self.gap()

    def _StateView(self, v: StateView) -> None:
        self.console.print(Rule(Text(v.title, style="js.title"), align="left", style="js.rule"))
        if self.present and "namespaces" in v.sections and len(v.sections) > 1:
            self.side_by_side(v.snapshot, [])
            return
        for section in v.sections:
            self.section(section, v.snapshot, [])
        if v.cgroup is not None:
            self.cgroup(v.cgroup)

    def cgroup(self, v: CgroupView) -> None:
        """Limits and counters of the jail's cgroup; after a step, what it changed."""
        self.console.print(Text(f"cgroup {v.name}: limits and usage", style="js.title"))
        before = v.before or {}
        t = self._table("", "value", "file")
        for label, value, source in v.rows:
            was = before.get(label)
            changed = v.before is not None and was != value and "limit" in label
            t.add_row(label, self._was(was or "none", value) if changed else value, source.rsplit("/", 1)[-1],
                      style="js.changed" if changed else None)
        if not v.rows:
            t.add_row("(nothing to read: no controller)", "", "")
        t.caption = "the files are in:"
        self._print_table(t)
        for d in v.dirs:  # whole, so they can be copied
            self.console.print(Text(f"  {d}/", style="js.note"), soft_wrap=True)
        if v.other is not None and not self.present:
            title, lines = v.other
            self.console.print(Text.assemble(("  raw", "js.label"), (f" · the same on {title}", "js.where"),
                                             (" (for comparison; not this machine's)", "js.note")))
            self.code(lines)
        if v.before is None and v.docker and not self.present:
            self.console.print(self.label("docker", "host"))
            self.code([v.docker])

    def _CgroupView(self, v: CgroupView) -> None:
        self.console.print(Rule(Text(f"cgroup {v.name}", style="js.title"), align="left", style="js.rule"))
        self.console.print(Padding(Text(v.layout, style="js.note"), (0, 0, 0, 2)))
        self.cgroup(v)

    def _CgroupFiles(self, f: CgroupFiles) -> None:
        self.console.print(Rule(Text("cgroup files: v1 and v2", style="js.title"), align="left", style="js.rule"))
        t = self._table("", "cgroup v1", "cgroup v2", "docker")
        for what, v1, v2, docker in f.rows:
            t.add_row(what, v1, v2, docker)
        here = ", ".join(f"{c} on v{v}" for c, v in f.here.items()) or "no controller jailshell uses"
        self.console.print(t)  # no indent: the file names are long and must not be broken
        self.console.print(Padding(Text(f"v1 memsw counts memory + swap, v2 swap.max swap only; v2 cpu.max holds "
                                        f"\"QUOTA PERIOD\". This machine: {here}.", style="js.note"), (0, 0, 0, 2)))

    def _DiffView(self, d: DiffView) -> None:
        self.console.print(Rule(Text(f"changes since {d.since}", style="js.title"), align="left", style="js.rule"))
        # Processes come and go on the host all the time: count them, do not list them.
        changes = [c for c in d.changes if c.section != "processes"]
        gone = sum(1 for c in d.changes if c.section == "processes" and c.after is None)
        new = sum(1 for c in d.changes if c.section == "processes" and c.before is None)
        if not changes and not (gone or new):
            self.console.print(Text("  no change: the jail is exactly as it started"))
            return
        t = self._table("section", "what", "before", "after")
        for c in changes[: MAX_ROWS * 3]:
            before, after = (c.before[1], c.after[1]) if c.section == "namespaces" else (c.before, c.after)
            t.add_row(c.section, c.key, _fmt(before), _fmt(after), style="js.changed")
        if gone or new:
            t.add_row("processes", "", f"{gone} no longer seen", f"{new} new")
        if len(changes) > MAX_ROWS * 3:
            t.caption = f"{len(changes) - MAX_ROWS * 3} more changes"
        self._print_table(t)

    # -- the course ------------------------------------------------------------------------

    def where_line(self, pos: Position) -> Text:
        return Text.assemble(
            ("lesson ", ""), (f"{pos.lesson_no}/{pos.lessons_total}", "js.key"), (" · step ", ""),
            (f"{pos.step_no}/{pos.steps_total}", "js.key"), (f" · {pos.lesson.id}", "js.note"))

    def _Welcome(self, w: Welcome) -> None:
        c = self.console
        c.print(Rule(Text(f"jailshell · {w.course.title}", style="js.title"), style="js.rule"))
        if not self.present:
            self.paragraphs(w.course.welcome)
        for note in w.notes:
            self._Message(Message(note, "warn"))
        if w.position is None:
            c.print(Text("You have finished the course. `lessons` lists every lesson; `step ID` replays any step; "
                         "`reset all` starts over."))
        else:
            c.print(Text("Welcome back. " if w.resumed else "", style="js.ok") + Text("You are at ") +
                    self.where_line(w.position) + Text(f": “{w.position.lesson.title}”"))
            self._Preview(Preview(w.position, w.course))
        if not self.present:
            c.print(Padding(Text.assemble(
                ("Move: ", "js.note"), ("Enter", "js.key"), (" runs the step · ", "js.note"), ("next", "js.key"),
                (" · ", "js.note"), ("back", "js.key"), (" · ", "js.note"), ("step ID", "js.key"), (" · ", "js.note"),
                ("lessons", "js.key"), (" · ", "js.note"), ("hint", "js.key"), (" · ", "js.note"), ("reset", "js.key"),
                (" · ", "js.note"), ("help", "js.key"), (" · ", "js.note"), ("quit", "js.key")), (0, 0, 0, 2)))
            c.print(Padding(Text("Any command can also be typed freely: unshare uts, hostname NAME, mount proc, ns, "
                                 "ps, state, diff, shell, exec CMD...", style="js.note"), (0, 0, 0, 2)))

    def _Preview(self, p: Preview) -> None:
        if p.position is None:
            self.console.print(Rule(style="js.rule"))
            self.markdown(p.course.final)
            self.console.print(Text("That was the last step of the course.", style="js.ok"))
            return
        pos = p.position
        if p.lesson_changed:
            self.console.print(Text(f"Lesson {pos.lesson_no} “{pos.lesson.title}” is next (on a fresh jail): "
                                    f"{pos.lesson.summary}", style="js.title"))
        head = Text.assemble(("Next: ", "js.title"), (pos.step.title, "js.title"),
                             (f"  (lesson {pos.lesson_no}, step {pos.step_no}/{pos.steps_total})", "js.note"))
        self.console.print(head)
        runs = Text("  Enter runs: ", style="js.note")
        for i, line in enumerate(pos.step.run):
            runs.append("; " if i else "")
            runs.append_text(_jailshell_line(line))
        self.console.print(runs)

    def _LessonStepView(self, v: LessonStepView) -> None:
        c = self.console
        self.new_screen()
        c.print(Rule(self.where_line(v.position), align="left", style="js.rule"))
        c.print(Text.assemble((v.position.lesson.title, "js.note"), ("  ›  ", "js.note"),
                              (v.position.step.title, "js.title")))
        self.gap()
        self.markdown(v.position.step.text)
        self.gap()
        for note in v.notes:
            c.print(Text(note, style="js.note"))
        for result in v.results:
            self.render(result)
        if v.check is not None:
            self._CheckOutcome(v.check)
        step = v.position.step
        if step.try_ is not None and v.next is not None:
            self.gap()
            c.print(Text.assemble(("Try it: ", "js.task"), ("(jailshell tells you when it is done; `hint` helps)",
                                                             "js.note")))
            self.markdown(step.try_.task)
        if v.next is not None:
            self.gap()
            self._Preview(v.next)

    def _LessonList(self, ll: LessonList) -> None:
        t = Table(title=ll.course.title, title_justify="left", title_style="js.title", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False)
        for col in ("", "lesson", "title", "done"):
            t.add_column(col)
        for i, lesson in enumerate(ll.course.lessons, 1):
            done = ll.done.get(lesson.id, set())
            here = ll.current is not None and ll.current[0] == lesson.id
            count = sum(1 for s in lesson.steps if s.id in done)
            mark = self.here_mark if here else self.ok_mark if count == len(lesson.steps) else ""
            t.add_row(f"{i} {mark}", lesson.id, lesson.title, f"{count}/{len(lesson.steps)}",
                      style="js.current" if here else None)
            if here:
                for j, s in enumerate(lesson.steps, 1):
                    m = self.here_mark if ll.current == (lesson.id, s.id) else self.ok_mark if s.id in done \
                        else self.todo_mark
                    t.add_row("", f"  {m} {s.id}", f"  {j}. {s.title}", "", style=None)
        self.console.print(t)
        self.console.print(Padding(Text("`step LESSON` or `step LESSON/STEP` goes there (earlier steps are "
                                        "replayed).", style="js.note"), (0, 0, 0, 2)))

    def _HelpView(self, h: HelpView) -> None:
        c = self.console
        if h.detail is not None:
            cmd = h.detail
            c.print(Text(cmd.usage, style="js.jailshell"))
            c.print(Text("  " + cmd.help))
            if cmd.aliases:
                c.print(Text("  also: " + ", ".join(cmd.aliases), style="js.note"))
            for arg in cmd.args:
                choices = f" ({', '.join(arg.choices)})" if isinstance(arg.choices, tuple) else ""
                if arg.help or choices:
                    c.print(Text(f"  {arg.name.upper()}: {arg.help}{choices}", style="js.note"))
            return
        groups = {"course": "the course", "jail": "the jail, step by step", "inspect": "looking at it",
                  "session": "this session"}
        t = Table(box=None, show_header=False, pad_edge=False, padding=(0, 2, 0, 0))
        t.add_column(style="js.jailshell", no_wrap=True)
        t.add_column()
        for group, title in groups.items():
            cmds = [cmd for cmd in h.commands if cmd.group == group]
            if not cmds:
                continue
            t.add_row(Text(title, style="js.title"), "")
            for cmd in cmds:
                t.add_row("  " + cmd.usage, cmd.help)
        c.print(t)
        c.print(Padding(Text("Enter on an empty line runs the next step. Tab completes; Up recalls; Ctrl-C clears the "
                             "line or stops a running step; Ctrl-D quits. `help CMD` for one command.",
                             style="js.note"), (0, 0, 0, 2)))

    def _Handover(self, h: Handover) -> None:
        self.console.print(Rule(Text("shell", style="js.jailshell"), align="left", style="js.rule"))
        if h.equivalents is not None:
            self.console.print(self.label("docker", "host"))
            self.code([h.equivalents.docker])
            self.console.print(self.label("raw", "host-terminal"))
            self.code(h.equivalents.raw)
        self.console.print(Text(h.banner, style="js.title"))


def _present_syntax_theme() -> Any:
    """rich's ansi_dark with every dim style (comments) made bold: on a projector dim is invisible."""
    from rich.style import Style
    from rich.syntax import ANSI_DARK, ANSISyntaxTheme

    return ANSISyntaxTheme({token: Style(bold=True) if style.dim else style for token, style in ANSI_DARK.items()})


def _pid_isolated(snap: Snapshot) -> bool:
    return any(r.kind == "pid" and r.isolated for r in snap.namespaces)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return " / ".join(_fmt(v) for v in value)
    return str(value)


def _inline(text: str) -> Text:
    out = Text()
    for part in re.split(r"(\*\*[^*]+\*\*|`[^`]+`)", text):
        if part.startswith("**") and part.endswith("**") and len(part) > 4:
            out.append(part[2:-2], style="bold")
        elif part.startswith("`") and part.endswith("`") and len(part) > 2:
            out.append(part[1:-1], style="js.key")
        else:
            out.append(part)
    return out


def _jailshell_line(line: str) -> Text:
    word, sep, rest = line.partition(" ")
    return Text.assemble((word, "js.jailshell"), (sep + rest, ""))


def render_to(console: Console, result: Any, *, present: bool = False, present_width: int | None = None) -> None:
    Renderer(console, present=present, present_width=present_width).render(result)
