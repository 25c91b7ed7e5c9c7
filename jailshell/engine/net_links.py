"""Netlink plumbing for the network steps: sockets in a namespace, lookups, errors.

A netlink socket talks to the network namespace it was created in, for its
whole life. pyroute2 (0.9.1 and later) opens one inside another namespace
given a path such as /proc/PID/ns/net: a forked helper setns()es there,
creates the socket and passes it back. So the caller never leaves its own
namespace, and no thread of it is ever in the jail's.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator
from typing import Any

from jailshell.errors import JailshellError, kernel_error


def rtnl(pid: int | None = None) -> Any:
    """A netlink route socket in the host's namespace, or in that of process pid."""
    from pyroute2 import IPRoute

    if pid is None:
        return IPRoute()
    # flags=0: never create anything at that path, only open it.
    return IPRoute(netns=f"/proc/{pid}/ns/net", flags=0)


def netlink_error(what: str, exc: Exception, hint: str | None = None) -> JailshellError:
    code = getattr(exc, "code", None) or getattr(exc, "errno", None) or 0
    return kernel_error(what, OSError(code, os.strerror(code) if code else str(exc)), hint)


@contextlib.contextmanager
def netlink(what: str, hint: str | None = None) -> Iterator[None]:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        yield
    except NetlinkError as exc:
        raise netlink_error(what, exc, hint) from None


def index(ipr: Any, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def link_kind(ipr: Any, index: int) -> str | None:
    msg = ipr.get_links(index)[0]
    kind = msg.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    return str(kind) if kind else None


def ns_inode(pid: int | str) -> int:
    return os.stat(f"/proc/{pid}/ns/net").st_ino


def run_in_netns(pid: int, fn: Callable[[], None], what: str) -> None:
    """Run fn in a forked child that joined the jail's network namespace
    (and its user namespace first when it has its own: without root on the
    host, only the jail's user namespace gives the privileges over its net
    namespace). The caller never leaves its own namespaces."""
    from jailshell.engine import syscalls as sc

    # As root, never join the jail's user namespace: if the jail made its net
    # namespace before its user namespace, root *inside* would have no power over it.
    kinds = ("net",) if os.geteuid() == 0 else ("user", "net")
    fds = {}
    for kind in kinds:
        if os.stat(f"/proc/{pid}/ns/{kind}").st_ino != os.stat(f"/proc/self/ns/{kind}").st_ino:
            fds[kind] = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        code = 0
        try:
            os.close(r)
            if "user" in fds:
                sc.setns(fds["user"], sc.CLONE_NEWUSER)
            sc.setns(fds["net"], sc.CLONE_NEWNET)
            fn()
        except OSError as exc:
            os.write(w, str(exc.errno or 0).encode())
            code = 1
        except BaseException:
            code = 2
        os._exit(code)
    os.close(w)
    for fd in fds.values():
        os.close(fd)
    err = b""
    while chunk := os.read(r, 64):
        err += chunk
    os.close(r)
    _, status = os.waitpid(child, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        code = int(err) if err.isdigit() else 0
        raise kernel_error(what, OSError(code, os.strerror(code) if code else "the helper process failed"))


def delete_link(name: str) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    with rtnl() as ipr:
        idx = index(ipr, name)
        if idx is None:
            return  # gone already: its jail's namespace died and took the pair with it
        try:
            ipr.link("del", index=idx)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise netlink_error(f"ip link del {name}", exc) from None
