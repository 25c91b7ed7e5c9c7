"""Reading docker command lines, and the plan `docker run` unrolls into.

Parsing needs no privileges; the plan is checked against the very
parameters the engine executes with (PlanStep.params)."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from jailshell.engine import dockerline as d
from jailshell.errors import InvalidInput

JAILSHELL = [sys.executable, "-m", "jailshell"]
ROOT = os.geteuid() == 0


def parse(line: str) -> d.DockerCommand:
    return d.parse(line)


def test_flags_before_the_image_are_docker_s_and_after_it_the_command_s() -> None:
    c = parse("docker run -it --rm --name web -e A=1 --env=B=2 -eC=3 -w /srv -h box busybox ls -l -a")
    assert c.verb == "run"
    spec = c.spec
    assert spec is not None
    assert (spec.interactive, spec.tty, spec.detach, spec.run.rm) == (True, True, False, True)
    assert spec.run.name == "web" and spec.run.hostname == "box" and spec.run.workdir == "/srv"
    assert spec.run.env == ["A=1", "B=2", "C=3"]
    assert spec.run.image == "busybox"
    assert spec.run.argv == ["ls", "-l", "-a"]  # -l and -a are ls's, not docker's


def test_clustered_short_flags_and_values_attached() -> None:
    spec = parse("run -dit -p8080:80 -m=64m busybox").spec
    assert spec is not None
    assert (spec.detach, spec.interactive, spec.tty) == (True, True, True)
    assert spec.memory == 64 << 20
    assert [(p.host_port, p.container_port) for p in spec.publish] == [(8080, 80)]


def test_every_flag_of_the_issue_is_read() -> None:
    spec = parse("run -i -t -d --rm --name n --hostname h -e K=V -w /w -v /tmp:/data:ro --memory 1g "
                 "--pids-limit 50 --cpus 0.5 --network bridge -p 127.0.0.1:9000:90 --link other:db "
                 "--user 1000:1000 busybox true").spec
    assert spec is not None
    assert spec.run.volumes == [("/tmp", "/data", True)]
    assert (spec.memory, spec.pids_limit, spec.cpus) == (1 << 30, 50, 0.5)
    assert (spec.run.memory, spec.run.pids_limit, spec.run.cpus) == ("1g", "50", "0.5")  # RunSpec: as given
    assert spec.network == "bridge"
    assert (spec.publish[0].host_ip, spec.publish[0].host_port, spec.publish[0].container_port) == \
        ("127.0.0.1", 9000, 90)
    assert spec.links == [("other", "db")]
    assert spec.user == "1000:1000"


def test_a_port_without_host_port_gets_a_free_one_now() -> None:
    spec = parse("run -p 80 busybox").spec
    assert spec is not None
    assert spec.publish[0].host_port is not None and spec.publish[0].host_port > 0


def test_env_name_alone_takes_this_side_s_value_or_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JSH_T_SET", "yes")
    monkeypatch.delenv("JSH_T_UNSET", raising=False)
    spec = parse("run -e JSH_T_SET -e JSH_T_UNSET busybox").spec
    assert spec is not None and spec.run.env == ["JSH_T_SET=yes"]


@pytest.mark.parametrize(("line", "message"), [
    ("run --privileged busybox", "flag --privileged is not supported by jailshell (jailshell never hands"),
    ("run --cap-add NET_ADMIN busybox", "flag --cap-add is not supported"),
    ("run --init busybox", "flag --init is not supported"),
    ("run -x busybox", "docker run: flag -x is not supported by jailshell"),
    ("run --nmae web busybox", "did you mean --name?"),
    ("ps -l", "docker ps: flag -l is not supported by jailshell"),
    ("run", "docker run needs IMAGE [COMMAND] [ARG...]"),
    ("run --name", "flag --name needs a value (NAME)"),
    ("run --rm=maybe busybox", "--rm takes true or false, not 'maybe'"),
    ("run --name 'bad name' busybox", "invalid container name 'bad name'"),
    ("run -w relative busybox", "the working directory 'relative' is not absolute"),
    ("run -v data:/data busybox", "named volumes are not supported"),
    ("run -v /no/such/dir:/x busybox", "volume source /no/such/dir does not exist"),
    ("run -m 1m busybox", "--memory 1m: below the smallest limit docker allows (6m)"),
    ("run -m lots busybox", "--memory lots: not a size"),
    ("run --cpus x busybox", "--cpus x: not a number of CPUs"),
    ("run --cpus 100000 busybox", "--cpus 100000: this machine has only"),
    ("run --pids-limit many busybox", "invalid --pids-limit 'many'"),
    ("run -p 99999:80 busybox", "invalid port mapping '99999:80'"),
    ("run -p 53/udp busybox", "jailshell publishes tcp ports only"),
    ("run --network container:web busybox", "--network container:web is not supported"),
    ("run --network none -p 80:80 busybox", "-p needs a network the container is on"),
    ("run --link busybox", "docker run needs IMAGE"),
    ("run -e =x busybox", "invalid environment variable '=x'"),
    ("stop -t soon web", "invalid stop timeout 'soon'"),
    ("kill -s NOPE web", "invalid signal 'NOPE'"),
    ("logs --tail x web", "invalid --tail 'x'"),
    ("exec -d -it web sh", "exec -d cannot be combined with -i or -t"),
    ("exec web", "docker exec needs CONTAINER COMMAND"),
    ("logs a b", "docker logs: unexpected 'b'"),
    ("frobnicate", "docker frobnicate: not a command jailshell implements"),
    ("pss", "did you mean 'ps'?"),
    ("container frob", "docker container frob is not supported by jailshell"),
    ("-H tcp://x ps", "global flag -H is not supported"),
    ("explain docker ps", "explain shows the plan of `docker run` or `docker create`"),
    ("", "docker: which command?"),
    ("run 'unclosed", "cannot read that line"),
])
def test_errors_are_one_clear_line(line: str, message: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse(line)
    assert message in info.value.message
    assert "\n" not in info.value.message


def test_aliases_of_docker_s_verbs() -> None:
    assert parse("container ls -a").verb == "ps"
    assert parse("docker images").verb == "image-ls"
    assert parse("image ls").verb == "image-ls"
    assert parse("container prune -f").verb == "container-prune"
    assert parse("system prune -f").opts["force"] is True
    assert parse("container rm -f a b").args == ["a", "b"]
    assert parse("run --help").verb == "help" and parse("run --help").args == ["run"]
    assert parse("--version").verb == "version"


def test_signals_by_name_and_number() -> None:
    assert d.signal_number("TERM") == d.signal_number("SIGTERM") == d.signal_number("15") == signal.SIGTERM
    assert d.signal_number("kill") == signal.SIGKILL


def test_spec_survives_the_record_round_trip() -> None:
    spec = parse("run -it -v /tmp:/x:ro -p 8080:80 --link a:b -m 64m -u 5 busybox sh -c 'echo hi'").spec
    assert spec is not None
    back = d.ContainerSpec.from_dict(spec.to_dict())
    assert back == spec


# --- the plan -------------------------------------------------------------------------------------


def plan_of(line: str, cid: str = "0123456789ab") -> d.Plan:
    c = parse(line)
    assert c.spec is not None
    image = d.ImageFacts("busybox:latest", "/images/busybox/rootfs", ("PATH=/bin",), ("/bin/sh",), "/")
    return d.plan_for(c.spec, d.Layout(cid, Path("/data/c") / cid, Path("/run/c") / cid), image)


def test_the_plan_is_numbered_steps_in_runc_s_order() -> None:
    keys = [s.key for s in plan_of("run --network none busybox true").steps]
    expected = ["image", "rootfs", *(["cgroup"] if d.cgroups_usable() else []), "unshare", "hostname", "network",
                "mounts", "pivot_root", "mask", "exec"]
    assert keys == expected
    text = plan_of("run --network none busybox true").render()
    assert text.splitlines()[0].startswith(" 1. image busybox:latest")
    assert "pivot_root . ." in text and "unshare --mount --uts --ipc --net --pid --cgroup --fork sh" in text


def test_raw_commands_come_from_the_parameters_the_engine_uses() -> None:
    plan = plan_of("run --network none -h web -e X=1 -w /srv -v /tmp:/data:ro busybox echo hi", "aaaabbbbcccc")
    by = {s.key: s for s in plan.steps}
    rootfs = by["rootfs"].params["target"]
    assert rootfs == "/run/c/aaaabbbbcccc/rootfs"
    assert f"lowerdir={by['rootfs'].params['lower']},upperdir={by['rootfs'].params['upper']}" in by["rootfs"].raw[1]
    assert by["hostname"].params == {"name": "web"} and by["hostname"].raw == ("hostname web",)
    assert by["unshare"].params["kinds"] == ["mnt", "uts", "ipc", "net", "pid", "cgroup"]
    assert by["volumes"].params["volumes"] == [["/tmp", "/data", True]]
    assert f"mount --bind /tmp {rootfs}/data" in by["volumes"].raw
    assert f"mount -o remount,bind,ro {rootfs}/data" in by["volumes"].raw
    ex = by["exec"].params
    assert ex["argv"] == ["echo", "hi"] and ex["cwd"] == "/srv"
    assert ex["env"] == ["PATH=/bin", "HOSTNAME=web", "X=1", "HOME=/root"]  # HOME last, as runc adds it
    assert by["exec"].raw[-1] == "exec env -i PATH=/bin HOSTNAME=web X=1 HOME=/root echo hi"
    for name in by["mounts"].params["names"]:
        assert any(f" {rootfs}{d.steps.SPECIAL_MOUNTS[name].target}" in r for r in by["mounts"].raw)


def test_docker_defaults_hostname_is_the_short_id_and_network_bridge() -> None:
    plan = plan_of("run busybox", "feedfacecafe")
    by = {s.key: s for s in plan.steps}
    assert by["hostname"].params["name"] == "feedfacecafe"
    assert by["network"].params["mode"] == "bridge"
    assert by["exec"].params["argv"] == ["/bin/sh"]  # the image's Cmd


def test_network_host_shares_the_host_s_network_namespace() -> None:
    plan = plan_of("run --network host busybox")
    assert "net" not in plan.step("unshare").params["kinds"]  # type: ignore[union-attr]
    assert plan.step("network") is None


@pytest.mark.skipif(not ROOT, reason="the cgroup step is planned where jailshell can make cgroups: as root")
def test_limits_become_cgroup_writes_of_this_machine_s_files() -> None:
    plan = plan_of("run -m 64m --pids-limit 20 --cpus 0.5 busybox", "0000aaaa1111")
    step = plan.step("cgroup")
    assert step is not None and step.params["limits"] == {"memory": 64 << 20, "pids": 20, "cpus": 0.5}
    writes = [r for r in step.raw if r.startswith("echo ") and "cgroup.procs" not in r]
    assert any(r.startswith("echo 67108864 > ") and "0000aaaa1111" in r for r in writes)
    assert any(r.startswith("echo 20 > ") and r.endswith("pids.max") for r in writes)
    assert any(f"echo {d.PID_PLACEHOLDER} > " in r for r in step.raw)
    assert "--memory 64m" in step.docker


def test_pid_placeholder_is_filled_in_once_the_process_exists() -> None:
    step = d.PlanStep("x", "t", "w", (f"echo {d.PID_PLACEHOLDER} > f",), "host", "")
    assert step.raw_for(None) == [f"echo {d.PID_PLACEHOLDER} > f"]
    assert step.raw_for(4242) == ["echo 4242 > f"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*JAILSHELL, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})


@pytest.mark.parametrize(("args", "message"), [
    (("docker", "run", "--privileged", "busybox"), "flag --privileged is not supported"),
    (("ps", "--bogus"), "docker ps: flag --bogus is not supported"),
    (("docker", "nonsense"), "docker nonsense: not a command jailshell implements"),
    (("explain", "docker", "ps"), "explain shows the plan"),
])
def test_cli_errors_are_one_line_without_traceback(args: tuple[str, ...], message: str) -> None:
    res = cli(*args)
    assert res.returncode == 2
    assert res.stderr.startswith("jailshell: error: ") and message in res.stderr
    assert "Traceback" not in res.stderr


def test_jailshell_ps_passes_every_word_to_the_docker_parser() -> None:
    # `-a` and `-h` are docker's here, not jailshell's options.
    res = cli("ps", "-h")
    assert res.returncode == 2 and "docker ps: flag -h is not supported" in res.stderr


def test_help_lists_flags_and_the_refused_ones() -> None:
    res = cli("docker", "help", "run")
    assert res.returncode == 0
    assert "--pids-limit N" in res.stdout and "--privileged" in res.stdout
    assert "explain docker run" in cli("docker", "help").stdout


@pytest.mark.root
def test_explain_prints_the_plan_and_does_nothing() -> None:
    data = Path(os.environ["JAILSHELL_DATA_DIR"]) / "containers"
    run = Path(os.environ["JAILSHELL_RUN_DIR"]) / "containers"
    before = (sorted(data.iterdir()) if data.is_dir() else [], sorted(run.iterdir()) if run.is_dir() else [])
    with open("/proc/self/mountinfo") as fh:
        mounts = fh.read()
    res = cli("explain", "docker", "run", "--rm", "-m", "64m", "--network", "none", "busybox", "sh", "-c", "echo hi")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("docker run --rm -m 64m --network none busybox sh -c 'echo hi', by hand")
    numbered = [ln for ln in lines if ln[:2].strip().isdigit() and ln[2:4] == ". "]
    assert numbered[-1].split(". ", 1)[1].startswith("exec sh -c 'echo hi' as PID 1")
    assert any("memory.limit_in_bytes" in ln or "memory.max" in ln for ln in lines)
    after = (sorted(data.iterdir()) if data.is_dir() else [], sorted(run.iterdir()) if run.is_dir() else [])
    assert [p for p in after[0] if p.name != ".lock"] == [p for p in before[0] if p.name != ".lock"]
    assert after[1] == before[1]
    with open("/proc/self/mountinfo") as fh:
        assert fh.read() == mounts


def test_shlex_round_trip_of_the_typed_line() -> None:
    c = parse(["run", "busybox", "sh", "-c", "echo 'a b'"])
    assert shlex.split(c.line)[1:] == ["run", "busybox", "sh", "-c", "echo 'a b'"]
