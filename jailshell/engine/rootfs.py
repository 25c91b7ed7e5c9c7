"""Root filesystems from tarballs, safely, and back to a flat tarball.

An image is a stack of tarballs ("layers"), each applied on top of the ones
below it. Python's tarfile `data` filter is made for data archives: it refuses
absolute symlinks, setuid bits and device nodes, all of which a root
filesystem legitimately holds. So entries are applied here, by one rule that
makes it safe: every path is resolved *inside the root*, one component at a
time, with openat(2) on a directory file descriptor and O_NOFOLLOW. A symlink
met on the way is read and interpreted the way the container will see it,
relative to the root: an absolute target starts again at the root and `..`
stops at the root, as after chroot(2). No path from the tarball is ever
handed to the host's own path resolution, so no entry can reach outside the
root, whatever symlinks earlier entries planted.

The policy, entry by entry:
  name with a `..` component     refused: the tarball is hostile or broken
  name starting with `/`         the `/` is dropped (GNU tar and docker do the same)
  path through a symlink         followed inside the root, never outside
  hard link                      its target is resolved inside the root and must be in it
  device node                    created only by root outside a user namespace, else skipped and counted
  owner, setuid/setgid, xattrs   kept when root; otherwise files belong to the caller and
                                 directories stay writable by their owner, so the tree can be managed
  `.wh.NAME`, `.wh..wh..opq`     (layers only) remove NAME / the directory's contents from the
                                 layers below; never what the same layer added (OCI image spec)

A refused entry stops the whole import with an error that names it; the
caller extracts into a staging directory that is thrown away on error.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import struct
import tarfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from jailshell.errors import JailshellError

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
# aufs kept its own bookkeeping under .wh..wh.* names (hard-link pool, ...);
# old `docker save` tarballs still carry it. It is not part of the filesystem.
AUFS_META = ".wh..wh."
# overlayfs marks a deleted file with a 0/0 character device, an opaque
# directory with this extended attribute (Documentation/filesystems/overlayfs.rst).
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"

MAX_SYMLINKS = 40  # the kernel's own limit before ELOOP
FD_CACHE = 256  # directory fds kept open; well under the usual 1024 file limit
CHUNK = 1 << 20
WHITEOUT_LIST = 100

_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

HOSTILE_HINT = "the tarball tries to write outside its root filesystem or is corrupt; nothing was imported"


class Reader(Protocol):
    """Anything tar data can be read from: a file, a decompressor, a digest checker."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class _Refused(Exception):
    """An entry that must not be applied; the message says why."""


def in_user_namespace() -> bool:
    """True unless this process sees the initial user namespace's full uid map."""
    try:
        with open("/proc/self/uid_map") as fh:
            return fh.read().split() != ["0", "0", "4294967295"]
    except OSError:
        return True


def split_path(name: str) -> list[str]:
    """An archive path as components below the root; '..' is refused."""
    parts = [p for p in name.split("/") if p and p != "."]
    if ".." in parts:
        raise _Refused("its path contains '..'")
    return parts


@dataclass(frozen=True)
class Entry:
    """One applied (or skipped) entry, for a listing like `tar -tv`."""

    path: str
    kind: str  # file dir symlink hardlink char block fifo whiteout opaque skipped
    size: int = 0
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime: float = 0
    target: str = ""


@dataclass
class ApplyStats:
    entries: int = 0
    files: int = 0
    bytes: int = 0
    whiteouts: int = 0
    # What the whiteouts named ("/bin/vi", "/etc/" for an opaque directory), the
    # first WHITEOUT_LIST of them: what `layers` shows a layer took away.
    removed: list[str] = field(default_factory=list)
    notes: Counter[str] = field(default_factory=Counter)

    def merge(self, other: ApplyStats) -> None:
        self.entries += other.entries
        self.files += other.files
        self.bytes += other.bytes
        self.whiteouts += other.whiteouts
        self.removed += other.removed[: max(0, WHITEOUT_LIST - len(self.removed))]
        self.notes.update(other.notes)

    def whiteout(self, path: str) -> None:
        self.whiteouts += 1
        if len(self.removed) < WHITEOUT_LIST:
            self.removed.append(path)

    def note_lines(self) -> list[str]:
        return [f"{text} ({n}×)" if n > 1 else text for text, n in self.notes.items()]


# A ustar/GNU header up to the prefix field (magic and version skipped).
_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s8x32s32s8s8s155s")


def _octal(field: bytes) -> int:
    # A NUL inside the digits (not just after them) makes int() fail: tarfile decides then.
    return int(field.rstrip(b"\0 ") or b"0", 8)


class _FastTarInfo(tarfile.TarInfo):
    """tarfile's header parser field by field is most of the CPU time of an
    extraction; this parses the common header (octal numbers, correct unsigned
    checksum) with one struct call and hands everything else (base-256
    numbers, signed checksums, old GNU sparse, end of archive) to tarfile."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> _FastTarInfo:
        if len(buf) != tarfile.BLOCKSIZE or buf[156:157] == tarfile.GNUTYPE_SPARSE:
            return super().frombuf(buf, encoding, errors)
        (name, mode, uid, gid, size, mtime, chk, typ, link, uname, gname, major, minor,
         prefix) = _HEADER.unpack_from(buf)
        try:
            chksum = _octal(chk)
            if chksum != 256 + sum(buf) - sum(chk):
                return super().frombuf(buf, encoding, errors)
            obj = cls()
            obj.mode, obj.uid, obj.gid = _octal(mode), _octal(uid), _octal(gid)
            obj.size, obj.mtime = _octal(size), _octal(mtime)
            obj.devmajor, obj.devminor = _octal(major), _octal(minor)
        except ValueError:
            return super().frombuf(buf, encoding, errors)
        obj.chksum = chksum
        obj.type = typ
        obj.name = name.split(b"\0", 1)[0].decode(encoding, errors)
        obj.linkname = link.split(b"\0", 1)[0].decode(encoding, errors)
        obj.uname = uname.split(b"\0", 1)[0].decode(encoding, errors)
        obj.gname = gname.split(b"\0", 1)[0].decode(encoding, errors)
        if typ == tarfile.AREGTYPE and obj.name.endswith("/"):
            obj.type = tarfile.DIRTYPE  # old V7 tar: a directory is a file named with a slash
        if obj.type == tarfile.DIRTYPE:
            obj.name = obj.name.rstrip("/")
        prefix_s = prefix.split(b"\0", 1)[0]
        if prefix_s and obj.type not in tarfile.GNU_TYPES:
            obj.name = prefix_s.decode(encoding, errors) + "/" + obj.name
        return obj


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class _Forward:
    """A read-only, forward-only view of a stream that tarfile can use in its
    random-access mode. tarfile's own stream mode re-slices its whole buffer on
    every small read, which costs more than the extraction; tarfile only ever
    seeks forward here (or back within the current buffer), since each
    member's data is read exactly once, in order."""

    def __init__(self, raw: Reader):
        self.raw = raw
        self.buf = b""
        self.pos = 0  # index into buf
        self.base = 0  # stream offset of buf[0]
        self.ended_in_padding = False
        # A plain file read from its start: data can go file to file in the kernel.
        self.raw_fd = -1
        self.sendfile = False
        try:
            if raw.tell() == 0 and stat.S_ISREG(os.fstat(raw.fileno()).st_mode):  # type: ignore[attr-defined]
                self.raw_fd = raw.fileno()  # type: ignore[attr-defined]
                self.sendfile = True
        except (AttributeError, OSError, ValueError):
            pass

    def tell(self) -> int:
        return self.base + self.pos

    def read(self, n: int = -1) -> bytes:
        avail = len(self.buf) - self.pos
        if 0 <= n <= avail:
            out = self.buf[self.pos:self.pos + n]
            self.pos += n
            return out
        head = self.buf[self.pos:]
        self.base += len(self.buf)
        self.buf, self.pos = b"", 0
        if n < 0:
            rest = self.raw.read()
            self.base += len(rest)
            return head + rest
        want = n - len(head)
        if want >= CHUNK:  # big file data: no copy through the buffer
            parts = [head]
            while want > 0:
                got = self.raw.read(want)
                if not got:
                    break
                parts.append(got)
                self.base += len(got)
                want -= len(got)
            return b"".join(parts)
        self.buf = self.raw.read(CHUNK)
        while len(self.buf) < want:
            more = self.raw.read(CHUNK)
            if not more:
                break
            self.buf += more
        self.pos = min(want, len(self.buf))
        return head + self.buf[:self.pos]

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self.tell() + offset
        if target < self.base:
            raise OSError(f"cannot seek back to {target} in a stream")
        while target > self.base + len(self.buf):
            skip = target - self.base - len(self.buf)
            self.base += len(self.buf)
            self.buf, self.pos = self.raw.read(min(skip, CHUNK)), 0
            if not self.buf:
                # The stream ended in the padding after a member's data. Some
                # writers (Go's archive/tar when not closed) stop right there.
                self.ended_in_padding = True
                return self.base
        self.pos = target - self.base
        return target

    def copy_to(self, fd: int, n: int) -> None:
        """Write the next n bytes of the stream to fd. From a plain file, the
        kernel copies them (sendfile), never passing through Python."""
        take = min(len(self.buf) - self.pos, n)
        if take:
            _write_all(fd, memoryview(self.buf)[self.pos:self.pos + take])
            self.pos += take
            n -= take
        if not n:
            return
        self.base += len(self.buf)
        self.buf, self.pos = b"", 0
        if self.sendfile:
            try:
                while n:
                    sent = os.sendfile(fd, self.raw_fd, self.base, n)
                    if not sent:
                        raise _Refused("the archive ends inside this file")
                    self.base += sent
                    n -= sent
                return
            except OSError:
                self.sendfile = False  # not for this pair of files: fall back to reading
            finally:
                self.raw.seek(self.base)  # type: ignore[attr-defined]
        while n:
            data = self.raw.read(min(n, CHUNK))
            if not data:
                raise _Refused("the archive ends inside this file")
            _write_all(fd, data)
            self.base += len(data)
            n -= len(data)

    def drain(self) -> None:
        """Read to the end (padding after the archive), so a digest of the stream is complete."""
        self.buf, self.pos = b"", 0
        while self.raw.read(CHUNK):
            pass


class _Resolver:
    """Directory fds inside one root, cached by their physical path below it."""

    def __init__(self, root: Path):
        self.root_fd = os.open(root, _DIR_FLAGS)
        self.fds: dict[str, int] = {"": self.root_fd}
        # A path as written in the tarball -> its physical path, when a symlink
        # was followed to get there. Dropped whenever a symlink is removed.
        self.alias: dict[str, str] = {}
        self.stale: list[int] = []

    def close(self) -> None:
        for fd in [*self.fds.values(), *self.stale]:
            os.close(fd)
        self.fds.clear()
        self.stale.clear()
        self.alias.clear()

    def trim(self) -> None:
        """Close what is stale and what is over the cache size. Called between
        entries only: while an entry is applied, the fds it was handed stay open
        (a closed number could be reused by another open and point elsewhere)."""
        for fd in self.stale:
            os.close(fd)
        self.stale.clear()
        if len(self.fds) > FD_CACHE:
            for key in list(self.fds)[1 : FD_CACHE // 4]:  # oldest first; never the root
                os.close(self.fds.pop(key))

    def _remember(self, phys: str, fd: int) -> None:
        self.fds[phys] = fd

    def forget_aliases(self) -> None:
        self.alias.clear()

    def forget_under(self, phys: str) -> None:
        """A directory is being removed: its fds (and everything below) are stale."""
        prefix = phys + "/"
        for key in [k for k in self.fds if k == phys or k.startswith(prefix)]:
            self.stale.append(self.fds.pop(key))
        self.alias.clear()

    def _open_phys(self, phys: list[str]) -> int:
        key = "/".join(phys)
        fd = self.fds.get(key)
        if fd is None:
            fd = self.root_fd
            for i, comp in enumerate(phys):
                sub = "/".join(phys[: i + 1])
                cached = self.fds.get(sub)
                if cached is None:
                    cached = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                    self._remember(sub, cached)
                fd = cached
        return fd

    def resolve(self, parts: list[str], *, create: bool, on_mkdir: Callable[[str], None] | None = None
                ) -> tuple[int, str]:
        """(fd, physical path) of the directory at parts. Missing directories are
        created when create is set (as tar does for parents), else FileNotFoundError."""
        key = "/".join(parts)
        phys_key = self.alias.get(key, key)
        fd = self.fds.get(phys_key)
        if fd is not None:
            return fd, phys_key
        phys: list[str] = []
        fd = self.root_fd
        todo = parts[::-1]
        links = 0
        while todo:
            comp = todo.pop()
            if comp in ("", "."):
                continue
            if comp == "..":  # only from a symlink's target: stops at the root, like chroot
                if phys:
                    phys.pop()
                    fd = self._open_phys(phys)
                continue
            sub = "/".join([*phys, comp])
            nfd = self.fds.get(sub)
            if nfd is None:
                try:
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    if on_mkdir:
                        on_mkdir(sub)
                    nfd = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except NotADirectoryError:
                    st = os.stat(comp, dir_fd=fd, follow_symlinks=False)
                    if not stat.S_ISLNK(st.st_mode):
                        raise _Refused(f"'/{sub}' is not a directory") from None
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise _Refused("too many levels of symbolic links") from None
                    target = os.readlink(comp, dir_fd=fd)
                    if target.startswith("/"):
                        phys, fd = [], self.root_fd
                    todo.extend(target.split("/")[::-1])
                    continue
                self._remember(sub, nfd)
            phys.append(comp)
            fd = nfd
        phys_key = "/".join(phys)
        if phys_key != key:
            self.alias[key] = phys_key
        return fd, phys_key


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


class Applier:
    """Applies tar streams to one root directory, in order: an image's layers,
    or a single flat root filesystem tarball."""

    def __init__(self, root: Path, *, whiteouts: bool = True, overlay: bool = False,
                 on_entry: Callable[[Entry], None] | None = None):
        """whiteouts: interpret .wh.* entries (layers) or keep them as plain files (a flat tarball).
        overlay: write whiteouts the way overlayfs stores them instead of applying them,
        for a layer extracted into its own directory to be used as an overlay lowerdir (root only)."""
        self.root = Path(root)
        self.whiteouts = whiteouts or overlay
        self.overlay = overlay
        self.on_entry = on_entry
        self.is_root = os.geteuid() == 0
        self.userns = in_user_namespace()
        self.devices = self.is_root and not self.userns
        if overlay and not self.devices:
            raise JailshellError("overlayfs layer directories need root outside a user namespace",
                                 hint="use the flattened root filesystem instead")
        self.res = _Resolver(self.root)
        self.stats = ApplyStats()  # of the tar stream being applied
        self.total = ApplyStats()  # of all of them
        self._touched: set[str] = {""}
        self._dirs: list[tuple[str, tarfile.TarInfo]] = []

    def close(self) -> None:
        self.res.close()

    def __enter__(self) -> Applier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one tar stream ----------------------------------------------------------

    def apply(self, stream: Reader, label: str = "layer") -> ApplyStats:
        """Apply one uncompressed tar stream (read sequentially, never seeked)."""
        self.stats = ApplyStats()
        self._touched = {""}
        self._dirs = []
        try:
            fwd = _Forward(stream)
            tf = tarfile.TarFile(fileobj=fwd, mode="r", tarinfo=_FastTarInfo)  # type: ignore[arg-type]
        except tarfile.TarError as exc:
            raise JailshellError(f"{label}: not a tar archive ({exc})", hint=HOSTILE_HINT)
        member: tarfile.TarInfo | None = None
        try:
            while True:
                try:
                    member = tf.next()
                except tarfile.ReadError:
                    if not fwd.ended_in_padding:
                        raise
                    self.stats.notes["an archive ended without padding or end-of-archive blocks"] += 1
                    member = None
                if member is None:
                    break
                tf.members.clear()  # type: ignore[attr-defined]  # tarfile keeps every header otherwise
                self.res.trim()
                self._entry(tf, member)
            member = None
            self._finish_dirs()
            fwd.drain()
        except _Refused as exc:
            name = member.name if member is not None else "?"
            raise JailshellError(f"{label}: refusing entry '{name}': {exc}", hint=HOSTILE_HINT)
        except tarfile.TarError as exc:
            raise JailshellError(f"{label}: corrupt tar archive ({exc})", hint=HOSTILE_HINT)
        except OSError as exc:
            where = f"entry '{member.name}'" if member is not None else "directory metadata"
            raise JailshellError(f"{label}: cannot extract {where}: {exc.strerror or exc}",
                                 hint="is the disk full, or the store on a filesystem without this file type?")
        finally:
            tf.close()
        self.total.merge(self.stats)
        return self.stats

    def _report(self, m: tarfile.TarInfo, path: str, kind: str) -> None:
        if self.on_entry is not None:
            self.on_entry(Entry("/" + path, kind, m.size if kind == "file" else 0, m.mode, m.uid, m.gid, m.mtime,
                                m.linkname))

    def _touch(self, parent: str, path: str) -> None:
        """Remember what this layer put in place, so its whiteouts spare it."""
        self._touched.add(path)
        while parent not in self._touched:
            self._touched.add(parent)
            parent = _parent(parent)

    def _entry(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        self.stats.entries += 1
        if m.name.startswith("/"):
            self.stats.notes["removed the leading '/' from absolute member names"] += 1
        parts = split_path(m.name)
        if not parts:
            if not m.isdir():
                raise _Refused("the root of the archive must be a directory")
            self._dirs.append(("", m))
            return
        base = parts[-1]
        if self.whiteouts and WHITEOUT in m.name and (
                base.startswith(WHITEOUT) or any(p.startswith(AUFS_META) for p in parts)):
            self._whiteout(m, parts)
            return
        pfd, pphys = self.res.resolve(parts[:-1], create=True, on_mkdir=self._touched.add)
        path = _join(pphys, base)
        if m.isreg():
            self._touch(pphys, path)
            self._file(tf, m, pfd, path, base)
        elif m.isdir():
            self._touch(pphys, path)
            self._dir(m, pfd, path, base)
        elif m.issym():
            self._touch(pphys, path)
            self._create(pfd, path, base, lambda: os.symlink(m.linkname, base, dir_fd=pfd))
            self._owner_and_times(m, pfd, base)
            self._report(m, path, "symlink")
        elif m.islnk():
            self._touch(pphys, path)
            self._hardlink(m, pfd, path, base)
        elif m.ischr() or m.isblk():
            kind = "char" if m.ischr() else "block"
            if not self.devices:
                self.stats.notes["skipped device nodes: creating them needs root outside a user namespace"] += 1
                self._report(m, path, "skipped")
                return
            self._touch(pphys, path)
            ftype = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            dev = os.makedev(m.devmajor, m.devminor)
            self._create(pfd, path, base, lambda: os.mknod(base, ftype | 0o600, dev, dir_fd=pfd))
            self._special_meta(m, pfd, base)
            self._report(m, path, kind)
        elif m.isfifo():
            self._touch(pphys, path)
            self._create(pfd, path, base, lambda: os.mkfifo(base, 0o600, dir_fd=pfd))
            self._special_meta(m, pfd, base)
            self._report(m, path, "fifo")
        else:
            self.stats.notes[f"skipped entries of unknown tar type {m.type!r}"] += 1
            self._report(m, path, "skipped")

    # -- entry kinds ---------------------------------------------------------------

    def _clear(self, pfd: int, path: str, base: str) -> None:
        """Remove what is at path so a new entry can take its place (a layer
        replaces; writing into an existing file would also change its hard links)."""
        st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            self.res.forget_under(path)
            shutil.rmtree(f"/proc/self/fd/{pfd}/{base}")
        else:
            os.unlink(base, dir_fd=pfd)
            if stat.S_ISLNK(st.st_mode):
                self.res.forget_aliases()

    def _create(self, pfd: int, path: str, base: str, make: Callable[[], object]) -> object:
        try:
            return make()
        except FileExistsError:
            self._clear(pfd, path, base)
            return make()

    def _chown(self, fn: Callable[..., None], *args: object, **kwargs: object) -> None:
        try:
            fn(*args, **kwargs)
        except OSError as exc:
            # In a user namespace only ids in its map can own a file (EINVAL otherwise).
            if exc.errno != errno.EINVAL or not self.userns:
                raise
            self.stats.notes["kept some files owned by the caller: their owner is not mapped in this user namespace"] += 1

    def _mode(self, m: tarfile.TarInfo) -> int:
        if self.is_root:
            return m.mode & 0o7777
        # Without root a setuid bit would make a program run as *us*: drop it.
        return m.mode & 0o1777

    def _xattrs(self, m: tarfile.TarInfo) -> list[tuple[str, bytes]]:
        out = []
        for key, value in m.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr."):]
            # trusted.* belongs to overlayfs and the host; selinux labels to the host's policy.
            if name.startswith("user.") or (self.is_root and name == "security.capability"):
                out.append((name, value.encode("utf-8", "surrogateescape")))
            else:
                self.stats.notes[f"did not keep extended attribute {name}"] += 1
        return out

    def _file(self, tf: tarfile.TarFile, m: tarfile.TarInfo, pfd: int, path: str, base: str) -> None:
        fd = self._create(pfd, path, base, lambda: os.open(base, _NEW_FILE, 0o600, dir_fd=pfd))
        assert isinstance(fd, int)
        try:
            remaining = m.size
            if remaining and m.issparse():
                src = tf.extractfile(m)
                assert src is not None
                while remaining:
                    buf = src.read(min(CHUNK, remaining))
                    if not buf:
                        raise _Refused("the archive ends inside this file")
                    _write_all(fd, buf)
                    remaining -= len(buf)
            elif remaining:
                # The data follows its header: straight from the stream to the
                # file (tarfile's own reader adds two layers of buffering).
                fwd = tf.fileobj
                assert isinstance(fwd, _Forward)
                fwd.seek(m.offset_data)
                fwd.copy_to(fd, remaining)
            self._fd_meta(fd, m, self._mode(m))
        finally:
            os.close(fd)
        self.stats.files += 1
        self.stats.bytes += m.size
        self._report(m, path, "file")

    def _dir(self, m: tarfile.TarInfo, pfd: int, path: str, base: str) -> None:
        try:
            os.mkdir(base, 0o700, dir_fd=pfd)
        except FileExistsError:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):  # a lower file or symlink is replaced, as docker does
                self._clear(pfd, path, base)
                os.mkdir(base, 0o700, dir_fd=pfd)
        # Mode and times are set when the layer is done: creating children
        # changes a directory's mtime, and a read-only mode would stop them.
        self._dirs.append((path, m))
        self._report(m, path, "dir")

    def _finish_dirs(self) -> None:
        for path, m in reversed(self._dirs):
            parts = path.split("/") if path else []
            try:
                pfd, pphys = self.res.resolve(parts[:-1], create=False)
            except (FileNotFoundError, _Refused):
                continue
            if pphys != _parent(path):
                continue  # replaced by a symlink later in the layer: not ours any more
            try:
                fd = os.open(parts[-1] if parts else ".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=pfd)
            except (FileNotFoundError, NotADirectoryError, OSError):
                continue
            try:
                # Not root: the directory stays writable by its owner (us), or later layers could not add to it.
                self._fd_meta(fd, m, m.mode & 0o7777 if self.is_root else (m.mode & 0o1777) | 0o700)
            finally:
                os.close(fd)
        self._dirs = []

    def _fd_meta(self, fd: int, m: tarfile.TarInfo, mode: int) -> None:
        """Owner (when root), mode, xattrs and mtime of an open file or directory."""
        if self.is_root:
            self._chown(os.fchown, fd, m.uid, m.gid)  # before chmod: chown clears setuid bits
        os.fchmod(fd, mode)
        if m.pax_headers:
            for name, value in self._xattrs(m):
                os.setxattr(fd, name, value)
        mtime = int(m.mtime * 1_000_000_000)
        os.utime(fd, ns=(mtime, mtime))

    def _owner_and_times(self, m: tarfile.TarInfo, pfd: int, base: str) -> None:
        if self.is_root:
            self._chown(os.chown, base, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        mtime = int(m.mtime * 1_000_000_000)
        os.utime(base, ns=(mtime, mtime), dir_fd=pfd, follow_symlinks=False)

    def _special_meta(self, m: tarfile.TarInfo, pfd: int, base: str) -> None:
        if self.is_root:
            self._chown(os.chown, base, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        # Just created by us as a device or fifo, so chmod cannot follow a symlink here.
        os.chmod(base, self._mode(m), dir_fd=pfd)
        mtime = int(m.mtime * 1_000_000_000)
        os.utime(base, ns=(mtime, mtime), dir_fd=pfd, follow_symlinks=False)

    def _hardlink(self, m: tarfile.TarInfo, pfd: int, path: str, base: str) -> None:
        tparts = split_path(m.linkname)
        if not tparts:
            raise _Refused("a hard link to the root directory")
        try:
            tpfd, tpphys = self.res.resolve(tparts[:-1], create=False)
        except FileNotFoundError:
            raise _Refused(f"hard link target '{m.linkname}' is not in the image") from None
        if _join(tpphys, tparts[-1]) == path:
            return
        try:
            self._create(pfd, path, base, lambda: os.link(tparts[-1], base, src_dir_fd=tpfd, dst_dir_fd=pfd,
                                                          follow_symlinks=False))
        except FileNotFoundError:
            raise _Refused(f"hard link target '{m.linkname}' is not in the image") from None
        except PermissionError:
            raise _Refused(f"hard link target '{m.linkname}' is a directory") from None
        self._report(m, path, "hardlink")

    # -- whiteouts -----------------------------------------------------------------

    def _whiteout(self, m: tarfile.TarInfo, parts: list[str]) -> None:
        base = parts[-1]
        if any(p.startswith(AUFS_META) for p in parts[:-1]) or (base.startswith(AUFS_META) and base != OPAQUE):
            self.stats.notes["skipped aufs metadata (.wh..wh.*)"] += 1
            self._report(m, "/".join(parts), "skipped")
            return
        if not m.isreg():
            raise _Refused("a whiteout must be an empty regular file")
        if base == OPAQUE:
            pfd, pphys = self.res.resolve(parts[:-1], create=True, on_mkdir=self._touched.add)
            self._touch(_parent(pphys), pphys)
            self.stats.whiteout("/" + pphys + "/" if pphys else "/")
            self._report(m, pphys, "opaque")
            if self.overlay:
                os.setxattr(f"/proc/self/fd/{pfd}", OVERLAY_OPAQUE_XATTR, b"y")
                return
            dfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=pfd)
            try:
                for child in os.listdir(dfd):
                    self._remove_lower(dfd, pphys, child)
            finally:
                os.close(dfd)
            return
        name = base[len(WHITEOUT):]
        if name in ("", ".", ".."):
            raise _Refused("a whiteout that names no file")
        try:
            pfd, pphys = self.res.resolve(parts[:-1], create=self.overlay, on_mkdir=self._touched.add)
        except FileNotFoundError:
            return  # nothing below to hide
        path = _join(pphys, name)
        self.stats.whiteout("/" + path)
        self._report(m, path, "whiteout")
        if self.overlay:
            if path not in self._touched:
                self._create(pfd, path, name, lambda: os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=pfd))
            return
        self._remove_lower(pfd, pphys, name)

    def _remove_lower(self, pfd: int, parent: str, name: str) -> None:
        """Remove parent/name as the layers below left it, sparing what this layer added."""
        path = _join(parent, name)
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if path in self._touched:
            if not stat.S_ISDIR(st.st_mode):
                return
            dfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            try:
                for child in os.listdir(dfd):
                    self._remove_lower(dfd, path, child)
            finally:
                os.close(dfd)
            return
        self._clear(pfd, path, name)


# -- convenience ---------------------------------------------------------------------


def extract(stream: Reader, root: Path, *, label: str = "archive",
            on_entry: Callable[[Entry], None] | None = None) -> ApplyStats:
    """Extract one flat root filesystem tarball (`docker export`) into root."""
    with Applier(root, whiteouts=False, on_entry=on_entry) as applier:
        return applier.apply(stream, label)


def _mount_points_below(root: Path) -> set[str]:
    """Mount points strictly inside root (a live jail has proc, sys, ... mounted)."""
    real = os.path.realpath(root)
    found = set()
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                # Field 5 is the mount point, with space, tab, newline, backslash as octal escapes.
                point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
                if point.startswith(real + "/"):
                    found.add(point)
    except OSError:
        pass
    return found


def export_tar(root: Path, out: IO[bytes], *, on_entry: Callable[[Entry], None] | None = None) -> int:
    """Write root as one flat tarball, as `docker export` does: paths relative to
    the root, numeric owners, hard links, devices, file capabilities; the contents
    of filesystems mounted inside it (proc, sys, ...) left out. Returns the entry count."""
    root = Path(root)
    mounts = _mount_points_below(root)
    real_root = os.path.realpath(root)
    count = 0
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, root)
            names = sorted(dirnames + filenames)
            keep_dirs = []
            for name in names:
                full = os.path.join(dirpath, name)
                arcname = name if rel_dir == "." else f"{rel_dir}/{name}"
                ti = tf.gettarinfo(full, arcname=arcname)
                if ti is None:  # sockets: tar leaves them out too
                    continue
                ti.uname = ti.gname = ""  # the host's user names mean nothing in the image
                try:
                    cap = os.getxattr(full, "security.capability", follow_symlinks=False)
                    ti.pax_headers = {"SCHILY.xattr.security.capability": cap.decode("utf-8", "surrogateescape")}
                except OSError:
                    pass
                if ti.isreg():
                    with open(full, "rb") as fh:
                        tf.addfile(ti, fh)
                else:
                    tf.addfile(ti)
                count += 1
                if on_entry is not None:
                    kind = {tarfile.DIRTYPE: "dir", tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink",
                            tarfile.CHRTYPE: "char", tarfile.BLKTYPE: "block", tarfile.FIFOTYPE: "fifo"}.get(
                        ti.type, "file")
                    on_entry(Entry("/" + arcname, kind, ti.size, ti.mode, ti.uid, ti.gid, ti.mtime, ti.linkname))
                if name in dirnames and os.path.join(real_root, arcname) not in mounts:
                    keep_dirs.append(name)
            dirnames[:] = keep_dirs
    return count
