"""Images kept layer by layer (`image import --layers`) mounted as the
overlay's lowerdirs, top first, in the REPL's jail, in `jailshell run` (the
full path and the plain one) and in the shown raw command; and docker's
Entrypoint + Cmd rule in every run path."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jailshell.engine import dockerline, equivalents, runfast
from jailshell.engine.images.sources import import_file
from jailshell.engine.images.store import Image, ImageStore
from jailshell.engine.jail import Jail
from jailshell.errors import InvalidInput, JailshellError
from tests.test_images import ROOTLESS, build_layout, sh, skopeo
from tests.test_rootfs import tree

JAILSHELL = str(Path(sys.executable).parent / "jailshell")


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """umoci's three layers: busybox, + /etc/motd, then /bin/vi whited out."""
    return build_layout(tmp_path_factory.mktemp("umoci"), ImageStore().resolve().rootfs)


def expected_lowers(store: ImageStore, image: Image) -> list[str]:
    """The layer directories image.json lists (bottom first), top first, as overlayfs stacks them."""
    return [str(store.root / rel) for rel in reversed(image.meta["layer_dirs"])]


def overlay_lowers(mountinfo: str, mount_point: str) -> list[str]:
    """The lowerdir list of the overlay mounted at mount_point, from a mountinfo text."""
    found = None
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields = right.split()
        if left.split()[4] == mount_point and fields[0] == "overlay":
            opts = dict(o.partition("=")[::2] for o in fields[2].split(","))
            found = opts["lowerdir"].split(":")
    assert found is not None, f"no overlay on {mount_point}"
    return found


def is_whiteout(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


@pytest.fixture
def layered(layout: Path) -> Iterator[tuple[ImageStore, Image]]:
    store = ImageStore()  # the session's data dir: `jailshell run` subprocesses see it too
    image = import_file(layout, store=store, name="layered-test:1", layer_dirs=True)
    yield store, image
    store.remove(image.ref)
    store.prune()


@pytest.mark.root
def test_jail_mounts_the_layers_top_first_and_writes_only_its_upper(layered: tuple[ImageStore, Image],
                                                                    tmp_path: Path) -> None:
    store, image = layered
    lowers = expected_lowers(store, image)
    assert len(lowers) == 3
    layers_before = [tree(Path(d)) for d in lowers]
    with Jail.create(image.ref, store=store) as jail:
        assert jail.rootfs_mode == "overlay"
        with open(f"/proc/{jail.pid}/mountinfo") as fh:
            assert overlay_lowers(fh.read(), str(jail.rootfs)) == lowers
        jail.chroot()
        seen = jail.exec(["/bin/sh", "-c", "test -e /bin/vi && echo vi; cat /etc/motd"])
        assert seen.stdout == "built by umoci\n"  # the third layer's whiteout hides the first layer's /bin/vi
        done = jail.exec(["/bin/sh", "-c", "echo mine > /newfile && echo changed > /etc/motd && rm /bin/ls"])
        assert done.returncode == 0, done.stderr
        upper = jail.dir / "upper"
        assert (upper / "newfile").read_text() == "mine\n"
        assert (upper / "etc/motd").read_text() == "changed\n"
        assert is_whiteout(upper / "bin/ls")
        assert [tree(Path(d)) for d in lowers] == layers_before  # no layer was written to

        # The shown command is the one the engine ran; by hand, on fresh directories, it gives the image's tree.
        shown = [c for c in equivalents.for_create(jail).raw if c.startswith("mount -t overlay")]
        assert len(shown) == 1 and f"lowerdir={':'.join(lowers)},upperdir={jail.dir}/upper," in shown[0]
        fresh = tmp_path / "byhand"
        for sub in ("rootfs", "upper", "work"):
            (fresh / sub).mkdir(parents=True)
        cmd = shown[0].replace(str(jail.dir), str(fresh))
        subprocess.run(cmd, shell=True, check=True)
        try:
            assert tree(fresh / "rootfs") == tree(image.rootfs)
            assert not os.path.lexists(fresh / "rootfs/bin/vi")
        finally:
            subprocess.run(["umount", str(fresh / "rootfs")], check=True)
    assert [tree(Path(d)) for d in lowers] == layers_before


@pytest.mark.root
def test_flattened_image_is_the_one_lowerdir(layout: Path, tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    image = import_file(layout, store=store, name="flat:1")
    with Jail.create(image.ref, store=store) as jail:
        with open(f"/proc/{jail.pid}/mountinfo") as fh:
            assert overlay_lowers(fh.read(), str(jail.rootfs)) == [str(image.rootfs)]
        shown = next(c for c in equivalents.for_create(jail).raw if c.startswith("mount -t overlay"))
        assert f"lowerdir={image.rootfs},upperdir=" in shown


@pytest.mark.root
def test_prune_keeps_layers_a_mounted_jail_uses(layout: Path, tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    image = import_file(layout, store=store, name="gone:1", layer_dirs=True)
    lowers = expected_lowers(store, image)
    with Jail.create(image.ref, store=store) as jail:
        store.remove(image.ref)
        assert store.prune().removed == []  # still the jail's lowerdirs
        assert all(os.path.isdir(d) for d in lowers)
        assert (jail.rootfs / "etc/motd").read_text() == "built by umoci\n"
    # an import in progress (a live process's staging dir) may be about to name them: kept too
    staging = store.staging()
    assert store.prune().removed == []
    staging.rmdir()
    assert sum(1 for r in store.prune().removed if r.startswith("layer directory")) == 3


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([JAILSHELL, "run", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


@pytest.mark.root
def test_run_image_mounts_the_layers(layered: tuple[ImageStore, Image]) -> None:
    store, image = layered
    lowers = expected_lowers(store, image)
    layers_before = [tree(Path(d)) for d in lowers]
    script = ("cat /proc/self/mountinfo; echo ---; test -e /bin/vi && echo vi; cat /etc/motd; "
              "echo mine > /newfile; rm /bin/ls")
    done = run_cli("--image", image.ref, "--entrypoint", "/bin/sh", "--", "-c", script)
    assert done.returncode == 0, done.stderr
    mountinfo, _, rest = done.stdout.partition("---\n")
    assert overlay_lowers(mountinfo, "/") == lowers
    assert rest == "built by umoci\n"
    cid = done.stderr.split("container ")[1].split()[0]  # kept (no --rm): its upper stays
    kept = store.root.parent / "containers" / cid
    try:
        assert (kept / "upper/newfile").read_text() == "mine\n"
        assert is_whiteout(kept / "upper/bin/ls")
    finally:
        shutil.rmtree(kept)
    assert [tree(Path(d)) for d in lowers] == layers_before


@pytest.mark.root
def test_plain_run_reads_the_layers_from_image_json(layout: Path, tmp_path: Path) -> None:
    # A data dir of its own whose default image is kept in layers: the plain path (runfast.run_plain) runs it.
    env = {"JAILSHELL_DATA_DIR": str(tmp_path / "data"), "JAILSHELL_RUN_DIR": str(tmp_path / "run")}
    store = ImageStore(tmp_path / "data/images")
    image = import_file(layout, store=store, name="busybox:latest", layer_dirs=True)
    assert runfast.plain_enough(image=None, rm=True, userns=False, volumes=[], network="none", publish=[], links=[],
                                memory=None, pids_limit=None, cpus=None)
    done = run_cli("--rm", "--timings", "--entrypoint", "/bin/cat", "--", "/proc/self/mountinfo", env=env)
    assert done.returncode == 0, done.stderr
    assert overlay_lowers(done.stdout, "/") == expected_lowers(store, image)
    assert os.listdir(tmp_path / "run/containers") == []


@pytest.fixture(scope="module")
def echo_image(layout: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    """An image whose config says Entrypoint ["/bin/echo", "hi"], Cmd ["there"], from an OCI tarball."""
    where = tmp_path_factory.mktemp("echo")
    copy = where / "layout"
    shutil.copytree(layout, copy)
    sh("umoci", "config", *ROOTLESS, "--image", f"{copy}:bb", "--tag", "echo", "--clear=config.entrypoint",
       "--clear=config.cmd", "--config.entrypoint", "/bin/echo", "--config.entrypoint", "hi", "--config.cmd", "there")
    archive = where / "echo.tar"
    skopeo(f"oci:{copy}:echo", f"oci-archive:{archive}:echo")
    store = ImageStore()
    image = import_file(archive, store=store, name="echo-test:1")
    assert image.config["Entrypoint"] == ["/bin/echo", "hi"] and image.config["Cmd"] == ["there"]
    yield image
    store.remove(image.ref)


def test_the_rule_is_docker_s(echo_image: Image) -> None:
    assert echo_image.command() == ["/bin/echo", "hi", "there"]
    assert echo_image.command(["you"]) == ["/bin/echo", "hi", "you"]
    assert echo_image.command(["x"], "/bin/echo") == ["/bin/echo", "x"]
    assert echo_image.command([], "/bin/date") == ["/bin/date"]  # --entrypoint drops the image's Cmd
    assert echo_image.command(["ls", "/"], "") == ["ls", "/"]  # "" removes the entrypoint
    with pytest.raises(InvalidInput):
        echo_image.command([], "")
    # docker run/create in the REPL: the same rule, and the plan's exec step shows what will run
    facts = dockerline.ImageFacts.from_image(echo_image)
    for line, argv in (("run echo-test:1", ["/bin/echo", "hi", "there"]),
                       ("run echo-test:1 you", ["/bin/echo", "hi", "you"]),
                       ("run --entrypoint /bin/echo echo-test:1 x", ["/bin/echo", "x"])):
        spec = dockerline.parse(line).spec
        assert spec is not None
        assert dockerline.command_of(spec, facts) == argv
        layout = dockerline.Layout("0123456789ab", Path("/data/c/x"), Path("/run/c/x"))
        exec_step = dockerline.plan_for(spec, layout, facts).step("exec")
        assert exec_step is not None and exec_step.params["argv"] == argv
        assert exec_step.raw[-1].endswith(" ".join(argv))


def test_fast_parser_takes_entrypoint() -> None:
    from jailshell.engine import cli_run

    args = cli_run.parse_fast(["--rm", "--entrypoint", "/bin/echo", "--", "x"])
    assert args is not None and args.entrypoint == "/bin/echo" and args.cmd == ["--", "x"]
    args = cli_run.parse_fast(["--entrypoint=", "ls"])
    assert args is not None and args.entrypoint == "" and args.cmd == ["ls"]


@pytest.mark.root
def test_run_puts_the_entrypoint_first(echo_image: Image) -> None:
    ref = echo_image.ref
    assert run_cli("--rm", "--image", ref).stdout == "hi there\n"
    assert run_cli("--rm", "--image", ref, "--", "you").stdout == "hi you\n"
    assert run_cli("--rm", "--entrypoint", "/bin/echo", "--image", ref, "--", "x").stdout == "x\n"
    assert run_cli("--rm", "--entrypoint=", "--image", ref, "--", "echo", "plain").stdout == "plain\n"
    bad = run_cli("--rm", "--entrypoint=", "--image", ref)
    assert bad.returncode != 0 and "no command to run" in bad.stderr and "Traceback" not in bad.stderr
    # the plain path (default image) takes --entrypoint too
    assert run_cli("--rm", "--entrypoint", "/bin/echo", "--", "fast").stdout == "fast\n"


@pytest.mark.root
def test_an_image_mounted_flat_cannot_be_removed(layout: Path, tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    image = import_file(layout, store=store, name="busy:1")
    with Jail.create(image.ref, store=store):
        with pytest.raises(JailshellError, match="in use"):
            store.remove(image.ref)
        assert (image.rootfs / "bin/busybox").is_file()
    store.remove(image.ref)
    assert store.get(image.ref) is None
