"""`jailshell cleanup`: find and remove what a crashed jailshell left behind.

First the journals of owners that are gone (see journal.py), then a scan for
anything that looks like ours but is in no journal (a journal deleted by
hand, a crash between two lines): mounts under the run directory, jail and
container directories, and whatever the cgroup and network modules
recognise as theirs.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import os
from pathlib import Path

from jailshell import paths
from jailshell.engine import journal as jmod
from jailshell.errors import JailshellError

# module -> function returning a list of (description, remover) for leftovers it recognises.
LEFTOVER_SCANNERS = ("jailshell.engine.cgroups", "jailshell.engine.network")


def _live_paths(run_dir: Path) -> set[str]:
    """Directories referenced by journals whose owners are still running."""
    live: set[str] = set()
    for path in jmod.journals(run_dir):
        pid, start = jmod.owner_of(path)
        if jmod.process_alive(pid, start):
            for entry in jmod.Journal.load(path).pending():
                if "path" in entry.fields:
                    live.add(entry.fields["path"])
    return live


def _stray_dirs(run_dir: Path) -> list[Path]:
    live = _live_paths(run_dir)
    out = []
    for sub in ("jails", "containers", "labs"):
        base = run_dir / sub
        if base.is_dir():
            out += [d for d in base.iterdir() if str(d) not in live]
    return out


def cleanup(run_dir: Path | None = None) -> jmod.CleanupReport:
    run_dir = run_dir or paths.run_dir()
    if not run_dir.exists():
        return jmod.CleanupReport()
    lock_fd = os.open(paths.ensure_dir(run_dir, 0o700) / ".cleanup.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise JailshellError("another `jailshell cleanup` is running", hint="wait for it to finish") from None
        report = jmod.cleanup(run_dir)
        for d in _stray_dirs(run_dir):
            try:
                jmod.undo_dir({"path": str(d)})
                report.removed.append(f"dir {d}")
            except OSError as exc:
                report.failed.append(f"dir {d}: {exc}")
        for module in LEFTOVER_SCANNERS:
            try:
                mod = importlib.import_module(module)
            except ModuleNotFoundError:
                continue
            scan = getattr(mod, "find_leftovers", None)
            remove = getattr(mod, "remove_leftover", None)
            if scan is None or remove is None:
                continue
            for item in scan():
                try:
                    remove(item)
                    report.removed.append(f"{module.rsplit('.', 1)[1]} {item}")
                except Exception as exc:  # keep going: report what could not be removed
                    report.failed.append(f"{module.rsplit('.', 1)[1]} {item}: {exc}")
        return report
    finally:
        os.close(lock_fd)
        with contextlib.suppress(OSError):
            # An empty run dir is removed, so a clean host has nothing of ours at all.
            for sub in ("journal", "jails", "containers", "labs"):
                if (run_dir / sub).is_dir() and not any((run_dir / sub).iterdir()):
                    (run_dir / sub).rmdir()


