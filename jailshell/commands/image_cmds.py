"""REPL commands for images: a jail's root as a tarball and back, and layers.

  export FILE          the jail's root filesystem as one flat tarball      docker export
  untar FILE DIR       a root filesystem tarball unpacked, safely           tar -xpf FILE -C DIR
  save FILE [NAME]     the image + the jail's changes as two layers         docker commit + docker save
  import FILE [NAME]   any image tarball or OCI layout into the store       docker load / docker import
  layers [IMAGE]       an image's layers and what each one whited out,      docker history + docker diff
                       and the live jail's own layer (its overlay upper)

Each shows what tar would list (`tar -tv`) as the entries go by, and the
docker and raw commands that do the same. The engine does the work
(jailshell.engine.rootfs and jailshell.engine.images); these only shape it
as data for the UI.
"""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jailshell.commands.registry import Arg, Args, Command
from jailshell.commands.results import Message, Results, StepReport
from jailshell.errors import InvalidInput, JailshellError

if TYPE_CHECKING:
    from jailshell.commands.workspace import Workspace
    from jailshell.engine.images.store import Image
    from jailshell.engine.jail import Jail
    from jailshell.engine.rootfs import Entry

SHOWN = 40  # entries listed before "... and N more": enough to watch it scroll by


def q(arg: object) -> str:
    return shlex.quote(str(arg))


class Listing:
    """The `tar -tv` lines of what goes by: the first SHOWN of each section
    (a layer), then a count; whiteouts always, they are what a layer lesson is about."""

    def __init__(self, limit: int = SHOWN) -> None:
        self.lines: list[str] = []
        self.count = 0  # entries in all
        self.limit = limit
        self._shown = 0  # in this section
        self._hidden = 0

    def __call__(self, entry: Entry) -> None:
        from jailshell.engine.images.cli_image import entry_line

        self.count += 1
        if self._shown < self.limit or entry.kind in ("whiteout", "opaque"):
            self._shown += 1
            self.lines.append(entry_line(entry))
        else:
            self._hidden += 1

    def _flush(self) -> None:
        if self._hidden:
            self.lines.append(f"... and {self._hidden} more entries")
        self._shown = self._hidden = 0

    def section(self, title: str) -> None:
        self._flush()
        self.lines.append(title)

    def text(self) -> str:
        self._flush()
        return "\n".join(self.lines) + "\n"


def _listing(text: str) -> Message:
    """What went by, indented under the step like a command's output (it happens
    on the host: a StepReport's output block would say "in the jail")."""
    return Message("\n".join("    " + line for line in text.rstrip("\n").splitlines()))


def _out_path(word: str) -> Path:
    path = Path(word).expanduser()
    if path.is_dir():
        raise InvalidInput(f"{path} is a directory", hint="name the tarball to write, e.g. /tmp/jail.tar")
    if not path.parent.is_dir():
        raise InvalidInput(f"no directory {path.parent} to write {path.name} in")
    return path


def _human(n: float) -> str:
    from jailshell.engine.images.cli_image import human

    return human(n)


def _container(jail: Jail) -> str:
    return f"jail-{jail.id}"


# -- export -----------------------------------------------------------------------------


def cmd_export(ws: Workspace, args: Args) -> Results:
    from jailshell.engine import rootfs
    from jailshell.engine.equivalents import Equivalents

    out = _out_path(args["file"])
    jail, _ = ws.session.ensure()
    listing = Listing()
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            count = rootfs.export_tar(jail.root_dir, fh, on_entry=listing)
        os.replace(tmp, out)
    except OSError as exc:
        raise JailshellError(f"cannot write {out}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    eq = Equivalents(
        docker=f"docker export -o {q(out)} CONTAINER",
        raw=[f"tar -C {q(jail.root_dir)} --numeric-owner -cf {q(out)} ."],
        note="The jail's root seen from the host: the overlay of the image and the jail's own changes. Mounts made "
             "inside the jail (proc, sys, ...) are not in it, as with docker export.")
    line = f"export {q(args['file'])}"
    return Results([
        StepReport(line, "export", "host", eq),
        _listing(listing.text()),
        Message(f"{count} entries, {_human(out.stat().st_size)} written to {out}: one flat root filesystem, no "
                "layers, no image config (no Cmd, no Env).", "ok",
                hint=f"unpack it with `untar {q(out)} DIR`, or make it an image with `import {q(out)} NAME`"),
    ])


# -- untar ------------------------------------------------------------------------------


def cmd_untar(ws: Workspace, args: Args) -> Results:
    import shutil

    from jailshell.engine import rootfs
    from jailshell.engine.equivalents import Equivalents

    src = Path(args["file"]).expanduser()
    if not src.is_file():
        raise InvalidInput(f"{src}: no such file", hint="make one with `export FILE`")
    dest = Path(args["dir"]).expanduser()
    created = not dest.exists()
    if not created and (not dest.is_dir() or any(dest.iterdir())):
        raise InvalidInput(f"{dest} exists and is not an empty directory",
                           hint="untar into a new directory: it is the root filesystem, nothing else goes in it")
    if created:
        dest.mkdir(mode=0o755)
    listing = Listing()
    try:
        from jailshell.engine.images import blobs

        with open(src, "rb") as raw:
            stream, kind = blobs.decompressed(raw)
            try:
                stats = rootfs.extract(stream, dest, label=str(src), on_entry=listing)
            finally:
                stream.close()
    except BaseException:
        # Nothing half-unpacked stays behind (a hostile tarball stops in the middle).
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for child in dest.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink()
        raise
    eq = Equivalents(
        docker=f"docker import {q(src)} NAME    # docker keeps it as an image, not as a directory",
        raw=[f"mkdir -p {q(dest)}", f"tar -C {q(dest)} --numeric-owner -xpf {q(src)}"
             + (f"    # GNU tar sees the {kind} compression by itself" if kind else "")],
        note="GNU tar trusts the archive: a name with '..' or a symlink planted by an earlier entry can make it "
             "write outside DIR. jailshell resolves every path inside DIR, as the jail will see it, and refuses "
             "an entry that would leave it.")
    notes = stats.note_lines()
    line = f"untar {q(args['file'])} {q(args['dir'])}"
    return Results([
        StepReport(line, "untar", "host", eq),
        _listing(listing.text()),
        Message(f"{stats.entries} entries ({stats.files} files, {_human(stats.bytes)}) unpacked into {dest}: a "
                "root filesystem, ready for chroot.", "ok",
                hint="; ".join(notes) if notes else f"look: ls -la {q(dest)}"),
    ])


# -- save -------------------------------------------------------------------------------


def _upper(jail: Jail) -> Path:
    if getattr(jail, "rootfs_mode", "") != "overlay":
        raise JailshellError("the jail's root is a plain copy (no overlayfs here), so its changes are not a layer "
                             "of their own", hint="`export FILE` writes the whole root filesystem instead")
    return Path(jail.dir) / "upper"


def cmd_save(ws: Workspace, args: Args) -> Results:
    from jailshell.engine.equivalents import Equivalents
    from jailshell.engine.images.layers import save_with_upper
    from jailshell.engine.images.store import parse_ref

    out = _out_path(args["file"])
    jail, _ = ws.session.ensure()
    name, tag = parse_ref(args.get("name") or f"{_container(jail)}:latest")
    listing = Listing()
    listing.section("# the jail's layer (its overlay upper directory), as a layer tarball:")
    saved = save_with_upper(jail.image, _upper(jail), out, f"{name}:{tag}", on_entry=listing)
    eq = Equivalents(
        docker=f"docker commit CONTAINER {q(f'{name}:{tag}')} && docker save -o {q(out)} {q(f'{name}:{tag}')}",
        raw=[f"tar -C {q(jail.image.rootfs)} --numeric-owner -cf layer1.tar .",
             f"tar -C {q(Path(jail.dir) / 'upper')} --numeric-owner -cf layer2.tar .    # then: each 0/0 character "
             "device NAME -> an empty file .wh.NAME, each directory with the trusted.overlay.opaque attribute -> "
             "DIR/.wh..wh..opq",
             "sha256sum layer1.tar layer2.tar    # their diff_ids, listed in the config's rootfs.diff_ids",
             f"tar -cf {q(out)} manifest.json CONFIG.json DIFFID1/layer.tar DIFFID2/layer.tar"],
        note="overlayfs records a deleted file as a 0/0 character device and a replaced directory as 'opaque'; "
             "in a layer tarball the same facts are .wh. files (the OCI image spec's whiteouts).")
    whiteouts = sum(1 for line in listing.lines if "whiteout:" in line)
    lines = [f"  layer {i}: {layer.entries} entries, {_human(layer.size)}, {layer.diff_id[:19]}  {layer.created_by}"
             for i, layer in enumerate(saved.layers, 1)]
    return Results([
        StepReport(f"save {q(args['file'])}" + (f" {q(args['name'])}" if args.get("name") else ""), "save", "host",
                   eq),
        _listing(listing.text()),
        Message(f"{out}: a docker save tarball of {name}:{tag}, {len(saved.layers)} layers"
                + (f" ({whiteouts} whiteout(s) in the jail's layer)" if whiteouts else "") + ":\n" + "\n".join(lines),
                "ok", hint=f"`import {q(out)}` applies the layers in order; `layers {name}:{tag}` then shows them"),
    ])


# -- import -----------------------------------------------------------------------------


def _raw_import(image: Image, src: Path) -> tuple[str, list[str]]:
    """The docker command and GNU tar lines that unpack this image by hand."""
    root = f"/tmp/{image.name.replace('/', '-')}-root"
    info = image.meta.get("layer_info") or []
    source = image.source
    if source.startswith("root filesystem tarball"):
        return (f"docker import {q(src)} {q(image.ref)}",
                [f"mkdir {root}", f"tar -C {root} --numeric-owner -xpf {q(src)}"])
    docker = f"docker load -i {q(src)}" + ("" if image.source.startswith("docker save") else
                                            "    # docker 25+ loads an OCI layout tarball too")
    img = q(src) if src.is_dir() else "/tmp/img"
    lines = [] if src.is_dir() else [f"mkdir /tmp/img && tar -C /tmp/img -xf {q(src)}"]
    lines.append(f"mkdir {root}")
    for i, layer in enumerate(info):
        # A layer's whiteouts act on the layers below: apply them first, then the layer without them.
        for path in layer.get("removed") or []:
            if path.endswith("/"):
                lines.append(f"find {root}{q(path.rstrip('/'))} -mindepth 1 -delete    # opaque directory")
            else:
                lines.append(f"rm -rf {root}{q(path)}    # whiteout")
        if image.source.startswith("docker save"):
            where = f"{img}/$(jq -r '.[0].Layers[{i}]' {img}/manifest.json)"
        else:
            algorithm, _, hexpart = str(layer.get("digest", "")).partition(":")
            where = f"{img}/blobs/{algorithm}/{hexpart}"
        lines.append(f"tar -C {root} --numeric-owner -xpf {where} --exclude='.wh.*'    # layer {i + 1}")
    return docker, lines


def cmd_import(ws: Workspace, args: Args) -> Results:
    from jailshell.engine.equivalents import Equivalents
    from jailshell.engine.images.sources import import_file
    from jailshell.engine.images.unpack import Progress

    src = Path(args["file"]).expanduser()
    if not src.exists():
        raise InvalidInput(f"{src}: no such file or directory", hint="make one with `export FILE` or `save FILE`")
    listing = Listing()

    def on_layer(i: int, count: int, layer: Any) -> None:
        listing.section(f"# layer {i}/{count} {layer.name}")

    image = import_file(src, name=args.get("name"), progress=Progress(on_entry=listing, on_layer=on_layer))
    docker, raw = _raw_import(image, src)
    eq = Equivalents(docker=docker, raw=raw,
                     note="Layers are applied bottom first; a layer's .wh.NAME files delete NAME from the layers "
                          "below it (and .wh..wh..opq empties a directory), then are dropped themselves.")
    info = image.meta.get("layer_info") or []
    return Results([
        StepReport(f"import {q(args['file'])}" + (f" {q(args['name'])}" if args.get("name") else ""), "import",
                   "host", eq),
        _listing(listing.text()),
        Message(f"{image.ref}: {len(info)} layer(s) applied into {image.rootfs} ({image.source})", "ok",
                hint=f"`layers {image.ref}` shows each layer; `create {image.ref}` starts a jail on it"),
    ])


# -- layers -----------------------------------------------------------------------------


def _upper_changes(upper: Path, limit: int = SHOWN) -> tuple[list[str], int]:
    """What the jail changed, as `docker diff` shows it (A added or changed, D deleted)."""
    from jailshell.engine.images.layers import _is_whiteout_device, _opaque

    lines: list[str] = []
    count = 0
    for dirpath, dirnames, filenames in os.walk(upper):
        dirnames.sort()
        rel = os.path.relpath(dirpath, upper)
        prefix = "/" if rel == "." else f"/{rel}/"
        for name in sorted(dirnames + filenames):
            st = os.lstat(os.path.join(dirpath, name))
            if _is_whiteout_device(st):
                what = f"D {prefix}{name}    (a 0/0 character device: overlayfs's whiteout)"
            elif stat.S_ISDIR(st.st_mode) and _opaque(os.path.join(dirpath, name)):
                what = f"C {prefix}{name}/    (opaque: the image's contents of it are hidden)"
            else:
                what = f"A {prefix}{name}" + ("/" if stat.S_ISDIR(st.st_mode) else "")
            count += 1
            if len(lines) < limit:
                lines.append(what)
    return lines, count


def cmd_layers(ws: Workspace, args: Args) -> Results:
    from jailshell.engine.equivalents import Equivalents
    from jailshell.engine.images.store import ImageStore

    store = ImageStore()
    ref = args.get("image")
    jail = ws.session.jail if ws.session.running else None
    image = store.resolve(ref) if ref else (jail.image if jail is not None else store.resolve(ws.session.image))
    info = image.meta.get("layer_info") or []
    lines = [f"{image.ref}  ({image.source or 'built locally'})", "layers, bottom first:"]
    for i, layer in enumerate(info, 1):
        digest = str(layer.get("digest") or layer.get("diff_id") or "?")
        entries = f"{layer['entries']} entries, " if "entries" in layer else ""
        lines.append(f"  {i}. {digest[:19]}  {entries}{_human(layer.get('unpacked', 0))} of file data")
        removed = layer.get("removed") or []
        for path in removed:
            lines.append(f"       whiteout: {'empties' if path.endswith('/') else 'removes'} {path}")
        if layer.get("whiteouts", 0) > len(removed):
            lines.append(f"       ... and {layer['whiteouts'] - len(removed)} more whiteouts")
    if not info:
        lines.append("  1. the embedded image, built on this machine as one layer")
    dirs = store.lowerdirs(image)
    if dirs:
        lines.append("each layer in its own directory, as overlayfs lowerdirs (top first):")
        lines += [f"  {d}" for d in dirs]
    raw = [f"cat {q(image.path / 'image.json')}    # jailshell's record of the layers"]
    docker = f"docker history {q(image.ref)}"
    if jail is not None and jail.image.path == image.path and getattr(jail, "rootfs_mode", "") == "overlay":
        upper = Path(jail.dir) / "upper"
        changes, count = _upper_changes(upper)
        lines.append(f"the jail's own layer, on top ({upper}):")
        lines += [f"  {c}" for c in changes] or ["  (nothing changed yet)"]
        if count > len(changes):
            lines.append(f"  ... and {count - len(changes)} more")
        lines.append(f"the jail's root is the overlay of both: mount -t overlay overlay -o lowerdir={image.rootfs},"
                     f"upperdir={upper},workdir={Path(jail.dir) / 'work'} {jail.rootfs}")
        docker += " && docker diff CONTAINER"
        raw += [f"find {q(upper)} -printf '%y %p\\n'    # c = whiteout device, d = directory, f = file",
                f"getfattr -d -m trusted.overlay {q(upper)}/DIR    # trusted.overlay.opaque=\"y\": an opaque "
                "directory"]
    eq = Equivalents(docker=docker, raw=raw,
                     note="A whiteout is how a layer deletes a file of the layers below it: docker keeps every "
                          "layer read-only and shares it between images, so nothing below can be changed.")
    return Results([StepReport(f"layers {q(ref)}" if ref else "layers", "layers", "host", eq),
                    _listing("\n".join(lines))])


def commands() -> list[Command]:
    def images(ws: Workspace) -> list[str]:
        from jailshell.engine.images.store import ImageStore

        return [i.ref for i in ImageStore().images()]

    return [
        Command("export", cmd_export, "write the jail's root filesystem as one flat tarball, like `docker export` "
                "(no layers, no config)", (Arg("file", "the tarball to write"),)),
        Command("untar", cmd_untar, "unpack a root filesystem tarball into a new directory, safely (never outside "
                "it), listing each entry like `tar -xv`", (Arg("file", "the tarball"), Arg("dir", "a new directory"))),
        Command("save", cmd_save, "write the jail's image and its changes as a two-layer `docker save` tarball "
                "(like docker commit + docker save): deletions become whiteouts",
                (Arg("file", "the tarball to write"), Arg("name", "NAME[:TAG] saved in it", optional=True))),
        Command("import", cmd_import, "import an image (docker export or save tarball, OCI layout) into the store, "
                "applying its layers in order, whiteouts included", (Arg("file", "tarball or OCI layout directory"),
                                                                     Arg("name", "NAME[:TAG]", optional=True)),
                ("load",)),
        Command("layers", cmd_layers, "an image's layers and what each one whited out; with a live jail, also "
                "its own layer (the overlay's upper directory)", (Arg("image", "image", images, optional=True),),
                group="inspect"),
    ]
