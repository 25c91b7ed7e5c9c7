"""`script`: what the learner did, as a shell script of the raw commands.

The raw commands shown during the session target the live jail by PID. The
script cannot reuse that PID, so it starts its own jail process first and
points every command at it ($JAIL). No command can unshare *another* process,
so that process is started with every namespace the session unshared; the
unshare steps then appear as comments with the readlink that shows them. The
script removes everything it made when it ends (trap on EXIT).
"""

from __future__ import annotations

import re
import shlex
import time
from typing import TYPE_CHECKING

from jailshell.errors import InvalidInput

if TYPE_CHECKING:
    from jailshell.commands.session import Done, JailSession

# Ops whose raw commands are replaced by the script's own start of the jail.
_STARTED_BY_PREAMBLE = {"create", "unshare", "chroot"}


def _retarget(line: str, pid: int) -> str:
    line = re.sub(rf"--target {pid}(?![0-9])", '--target "$JAIL"', line)
    line = re.sub(rf"^echo {pid} > ", 'echo "$JAIL" > ', line)  # joining a cgroup
    line = re.sub(rf"^(ip link set \S+ netns|ip netns attach \S+) {pid}$", r'\1 "$JAIL"', line)  # net steps
    return re.sub(rf"/proc/{pid}/", "/proc/$JAIL/", line)


def _cgroup_dirs(steps: list[Done]) -> tuple[dict[str, str], list[str]]:
    """The session's cgroups get a name of the script's own (the session's
    jail may still be running in them): old name -> new, and the directories
    the script makes, deepest first, for its cleanup."""
    from jailshell.engine.cgroups import PARENT

    names = {d.params["name"]: "take-home-$$" for d in steps if d.op == "cgroup" and d.params.get("name")}
    dirs: list[str] = []
    for d in steps:
        for line in (d.equivalents.raw if d.equivalents and d.op == "cgroup" else []):
            path = line.removeprefix("mkdir -p ")
            if path != line and path.rsplit("/", 1)[-1] != PARENT:
                for old, new in names.items():
                    path = path.replace(f"/{PARENT}/{old}", f"/{PARENT}/{new}")
                dirs.append(path)
    return names, list(dict.fromkeys(dirs))


def build(session: JailSession, name: str = "jailshell-session.sh") -> str:
    from jailshell.engine import equivalents

    jail = session.jail
    if jail is None or not session.running:
        raise InvalidInput("no jail yet: there is nothing to write", hint="run a step first (Enter)")
    steps = [d for d in session.done if d.op != "create"]
    if not steps:
        raise InvalidInput("nothing done to the jail yet", hint="run a step first (Enter)")
    kinds = list(jail.state.unshared)
    root_mode = jail.state.root_mode
    rootfs = str(jail.root_dir)  # the jail's own root filesystem, or the DIR of `chroot DIR`
    chrooted_start = root_mode == "chroot"
    create = equivalents.for_create(jail)

    out = [
        "#!/bin/sh",
        "# What you did in jailshell, as the raw commands that do the same, in order.",
        f"# Written {time.strftime('%Y-%m-%d %H:%M')}. Run it as root:  sh {name} [COMMAND...]",
        "# It builds the same jail again and runs COMMAND in it (default: an interactive sh);",
        "# everything it made is removed when it ends.",
        "set -eu",
        "",
        "# The root filesystem: " + (create.note or "a private copy of the image") + ",",
        "# in a directory of the script's own (exported: the sh -c lines below use it too).",
        "DIR=$(mktemp -d /tmp/jailshell-take-home.XXXXXX)",
        "export DIR",
        *[line for line in create.raw if line.split()[0] in ("mkdir", "mount", "cp")],
        "",
        "# The jail's process. No command can unshare another process, so it starts with every",
        "# namespace the session gave the jail: " + (" ".join(kinds) or "none") + ".",
    ]
    starter = equivalents.unshare_cmdline(kinds, chroot_to=rootfs if chrooted_start else None,
                                          cmd=["sleep", "1000000000"]) if kinds else \
        (f"chroot {shlex.quote(rootfs)} sleep 1000000000" if chrooted_start else "sleep 1000000000")
    out += [f"{starter} &", "STARTER=$!"]
    if "pid" in kinds:
        out += ["# With --fork the jail is unshare's child: PID 1 of the new PID namespace.",
                "JAIL=",
                'for _ in 1 2 3 4 5 6 7 8 9 10; do',
                '  JAIL=$(cut -d" " -f1 /proc/$STARTER/task/$STARTER/children 2>/dev/null || true)',
                '  [ -n "$JAIL" ] && break',
                "  sleep 0.1",
                "done"]
    else:
        out += ["JAIL=$STARTER", "sleep 0.1"]
    jail_dir = str(jail.dir)
    renamed, cgroup_dirs = _cgroup_dirs(steps)
    out += [
        "cleanup() {",
        # The jail first: unshare --fork reaps it and exits, so no zombie keeps a cgroup busy.
        '  kill -KILL "${JAIL:-$STARTER}" 2>/dev/null || true',
        '  wait "$STARTER" 2>/dev/null || true',
        # The overlay the script mounted on the host is the jail's own root, even when `chroot DIR` chose another.
        f"  umount {shlex.quote(str(jail.rootfs))} 2>/dev/null || true",
        f"  rm -rf {shlex.quote(jail_dir)}",  # (both become $DIR below)
    ]
    if cgroup_dirs:
        # A cgroup is busy for a moment after its last process died; the shared parent goes if empty.
        parents = " ".join(dict.fromkeys(d.rsplit("/", 1)[0] for d in cgroup_dirs))
        out += [f"  for d in {' '.join(cgroup_dirs)}; do",
                '    for _ in 1 2 3 4 5 6 7 8 9 10; do rmdir "$d" 2>/dev/null && break; sleep 0.1; done',
                "  done",
                f"  rmdir {parents} 2>/dev/null || true"]
    out += [
        "}",
        "trap cleanup EXIT",
        "",
    ]
    for i, d in enumerate(steps, 1):
        lines = _step_lines(i, d, rootfs, root_mode)
        if d.op == "cgroup":
            from jailshell.engine.cgroups import PARENT

            for old, new in renamed.items():
                lines = [line.replace(f"/{PARENT}/{old}", f"/{PARENT}/{new}") for line in lines]
        out += lines
    enter = _retarget(equivalents.nsenter_prefix(jail), jail.pid)
    out += [
        "# Enter the jail, like `docker exec -it`.",
        '[ $# -gt 0 ] || set -- sh',
        f'{enter} "$@"',
        "",
    ]
    # The session's jail directory is the live jail's: the script makes and removes its own.
    return "\n".join(line.replace(str(jail.dir), "$DIR") for line in out)


def _step_lines(i: int, d: Done, rootfs: str, final_root: str) -> list[str]:
    eq = d.equivalents
    head = [f"# {i}. {d.line}" + (f"    (lesson step {d.origin[0]}/{d.origin[1]})" if d.origin else "")]
    if eq is not None and eq.docker:
        head.append(f"#    docker: {eq.docker}")
    if d.op in _STARTED_BY_PREAMBLE:
        why = {"unshare": "done when the jail's process was started above",
               "chroot": "the jail's process was started chrooted above" if final_root == "chroot"
               else "undone by the pivot_root below, as in the session"}[d.op]
        head.append(f"#    ({why})")
        rest = [line for line in (eq.raw if eq else []) if line.startswith("readlink")]
        return [*head, *(_retarget(line, d.pid) for line in rest), ""]
    if eq is None:
        return [*head, "#    (no raw command for this step)", ""]
    lines = []
    for line in eq.raw:
        line = _retarget(line, d.pid)
        if d.root_mode == "chroot" and final_root == "pivot":
            # The script's jail is not chrooted (pivot_root would not move it):
            # what the session did inside the chroot is done with the chroot's path.
            # Not `nsenter --root=DIR`: nsenter opens DIR before it enters the mount
            # namespace, so that root would be the host's mount of DIR, where mount(2)
            # fails with EINVAL. chroot(1), run inside, finds the jail's own.
            line = line.replace(" --root --wd ", f" chroot {shlex.quote(rootfs)} ")
        lines.append(line)
    return [*head, *lines, ""]
