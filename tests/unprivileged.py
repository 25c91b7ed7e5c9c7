"""Run a piece of jailshell as an unprivileged user, in a forked child of the test.

The test interpreter may live where uid 65534 cannot exec it, so instead of
starting a new process as that user, the already-running interpreter forks
and drops to it: the code under test runs with no capabilities, for real.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from jailshell.engine import syscalls


def as_nobody(fn: Callable[[], int], env: dict[str, str] | None = None) -> tuple[int, str]:
    """fn() runs as uid/gid 65534 with stdout+stderr captured; returns (its return value, output)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.close(r)
            os.dup2(w, 1)
            os.dup2(w, 2)
            # pytest swaps sys.stdout/stderr for its own capture objects: point them at the pipe.
            sys.stdout = sys.stderr = open(w, "w", buffering=1, closefd=False)  # noqa: SIM115
            os.environ.update(env or {})
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            syscalls.prctl(4, 1)  # PR_SET_DUMPABLE: as a freshly started process of that user would be
            code = fn()
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode()


@contextlib.contextmanager
def nobody_state() -> Iterator[tuple[Path, dict[str, str]]]:
    """Run and data directories an unprivileged user may write, the data a copy
    of this session's image store: (base dir, the env that points jailshell at
    them). Removed after."""
    from jailshell.engine.images.store import ImageStore

    image = ImageStore().resolve()
    base = Path(tempfile.mkdtemp(prefix="jsh-rootless-"))
    try:
        subprocess.run(["cp", "-a", str(image.path.parent.parent.parent), str(base / "data")], check=True)
        (base / "run").mkdir()
        subprocess.run(["chmod", "-R", "a+rwX", str(base)], check=True)
        yield base, {"JAILSHELL_RUN_DIR": str(base / "run"), "JAILSHELL_DATA_DIR": str(base / "data")}
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)
