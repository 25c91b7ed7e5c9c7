"""The safe tar applier: hostile tarballs, whiteouts across layers, metadata, export.

Tarballs here are built with Python's tarfile, the way an attacker would:
each hostile one is either refused with an error naming the entry or
neutralised inside the root, and the files beside the root never change.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jailshell.engine import rootfs
from jailshell.errors import JailshellError

# -- building tarballs -------------------------------------------------------------------


def _info(name: str, kind: bytes, **kw: object) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = kind
    ti.mtime = int(kw.pop("mtime", 1_600_000_000))  # type: ignore[call-overload]
    ti.mode = int(kw.pop("mode", 0o755 if kind == tarfile.DIRTYPE else 0o644))  # type: ignore[call-overload]
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def F(name: str, data: bytes = b"x", **kw: object) -> tuple[tarfile.TarInfo, bytes]:
    ti = _info(name, tarfile.REGTYPE, **kw)
    ti.size = len(data)
    return ti, data


def D(name: str, **kw: object) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, tarfile.DIRTYPE, **kw), b""


def L(name: str, target: str, **kw: object) -> tuple[tarfile.TarInfo, bytes]:
    kw.setdefault("mode", 0o777)
    return _info(name, tarfile.SYMTYPE, linkname=target, **kw), b""


def H(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, tarfile.LNKTYPE, linkname=target), b""


def C(name: str, major: int, minor: int, **kw: object) -> tuple[tarfile.TarInfo, bytes]:
    kw.setdefault("mode", 0o666)
    return _info(name, tarfile.CHRTYPE, devmajor=major, devminor=minor, **kw), b""


def tarball(*entries: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.PAX_FORMAT) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for ti, data in entries:
            tf.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    buf.seek(0)
    return buf


def apply_layers(root: Path, *layers: io.BytesIO, whiteouts: bool = True) -> rootfs.Applier:
    with rootfs.Applier(root, whiteouts=whiteouts) as applier:
        for i, layer in enumerate(layers, 1):
            applier.apply(layer, f"layer {i}")
    return applier


def tree(root: Path) -> dict[str, str]:
    """path -> what it is (file content hash, symlink target, dir), for comparing trees."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "-> " + os.readlink(full)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            elif stat.S_ISREG(st.st_mode):
                out[rel] = hashlib.sha256(Path(full).read_bytes()).hexdigest()[:12]
            else:
                out[rel] = f"special {stat.S_IFMT(st.st_mode):o}"
    return out


# -- a root with a victim beside it ------------------------------------------------------


class Sandbox:
    def __init__(self, base: Path):
        self.base = base
        self.root = base / "root"
        self.root.mkdir()
        self.outside = base / "outside"
        self.outside.mkdir()
        self.victim = self.outside / "victim"
        self.victim.write_text("original\n")
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, object]:
        """Everything beside the root: names, contents, inodes, modes, times."""
        out: dict[str, object] = {}
        for dirpath, dirnames, filenames in os.walk(self.base):
            if Path(dirpath) == self.root or str(Path(dirpath)).startswith(str(self.root) + os.sep):
                continue
            for name in dirnames + filenames:
                full = Path(dirpath) / name
                if full == self.root:
                    continue
                st = full.lstat()
                data = full.read_bytes() if full.is_file() and not full.is_symlink() else b""
                out[str(full)] = (st.st_ino, st.st_mode, st.st_nlink, st.st_mtime_ns, data)
        return out

    def assert_outside_untouched(self) -> None:
        assert self.snapshot() == self.before
        assert self.victim.read_text() == "original\n"


@pytest.fixture
def box(tmp_path: Path) -> Sandbox:
    return Sandbox(tmp_path)


def refused(box: Sandbox, *layers: io.BytesIO, entry: str) -> JailshellError:
    with pytest.raises(JailshellError) as err:
        apply_layers(box.root, *layers)
    assert f"'{entry}'" in err.value.message, err.value.message
    box.assert_outside_untouched()
    return err.value


# -- the hostile corpus ------------------------------------------------------------------


def test_dotdot_path_is_refused_naming_the_entry(box: Sandbox) -> None:
    err = refused(box, tarball(F("../outside/victim", b"pwned")), entry="../outside/victim")
    assert "'..'" in err.message


def test_dotdot_in_the_middle_is_refused(box: Sandbox) -> None:
    refused(box, tarball(D("a"), F("a/../../outside/victim", b"pwned")), entry="a/../../outside/victim")


def test_absolute_path_lands_inside_the_root(box: Sandbox) -> None:
    name = str(box.victim)  # /tmp/.../outside/victim
    applier = apply_layers(box.root, tarball(F(name, b"inside")))
    box.assert_outside_untouched()
    assert (box.root / name.lstrip("/")).read_bytes() == b"inside"
    assert any("leading '/'" in n for n in applier.total.note_lines())


def test_symlink_then_write_through_stays_in_the_root(box: Sandbox) -> None:
    # A relative symlink that climbs out, then a file written through it.
    apply_layers(box.root, tarball(L("link", "../../../../outside"), F("link/victim", b"pwned")))
    box.assert_outside_untouched()
    # '..' stops at the root, as after chroot: the file is at /outside/victim of the image.
    assert (box.root / "outside/victim").read_bytes() == b"pwned"
    assert os.readlink(box.root / "link") == "../../../../outside"


def test_absolute_symlink_then_file_through_it(box: Sandbox) -> None:
    apply_layers(box.root, tarball(L("link", str(box.outside)), F("link/victim", b"pwned")))
    box.assert_outside_untouched()
    assert (box.root / str(box.outside).lstrip("/") / "victim").read_bytes() == b"pwned"


def test_symlink_to_slash_then_etc_passwd(box: Sandbox) -> None:
    before = hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest()
    apply_layers(box.root, tarball(L("up", "/"), F("up/etc/passwd", b"root::0:0::/:/bin/sh\n")))
    assert hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest() == before
    assert (box.root / "etc/passwd").read_bytes().startswith(b"root::0:0")
    box.assert_outside_untouched()


def test_symlink_in_a_later_layer_is_followed_inside_the_root(box: Sandbox) -> None:
    apply_layers(box.root, tarball(D("etc")), tarball(L("etc", str(box.outside))),
                 tarball(F("etc/victim", b"pwned")))
    box.assert_outside_untouched()
    assert (box.root / str(box.outside).lstrip("/") / "victim").read_bytes() == b"pwned"


def test_file_replaces_a_symlink_instead_of_writing_through_it(box: Sandbox) -> None:
    apply_layers(box.root, tarball(L("victim", str(box.victim)), F("victim", b"pwned")))
    box.assert_outside_untouched()
    assert not (box.root / "victim").is_symlink()
    assert (box.root / "victim").read_bytes() == b"pwned"


def test_symlink_loop_is_refused(box: Sandbox) -> None:
    err = refused(box, tarball(L("a", "b"), L("b", "a"), F("a/x")), entry="a/x")
    assert "symbolic links" in err.message


def test_hard_link_to_a_host_file_is_refused(box: Sandbox) -> None:
    err = refused(box, tarball(H("h", str(box.victim))), entry="h")
    assert "not in the image" in err.message
    assert box.victim.stat().st_nlink == 1


def test_hard_link_with_dotdot_is_refused(box: Sandbox) -> None:
    refused(box, tarball(H("h", "../outside/victim")), entry="h")
    assert box.victim.stat().st_nlink == 1


def test_hard_link_through_a_symlink_is_clamped_to_the_root(box: Sandbox) -> None:
    # The symlink points at the host directory, but resolving it inside the
    # root finds the image's own copy of that path.
    inner = str(box.outside).lstrip("/")
    apply_layers(box.root, tarball(L("s", str(box.outside)), F(f"{inner}/victim", b"image's"), H("h", "s/victim")))
    box.assert_outside_untouched()
    assert box.victim.stat().st_nlink == 1
    assert (box.root / "h").read_bytes() == b"image's"
    assert os.path.samefile(box.root / "h", box.root / inner / "victim")


def test_hard_link_to_a_directory_is_refused(box: Sandbox) -> None:
    refused(box, tarball(D("d"), H("h", "d")), entry="h")


@pytest.mark.root
def test_character_device_created_as_root_outside_a_user_namespace(box: Sandbox) -> None:
    assert not rootfs.in_user_namespace()
    apply_layers(box.root, tarball(D("dev"), C("dev/null", 1, 3), C("dev/sda", 8, 0, mode=0o660)))
    st = (box.root / "dev/null").lstat()
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    assert stat.S_IMODE(st.st_mode) == 0o666
    assert stat.S_IMODE((box.root / "dev/sda").lstat().st_mode) == 0o660
    box.assert_outside_untouched()


@pytest.mark.root
def test_as_an_unprivileged_user_devices_are_skipped_and_setuid_dropped() -> None:
    from tests.unprivileged import as_nobody

    base = Path(tempfile.mkdtemp(prefix="jailshell-nobody-"))
    try:
        os.chmod(base, 0o755)
        root = base / "root"
        root.mkdir()
        os.chown(root, 65534, 65534)
        layer = tarball(D("dev"), C("dev/null", 1, 3), F("bin/su", b"\x7fELF", mode=0o4755),
                        D("ro", mode=0o555), F("ro/inside", b"1"))

        def extract() -> int:
            applier = apply_layers(root, layer)
            print("NOTES", applier.total.note_lines())
            return 0

        code, out = as_nobody(extract)
        assert code == 0, out
        assert "skipped device nodes" in out
        assert not (root / "dev/null").exists()
        assert stat.S_IMODE((root / "bin/su").stat().st_mode) == 0o755  # setuid dropped
        assert (root / "bin/su").stat().st_uid == 65534
        # a read-only directory stays writable by its owner, or the tree could not be managed
        assert stat.S_IMODE((root / "ro").stat().st_mode) == 0o755
        assert (root / "ro/inside").read_bytes() == b"1"
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)


def test_malformed_whiteouts_are_refused(box: Sandbox) -> None:
    for name in (".wh.", "a/.wh..", "a/.wh..."):
        with pytest.raises(JailshellError) as err:
            apply_layers(box.root, tarball(D("a"), F(name, b"")))
        assert f"'{name}'" in err.value.message and "whiteout" in err.value.message
    with pytest.raises(JailshellError) as err:
        apply_layers(box.root, tarball(D("a/.wh.b")))
    assert "whiteout must be" in err.value.message
    box.assert_outside_untouched()


def test_whiteouts_through_symlinks_never_touch_the_host(box: Sandbox) -> None:
    apply_layers(box.root, tarball(L("l", str(box.outside)), L("m", "../../../outside")),
                 tarball(F("l/.wh.victim", b""), F("m/.wh..wh..opq", b""), F("l/.wh..wh..opq", b"")))
    box.assert_outside_untouched()


def test_root_entry_must_be_a_directory(box: Sandbox) -> None:
    refused(box, tarball(F("./", b"")), entry="./")


def test_file_where_a_directory_is_needed_is_refused(box: Sandbox) -> None:
    err = refused(box, tarball(F("a", b"file"), F("a/b")), entry="a/b")
    assert "not a directory" in err.message


def test_truncated_archive_is_refused(box: Sandbox) -> None:
    data = tarball(F("big", b"y" * 10000)).getvalue()[:3000]
    with pytest.raises(JailshellError) as err:
        apply_layers(box.root, io.BytesIO(data))
    assert "'big'" in err.value.message


def test_not_a_tarball(box: Sandbox) -> None:
    with pytest.raises(JailshellError, match="not a tar archive"):
        apply_layers(box.root, io.BytesIO(b"this is not a tarball at all" * 40))


def test_missing_end_of_archive_padding_is_tolerated(box: Sandbox) -> None:
    # Go's archive/tar, when not closed, stops right after the last file's data.
    data = tarball(F("a", b"123456")).getvalue()[: 512 + 6]
    applier = apply_layers(box.root, io.BytesIO(data))
    assert (box.root / "a").read_bytes() == b"123456"
    assert any("padding" in n for n in applier.total.note_lines())


# -- whiteouts across layers ---------------------------------------------------------------


def test_whiteouts_and_opaque_directories_across_three_layers(tmp_path: Path) -> None:
    lower = tarball(
        D("a"), F("a/x", b"x1"), F("a/y", b"y1"),
        D("b"), F("b/1"), F("b/2"),
        D("c"), F("c/old"),
        F("d", b"d1"),
        D("e"), D("e/f"), F("e/f/g"),
        F("keep", b"k"),
    )
    middle = tarball(
        F("a/.wh.x", b""),  # delete a file
        F("b/.wh..wh..opq", b""), F("b/3", b"b3"),  # opaque: only b/3 from now on
        F("c/new", b"n"),
        F(".wh.d", b""),  # delete a top-level file
        F("e/.wh.f", b""),  # delete a whole directory
        F(".wh.nothing-there", b""),  # a whiteout of something absent is fine
    )
    upper = tarball(
        F("a/x", b"x3"),  # re-added after its deletion
        F("b/.wh.3", b""),
        F("c/top", b"t"),  # before the opaque marker, same layer: it stays
        F("c/.wh..wh..opq", b""),
        F("z", b"same layer"), F(".wh.z", b""),  # a whiteout never hides its own layer's files
        D("e/f"), F("e/f/fresh", b"f"),
    )
    root = tmp_path / "root"
    root.mkdir()
    apply_layers(root, lower, middle, upper)
    got = {k: v for k, v in tree(root).items()}
    assert set(got) == {"a", "a/x", "a/y", "b", "c", "c/top", "e", "e/f", "e/f/fresh", "keep", "z"}
    assert (root / "a/x").read_bytes() == b"x3"
    assert (root / "z").read_bytes() == b"same layer"
    assert not any(name.startswith(".wh.") for name in os.listdir(root))


def test_flat_mode_keeps_whiteout_names_as_files(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    apply_layers(root, tarball(F("a"), F(".wh.a", b"")), whiteouts=False)
    assert (root / "a").exists() and (root / ".wh.a").exists()


def test_aufs_metadata_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    applier = apply_layers(root, tarball(D(".wh..wh.plnk"), F(".wh..wh.plnk/1.2", b"x"), F(".wh..wh.aufs", b""),
                                         F("real", b"r")))
    assert sorted(os.listdir(root)) == ["real"]
    assert any("aufs" in n for n in applier.total.note_lines())


def test_replacing_entries_between_layers(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    apply_layers(
        root,
        tarball(D("d"), F("d/in"), F("f", b"file"), L("l", "f"), F("hard", b"h"), H("hard2", "hard")),
        tarball(F("d", b"now a file"), D("f"), F("l", b"was a link"), F("hard", b"new")),
    )
    assert (root / "d").read_bytes() == b"now a file"
    assert (root / "f").is_dir()
    assert not (root / "l").is_symlink()
    # replacing a hard-linked file does not change its other name
    assert (root / "hard").read_bytes() == b"new" and (root / "hard2").read_bytes() == b"h"


# -- metadata ----------------------------------------------------------------------------------


@pytest.mark.root
def test_owner_mode_times_and_capabilities_are_kept_as_root(tmp_path: Path) -> None:
    cap = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_raw+ep, as on ping
    ping = _info("bin/ping", tarfile.REGTYPE, mode=0o755, uid=0, gid=0)
    ping.size = 4
    ping.pax_headers = {"SCHILY.xattr.security.capability": cap.decode("utf-8", "surrogateescape")}
    root = tmp_path / "root"
    root.mkdir()
    apply_layers(root, tarball(
        D("bin", mode=0o755, mtime=1_000_000_000),
        (ping, b"ping"),
        F("bin/su", b"su", mode=0o4755, uid=0, gid=0),
        F("home/u/file", b"u", uid=1234, gid=5678, mode=0o640, mtime=1_234_567_890),
        D("ro", mode=0o555, uid=1234, gid=1234), F("ro/inside"),
        L("home/u/link", "/nowhere", uid=1234, gid=5678, mtime=1_111_111_111),
        D("tmp", mode=0o1777),
    ))
    st = (root / "home/u/file").stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode), int(st.st_mtime)) == (1234, 5678, 0o640, 1_234_567_890)
    assert stat.S_IMODE((root / "bin/su").stat().st_mode) == 0o4755
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o1777
    ro = (root / "ro").stat()
    assert stat.S_IMODE(ro.st_mode) == 0o555 and ro.st_uid == 1234
    assert int((root / "bin").stat().st_mtime) == 1_000_000_000  # set after its children were created
    lst = (root / "home/u/link").lstat()
    assert (lst.st_uid, int(lst.st_mtime)) == (1234, 1_111_111_111)
    assert os.getxattr(root / "bin/ping", "security.capability") == cap


def test_on_entry_lists_what_is_applied(tmp_path: Path) -> None:
    seen: list[rootfs.Entry] = []
    root = tmp_path / "root"
    root.mkdir()
    with rootfs.Applier(root, on_entry=seen.append) as applier:
        applier.apply(tarball(D("etc"), F("etc/hostname", b"jail\n"), L("sh", "busybox")))
        applier.apply(tarball(F(".wh.sh", b"")))
    assert [(e.path, e.kind) for e in seen] == [("/etc", "dir"), ("/etc/hostname", "file"), ("/sh", "symlink"),
                                                 ("/sh", "whiteout")]
    assert seen[1].size == 5


# -- against GNU tar and back ---------------------------------------------------------------


@pytest.fixture(scope="module")
def busybox_rootfs() -> Path:
    from jailshell.engine.images.store import ImageStore

    return ImageStore().resolve().rootfs


def test_same_tree_as_gnu_tar(tmp_path: Path, busybox_rootfs: Path) -> None:
    archive = tmp_path / "bb.tar"
    subprocess.run(["tar", "-C", str(busybox_rootfs), "-cf", str(archive), "."], check=True)
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir()
    theirs.mkdir()
    with open(archive, "rb") as fh:
        stats = rootfs.extract(fh, ours)
    subprocess.run(["tar", "-C", str(theirs), "-xf", str(archive)], check=True)
    assert stats.entries > 100
    assert tree(ours) == tree(theirs)
    for rel in ("bin/busybox", "etc/passwd", "tmp"):
        a, b = (ours / rel).lstat(), (theirs / rel).lstat()
        assert (a.st_mode, a.st_uid, a.st_mtime_ns) == (b.st_mode, b.st_uid, b.st_mtime_ns)


def test_gnu_format_long_names_and_old_v7(tmp_path: Path) -> None:
    long = "d/" + "x" * 150 + "/" + "y" * 120
    root = tmp_path / "root"
    root.mkdir()
    apply_layers(root, tarball(F(long, b"long"), L("short", "t" * 200), fmt=tarfile.GNU_FORMAT))
    assert (root / long).read_bytes() == b"long"
    assert os.readlink(root / "short") == "t" * 200
    # ustar prefix field
    apply_layers(root, tarball(F("p/" + "q" * 90 + "/" + "r" * 90, b"ustar"), fmt=tarfile.USTAR_FORMAT))
    assert (root / "p" / ("q" * 90) / ("r" * 90)).read_bytes() == b"ustar"


def test_export_round_trip(tmp_path: Path, busybox_rootfs: Path) -> None:
    out = io.BytesIO()
    listed: list[rootfs.Entry] = []
    count = rootfs.export_tar(busybox_rootfs, out, on_entry=listed.append)
    assert count == len(listed) > 100
    out.seek(0)
    with tarfile.open(fileobj=out) as tf:
        names = tf.getnames()
    assert "bin/busybox" in names and not any(n.startswith(("/", "./")) for n in names)
    out.seek(0)
    back = tmp_path / "back"
    back.mkdir()
    rootfs.extract(out, back)
    assert tree(back) == tree(busybox_rootfs)


def test_export_keeps_hard_links_and_devices(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "a").write_bytes(b"same")
    os.link(root / "a", root / "b")
    os.mkfifo(root / "fifo")
    out = io.BytesIO()
    rootfs.export_tar(root, out)
    out.seek(0)
    with tarfile.open(fileobj=out) as tf:
        members = {m.name: m for m in tf}
    assert members["b"].islnk() and members["b"].linkname == "a"
    assert members["fifo"].isfifo()


@pytest.mark.root
def test_export_leaves_out_what_is_mounted_inside(tmp_path: Path) -> None:
    from jailshell.engine import syscalls as sc

    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("jail\n")
    sc.mount("tmpfs", root / "proc", "tmpfs", 0, "size=1m")
    try:
        (root / "proc/secret").write_text("mounted\n")
        out = io.BytesIO()
        rootfs.export_tar(root, out)
    finally:
        sc.umount2(root / "proc", 0)
    out.seek(0)
    with tarfile.open(fileobj=out) as tf:
        names = tf.getnames()
    assert "proc" in names and "etc/hostname" in names and "proc/secret" not in names


# -- property-based: resolution never leaves the root ------------------------------------------

COMPONENT = st.sampled_from(["a", "b", "c", "..", ".", "", "etc", "outside", "victim"])
REL = st.lists(COMPONENT, min_size=1, max_size=5).map("/".join)
TARGET = st.one_of(REL, REL.map(lambda p: "/" + p), st.just("/"), st.just("../../../.."))
KIND = st.sampled_from(["file", "dir", "symlink", "hardlink", "whiteout", "opaque"])
LAYER = st.lists(st.tuples(KIND, REL, TARGET), min_size=1, max_size=12)


def _layer(spec: list[tuple[str, str, str]]) -> io.BytesIO:
    out = []
    for kind, path, target in spec:
        if kind == "file":
            out.append(F(path, b"pwned"))
        elif kind == "dir":
            out.append(D(path))
        elif kind == "symlink":
            out.append(L(path, target))
        elif kind == "hardlink":
            out.append(H(path, target))
        elif kind == "whiteout":
            out.append(F(path + "/.wh.victim", b""))
        else:
            out.append(F(path + "/.wh..wh..opq", b""))
    return tarball(*out)


@contextlib.contextmanager
def _sandbox() -> Iterator[Sandbox]:
    base = Path(tempfile.mkdtemp(prefix="jailshell-prop-"))
    try:
        yield Sandbox(base)
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers=st.lists(LAYER, min_size=1, max_size=3))
def test_random_layers_never_write_outside_the_root(layers: list[list[tuple[str, str, str]]]) -> None:
    with _sandbox() as box:
        try:
            apply_layers(box.root, *[_layer(spec) for spec in layers])
        except JailshellError as exc:
            assert "refusing entry" in exc.message or "cannot extract" in exc.message
        box.assert_outside_untouched()
        # Whatever the tarball did, everything in the root is really below it.
        real_root = os.path.realpath(box.root)
        for dirpath, _dirs, _files in os.walk(box.root):
            assert os.path.realpath(dirpath).startswith(real_root)


def _plant(root: Path, parts: list[str], target: str) -> None:
    """Make root/parts a symlink, creating parents only as real directories (never through a symlink)."""
    where = root
    for comp in parts[:-1]:
        where = where / comp
        if not os.path.lexists(where):
            where.mkdir()
        elif where.is_symlink() or not where.is_dir():
            return
    if not os.path.lexists(where / parts[-1]):
        os.symlink(target, where / parts[-1])


@settings(max_examples=200, deadline=None)
@given(links=st.lists(st.tuples(REL, TARGET), max_size=6), path=REL)
def test_resolution_stays_inside_the_root(links: list[tuple[str, str]], path: str) -> None:
    with _sandbox() as box:
        for name, target in links:  # a tree of arbitrary symlinks, as earlier layers could leave
            parts = [p for p in name.split("/") if p not in ("", ".", "..")]
            # Linux has no empty symlinks (symlink("") is ENOENT), so no layer can leave one.
            if parts and target:
                _plant(box.root, parts, target)
        res = rootfs._Resolver(box.root)
        try:
            parts = rootfs.split_path(path)
            fd, phys = res.resolve(parts, create=True)
            real = os.readlink(f"/proc/self/fd/{fd}")
            assert real == os.path.realpath(box.root / phys) if phys else real == os.path.realpath(box.root)
            assert (real + "/").startswith(os.path.realpath(box.root) + "/")
        except rootfs._Refused:
            pass
        except (FileExistsError, NotADirectoryError):
            pass
        finally:
            res.close()
        box.assert_outside_untouched()


@given(name=st.text(alphabet="ab./", max_size=20))
def test_split_path_never_yields_dotdot_or_empty(name: str) -> None:
    try:
        parts = rootfs.split_path(name)
    except rootfs._Refused:
        assert ".." in name.split("/")
        return
    assert all(p and p not in (".", "..") and "/" not in p for p in parts)
