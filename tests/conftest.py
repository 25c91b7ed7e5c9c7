"""Test-suite wide rules.

- Tests marked `root` need real privileges. Without root they are skipped with
  the reason, except under CI=true, where a skip would hide a broken engine:
  there they fail.
- Every session gets its own run and data directories, so tests never touch a
  learner's real state, and the host is compared before and after the whole
  suite: a mount, cgroup, interface, netns, firewall table or process left
  behind fails the run.
- Suites that touch the kernel take a machine-wide lock, so two test runs on
  one machine cannot see each other's resources as leaks.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import hoststate

IS_ROOT = os.geteuid() == 0
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") and not IS_ROOT:
        if IN_CI:
            pytest.fail("this test needs root, and CI=true: refusing to skip it (CI must run as root)")
        pytest.skip("needs root (namespaces, mounts, cgroups): run the tests with sudo")


_STATE_BASE = Path(tempfile.mkdtemp(prefix="jailshell-tests-"))
os.environ.setdefault("JAILSHELL_RUN_DIR", str(_STATE_BASE / "run"))
os.environ.setdefault("JAILSHELL_DATA_DIR", str(_STATE_BASE / "data"))
os.environ.setdefault("JAILSHELL_STATE_DIR", str(_STATE_BASE / "state"))


@pytest.fixture(scope="session", autouse=True)
def host_left_clean() -> Iterator[None]:
    lock_fd = None
    if IS_ROOT:
        lock_fd = os.open("/run/lock/jailshell-tests.lock", os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
    before = hoststate.snapshot()
    yield
    after = hoststate.snapshot()
    leaks = after.leaks_since(before)
    pending = []
    from jailshell.engine import journal

    for path in journal.journals():
        pending += [e.describe() for e in journal.Journal.load(path).pending()]
    try:
        assert not leaks and not pending, (
            "the test suite left resources on the host:\n  " + "\n  ".join(leaks + [f"journal: {p}" for p in pending])
        )
    finally:
        if not leaks:  # never rm -r a tree that may still hold a mount of something else
            shutil.rmtree(_STATE_BASE, ignore_errors=True)
        if lock_fd is not None:
            os.close(lock_fd)
