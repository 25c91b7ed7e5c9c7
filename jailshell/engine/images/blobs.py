"""Blobs: content-addressed bytes, their digests and their compression.

Everything in an OCI image is named by the digest of its bytes
("sha256:<hex>"): manifests, the config and each layer. A digest is checked
while the bytes stream by, so a corrupted or substituted blob is refused
before the image it belongs to becomes visible. Layers are tarballs, plain
or compressed (gzip, zstd; bzip2 and xz in old archives); the compression is
recognised by its magic bytes, whatever a manifest claims.

zstd is decoded by the `zstandard` package (a dependency of jailshell),
imported only when a zstd layer shows up; gzip by `isal` (ISA-L) when it is
installed, else by the standard library's zlib.
"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

from jailshell.engine.rootfs import Reader
from jailshell.errors import JailshellError

DIGEST_RE = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")
READ_SIZE = 1 << 20

MAGIC = {
    b"\x1f\x8b": "gzip",
    b"\x28\xb5\x2f\xfd": "zstd",
    b"BZh": "bzip2",
    b"\xfd7zXZ\x00": "xz",
}


def check_digest(digest: str, what: str = "blob") -> str:
    """A digest as it may be used in a file name: anything else is refused."""
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise JailshellError(f"invalid {what} digest {digest!r}", hint="the image's manifest is corrupt or hostile")
    return digest


def digest_bytes(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def short(digest: str) -> str:
    return digest.split(":", 1)[-1][:12]


class Verified(io.RawIOBase):
    """Reads through to raw and hashes what passes; verify() reads the rest and
    compares with the expected digest."""

    def __init__(self, raw: Reader, digest: str, what: str):
        super().__init__()
        self.raw = raw
        self.digest = check_digest(digest, what)
        self.what = what
        self.hash = hashlib.new(digest.split(":", 1)[0])
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.raw.read(len(b))
        n = len(data)
        b[:n] = data
        self.hash.update(data)
        self.count += n
        return n

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.hash.update(data)
        self.count += len(data)
        return data

    def verify(self) -> None:
        while self.read(READ_SIZE):
            pass
        got = f"{self.digest.split(':', 1)[0]}:{self.hash.hexdigest()}"
        if got != self.digest:
            raise JailshellError(
                f"{self.what}: digest mismatch: expected {self.digest}, got {got}",
                hint="the data is corrupt or was tampered with; nothing was imported (pull or export it again)",
            )


class _Prefixed(io.RawIOBase):
    """raw with a few already-read bytes put back in front."""

    def __init__(self, head: bytes, raw: Reader):
        super().__init__()
        self.head = head
        self.raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.head:
            n = min(len(b), len(self.head))
            b[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        data = self.raw.read(len(b))
        b[: len(data)] = data
        return len(data)


class ReadAhead(io.RawIOBase):
    """Decompresses in a second thread while the caller extracts: zlib and
    zstd release the GIL, so on two cores this overlaps the way `tar -xz`
    overlaps with its gzip child process."""

    DEPTH = 8

    def __init__(self, reader: Reader):
        super().__init__()
        self.queue: queue.Queue[bytes | BaseException] = queue.Queue(self.DEPTH)
        self.buf = b""
        self.done = False
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._fill, args=(reader,), daemon=True, name="jailshell-readahead")
        self.thread.start()

    def _fill(self, reader: Reader) -> None:
        try:
            while not self.stop.is_set():
                chunk = reader.read(READ_SIZE)
                self._put(chunk)
                if not chunk:
                    return
        except BaseException as exc:  # handed to the reading thread
            self._put(exc)

    def _put(self, item: bytes | BaseException) -> None:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            parts = [self.buf]
            self.buf = b""
            while (chunk := self._next()):
                parts.append(chunk)
            return b"".join(parts)
        if not self.buf:
            self.buf = self._next()
        out, self.buf = self.buf[:size], self.buf[size:]
        return out

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def _next(self) -> bytes:
        if self.done:
            return b""
        item = self.queue.get()
        if isinstance(item, BaseException):
            self.done = True
            raise item
        if not item:
            self.done = True
        return item

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        super().close()


def _seekable(raw: Reader) -> bool:
    try:
        return bool(raw.seekable())  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):
        return False


def compression_of(head: bytes) -> str:
    for magic, name in MAGIC.items():
        if head.startswith(magic):
            return name
    return ""


def decompressed(raw: Reader, *, threaded: bool = True) -> tuple[Reader, str]:
    """(uncompressed stream, compression name or '') for a possibly compressed raw stream."""
    head = raw.read(6)
    kind = compression_of(head)
    src: Reader
    if _seekable(raw):
        raw.seek(-len(head), io.SEEK_CUR)  # type: ignore[attr-defined]
        src = raw  # a file: no extra layer of copying
    else:
        src = io.BufferedReader(_Prefixed(head, raw), READ_SIZE)
    out: Reader
    if kind == "":
        return src, ""
    if kind == "gzip":
        import importlib

        try:  # ISA-L's inflate is 2-3x zlib's; decompression is most of a pull's CPU time
            gzip = importlib.import_module("isal.igzip")
        except ImportError:
            gzip = importlib.import_module("gzip")
        out = gzip.GzipFile(fileobj=cast(IO[bytes], src), mode="rb")
    elif kind == "zstd":
        try:
            import zstandard
        except ImportError:
            raise JailshellError("this layer is zstd-compressed and the zstandard package is missing",
                                 hint="pip install zstandard (it is a dependency of jailshell)")
        out = zstandard.ZstdDecompressor().stream_reader(cast(IO[bytes], src), read_across_frames=True,
                                                         closefd=False)
    elif kind == "bzip2":
        import bz2

        out = bz2.BZ2File(cast(IO[bytes], src), mode="rb")
    else:
        import lzma

        out = lzma.LZMAFile(cast(IO[bytes], src), mode="rb")  # noqa: SIM115 (returned to the caller, who closes it)
    return (ReadAhead(out) if threaded else out), kind


class BlobCache:
    """Blobs by digest under one directory; a blob appears only once complete and verified."""

    def __init__(self, root: Path):
        self.root = root

    def path(self, digest: str) -> Path:
        algorithm, hexpart = check_digest(digest).split(":", 1)
        return self.root / algorithm / hexpart

    def partial(self, digest: str) -> Path:
        """Where an interrupted download waits to be resumed."""
        return self.path(digest).with_suffix(".part")

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def put(self, digest: str, data: bytes) -> Path:
        got = digest_bytes(data, digest.split(":", 1)[0])
        if got != digest:
            raise JailshellError(f"digest mismatch: expected {digest}, got {got}",
                                 hint="the data is corrupt or was tampered with")
        dest = self.path(digest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, dest)
        return dest

    def digests(self) -> Iterator[str]:
        if not self.root.is_dir():
            return
        for algo_dir in self.root.iterdir():
            if not algo_dir.is_dir():
                continue
            for f in algo_dir.iterdir():
                digest = f"{algo_dir.name}:{f.name}"
                if DIGEST_RE.match(digest):
                    yield digest
