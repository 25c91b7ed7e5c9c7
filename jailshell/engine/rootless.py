"""The jail built by an unprivileged user: what the kernel allows without root.

`probe()` forks a child that drops to an unprivileged uid (nobody, by
default) with no capabilities, then does what a rootless runtime does: a user
namespace first, its own uid and gid maps (setgroups denied first, as the
kernel demands of an unprivileged writer), then the other namespaces, which
that user namespace owns, a hostname, a tmpfs, PID 1 of a new PID namespace.
It also tries what a user namespace does not grant: creating a device node
and reading a file only the host's root may read. Every answer is the
kernel's; nothing outlives the child (its namespaces go when it exits).

`shell_equivalent()` is the same with util-linux, for a second terminal.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import stat
from typing import Any

from jailshell.engine import syscalls as sc

NOBODY = 65534
SECRET = "/etc/shadow"  # mode 0640 or 0600, owner root: the classic "root only" file


def probe(uid: int = NOBODY, gid: int = NOBODY) -> dict[str, Any]:
    """Run the rootless steps in a throwaway child as UID:GID; what happened at each."""
    def report() -> bytes:
        try:
            out = _child(uid, gid)
        except BaseException as exc:  # anything: report it instead of a traceback in a fork
            out = {"error": f"{type(exc).__name__}: {exc}"}
        return json.dumps(out).encode()

    data = sc.answer_from_child(report)
    try:
        result: dict[str, Any] = json.loads(data.decode() or "{}")
    except ValueError:
        result = {"error": "the probe died without an answer"}
    return result


def _err(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def _child(uid: int, gid: int) -> dict[str, Any]:
    out: dict[str, Any] = {"uid": uid}
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    # setresuid away from root clears "dumpable", which makes /proc/self/* root's:
    # a process started by that user directly would be dumpable.
    sc.prctl(4, 1)  # PR_SET_DUMPABLE
    out["host_uid"] = os.getuid()
    try:
        sc.unshare(sc.CLONE_NEWUSER)
    except OSError as exc:
        out["userns"] = _err(exc)
        return out
    out["userns"] = "ok"
    try:
        # Without CAP_SETGID outside, the kernel accepts a gid_map only once setgroups is denied.
        with open("/proc/self/setgroups", "w") as fh:
            fh.write("deny")
        with open("/proc/self/uid_map", "w") as fh:
            fh.write(f"0 {uid} 1\n")
        with open("/proc/self/gid_map", "w") as fh:
            fh.write(f"0 {gid} 1\n")
    except OSError as exc:
        out["maps"] = _err(exc)
        return out
    with open("/proc/self/uid_map") as fh:
        out["uid_map"] = " ".join(fh.read().split())
    with open("/proc/self/setgroups") as fh:
        out["setgroups"] = fh.read().strip()
    out["uid_inside"] = os.getuid()
    try:
        sc.unshare(sc.CLONE_NEWUTS | sc.CLONE_NEWNS | sc.CLONE_NEWIPC | sc.CLONE_NEWNET | sc.CLONE_NEWPID)
        out["namespaces"] = "ok"
    except OSError as exc:
        out["namespaces"] = _err(exc)
        return out
    try:
        sc.sethostname("rootless")
        out["hostname"] = os.uname().nodename
    except OSError as exc:
        out["hostname"] = _err(exc)
    try:
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        sc.mount("tmpfs", "/tmp", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "size=1m")
        out["tmpfs"] = "ok"
    except OSError as exc:
        out["tmpfs"] = _err(exc)
    try:
        os.mknod("/tmp/null" if out["tmpfs"] == "ok" else "/nonexistent-dir/null", 0o666 | stat.S_IFCHR,
                 os.makedev(1, 3))
        out["mknod"] = "ok"
    except OSError as exc:
        out["mknod"] = _err(exc)
    if os.path.exists(SECRET):
        try:
            with open(SECRET, "rb"):
                out["read_secret"] = "ok"
        except OSError as exc:
            out["read_secret"] = _err(exc)
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        os.write(w, str(os.getpid()).encode())
        os._exit(0)
    os.close(w)
    out["pid_inside"] = int(os.read(r, 32) or b"0")
    os.close(r)
    os.waitpid(child, 0)
    return out


def expected(result: dict[str, Any]) -> tuple[bool, str]:
    """Whether the kernel answered as it must for an unprivileged user, and a summary.

    With user namespaces allowed: root inside is the unprivileged uid outside,
    the namespaces it owns can be set up (hostname, a tmpfs, PID 1), and what
    needs the host's privileges still fails (EPERM for mknod, EACCES for the
    host root's file). Without them, unshare(CLONE_NEWUSER) itself fails:
    that is an answer too, and the lesson goes on with what root can show.
    """
    if "error" in result:
        return False, f"the probe failed: {result['error']}"
    userns = result.get("userns")
    if userns != "ok":
        return userns in ("EPERM", "ENOSPC", "EACCES", "EINVAL"), (
            f"unprivileged user namespaces are not allowed on this machine (unshare(CLONE_NEWUSER) as uid "
            f"{result.get('uid')}: {userns}): rootless containers cannot run here")
    uid = result.get("uid")
    ok = (result.get("uid_map") == f"0 {uid} 1" and result.get("uid_inside") == 0
          and result.get("setgroups") == "deny" and result.get("namespaces") == "ok"
          and result.get("hostname") == "rootless" and result.get("tmpfs") == "ok"
          and result.get("pid_inside") == 1 and result.get("mknod") == "EPERM"
          and result.get("read_secret", "EACCES") == "EACCES")
    return ok, (f"as uid {uid}: uid_map {result.get('uid_map')!r} (uid {result.get('uid_inside')} inside), "
                f"setgroups {result.get('setgroups')}, hostname {result.get('hostname')}, tmpfs "
                f"{result.get('tmpfs')}, PID inside {result.get('pid_inside')}; mknod {result.get('mknod')}, "
                f"reading {SECRET} {result.get('read_secret', 'skipped (absent)')}")


SCRIPT = ("cat /proc/self/uid_map /proc/self/setgroups; id -u; hostname rootless && hostname; "
          "mount -t tmpfs tmpfs /tmp && echo tmpfs ok; echo pid $$; "
          f"mknod /tmp/null c 1 3 || echo mknod refused; cat {SECRET} >/dev/null || echo {SECRET} refused")


def shell_equivalent(uid: int = NOBODY, gid: int = NOBODY) -> str:
    """The same probe with util-linux (setpriv drops to the user, unshare -r maps it to root)."""
    return (f"setpriv --reuid={uid} --regid={gid} --clear-groups --inh-caps=-all "
            f"unshare --user --map-root-user --uts --mount --ipc --net --pid --fork sh -c {shlex.quote(SCRIPT)}")
