"""The benchmark runner still works: `python -m bench --quick` produces every
row, measured (only docker is left out of the quick mode), and leaves the
host clean. How fast anything is, is not checked here: that is what the
full run and its table in bench/README.md are for."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

STAGES = ("fork_called", "child_running", "unshare_called", "unshare_done", "private_done", "overlay_done",
          "mounts_done", "lo_done", "pivot_done", "mask_done", "exec_called", "child_exited", "run_returned")
EXPECTED = {
    "start.floor_plain", "start.floor", "start.floor_process", "start.unshare", "start.bwrap", "start.crun",
    "start.runc", "start.docker", "python.bare", "python.start", "python.imports", "start.jailshell_run", "start.engine",
    "start.engine_plain",
    *(f"profile.{s}" for s in STAGES), "scale.1", "scale.3", "memory.jail_uss", "host.clean",
}


@pytest.mark.root
def test_quick_benchmark_produces_every_row(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    readme = tmp_path / "README.md"
    res = subprocess.run([sys.executable, "-m", "bench", "--quick", "--json", str(out), "--readme", str(readme)],
                         cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-2000:] + res.stdout[-2000:]
    rows = {r["id"]: r for r in json.loads(out.read_text())}

    assert set(rows) >= EXPECTED, f"missing rows: {sorted(EXPECTED - set(rows))}"
    bad = {k: (r["status"], r["note"]) for k, r in rows.items() if r["status"] == "failed"}
    assert not bad, bad
    assert rows["start.docker"]["status"] == "skipped" and "--quick" in rows["start.docker"]["note"]
    for key in EXPECTED - {"start.docker", "host.clean"}:
        row = rows[key]
        assert row["status"] == "ok", (key, row["note"])
        assert row["value"] is not None and row["value"] > 0 and row["n"] >= 1, (key, row)
    # Every stage of the profile was seen, and the stages add up to about the
    # engine's own time for a run (same code path, measured separately).
    assert sum(rows[f"profile.{s}"]["value"] for s in STAGES) > 0.5 * rows["start.engine"]["value"]
    assert rows["scale.3"]["extra"]["jails"] == 3 and rows["scale.3"]["extra"]["clean"] is True
    assert rows["host.clean"]["status"] == "ok", rows["host.clean"]["note"]

    # The table names every target and every measured tool.
    table = readme.read_text()
    for needle in ("within 2× bwrap", "within 1.5× `runc run`", "5× faster than `docker run`", "under 10 MB",
                   "runc run", "bwrap --unshare-all", "jailshell run --rm", "Live jails at once"):
        assert needle in table, needle
