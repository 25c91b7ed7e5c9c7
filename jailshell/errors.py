"""User-facing errors and exit statuses.

Anything a learner can cause (bad input, missing root, a kernel feature that is
off) is raised as a JailshellError with a one-line message and, where we know
it, a hint on how to fix it. The CLI prints these without a traceback; any
other exception is a bug and is shown in full.
"""

from __future__ import annotations

import errno
from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    # The command given to `run` could not be executed (same codes as docker/sh).
    CANNOT_EXECUTE = 126
    NOT_FOUND = 127
    CTRL_C = 130


class JailshellError(Exception):
    """An error that is the user's to fix, shown as one line plus a hint."""

    status: ExitStatus = ExitStatus.ERROR

    def __init__(self, message: str, hint: str | None = None, *, status: ExitStatus | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message


class NeedsRoot(JailshellError):
    def __init__(self, what: str):
        super().__init__(
            f"{what} needs root (CAP_SYS_ADMIN)",
            hint="run jailshell with sudo, or use a rootless step where the lesson offers one",
        )


class InvalidInput(JailshellError):
    status = ExitStatus.USAGE


# Why a syscall failed, in words a learner can act on. Keyed by errno; the
# operation name is filled in by kernel_error().
_ERRNO_HINTS = {
    errno.EPERM: "the kernel refused: this needs root (CAP_SYS_ADMIN) in the namespace that owns the resource",
    errno.EACCES: "permission denied by file permissions or by a security module",
    errno.EINVAL: "the kernel rejected the arguments (a flag it does not support, or a state that does not allow it)",
    errno.ENOSPC: "a namespace or cgroup limit is reached (see /proc/sys/user/max_*_namespaces)",
    errno.EBUSY: "the resource is in use",
    errno.ENOENT: "no such file or directory",
    errno.ENOSYS: "this kernel does not implement the call",
    errno.EUSERS: "too many nested user namespaces",
}


def kernel_error(operation: str, err: OSError, hint: str | None = None) -> JailshellError:
    """Wrap an OSError from a syscall into a learner-readable error."""
    name = errno.errorcode.get(err.errno or 0, "E?")
    why = _ERRNO_HINTS.get(err.errno or 0, err.strerror or "")
    return JailshellError(f"{operation} failed: {name} ({why})", hint=hint)
