"""The journal: every host resource is written down *before* it is created.

A jailshell process can be killed with SIGKILL at any point. Whatever it had
created on the host (mounts, cgroups, interfaces, named netns, directories,
firewall tables, processes) must still be found and removed by
`jailshell cleanup`. So each resource is appended to a journal file first and
marked done after it is removed; cleanup replays what is left, newest first.

Layout: RUN_DIR/journal/<owner-pid>-<owner-starttime>.jsonl, one JSON object a
line: {"op": "add", "id": 3, "kind": "mount", ...} and {"op": "done", "id": 3}.
The owner is identified by PID *and* start time so a recycled PID is never
mistaken for a live owner. Files are on tmpfs (/run), so a process crash loses
nothing (the page cache survives the process) and fsync buys nothing.

Processes are the one kind that cannot be recorded before they exist (the PID
is unknown until fork returns): the child waits on a pipe until the parent has
journaled it, and has PR_SET_PDEATHSIG, so it cannot outlive an unjournaled
window.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jailshell import paths

# kind -> "module:function" that removes one resource of that kind, given the
# entry's fields. Imported lazily: cleanup of a mount must not import pyroute2.
UNDO: dict[str, str] = {
    "process": "jailshell.engine.journal:undo_process",
    "mount": "jailshell.engine.journal:undo_mount",
    "dir": "jailshell.engine.journal:undo_dir",
    "file": "jailshell.engine.journal:undo_file",
    "cgroup": "jailshell.engine.cgroups:undo_cgroup",
    "link": "jailshell.engine.network:undo_link",
    "netns": "jailshell.engine.network:undo_netns",
    "nft": "jailshell.engine.network:undo_nft",
    "iptables": "jailshell.engine.net_firewall:undo_iptables",
    "sysctl": "jailshell.engine.net_shared:undo_sysctl",
    "lease": "jailshell.engine.net_shared:undo_lease",
}


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/PID/stat from field 3 (the state) on; None when PID is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    return data[data.rindex(b")") + 2 :].split()


def process_starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: clock ticks after boot when PID started."""
    rest = _stat_fields(pid)
    return None if rest is None else int(rest[19])


def process_alive(pid: int, starttime: int | None) -> bool:
    """PID is the process that started at starttime, and not a zombie: a
    killed owner stays in /proc until its parent reaps it, but it is dead for
    everything here (its journals are to be undone, its leases are free)."""
    rest = _stat_fields(pid)
    return rest is not None and rest[0] != b"Z" and (starttime is None or int(rest[19]) == starttime)


def _reap(pid: int) -> None:
    """Collect PID's exit status if it is a child of this process (else nothing)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


@dataclass
class Entry:
    id: int
    kind: str
    fields: dict[str, Any]
    done: bool = False

    def describe(self) -> str:
        main = (
            self.fields.get("target")
            or self.fields.get("path")
            or self.fields.get("name")
            or self.fields.get("pid")
        )
        return f"{self.kind} {main}"


@dataclass
class Journal:
    """An append-only record of the resources one owner process created."""

    path: Path
    entries: dict[int, Entry] = field(default_factory=dict)
    _next: int = 1
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def for_owner(cls, pid: int | None = None, starttime: int | None = None, run_dir: Path | None = None,
                  tag: str | None = None) -> Journal:
        """The journal of one owner process; `tag` gives one owner several
        journals (one per jail), each undone on its own."""
        pid = pid or os.getpid()
        starttime = starttime if starttime is not None else process_starttime(pid)
        base = paths.ensure_dir((run_dir or paths.run_dir()) / "journal", 0o700)
        return cls(base / (f"{pid}-{starttime}" + (f"-{tag}" if tag else "") + ".jsonl"))

    @classmethod
    def load(cls, path: Path) -> Journal:
        j = cls(path)
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return j
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash mid-write: nothing was created after it
            if rec.get("op") == "add":
                fields = {k: v for k, v in rec.items() if k not in ("op", "id", "kind", "ts")}
                j.entries[rec["id"]] = Entry(rec["id"], rec["kind"], fields)
                j._next = max(j._next, rec["id"] + 1)
            elif rec.get("op") == "done" and rec.get("id") in j.entries:
                j.entries[rec["id"]].done = True
        return j

    def _append(self, rec: dict[str, Any]) -> None:
        line = json.dumps(rec, separators=(",", ":")) + "\n"
        # O_APPEND writes of one line are atomic with respect to other writers.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def record(self, kind: str, **fields: Any) -> Entry:
        """Write down a resource about to be created. Call *before* creating it."""
        if kind not in UNDO:
            raise ValueError(f"journal: no undo for kind {kind!r}")
        with self._lock:
            entry = Entry(self._next, kind, fields)
            self._next += 1
            self.entries[entry.id] = entry
            self._append({"op": "add", "id": entry.id, "kind": kind, "ts": round(time.time(), 3), **fields})
        return entry

    def release(self, entry: Entry) -> None:
        """The resource is gone (removed, or its creation failed)."""
        with self._lock:
            if entry.done:
                return
            entry.done = True
            self._append({"op": "done", "id": entry.id})
            if all(e.done for e in self.entries.values()):
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()

    def pending(self) -> list[Entry]:
        return [e for e in self.entries.values() if not e.done]

    def undo(self, entry: Entry) -> None:
        """Remove one resource now, then mark it done."""
        undo_entry(entry)
        self.release(entry)

    def undo_all(self) -> list[tuple[Entry, Exception | None]]:
        """Remove everything still pending, newest first. Never stops at an error."""
        results: list[tuple[Entry, Exception | None]] = []
        for entry in sorted(self.pending(), key=lambda e: e.id, reverse=True):
            try:
                self.undo(entry)
                results.append((entry, None))
            except Exception as exc:  # cleanup must go on whatever one resource does
                results.append((entry, exc))
        return results

    @contextlib.contextmanager
    def resource(self, kind: str, **fields: Any) -> Iterator[Entry]:
        """Record, then let the caller create; if creation raises, drop the record."""
        entry = self.record(kind, **fields)
        try:
            yield entry
        except BaseException:
            self.release(entry)
            raise


def _resolve(kind: str) -> Callable[[dict[str, Any]], None]:
    module, _, func = UNDO[kind].partition(":")
    return getattr(importlib.import_module(module), func)


def undo_entry(entry: Entry) -> None:
    _resolve(entry.kind)(entry.fields)


def owner_of(path: Path) -> tuple[int, int | None]:
    pid, _, rest = path.stem.partition("-")
    start = rest.partition("-")[0]
    return int(pid), (int(start) if start.isdigit() else None)


def journals(run_dir: Path | None = None) -> list[Path]:
    base = (run_dir or paths.run_dir()) / "journal"
    if not base.is_dir():
        return []
    return sorted(base.glob("*.jsonl"))


@dataclass
class CleanupReport:
    removed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped_live: list[str] = field(default_factory=list)


def cleanup(run_dir: Path | None = None, *, include_live: bool = False) -> CleanupReport:
    """Undo what dead owners left behind. Owners still running are left alone
    (their jails are in use) unless include_live is set."""
    report = CleanupReport()
    for path in journals(run_dir):
        pid, start = owner_of(path)
        # This process's own journals are live too: `docker system prune` typed
        # in the REPL must not tear down the REPL's own jail.
        if process_alive(pid, start) and not include_live:
            report.skipped_live.append(f"jailshell process {pid} is still running")
            continue
        journal = Journal.load(path)
        for entry, exc in journal.undo_all():
            (report.failed if exc else report.removed).append(
                entry.describe() + (f": {exc}" if exc else "")
            )
        if not journal.pending():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return report


# --- undo handlers for the kinds this module owns ---------------------------------


def undo_process(fields: dict[str, Any]) -> None:
    pid, start = int(fields["pid"]), fields.get("starttime")
    if not process_alive(pid, start):
        _reap(pid)  # dead already: if it is our zombie, leave none behind
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, 9)
    # Reap it if it is our child; otherwise wait for it to go away (or to be a zombie of another parent).
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        if not process_alive(pid, start):
            _reap(pid)
            return
        time.sleep(0.005)
    raise TimeoutError(f"process {pid} did not exit after SIGKILL")


def mounted(target: str) -> bool:
    target = os.path.realpath(target)
    with open("/proc/self/mountinfo") as fh:
        return any(line.split()[4] == target for line in fh)


def undo_mount(fields: dict[str, Any]) -> None:
    from jailshell.engine import syscalls

    target = fields["target"]
    while mounted(target):
        # Detach: a busy mount is removed from the tree now and freed when unused.
        syscalls.umount2(target, syscalls.MNT_DETACH)


def _unmount_below(path: str) -> None:
    """Unmount anything mounted at or under path, deepest first, before rm -r."""
    from jailshell.engine import syscalls

    real = os.path.realpath(path)
    with open("/proc/self/mountinfo") as fh:
        targets = [line.split()[4] for line in fh]
    for t in sorted({t for t in targets if t == real or t.startswith(real + "/")}, key=len, reverse=True):
        with contextlib.suppress(OSError):
            syscalls.umount2(t, syscalls.MNT_DETACH)


def undo_dir(fields: dict[str, Any]) -> None:
    import shutil

    path = fields["path"]
    if not os.path.lexists(path):
        return
    _unmount_below(path)
    # Never follow symlinks out of the directory (an image may hold absolute ones).
    # Gone meanwhile is done: a container's supervisor may remove it at the same time.
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(path)


def undo_file(fields: dict[str, Any]) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(fields["path"])
