"""Importing images made by real producers: umoci (OCI layouts), skopeo
(oci-archive, docker-archive, zstd), GNU tar (docker export style); the CLI."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jailshell.cli import main as cli_main
from jailshell.engine.images.oci import Platform
from jailshell.engine.images.sources import import_file
from jailshell.engine.images.store import ImageStore
from jailshell.engine.images.unpack import Progress
from jailshell.errors import JailshellError
from tests.test_docker_oracle import docker  # noqa: F401 (the fixture: a dockerd of the test's own)

ROOTLESS = [] if os.geteuid() == 0 else ["--rootless"]


def sh(*argv: str | Path) -> str:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True, text=True).stdout


def skopeo(*argv: str | Path) -> None:
    sh("skopeo", "--insecure-policy", "copy", "-q", *argv)


def build_layout(where: Path, rootfs: Path, tag: str = "bb") -> Path:
    """A three-layer OCI image made by umoci from the busybox root filesystem:
    the rootfs, then /etc/motd added, then /bin/vi whited out; with a config."""
    layout = where / "layout"
    sh("umoci", "init", "--layout", layout)
    sh("umoci", "new", "--image", f"{layout}:{tag}")
    sh("umoci", "insert", *ROOTLESS, "--image", f"{layout}:{tag}", rootfs, "/")
    motd = where / "motd"
    motd.write_text("built by umoci\n")
    sh("umoci", "insert", *ROOTLESS, "--image", f"{layout}:{tag}", motd, "/etc/motd")
    sh("umoci", "insert", *ROOTLESS, "--image", f"{layout}:{tag}", "--whiteout", "/bin/vi")
    sh("umoci", "config", *ROOTLESS, "--image", f"{layout}:{tag}", "--config.cmd", "/bin/cat",
       "--config.cmd", "/etc/motd", "--config.env", "GREETING=hello", "--config.workingdir", "/tmp",
       "--config.entrypoint", "/bin/env")
    return layout


@pytest.fixture(scope="module")
def busybox_rootfs() -> Path:
    return ImageStore().resolve().rootfs


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path) -> Path:
    return build_layout(tmp_path_factory.mktemp("umoci"), busybox_rootfs)


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "store")


def assert_busybox_image(image, *, layers: int = 3) -> None:  # type: ignore[no-untyped-def]
    root = image.rootfs
    assert (root / "bin/busybox").is_file()
    assert os.readlink(root / "bin/sh").endswith("busybox")
    assert (root / "etc/motd").read_text() == "built by umoci\n"
    assert not os.path.lexists(root / "bin/vi")  # whited out by the third layer
    assert len(image.layers) == layers
    assert image.config["Cmd"] == ["/bin/cat", "/etc/motd"]
    assert image.config["Entrypoint"] == ["/bin/env"]
    assert image.config["WorkingDir"] == "/tmp"
    assert "GREETING=hello" in image.config["Env"]
    assert image.default_command() == ["/bin/env", "/bin/cat", "/etc/motd"]
    assert image.meta["architecture"] == Platform.host().architecture


def test_oci_layout_directory_from_umoci(layout: Path, store: ImageStore) -> None:
    image = import_file(layout, store=store)
    assert image.ref == "layout:bb"  # the directory's name, the tag saved in the layout
    assert_busybox_image(image)
    assert all(d.startswith("sha256:") for d in image.layers)
    assert image.meta["layer_info"][0]["media_type"].endswith("tar+gzip")


def test_oci_archive_from_skopeo(layout: Path, store: ImageStore, tmp_path: Path) -> None:
    archive = tmp_path / "bb-oci.tar"
    skopeo(f"oci:{layout}:bb", f"oci-archive:{archive}:bb")
    image = import_file(archive, store=store, name="mine:v1")
    assert image.ref == "mine:v1"
    assert_busybox_image(image)


def test_docker_archive_from_skopeo_and_gzipped(layout: Path, store: ImageStore, tmp_path: Path) -> None:
    archive = tmp_path / "save.tar"
    skopeo(f"oci:{layout}:bb", f"docker-archive:{archive}:example/bb:1.0")
    with tarfile.open(archive) as tf:
        assert "manifest.json" in tf.getnames()
    image = import_file(archive, store=store)
    assert image.ref == "example/bb:1.0"  # the RepoTags saved by `docker save`
    assert_busybox_image(image)
    assert image.meta["layer_info"][0]["diff_id"].startswith("sha256:")
    compressed = tmp_path / "save.tar.gz"
    compressed.write_bytes(gzip.compress(archive.read_bytes(), 1))
    image = import_file(compressed, store=store, name="bb:gz")
    assert_busybox_image(image)
    assert "(gzip)" in image.source


def test_zstd_layers(layout: Path, store: ImageStore, tmp_path: Path) -> None:
    zlayout = tmp_path / "zstd"
    skopeo("--dest-compress-format", "zstd", f"oci:{layout}:bb", f"oci:{zlayout}:bb")
    image = import_file(zlayout, store=store, name="bb:zstd")
    assert_busybox_image(image)
    assert all(i["media_type"].endswith("+zstd") for i in image.meta["layer_info"])


def test_flat_export_tarballs(busybox_rootfs: Path, store: ImageStore, tmp_path: Path) -> None:
    # `docker export` writes paths without ./; `tar -C root -c .` writes ./ first: both are flat roots.
    plain = tmp_path / "export.tar"
    sh("tar", "-C", busybox_rootfs, "-cf", plain, *sorted(os.listdir(busybox_rootfs)))
    dotted = tmp_path / "dotted.tar.gz"
    sh("tar", "-C", busybox_rootfs, "-czf", dotted, ".")
    for archive, ref in ((plain, "export:latest"), (dotted, "dotted:latest")):
        image = import_file(archive, store=store)
        assert image.ref == ref
        assert (image.rootfs / "bin/busybox").is_file() and (image.rootfs / "bin/vi").exists()
        assert len(image.layers) == 1 and image.config == {}
        assert image.default_command() == ["/bin/sh"]


def test_multi_platform_layout_picks_this_machine(layout: Path, store: ImageStore, tmp_path: Path) -> None:
    multi = tmp_path / "multi"
    shutil.copytree(layout, multi)
    other_arch = "arm64" if Platform.host().architecture != "arm64" else "amd64"
    sh("umoci", "config", *ROOTLESS, "--image", f"{multi}:bb", "--architecture", other_arch, "--tag", "other",
       "--config.env", "ARCH=other")
    add_index(multi, "all", {"bb": Platform.host(), "other": Platform("linux", other_arch)})
    image = import_file(multi, store=store, ref="all", name="multi:host")
    assert "ARCH=other" not in image.config["Env"]
    image = import_file(multi, store=store, ref="all", name="multi:other",
                        platform=Platform.parse(f"linux/{other_arch}"))
    assert "ARCH=other" in image.config["Env"] and image.meta["architecture"] == other_arch
    assert any("not this machine" in n for n in image.meta["notes"]) is False  # asked for it explicitly
    with pytest.raises(JailshellError, match="no image for linux/s390x"):
        import_file(multi, store=store, ref="all", platform=Platform.parse("linux/s390x"))
    with pytest.raises(JailshellError, match="several images"):
        import_file(multi, store=store)


def add_index(layout: Path, name: str, tags: dict[str, Platform]) -> None:
    """Put an image index over the tagged manifests into the layout, as a
    multi-platform image is stored (what `skopeo copy --all` preserves)."""
    index = json.loads((layout / "index.json").read_text())
    by_tag = {m["annotations"]["org.opencontainers.image.ref.name"]: m for m in index["manifests"]}
    entries = []
    for tag, plat in tags.items():
        desc = {k: v for k, v in by_tag[tag].items() if k != "annotations"}
        desc["platform"] = {"os": plat.os, "architecture": plat.architecture}
        entries.append(desc)
    body = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": entries}).encode()
    digest = hashlib.sha256(body).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(body)
    index["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json",
                               "digest": f"sha256:{digest}", "size": len(body),
                               "annotations": {"org.opencontainers.image.ref.name": name}})
    (layout / "index.json").write_text(json.dumps(index))


# -- refused and interrupted imports leave nothing -------------------------------------------


def no_image_left(store: ImageStore) -> None:
    assert list(store.images()) == []
    assert not list(store.root.glob(".staging-*"))


def test_tampered_blob_in_a_layout_is_refused(layout: Path, store: ImageStore, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(layout, bad)
    manifest = _manifest(bad, "bb")
    blob = bad / "blobs/sha256" / manifest["layers"][1]["digest"].split(":")[1]
    # Same size, different content: a valid gzip stream of another tar.
    blob.write_bytes(_gzip_tar({"etc/motd": b"tampered\n"}))
    with pytest.raises(JailshellError, match="digest mismatch"):
        import_file(bad, store=store)
    no_image_left(store)


def test_tampered_layer_in_a_docker_archive_is_refused(layout: Path, store: ImageStore, tmp_path: Path) -> None:
    archive = tmp_path / "save.tar"
    skopeo(f"oci:{layout}:bb", f"docker-archive:{archive}:bb:1")
    out = tmp_path / "tampered.tar"
    with tarfile.open(archive) as src, tarfile.open(out, "w") as dst:
        manifest = json.load(src.extractfile("manifest.json"))  # type: ignore[arg-type]
        victim = manifest[0]["Layers"][1]
        for m in src.getmembers():
            data = src.extractfile(m) if m.isfile() else None
            if m.name == victim:
                payload = _tar({"etc/motd": b"tampered\n"})
                m.size = len(payload)
                data = io.BytesIO(payload)
            dst.addfile(m, data)
    with pytest.raises(JailshellError, match="digest mismatch"):
        import_file(out, store=store)
    no_image_left(store)


def test_manifest_paths_cannot_leave_the_archive(store: ImageStore, tmp_path: Path) -> None:
    archive = tmp_path / "hostile.tar"
    config = json.dumps({"config": {}, "rootfs": {"type": "layers",
                                                  "diff_ids": ["sha256:" + "0" * 64]}}).encode()
    _write_tar(archive, {
        "manifest.json": json.dumps([{"Config": "c.json", "RepoTags": ["x:1"],
                                      "Layers": ["../../../../etc/passwd"]}]).encode(),
        "c.json": config,
    })
    with pytest.raises(JailshellError, match="outside the archive"):
        import_file(archive, store=store)
    no_image_left(store)


def test_hostile_layer_in_a_real_image_is_refused(layout: Path, store: ImageStore, tmp_path: Path) -> None:
    evil = tmp_path / "evil"
    shutil.copytree(layout, evil)
    payload = evil / "payload"
    payload.write_text("x")
    # a layer made by hand with a '..' entry, inserted by rewriting the manifest through umoci's layout
    blob = _gzip_tar({"../../escape": b"pwned"})
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    diff_id = "sha256:" + hashlib.sha256(gzip.decompress(blob)).hexdigest()
    (evil / "blobs/sha256" / digest[7:]).write_bytes(blob)
    manifest = _manifest(evil, "bb")
    config_path = evil / "blobs/sha256" / manifest["config"]["digest"][7:]
    config = json.loads(config_path.read_text())
    config["rootfs"]["diff_ids"].append(diff_id)
    cbody = json.dumps(config).encode()
    cdigest = hashlib.sha256(cbody).hexdigest()
    (evil / "blobs/sha256" / cdigest).write_bytes(cbody)
    manifest["config"] = {**manifest["config"], "digest": f"sha256:{cdigest}", "size": len(cbody)}
    manifest["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest,
                               "size": len(blob)})
    mbody = json.dumps(manifest).encode()
    mdigest = hashlib.sha256(mbody).hexdigest()
    (evil / "blobs/sha256" / mdigest).write_bytes(mbody)
    index = json.loads((evil / "index.json").read_text())
    index["manifests"][0].update(digest=f"sha256:{mdigest}", size=len(mbody))
    (evil / "index.json").write_text(json.dumps(index))
    with pytest.raises(JailshellError, match=r"layer 4/4 .*refusing entry '../../escape'"):
        import_file(evil, store=store)
    no_image_left(store)
    assert not (tmp_path / "escape").exists() and not (store.root.parent / "escape").exists()


def test_interrupted_import_leaves_no_half_image(layout: Path, store: ImageStore) -> None:
    def stop(i: int, count: int, layer: object) -> None:
        if i == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_file(layout, store=store, progress=Progress(on_layer=stop))
    no_image_left(store)
    # an earlier image of the same name survives a failed re-import untouched
    image = import_file(layout, store=store)
    with pytest.raises(KeyboardInterrupt):
        import_file(layout, store=store, progress=Progress(on_layer=stop))
    assert store.get(image.ref) is not None and (image.rootfs / "etc/motd").exists()


def test_prune_removes_leftovers_of_dead_imports(store: ImageStore) -> None:
    staging = store.staging()
    dead = staging.with_name(".staging-999999999-x")  # no such PID
    staging.rename(dead)
    (dead / "rootfs").mkdir()
    live = store.staging()
    report = store.prune()
    assert not dead.exists() and live.exists()
    assert any("died" in r for r in report.removed)
    live.rmdir()


# -- overlayfs layer directories ------------------------------------------------------------------


@pytest.mark.root
def test_layer_directories_mount_as_the_same_tree(layout: Path, store: ImageStore, tmp_path: Path) -> None:
    from jailshell.engine import syscalls as sc
    from tests.test_rootfs import tree

    image = import_file(layout, store=store, layer_dirs=True)
    lowers = store.lowerdirs(image)
    assert len(lowers) == 3
    # the whiteout of /bin/vi is stored the overlayfs way: a 0/0 character device in the top layer
    vi = os.lstat(lowers[0] / "bin/vi")
    assert os.major(vi.st_rdev) == 0 and os.minor(vi.st_rdev) == 0
    target = tmp_path / "merged"
    target.mkdir()
    sc.mount("overlay", target, "overlay", sc.MS_RDONLY, "lowerdir=" + ":".join(str(d) for d in lowers))
    try:
        assert tree(target) == tree(image.rootfs)
    finally:
        sc.umount2(target, sc.MNT_DETACH)
    # with a writable upper, as a jail's root: writes and deletions go to the upper only
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    layers_before = [tree(d) for d in lowers]
    data = store.overlay_data(image, upper, work)
    assert data.startswith(f"lowerdir={lowers[0]}:{lowers[1]}:{lowers[2]},upperdir=")
    sc.mount("overlay", target, "overlay", 0, data)
    try:
        (target / "etc/motd").write_text("changed\n")
        (target / "bin/busybox").unlink()
        assert not (target / "bin/vi").exists()
    finally:
        sc.umount2(target, sc.MNT_DETACH)
    assert (upper / "etc/motd").read_text() == "changed\n"
    assert os.lstat(upper / "bin/busybox").st_rdev == os.makedev(0, 0)  # overlayfs's own whiteout
    assert [tree(d) for d in lowers] == layers_before
    shutil.rmtree(upper)
    shutil.rmtree(work)
    # an image stored flattened only: its root is the one lowerdir
    flat = import_file(layout, store=store, name="flat:1")
    assert store.overlay_data(flat, upper, work).startswith(f"lowerdir={flat.rootfs},upperdir=")
    # the layers are shared by digest and pruned only when no image uses them
    assert store.prune().removed == []
    store.remove(image.ref)
    report = store.prune()
    assert sum(1 for r in report.removed if r.startswith("layer directory")) == 3


# -- the command line ----------------------------------------------------------------------------------


@pytest.fixture
def cli_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ImageStore]:
    monkeypatch.setenv("JAILSHELL_DATA_DIR", str(tmp_path / "data"))
    yield ImageStore()


def test_cli_import_ls_inspect_export_rm_prune(layout: Path, cli_store: ImageStore, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["image", "import", str(layout), "--name", "demo:1", "-v"]) == 0
    out = capsys.readouterr()
    assert "demo:1: 3 layer(s)" in out.out
    assert "/bin/busybox" in out.out and "-> busybox" in out.out  # the tar -tv listing scrolls by
    assert "whiteout: removes /bin/vi" in out.out
    assert "layer 3/3" in out.err

    assert cli_main(["image", "ls"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["NAME", "TAG", "LAYERS", "SIZE", "SOURCE"]
    assert any(line.split()[:3] == ["demo", "1", "3"] for line in out.splitlines())

    assert cli_main(["image", "inspect", "demo:1"]) == 0
    out = capsys.readouterr().out
    assert 'Entrypoint: ["/bin/env"]' in out and 'Cmd:        ["/bin/cat", "/etc/motd"]' in out
    assert "WorkingDir: /tmp" in out and "GREETING=hello" in out and "layers (3, bottom first)" in out
    assert "whiteout: removes /bin/vi" in out  # what the third layer took away

    exported = tmp_path / "demo.tar"
    assert cli_main(["image", "export", "demo:1", "-o", str(exported)]) == 0
    with tarfile.open(exported) as tf:
        names = tf.getnames()
    assert "etc/motd" in names and "bin/busybox" in names and "bin/vi" not in names
    # and the export imports back as a flat root filesystem
    assert cli_main(["image", "import", str(exported), "-q"]) == 0
    assert capsys.readouterr().out.strip() == "demo:latest"

    assert cli_main(["image", "rm", "demo:1", "demo:latest"]) == 0
    assert cli_main(["image", "rm", "demo:1"]) == 1
    assert "unknown image" in capsys.readouterr().err
    assert cli_main(["image", "prune"]) == 0
    assert cli_main(["image", "import", str(tmp_path / "missing.tar")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_cli_refuses_bad_names(layout: Path, cli_store: ImageStore, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["image", "import", str(layout), "--name", "../evil:1"]) == 2
    assert cli_main(["image", "inspect", ".blobs:x"]) == 2
    assert "invalid image reference" in capsys.readouterr().err


# -- helpers -----------------------------------------------------------------------------------------


def _manifest(layout: Path, tag: str) -> dict:  # type: ignore[type-arg]
    index = json.loads((layout / "index.json").read_text())
    desc = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag)
    return json.loads((layout / "blobs/sha256" / desc["digest"][7:]).read_text())  # type: ignore[no-any-return]


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def _gzip_tar(files: dict[str, bytes]) -> bytes:
    return gzip.compress(_tar(files))


def _write_tar(path: Path, files: dict[str, bytes]) -> None:
    path.write_bytes(_tar(files))


# -- the REPL commands: export, untar, save, import, layers ------------------------------------------


@pytest.fixture
def ws(tmp_path: Path, cli_store: ImageStore) -> Iterator[Any]:
    from jailshell.commands.builtin import build_workspace
    from jailshell.context import AppContext

    w = build_workspace(AppContext.for_streams(io.StringIO(), width=100, state_dir=tmp_path / "state"),
                        with_course=False)
    yield w
    w.close()


def in_jail(ws: Any, *lines: str) -> None:
    """Run exec lines in the jail, chrooted first: before chroot, `exec` sees the host's files."""
    if ws.session.jail is None or ws.session.jail.state.root_mode == "host":
        ws.run_line("chroot")
    assert ws.session.jail.state.root_mode != "host"
    for line in lines:
        ws.run_line(line)


def _items(result: Any) -> list[Any]:
    from jailshell.commands.results import Results

    return [x for item in result.items for x in _items(item)] if isinstance(result, Results) else [result]


@pytest.mark.root
def test_repl_export_then_untar_gives_the_jails_root(ws: Any, tmp_path: Path) -> None:
    from jailshell.commands.results import Message, StepReport

    in_jail(ws, "exec sh -c 'echo made in the jail > /root/note'")
    report, listing, done = _items(ws.run_line(f"export {tmp_path}/jail.tar"))
    assert isinstance(report, StepReport) and isinstance(listing, Message) and isinstance(done, Message)
    assert report.equivalents.docker == f"docker export -o {tmp_path}/jail.tar CONTAINER"
    assert report.equivalents.raw[0].startswith("tar -C ") and "--numeric-owner -cf" in report.equivalents.raw[0]
    assert "/bin/busybox" in listing.text and "more entries" in listing.text  # tar -tv, scrolling
    with tarfile.open(tmp_path / "jail.tar") as tf:
        assert tf.extractfile("root/note").read() == b"made in the jail\n"  # type: ignore[union-attr]

    report, listing, done = _items(ws.run_line(f"untar {tmp_path}/jail.tar {tmp_path}/root"))
    assert (tmp_path / "root/root/note").read_text() == "made in the jail\n"
    assert os.readlink(tmp_path / "root/bin/sh").endswith("busybox")
    assert report.equivalents.raw == [f"mkdir -p {tmp_path}/root",
                                      f"tar -C {tmp_path}/root --numeric-owner -xpf {tmp_path}/jail.tar"]
    assert "unpacked into" in done.text
    with pytest.raises(JailshellError, match="not an empty directory"):
        ws.run_line(f"untar {tmp_path}/jail.tar {tmp_path}/root")


def test_repl_untar_refuses_a_hostile_tarball_and_leaves_nothing(ws: Any, tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tf:
        for name, data in (("etc/ok", b"fine"), ("../outside", b"pwned")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    with pytest.raises(JailshellError, match=r"refusing entry '../outside'"):
        ws.run_line(f"untar {evil} {tmp_path}/root")
    assert not (tmp_path / "root").exists() and not (tmp_path / "outside").exists()


@pytest.mark.root
def test_repl_save_turns_the_jails_deletions_into_whiteouts(ws: Any, tmp_path: Path) -> None:
    """The overlay's upper dir becomes a layer: a deleted file (0/0 device) a
    .wh. file, a replaced directory (opaque) a .wh..wh..opq; imported back,
    the layers give the jail's tree."""
    from tests.test_rootfs import tree

    in_jail(ws, "exec rm /bin/vi", "exec sh -c 'rm -rf /etc && mkdir /etc && echo new > /etc/motd && echo hi > /hello'")
    jail = ws.session.jail
    report, _listing, done = _items(ws.run_line(f"save {tmp_path}/j.tar demo:2"))
    assert "2 layers" in done.text and "whiteout" in done.text
    assert report.equivalents.docker.startswith("docker commit CONTAINER demo:2 && docker save -o")
    with tarfile.open(tmp_path / "j.tar") as tf:
        manifest = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
        assert manifest[0]["RepoTags"] == ["demo:2"] and len(manifest[0]["Layers"]) == 2
        with tarfile.open(fileobj=tf.extractfile(manifest[0]["Layers"][1])) as top:  # type: ignore[arg-type]
            names = top.getnames()
    assert "bin/.wh.vi" in names and "etc/.wh..wh..opq" in names and "etc/motd" in names and "hello" in names

    report, listing, done = _items(ws.run_line(f"import {tmp_path}/j.tar"))
    assert "# layer 2/2" in listing.text and "whiteout: removes /bin/vi" in listing.text
    assert "whiteout: hides the lower layers' contents of /etc" in listing.text
    assert report.equivalents.docker == f"docker load -i {tmp_path}/j.tar"
    assert any(line.startswith("rm -rf /tmp/demo-root/bin/vi") for line in report.equivalents.raw)
    image = ImageStore().get("demo:2")
    assert image is not None and len(image.layers) == 2
    assert tree(image.rootfs) == tree(jail.rootfs)  # the jail's tree, from its two layers
    assert not (image.rootfs / "etc/passwd").exists() and (image.rootfs / "etc/motd").read_text() == "new\n"

    report, listing = _items(ws.run_line("layers demo:2"))
    out = listing.text
    assert "layers, bottom first:" in out and "whiteout: removes /bin/vi" in out and "empties /etc/" in out
    report, listing = _items(ws.run_line("layers"))  # the jail's own image, and its upper layer
    out = listing.text
    assert "D /bin/vi" in out and "C /etc/" in out and "A /hello" in out and "lowerdir=" in out
    assert report.equivalents.docker.endswith("docker diff CONTAINER")


# -- a real Docker engine: docker export, docker save, and docker load of jailshell's save -----------------


def _without_docker_runtime_files(t: dict[str, str]) -> dict[str, str]:
    """docker export also writes what the engine put in the container for its
    run (/.dockerenv, /etc/hosts, ... in its init layer); docker commit leaves them out."""
    runtime = {".dockerenv", "etc/hostname", "etc/hosts", "etc/resolv.conf", "etc/mtab"}
    return {k: v for k, v in t.items() if k not in runtime and not k.startswith(("dev/", "proc/", "sys/"))}


@pytest.mark.docker
@pytest.mark.root
def test_real_docker_export_and_save_import_as_the_same_tree(docker: Any, store: ImageStore,  # noqa: F811
                                                             tmp_path: Path) -> None:
    from tests.test_docker_oracle import IMAGE
    from tests.test_rootfs import tree

    docker("run", "--name", "jsh-img", "--network", "none", IMAGE, "sh", "-c",
           "rm /bin/vi && rm -rf /usr && mkdir /usr && echo docker > /usr/motd && ln -s /usr/motd /motd")
    try:
        docker("commit", "-c", 'CMD ["/bin/cat", "/motd"]', "jsh-img", "jsh-img:2")
        docker("export", "-o", str(tmp_path / "export.tar"), "jsh-img")
        docker("save", "-o", str(tmp_path / "save.tar"), "jsh-img:2")
    finally:
        docker("rm", "-f", "jsh-img", check=False)
    flat = import_file(tmp_path / "export.tar", store=store)
    assert flat.ref == "export:latest" and len(flat.layers) == 1 and flat.config == {}
    saved = import_file(tmp_path / "save.tar", store=store)
    assert saved.ref == "jsh-img:2" and len(saved.layers) == 2  # the image's layer and the container's
    assert saved.config["Cmd"] == ["/bin/cat", "/motd"]
    top = saved.meta["layer_info"][1]
    assert "/bin/vi" in top["removed"] and "/usr/" in top["removed"]  # docker's whiteouts, applied
    for image in (flat, saved):
        assert not os.path.lexists(image.rootfs / "bin/vi") and os.listdir(image.rootfs / "usr") == ["motd"]
        assert (image.rootfs / "usr/motd").read_text() == "docker\n"
        assert os.readlink(image.rootfs / "motd") == "/usr/motd"  # absolute symlinks are kept as they are
    assert _without_docker_runtime_files(tree(flat.rootfs)) == _without_docker_runtime_files(tree(saved.rootfs))
    docker("rmi", "jsh-img:2", check=False)


@pytest.mark.docker
@pytest.mark.root
def test_docker_loads_what_jailshell_saves(docker: Any, ws: Any, tmp_path: Path) -> None:  # noqa: F811
    in_jail(ws, "exec rm /bin/vi", "exec sh -c 'echo from jailshell > /hello'")
    ws.run_line(f"save {tmp_path}/j.tar jsh-saved:1")
    assert "Loaded image: jsh-saved:1" in docker("load", "-i", str(tmp_path / "j.tar")).stdout
    try:
        out = docker("run", "--rm", "--network", "none", "jsh-saved:1", "sh", "-c",
                     "cat /hello; test -e /bin/vi || echo vi is gone").stdout
        assert out.splitlines() == ["from jailshell", "vi is gone"]
    finally:
        docker("rmi", "jsh-saved:1", check=False)


def test_docker_25_save_form_is_read_as_an_oci_layout(layout: Path, store: ImageStore, tmp_path: Path) -> None:
    """Docker 25 and later `docker save` an OCI layout with a manifest.json
    beside it (for older `docker load`), the name in containerd's annotation."""
    archive = tmp_path / "docker25.tar"
    manifest = _manifest(layout, "bb")
    index = json.loads((layout / "index.json").read_text())
    index["manifests"][0]["annotations"] = {"io.containerd.image.name": "docker.io/library/bb25:1.0",
                                            "org.opencontainers.image.ref.name": "1.0"}
    files = {"oci-layout": (layout / "oci-layout").read_bytes(), "index.json": json.dumps(index).encode(),
             "manifest.json": json.dumps([{"Config": "blobs/sha256/" + manifest["config"]["digest"][7:],
                                           "RepoTags": ["bb25:1.0"],
                                           "Layers": ["blobs/sha256/" + d["digest"][7:] for d in manifest["layers"]]}
                                          ]).encode()}
    for blob in (layout / "blobs/sha256").iterdir():
        files[f"blobs/sha256/{blob.name}"] = blob.read_bytes()
    _write_tar(archive, files)
    image = import_file(archive, store=store)
    assert image.ref == "bb25:1.0" and image.source.startswith("OCI layout")
    assert_busybox_image(image)
