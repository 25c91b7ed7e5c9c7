"""Who uses the host's network resources, across every jailshell on the host.

A journal lives in its jailshell's run directory, and two jailshells may have
different ones (JAILSHELL_RUN_DIR, or root's and a test's). The bridge, the
jail subnet's addresses, ip_forward and the interface names are the host's,
whatever the run directory: a jailshell that saw only its own run directory
would hand out an address another one's jail already has, remove a bridge
another one's jails are plugged into, or clean up as "leftovers" the live
veths and nft tables of another.

So each network entry is recorded with a registration: a small file in
REGISTRY (host-wide, like the resources) naming the journal that holds the
entry. The file is made after the entry is journaled (journal first), and
removed by the entry's undo handler; one whose journal is gone or whose
owner is dead is pruned by the next reader. Whoever looks for users reads
the journals of its own run directory and every registered one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jailshell import paths
from jailshell.engine import journal as jmod
from jailshell.engine.journal import Entry, Journal

REGISTRY = Path("/run/jailshell-net")


def record(journal: Journal, kind: str, **fields: Any) -> Entry:
    """journal.record, and the entry's registration (see the module's doc)."""
    reg = REGISTRY / f"{secrets.token_hex(8)}.reg"
    entry = journal.record(kind, **fields, reg=str(reg))
    with contextlib.suppress(OSError):  # not root: only this run directory sees it (and can't make a bridge)
        REGISTRY.mkdir(mode=0o700, exist_ok=True)
        tmp = reg.with_suffix(".tmp")
        tmp.write_text(str(journal.path))
        tmp.rename(reg)
    return entry


def release(journal: Journal, entry: Entry) -> None:
    """journal.release for an entry made by record(): its creation failed."""
    journal.release(entry)
    unregister(entry.fields)


def unregister(fields: dict[str, Any]) -> None:
    """For undo handlers: the entry's resource is gone, so is its registration."""
    reg = fields.get("reg")
    if reg and os.path.dirname(reg) == str(REGISTRY):
        with contextlib.suppress(OSError):
            os.unlink(reg)


def journal_paths() -> list[Path]:
    """This run directory's journals and every registered one (pruning stale registrations)."""
    found = {os.path.realpath(p): p for p in jmod.journals()}
    try:
        regs = list(REGISTRY.glob("*.reg"))
    except OSError:
        regs = []
    for reg in regs:
        try:
            path = Path(reg.read_text())
        except OSError:
            continue
        pid, start = jmod.owner_of(path)
        if not path.exists() or not jmod.process_alive(pid, start):
            with contextlib.suppress(OSError):
                reg.unlink()
            continue
        found.setdefault(os.path.realpath(path), path)
    return sorted(found.values())


@contextlib.contextmanager
def lock() -> Iterator[None]:
    """Serialises changes to shared resources between every jailshell on the
    host (in the run directory when REGISTRY cannot be made: not root)."""
    try:
        REGISTRY.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(REGISTRY / ".lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError:
        fd = os.open(paths.ensure_dir(paths.run_dir(), 0o700) / ".net.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC,
                     0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
