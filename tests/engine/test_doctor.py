"""`jailshell doctor` checks the machine for real and says what to fix."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from jailshell.cli import main
from tests.unprivileged import as_nobody


@pytest.mark.root
def test_doctor_as_root_finds_everything_the_core_lessons_need() -> None:
    res = subprocess.run([sys.executable, "-m", "jailshell", "doctor", "--json"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    checks = {c["name"]: c for c in json.loads(res.stdout)}
    for name in ("root", "uts namespace", "pid namespace", "mnt namespace", "pivot_root", "embedded image"):
        assert checks[name]["ok"], checks[name]
    assert {f"{k} namespace" for k in ("uts", "pid", "mnt", "ipc", "net", "user", "cgroup")} <= set(checks)


@pytest.mark.root
def test_doctor_without_root_says_how_to_fix_it() -> None:
    status, out = as_nobody(lambda: main(["doctor"]))
    assert status == 1
    assert "running as uid 65534" in out
    assert "fix: run jailshell with sudo" in out
    assert "The core lessons cannot run here" in out
    assert "Traceback" not in out
