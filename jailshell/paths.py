"""Where jailshell keeps things.

- run dir: live state that must not survive a reboot (journal, jail sockets,
  container upper dirs). tmpfs (/run) as root.
- data dir: the image store. /var/lib/jailshell as root.
- user state dir: progress and history of the *invoking* user, also under sudo.

Each can be overridden by an environment variable, which is how tests give
every session its own directories.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path


def _is_root() -> bool:
    return os.geteuid() == 0


def run_dir() -> Path:
    env = os.environ.get("JAILSHELL_RUN_DIR")
    if env:
        return Path(env)
    if _is_root():
        return Path("/run/jailshell")
    xdg = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/jailshell-{os.getuid()}"
    return Path(xdg) / "jailshell"


def data_dir() -> Path:
    env = os.environ.get("JAILSHELL_DATA_DIR")
    if env:
        return Path(env)
    if _is_root():
        return Path("/var/lib/jailshell")
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local/share")
    return Path(xdg) / "jailshell"


def invoking_user_home() -> Path:
    """The home of the person at the keyboard: under sudo, SUDO_USER's, not root's."""
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user and _is_root():
        try:
            return Path(pwd.getpwnam(sudo_user).pw_dir)
        except KeyError:
            pass
    return Path.home()


def user_state_dir() -> Path:
    env = os.environ.get("JAILSHELL_STATE_DIR")
    if env:
        return Path(env)
    sudo_user = os.environ.get("SUDO_USER")
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg and not (sudo_user and _is_root()):
        return Path(xdg) / "jailshell"
    return invoking_user_home() / ".local/state/jailshell"


def ensure_dir(path: Path, mode: int = 0o755) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=mode)
    return path
