"""The embedded default image: offline, reproducible, cached, and usable with
or without busybox on the host."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

import pytest

from jailshell.engine.images.embedded import HOST_TOOLS, build_default, find_busybox
from jailshell.engine.images.store import ImageStore
from jailshell.engine.run import RunSpec, run

pytestmark = pytest.mark.root


def tree_digest(root: Path) -> str:
    """Names, types, modes, mtimes, link targets and contents: what "the same image" means."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            h.update(f"{os.path.relpath(path, root)} {st.st_mode:o} {int(st.st_mtime)}".encode())
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(path).encode())
            elif stat.S_ISREG(st.st_mode):
                h.update(Path(path).read_bytes())
    return h.hexdigest()


def test_busybox_image_is_reproducible_and_cached(tmp_path: Path) -> None:
    if find_busybox() is None:
        pytest.fail("busybox is missing: scripts/setup installs busybox-static")
    first = build_default(ImageStore(tmp_path / "a"))
    again = build_default(ImageStore(tmp_path / "a"))
    # Cached: the second call finds the first build and does not rebuild it.
    assert again.rootfs == first.rootfs
    assert os.stat(again.rootfs).st_ino == os.stat(first.rootfs).st_ino
    # Reproducible: an independent build is the same tree, byte for byte.
    other = build_default(ImageStore(tmp_path / "b"))
    assert tree_digest(other.rootfs) == tree_digest(first.rootfs)
    assert (first.rootfs / "bin/busybox").is_file()
    assert os.readlink(first.rootfs / "bin/sh").endswith("busybox")


def test_without_busybox_the_image_is_built_from_host_binaries() -> None:
    # Built into the suite's own image store (the test session's data dir), run
    # like any image, removed after.
    store = ImageStore()
    image = build_default(store, name="hosttools", tag="test", busybox=None)
    try:
        assert not (image.rootfs / "bin/busybox").exists()
        assert (image.rootfs / "bin/sh").is_file()
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "out"
            out.touch()
            script = "{ hostname; id -u; ls /bin; echo done; } > /out/out 2>&1"
            res = run(RunSpec(argv=["/bin/sh", "-c", script], image="hosttools:test", hostname="hosty",
                              volumes=[(d, "/out", False)]))
            text = out.read_text()
        assert res.status == 0, text
        lines = text.splitlines()
        assert lines[:2] == ["hosty", "0"]
        # Every tool the lessons rely on is there and loads its libraries inside.
        present = {t for t in HOST_TOOLS if (image.rootfs / "bin" / t).exists()}
        assert {"sh", "ls", "cat", "mount", "hostname", "id", "sleep"} <= present
        assert lines[-1] == "done"
    finally:
        store.remove("hosttools:test")
