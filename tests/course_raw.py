"""Replaying a lesson's raw commands by hand, for the course's proof tests.

The course shows, for each engine step, the util-linux commands that do the
same (`nsenter --target PID ... mount ...`, `unshare --uts --pid --fork sh`).
These helpers play a lesson on one jail through the engine (A), rebuild a
second jail (B) to the state before each step, do the step on B with the
*shown* raw commands instead, and compare the kernel state of A and B.

- Commands that act on a live process (nsenter ...) are run against B, with
  A's PID and directory replaced by B's: they must leave B as the engine
  left A.
- unshare(1) and chroot(1) cannot act on another process; what they show is
  the command building the jail so far from scratch. It is run with a probe
  instead of its shell, and what the probe sees (its namespaces, its root,
  its uid map, PID 1) must match A; the engine then does the step on B so the
  next commands have a jail to act on.

Lessons that drive docker containers (`docker ...`, `walk`) are left out of
B: the unrolled docker plan, its volumes, and the stop and kill lines have
their own by-hand tests (tests/test_containers_byhand.py).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from jailshell.commands.results import Results, StepReport
from jailshell.commands.workspace import Workspace
from jailshell.engine.equivalents import Equivalents
from jailshell.engine.jail import Jail
from jailshell.engine.namespaces import BY_KIND, ns_inode
from jailshell.lessons.spec import Lesson

# Engine ops whose raw commands act on the live jail by PID.
ON_LIVE_JAIL = {"sethostname", "mount", "umount", "exec", "pivot_root", "mask"}
# Engine ops whose raw command builds the jail so far from scratch.
FROM_SCRATCH = {"unshare", "chroot"}
# Lines left out of jail B (containers outlive it, and have their own tests).
DOCKER_WORDS = ("docker", "walk", "explain")
# exec commands whose output names processes or is otherwise not reproducible.
VOLATILE = ("ps",)


def is_docker(line: str) -> bool:
    return line.split()[0] in DOCKER_WORDS


def reports(result: Any) -> list[StepReport]:
    items = result.items if isinstance(result, Results) else [result]
    return [r for r in items if isinstance(r, StepReport)]


def strip_comment(line: str) -> str:
    """A shown raw line without its trailing `    # explanation`."""
    return re.sub(r"\s{2,}#.*$", "", line)


def retarget(line: str, a: Jail, b: Jail) -> str:
    """A's raw command, aimed at B: its PID (and every holder PID) and its directory."""
    line = line.replace(str(a.dir), str(b.dir))
    for pid in sorted({a.pid, *a.holder_pids}, reverse=True):
        line = re.sub(rf"(--target |/proc/){pid}(?![0-9])", rf"\g<1>{b.pid}", line)
    return line


def sh(line: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", line], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[Any]) -> None:
    """End a helper process a test started (socat, ...): TERM, then KILL after 5 s."""
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- the kernel state compared ------------------------------------------------------------------------


def _mountinfo(pid: int) -> list[tuple[str, str, str]]:
    rows = []
    with open(f"/proc/{pid}/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            f = left.split()
            rows.append((f[4], right.split()[0], " ".join(f[6:])))
    return rows


def fingerprint(jail: Jail, others: Iterable[Jail] = ()) -> dict[str, Any]:
    """What a step changes, read from the kernel, with the jail's own paths made generic."""
    from jailshell.lessons.checks import _root_mode

    me = os.getpid()
    isolated = sorted(k for k in BY_KIND if ns_inode(jail.pid, k) != ns_inode(me, k))
    skip = [str(o.dir) for o in others]
    mounts = sorted(
        (target.replace(str(jail.rootfs), "$ROOT"), fstype, "shared" if "shared:" in opt else "private")
        for target, fstype, opt in _mountinfo(jail.pid)
        if not any(target.startswith(s) for s in skip) and not target.startswith(str(jail.dir / "upper")))
    with open(f"/proc/{jail.pid}/uid_map") as fh:
        uid_map = " ".join(fh.read().split())
    with open(f"/proc/{jail.pid}/status") as fh:
        nspid = next(line.split()[1:] for line in fh if line.startswith("NSpid:"))
    # The hostname of the jail's UTS namespace, read by util-linux (not by asking the holder).
    hostname = sh(f"nsenter --target {jail.pid} --uts hostname").stdout.strip()
    return {"isolated": isolated, "hostname": hostname, "root": _root_mode(jail)[0],
            "mounts": mounts, "uid_map": uid_map, "pid_inside": nspid[-1] if len(nspid) > 1 else "no PID namespace"}


# -- probing a from-scratch command -------------------------------------------------------------------

PROBE = ("for k in cgroup ipc mnt net pid user uts; do echo ns $k $(readlink /proc/self/ns/$k); done; "
         "echo pid $$; echo uid_map $(cat /proc/self/uid_map)")


def probe_from_scratch(line: str) -> dict[str, Any]:
    """Run an `unshare ... [chroot DIR] sh` line with a probe as its shell's script.

    A chroot has no /proc to read namespaces from, so the namespaces are
    probed by the same unshare without its chroot, and the chroot by listing
    its / (which needs no /proc)."""
    words = shlex.split(strip_comment(line))
    assert words[-1] == "sh", f"expected a command ending in sh: {line}"
    words = words[:-1]
    out: dict[str, Any] = {"ns": {}, "root": None}
    if "chroot" in words:
        at = words.index("chroot")
        listing = subprocess.run([*words, "sh", "-c", "ls -a /"], capture_output=True, text=True, timeout=30,
                                 stdin=subprocess.DEVNULL)
        assert listing.returncode == 0, f"{line}: exit {listing.returncode}: {listing.stderr}"
        out["root"] = " ".join(sorted(set(listing.stdout.split()) - {".", ".."}))
        words = words[:at]
    res = subprocess.run([*words, "sh", "-c", PROBE], capture_output=True, text=True, timeout=30,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, f"{line}: exit {res.returncode}: {res.stderr}"
    for row in res.stdout.splitlines():
        key, _, rest = row.partition(" ")
        if key == "ns":
            kind, _, link = rest.partition(" ")
            out["ns"][kind] = link
        else:
            out[key] = rest.strip()
    me = os.getpid()
    out["isolated"] = sorted(k for k, link in out["ns"].items()
                             if link != os.readlink(f"/proc/{me}/ns/{BY_KIND[k].proc_name}"))
    return out


# -- the comparison -----------------------------------------------------------------------------------


@dataclass
class StepProof:
    ref: str
    raw_run: list[str] = field(default_factory=list)
    probed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def lines_before(lesson: Lesson, si: int) -> list[str]:
    out = list(lesson.setup)
    for step in lesson.steps[:si]:
        out += step.run
    return out


def prove_lesson(ws_a: Workspace, ws_b: Workspace, lesson: Lesson) -> list[StepProof]:
    """Play LESSON on A through the engine, and each step again on B by its raw commands."""
    ws_a.replay([(line, None) for line in lesson.setup])
    proofs = []
    for si, step in enumerate(lesson.steps):
        proof = StepProof(f"{lesson.id}/{step.id}")
        proofs.append(proof)
        shown: list[tuple[str, StepReport | None]] = []
        for line in step.run:
            found = reports(ws_a.run_line(line))
            shown.append((line, found[0] if found and not is_docker(line) else None))
        a = ws_a.session.jail
        assert a is not None
        ws_b.replay([(line, None) for line in lines_before(lesson, si) if not is_docker(line)])
        for line, report in shown:
            if is_docker(line):
                continue
            b = ws_b.session.jail
            assert b is not None
            eq: Equivalents | None = report.equivalents if report is not None else None
            op = report.op if report is not None else None
            if report is None:
                continue  # a view or the escape: it shows, it does not change the jail
            if eq is None or op not in ON_LIVE_JAIL | FROM_SCRATCH:
                ws_b.run_line(line)  # a fresh jail: the engine does it on B too
                continue
            if op in FROM_SCRATCH:
                _probe(proof, eq, ws_b, line, a)
                continue
            for raw in eq.raw:
                cmd = retarget(strip_comment(raw), a, b)
                res = sh(cmd)
                proof.raw_run.append(cmd)
                if op == "exec":
                    expected = report.output
                    if expected is not None and res.returncode != expected.returncode:
                        proof.problems.append(f"`{cmd}` exited {res.returncode}, the engine's exec "
                                              f"{expected.returncode}: {res.stderr.strip()}")
                    elif (expected is not None and line.split()[1] not in VOLATILE
                          and res.stdout.replace(str(b.dir), "$DIR") != expected.stdout.replace(str(a.dir), "$DIR")):
                        proof.problems.append(f"`{cmd}` printed {res.stdout!r}, the engine's exec "
                                              f"{expected.stdout!r}")
                elif res.returncode != 0:
                    proof.problems.append(f"`{cmd}` failed ({res.returncode}): {res.stderr.strip()}")
            _note_done(ws_b, line, b)
        if any(is_docker(line) for line in step.run) or not (proof.raw_run or proof.probed):
            continue  # nothing was done by hand in this step
        b = ws_b.session.jail
        assert b is not None
        fa, fb = fingerprint(a, [b]), fingerprint(b, [a])
        for key in fa:
            if fa[key] != fb[key]:
                proof.problems.append(f"{key}: engine {fa[key]!r}, by hand {fb[key]!r}")
        if step.check:
            verdict = ws_b.evaluate(step.check)
            if not verdict.ok:
                proof.problems.append(f"check '{step.check}' fails on the jail made by hand: {verdict.detail}")
    return proofs


def _note_done(ws: Workspace, line: str, jail: Jail) -> None:
    """The engine's own bookkeeping of what the raw command did (so later
    commands are shown and checked against the right root and mounts)."""
    words = line.split()
    if words[0] == "mount":
        from jailshell.engine.steps import SPECIAL_MOUNTS

        jail.state.mounts.append(words[3] if words[1] == "bind" else SPECIAL_MOUNTS[words[1]].target)
    elif words[0] in ("pivot-root", "pivot_root", "pivot"):
        jail.state.root_mode = "pivot"
    elif words[0] == "hostname" and len(words) > 1:
        jail.state.hostname = words[1]
    elif words[0] == "mask":
        jail.state.masked = ["by hand"]


def _probe(proof: StepProof, eq: Equivalents, ws_b: Workspace, line: str, a: Jail) -> None:
    """The from-scratch command against what the engine made: B then takes the step by the engine."""
    ws_b.run_line(line)
    b = ws_b.session.jail
    assert b is not None
    scratch = retarget(eq.raw[0], a, b)
    seen = probe_from_scratch(scratch)
    proof.probed.append(scratch)
    want = fingerprint(b)
    if seen["isolated"] != want["isolated"]:
        proof.problems.append(f"`{scratch}` isolates {seen['isolated']}, the engine's jail {want['isolated']}")
    if "pid" in want["isolated"] and seen["pid"] != "1":
        proof.problems.append(f"`{scratch}`: its shell is PID {seen['pid']}, not 1")
    if seen["uid_map"] != want["uid_map"]:
        proof.problems.append(f"`{scratch}`: uid_map {seen['uid_map']!r}, the engine's {want['uid_map']!r}")
    if seen["root"] is not None:
        entries = " ".join(sorted(os.listdir(b.rootfs)))
        if seen["root"] != entries:
            proof.problems.append(f"`{scratch}`: its / holds {seen['root']!r}, not the jail's root filesystem")
