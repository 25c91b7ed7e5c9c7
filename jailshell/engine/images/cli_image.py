"""`jailshell image import|pull|ls|rm|prune|export|inspect`.

Progress is drawn with rich when the output is a terminal and written as
plain lines otherwise; rich is imported only then.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from jailshell.errors import InvalidInput, JailshellError


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="image_command", metavar="ACTION")

    imp = sub.add_parser("import", help="import a docker export/save tarball or an OCI layout (dir or tar)",
                         description="Import an image from a file: a `docker export` tarball (a flat root "
                                     "filesystem), a `docker save` tarball, or an OCI image layout (directory or "
                                     "tarball); any of them may be gzip/zstd/xz/bzip2-compressed.")
    imp.add_argument("file", type=Path, help="the tarball or OCI layout directory")
    imp.add_argument("--name", help="NAME[:TAG] to store it under (default: the name saved in the file, "
                                    "or the file's name)")
    imp.add_argument("--ref", help="which image, when the file holds several (a tag or name saved in it)")
    _common(imp)

    pull = sub.add_parser("pull", help="pull an image from a registry (Docker Hub by default)",
                          description="Pull an image with the Docker Registry HTTP API v2, e.g. alpine:3.10, "
                                      "user/repo:tag, 127.0.0.1:5000/repo:tag, repo@sha256:...")
    pull.add_argument("ref", help="image reference")
    pull.add_argument("--user", help="USER:PASSWORD for a registry that needs a login "
                                     "(default: what `docker login` saved)")
    pull.add_argument("--name", help="NAME[:TAG] to store it under (default: the reference)")
    pull.add_argument("--no-unpack", action="store_true",
                      help="only download and verify the blobs into the cache (like skopeo copy or ctr content "
                           "fetch); a later pull of the same reference extracts them, offline if need be")
    _common(pull)

    ls = sub.add_parser("ls", help="list images")
    ls.add_argument("--json", action="store_true", help="as JSON")

    rm = sub.add_parser("rm", help="remove images")
    rm.add_argument("refs", nargs="+", metavar="NAME[:TAG]")

    sub.add_parser("prune", help="remove cached blobs and layers no image uses, and leftovers of dead imports")

    exp = sub.add_parser("export", help="write an image's root filesystem as one flat tarball (like docker export)")
    exp.add_argument("name", metavar="NAME[:TAG]")
    exp.add_argument("-o", "--output", required=True, help="the tarball to write ('-' for standard output)")
    exp.add_argument("-v", "--verbose", action="store_true", help="list each entry, like tar -v")

    ins = sub.add_parser("inspect", help="layers, sizes and run configuration of an image")
    ins.add_argument("name", metavar="NAME[:TAG]")
    ins.add_argument("--json", action="store_true", help="the stored metadata as JSON")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--platform", help="OS/ARCH[/VARIANT] to pick from a multi-platform image "
                                      "(default: this machine's)")
    p.add_argument("--layers", action="store_true",
                   help="also keep each layer in its own directory, for overlayfs (root only)")
    p.add_argument("-v", "--verbose", action="store_true", help="list each entry as it is extracted, like tar -v")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image name at the end")


def run(args: argparse.Namespace) -> int:
    command = getattr(args, "image_command", None)
    if not command:
        raise InvalidInput("which image action?", hint="jailshell image {import,pull,ls,rm,prune,export,inspect}")
    handler = {"import": _import, "pull": _pull, "ls": _ls, "rm": _rm, "prune": _prune, "export": _export,
               "inspect": _inspect}[command]
    return handler(args)


# -- output helpers ----------------------------------------------------------------


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _mode_string(mode: int, kind: str) -> str:
    import stat

    first = {"dir": "d", "symlink": "l", "hardlink": "h", "char": "c", "block": "b", "fifo": "p"}.get(kind, "-")
    return first + stat.filemode(mode)[1:]


def entry_line(entry: Any) -> str:
    """One entry the way `tar -tv` shows it."""
    if entry.kind in ("whiteout", "opaque"):
        what = "removes" if entry.kind == "whiteout" else "hides the lower layers' contents of"
        return f"{'':>10} {'':>11} {'':>9} whiteout: {what} {entry.path}"
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(entry.mtime))
    line = f"{_mode_string(entry.mode, entry.kind)} {entry.uid}/{entry.gid:<5} {entry.size:>9} {when} {entry.path}"
    if entry.kind == "symlink":
        line += f" -> {entry.target}"
    elif entry.kind == "hardlink":
        line += f" link to /{entry.target.lstrip('/')}"
    elif entry.kind == "skipped":
        line += "  (skipped)"
    return line


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _platform(args: argparse.Namespace) -> Any:
    from jailshell.engine.images.oci import Platform

    return Platform.parse(args.platform) if args.platform else None


def _print_result(image: Any, args: argparse.Namespace, seconds: float) -> None:
    if args.quiet:
        print(image.ref)
        return
    info = image.meta.get("layer_info") or []
    size = sum(i.get("unpacked", 0) for i in info)
    print(f"{image.ref}: {len(info)} layer(s), {human(size)} unpacked in {seconds:.2f} s")
    for note in image.meta.get("notes") or []:
        print(f"  note: {note}")


def _progress_for(args: argparse.Namespace) -> Any:
    """Per-layer lines (and entries with -v) as they are applied."""
    from jailshell.engine.images.unpack import Progress

    if args.quiet:
        return Progress()

    def on_layer(i: int, count: int, layer: Any) -> None:
        size = f", {human(layer.size)}" if layer.size >= 0 else ""
        print(f"layer {i}/{count} {layer.name}{size}: extracting", file=sys.stderr)

    def on_done(i: int, stats: Any, seconds: float) -> None:
        extra = f", {stats.whiteouts} whiteout(s)" if stats.whiteouts else ""
        print(f"layer {i}: {stats.entries} entries, {human(stats.bytes)}{extra} in {seconds:.2f} s", file=sys.stderr)

    def on_entry(entry: Any) -> None:
        print(entry_line(entry))

    return Progress(on_entry=on_entry if args.verbose else None, on_layer=on_layer, on_layer_done=on_done)


# -- actions ---------------------------------------------------------------------------


def _import(args: argparse.Namespace) -> int:
    from jailshell.engine.images.sources import import_file

    start = time.monotonic()
    image = import_file(args.file, name=args.name, ref=args.ref, platform=_platform(args),
                        progress=_progress_for(args), layer_dirs=_layer_dirs(args))
    _print_result(image, args, time.monotonic() - start)
    return 0


def _layer_dirs(args: argparse.Namespace) -> bool:
    if not args.layers:
        return False
    from jailshell.engine.rootfs import in_user_namespace

    if os.geteuid() != 0 or in_user_namespace():
        print("jailshell: note: --layers needs root outside a user namespace (overlayfs whiteouts are device "
              "nodes); storing the flattened root filesystem only", file=sys.stderr)
        return False
    return True


def _credentials(args: argparse.Namespace) -> tuple[str, str] | None:
    if not args.user:
        return None
    user, sep, password = args.user.partition(":")
    if not sep:
        import getpass

        password = getpass.getpass(f"password for {user}: ")
    return user, password


def _pull(args: argparse.Namespace) -> int:
    from jailshell.engine.images.registry import PullEvents, fetch, pull

    start = time.monotonic()
    events = PullEvents(progress=_progress_for(args))
    bars = None
    if not args.quiet:
        if _is_tty(sys.stderr):
            bars = _RichBars()
            bars.attach(events)
        else:
            events.on_status = lambda text: print(text, file=sys.stderr)
            events.on_blob = lambda digest, size: print(f"downloading {digest[7:19]} ({human(size)})",
                                                        file=sys.stderr)
            events.on_blob_done = lambda digest, cached: print(
                f"{digest[7:19]}: {'already cached' if cached else 'done'}", file=sys.stderr)
    if args.no_unpack and (args.name or args.layers):
        raise InvalidInput("--no-unpack stores blobs only: --name and --layers apply when the image is extracted",
                           hint=f"later: jailshell image pull {args.ref} --name ... --layers")
    try:
        if args.no_unpack:
            fetched = fetch(args.ref, platform=_platform(args), credentials=_credentials(args), events=events)
        else:
            image = pull(args.ref, platform=_platform(args), credentials=_credentials(args), events=events,
                         name=args.name, layer_dirs=_layer_dirs(args))
    finally:
        if bars is not None:
            bars.stop()
    if args.no_unpack:
        if args.quiet:
            print(fetched.digest)
        else:
            print(f"fetched {fetched.ref} ({fetched.digest[:19]}): {fetched.layers} layer(s), "
                  f"{human(fetched.downloaded)} downloaded, {fetched.cached} already cached, in "
                  f"{time.monotonic() - start:.2f} s; not extracted: `jailshell image pull {args.ref}` does "
                  "that, offline if need be")
        return 0
    _print_result(image, args, time.monotonic() - start)
    return 0


class _RichBars:
    """One progress bar per layer download, drawn on the terminal by rich."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), console=Console(stderr=True), transient=False)
        self.tasks: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.progress.start()

    def attach(self, events: Any) -> None:
        events.on_status = lambda text: self.progress.console.print(text)
        events.on_blob = self._blob
        events.on_bytes = self._bytes
        events.on_blob_done = self._done
        # Layer lines go through rich too, so they do not tear the bars.
        progress = events.progress
        if progress.on_layer:
            progress.on_layer = lambda i, n, layer: self.progress.console.print(
                f"layer {i}/{n} {layer.name}: extracting")
        if progress.on_layer_done:
            progress.on_layer_done = lambda i, stats, s: self.progress.console.print(
                f"layer {i}: {stats.entries} entries, {human(stats.bytes)} in {s:.2f} s")

    def _blob(self, digest: str, size: int) -> None:
        with self.lock:
            self.tasks[digest] = self.progress.add_task(digest[7:19], total=size if size >= 0 else None)

    def _bytes(self, digest: str, n: int) -> None:
        task = self.tasks.get(digest)
        if task is not None:
            self.progress.advance(task, n)

    def _done(self, digest: str, cached: bool) -> None:
        with self.lock:
            task = self.tasks.get(digest)
            if task is None:
                self.tasks[digest] = self.progress.add_task(f"{digest[7:19]} (cached)", total=1, completed=1)
            else:
                self.progress.update(task, description=f"{digest[7:19]} done")

    def stop(self) -> None:
        self.progress.stop()


def _size_of(image: Any) -> int:
    info = image.meta.get("layer_info")
    if info:
        return int(sum(i.get("unpacked", 0) for i in info))
    total = 0
    for dirpath, _dirs, files in os.walk(image.rootfs):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _ls(args: argparse.Namespace) -> int:
    from jailshell.engine.images.store import ImageStore

    images = list(ImageStore().images())
    if args.json:
        print(json.dumps([{"name": i.name, "tag": i.tag, "ref": i.ref, "source": i.source, "layers": len(i.layers),
                           "size": _size_of(i)} for i in images], indent=2))
        return 0
    if not images:
        print("no images yet: `jailshell image pull alpine` or `jailshell image import FILE`")
        return 0
    rows = [(i.name, i.tag if ":" not in i.tag else i.tag[:19], str(len(i.layers) or 1), human(_size_of(i)),
             i.source) for i in images]
    header = ("NAME", "TAG", "LAYERS", "SIZE", "SOURCE")
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(4)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
    return 0


def _rm(args: argparse.Namespace) -> int:
    from jailshell.engine.images.store import ImageStore

    store = ImageStore()
    status = 0
    for ref in args.refs:
        try:
            store.remove(ref)
            print(f"removed {ref}")
        except JailshellError as exc:
            print(f"jailshell: error: {exc.message}", file=sys.stderr)
            status = 1
    return status


def _prune(args: argparse.Namespace) -> int:
    from jailshell.engine.images.store import ImageStore

    report = ImageStore().prune()
    for item in report.removed:
        print(f"removed {item}")
    print(f"freed {human(report.freed)}" if report.removed else "nothing to prune")
    return 0


def _export(args: argparse.Namespace) -> int:
    from jailshell.engine.images.sources import export_image
    from jailshell.engine.images.store import ImageStore

    image = ImageStore().resolve(args.name)
    on_entry = None
    if args.verbose:
        listing = sys.stderr if args.output == "-" else sys.stdout

        def on_entry(entry: Any) -> None:
            print(entry_line(entry), file=listing)

    if args.output == "-":
        if _is_tty(sys.stdout):
            raise InvalidInput("refusing to write a tarball to a terminal", hint="use -o FILE, or pipe it")
        count = export_image(image, sys.stdout.buffer, on_entry)
    else:
        out = Path(args.output)
        tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as fh:
                count = export_image(image, fh, on_entry)
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        print(f"{image.ref}: {count} entries written to {out} ({human(out.stat().st_size)})", file=sys.stderr)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from jailshell.engine.images.store import ImageStore

    image = ImageStore().resolve(args.name)
    if args.json:
        print(json.dumps(image.meta, indent=2))
        return 0
    meta = image.meta
    print(f"image:     {image.ref}")
    print(f"source:    {image.source}")
    plat = "/".join(p for p in (meta.get("os"), meta.get("architecture")) if p)
    if plat:
        print(f"platform:  {plat}")
    if meta.get("created"):
        print(f"created:   {meta['created']}")
    print(f"rootfs:    {image.rootfs}")
    cfg = image.config
    print("config:")
    print(f"  Entrypoint: {json.dumps(cfg.get('Entrypoint'))}")
    print(f"  Cmd:        {json.dumps(cfg.get('Cmd'))}")
    print(f"  WorkingDir: {cfg.get('WorkingDir') or '/'}")
    print(f"  User:       {cfg.get('User') or 'root'}")
    print("  Env:")
    for env in image.env():
        print(f"    {env}")
    print(f"  runs:       {' '.join(image.default_command())}")
    info = meta.get("layer_info") or []
    print(f"layers ({len(info)}, bottom first):")
    for i, layer in enumerate(info, 1):
        digest = layer.get("digest") or layer.get("diff_id") or "?"
        stored = f"{human(layer['size'])} stored, " if layer.get("size", -1) >= 0 else ""
        entries = f"{layer['entries']} entries, " if "entries" in layer else ""
        print(f"  {i}. {digest}  {stored}{entries}{human(layer.get('unpacked', 0))} of file data")
        for path in layer.get("removed") or []:
            print(f"       whiteout: {'empties' if path.endswith('/') else 'removes'} {path}")
    if not info:
        print(f"  (built locally, {human(_size_of(image))})")
    dirs = ImageStore().lowerdirs(image)
    if dirs:
        print(f"overlayfs: lowerdir={':'.join(str(d) for d in dirs)}")
    return 0
