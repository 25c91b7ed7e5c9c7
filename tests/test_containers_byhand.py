"""The plan's raw commands, pasted into a root shell, build the same container.

The plan shown for `docker run` is run twice: once by the engine, once as the
util-linux/busybox commands it lists (host commands in a shell that then
execs the unshare step; every later command inside the shell it starts).
What a process sees from inside both containers must be the same."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from jailshell.engine import containers, dockerline
from jailshell.engine.containers import Creation, Streams
from jailshell.engine.images.store import ImageStore
from jailshell.engine.journal import undo_dir, undo_mount

pytestmark = pytest.mark.root

# What a process sees of its container: PID, hostname, interfaces, cgroups,
# the mount table (point, options, type), /dev, environment, namespaces' owners.
PROBE = ("echo pid=$$; hostname; ls /sys/class/net; sort /proc/self/cgroup; "
         "awk '{for (i = 7; i <= NF; i++) if ($i == \"-\") print $5, $6, $(i + 1)}' /proc/self/mountinfo | sort; "
         "ls -A /dev | tr '\\n' ' '; echo; env | sort; "
         "cat /proc/1/cmdline | tr '\\0' ' '; echo; echo end")
LINE = f"run --rm --network none -h byhand -e GREETING=hi busybox sh -c {shlex.quote(PROBE)}"


def by_engine() -> str:
    spec = dockerline.parse(LINE).spec
    assert spec is not None
    out = bytearray()
    code = containers.run(Creation(spec), streams=Streams(out=out.extend, err=out.extend))
    assert code == 0, out.decode()
    return out.decode()


def by_hand(plan: dockerline.Plan) -> str:
    host: list[str] = []
    jail: list[str] = []
    unshare = None
    for step in plan.steps:
        if step.key == "unshare":
            unshare = step.raw[0]
        elif unshare is None:
            # Before unshare: this shell is the one that becomes the container ($$).
            host += [cmd.replace(dockerline.PID_PLACEHOLDER, "$$") for cmd in step.raw]
        else:
            assert step.where == "jail", step.key
            jail += step.raw
    assert unshare is not None and unshare.endswith(" sh")
    inside = "set -e\n" + "\n".join(jail)
    # The host commands' own output (the image step lists the image) is not the container's.
    script = ("set -e\nexec 3>&1 >/dev/null\n" + "\n".join(host)
              + f"\nexec >&3 3>&-\nexec {unshare} -c {shlex.quote(inside)}\n")
    res = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_the_plan_s_commands_build_the_same_container_by_hand() -> None:
    engine = by_engine()
    spec = dockerline.parse(LINE).spec
    assert spec is not None
    layout = dockerline.Layout.of(containers.new_id())
    image = ImageStore().resolve(spec.run.image)
    plan = dockerline.plan_for(spec, layout, dockerline.ImageFacts.from_image(image))
    cgroups = [Path(c.split(" ", 2)[2]) for s in plan.steps if s.key == "cgroup" for c in s.raw
               if c.startswith("mkdir -p ")]
    try:
        hand = by_hand(plan)
    finally:
        with contextlib.suppress(FileNotFoundError):
            undo_mount({"target": str(layout.rootfs)})
        undo_dir({"path": str(layout.run)})
        undo_dir({"path": str(layout.data)})
        for cg in cgroups:
            with contextlib.suppress(FileNotFoundError, OSError):
                os.rmdir(cg)
            with contextlib.suppress(OSError):
                os.rmdir(cg.parent)  # the shared `jailshell` parent, when it is empty
    assert hand.endswith("end\n") and engine.endswith("end\n")
    assert hand.splitlines()[0] == "pid=1" and hand.splitlines()[1] == "byhand"
    assert "/sys ro,nosuid,nodev,noexec,relatime sysfs" in hand
    assert hand.splitlines() == engine.splitlines(), "\n".join(__import__("difflib").unified_diff(engine.splitlines(), hand.splitlines(), "engine", "by hand", lineterm=""))
