"""The embedded default image: a tiny root filesystem built from the host, offline.

A workshop cannot depend on the conference Wi-Fi. With busybox-static on the
host (the set-up installs it), the image is one static binary plus a symlink
per applet, about 2 MB. Without it, the image is built from the host's own
binaries and the shared libraries they load (found by reading their ELF
dynamic sections through the dynamic loader's --list).

The result is cached in the image store as busybox:latest, keyed by the hash
of what went in, and rebuilt only when the host's busybox changes.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from jailshell.engine.images.store import Image, ImageStore
from jailshell.errors import JailshellError

BUILDER_VERSION = 1
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox", "/usr/local/bin/busybox")
# Used when there is no busybox: enough for every lesson step.
HOST_TOOLS = ("sh", "ls", "ps", "cat", "mount", "umount", "hostname", "id", "ip", "sleep", "echo", "mkdir",
              "true", "false", "uname", "readlink", "touch", "rm", "env", "grep", "head", "stat", "kill", "df")
SKELETON_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "home",
                 "var/tmp", "run", "mnt")
# Deterministic metadata: the same busybox always yields the same tree.
EPOCH = 0

FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hostname": "jailshell\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    "etc/os-release": 'NAME="jailshell busybox"\nID=busybox\nPRETTY_NAME="jailshell embedded busybox image"\n',
    "etc/profile": 'export PS1="[jail] \\w # "\nexport PATH=/usr/sbin:/usr/bin:/sbin:/bin\n',
}

CONFIG = {
    "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
    "Cmd": ["/bin/sh"],
    "WorkingDir": "/",
}


def find_busybox() -> str | None:
    for cand in BUSYBOX_CANDIDATES:
        if os.access(cand, os.X_OK):
            return cand
    return None


def _is_static(path: str) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
    # A dynamically linked ELF names its interpreter (PT_INTERP): /lib*/ld-linux*.
    return b"ld-linux" not in head and b"ld-musl" not in head


def _shared_libs(binary: str) -> list[str]:
    """Libraries a dynamic binary loads, as ldd reports them (ldd runs the loader in list mode)."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts:
            target = parts[parts.index("=>") + 1]
            if target.startswith("/"):
                libs.append(target)
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])  # the loader itself
    return libs


def _copy_into(root: Path, host_path: str) -> None:
    dest = root / host_path.lstrip("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(host_path), dest)


def _fingerprint(busybox: str | None) -> str:
    h = hashlib.sha256(f"v{BUILDER_VERSION}".encode())
    if busybox:
        with open(busybox, "rb") as fh:
            h.update(hashlib.file_digest(fh, "sha256").digest() if hasattr(hashlib, "file_digest") else fh.read())
    else:
        for tool in HOST_TOOLS:
            found = shutil.which(tool)
            h.update(f"{tool}={found}:{os.stat(found).st_mtime_ns if found else 0}".encode())
    return h.hexdigest()[:16]


def _populate_busybox(root: Path, busybox: str) -> None:
    if not _is_static(busybox):
        for lib in _shared_libs(busybox):
            _copy_into(root, lib)
    shutil.copy2(busybox, root / "bin/busybox")
    applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    for applet in applets:
        link = root / applet
        if applet == "bin/busybox" or link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(root / "bin/busybox", link.parent), link)


def _populate_host(root: Path) -> None:
    missing = []
    for tool in HOST_TOOLS:
        found = shutil.which(tool)
        if not found:
            missing.append(tool)
            continue
        dest = root / "bin" / tool
        shutil.copy2(os.path.realpath(found), dest)
        for lib in _shared_libs(found):
            if not (root / lib.lstrip("/")).exists():
                _copy_into(root, lib)
    if "sh" in missing:
        raise JailshellError(
            "cannot build the default image: no busybox and no /bin/sh on the host",
            hint="install busybox-static (apt-get install busybox-static)",
        )


_FIND = "find"


def build_default(store: ImageStore, name: str = "busybox", tag: str = "latest",
                  busybox: str | None = _FIND) -> Image:
    """The default image, built once and cached. busybox=None builds from the
    host's own binaries even where busybox exists (what a host without it gets)."""
    if busybox == _FIND:
        busybox = find_busybox()
    fingerprint = _fingerprint(busybox)
    existing = store.get(f"{name}:{tag}")
    if existing and existing.config.get("Labels", {}).get("jailshell.fingerprint") == fingerprint:
        return existing
    staging = store.staging()
    try:
        root = staging / "rootfs"
        root.mkdir()
        for d in SKELETON_DIRS:
            (root / d).mkdir(parents=True, exist_ok=True)
        os.chmod(root / "tmp", 0o1777)
        os.chmod(root / "var/tmp", 0o1777)
        os.chmod(root / "root", 0o700)
        for rel, text in FILES.items():
            (root / rel).write_text(text)
        if busybox:
            _populate_busybox(root, busybox)
            source = f"embedded (busybox from {busybox})"
        else:
            _populate_host(root)
            source = "embedded (host binaries)"
        for dirpath, dirnames, filenames in os.walk(root):
            for entry in dirnames + filenames:
                os.utime(os.path.join(dirpath, entry), (EPOCH, EPOCH), follow_symlinks=False)
        config = dict(CONFIG, Labels={"jailshell.fingerprint": fingerprint})
        return store.commit(staging, name, tag, source=source, config=config)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
