"""`jailshell run`'s command line without argparse (jailshell/engine/cli_run.py
parse_fast): the same namespace as argparse for every line it takes, and the
full parser for every line it does not."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from jailshell.engine import cli_run


def full(argv: list[str]) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="jailshell")
    sub = parser.add_subparsers(dest="command")
    cli_run.add_arguments(sub.add_parser("run"))
    return vars(parser.parse_args(["run", *argv]))


@pytest.mark.parametrize("argv", [
    [], ["--"], ["--rm", "--", "/bin/true"], ["--rm", "--", "--", "x"], ["ls", "--rm", "-e", "X"],
    ["--rm", "-e", "A=1", "--env", "B=2", "-v", "/tmp:/t:ro", "--volume=/a:/b", "--", "sh", "-c", "exit 3"],
    ["--image", "busybox:latest", "--hostname", "h", "--name", "n", "-w", "/tmp", "--workdir=/root", "sh"],
    ["-m", "64m", "--pids-limit", "20", "--cpus", "0.5", "--userns", "--timings", "--", "true"],
    ["--network", "bridge", "-p", "8080:80", "--publish", "127.0.0.1:1:2", "--link", "a:b", "--", "true"],
    ["--net=host", "--image=alpine", "", "x"], ["--image", "a", "--image", "b", "true"],
])
def test_fast_parse_is_what_argparse_returns(argv: list[str]) -> None:
    fast = cli_run.parse_fast(argv)
    assert fast is not None
    assert vars(fast) == full(argv)


@pytest.mark.parametrize("argv", [
    ["-h"], ["--help"], ["--ti"], ["--rm=1"], ["--image"], ["--image", "--rm"], ["-eA=1"], ["-e=A=1"],
    ["--network", "nosuch"], ["--no-such-option"], ["-"], ["-e", "-1", "true"],
])
def test_anything_else_goes_to_argparse(argv: list[str]) -> None:
    assert cli_run.parse_fast(argv) is None


def test_an_option_only_argparse_knows_gets_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """An option added to add_arguments but not to the fast table still reads as argparse's default."""
    original = cli_run.add_arguments

    def more(p: argparse.ArgumentParser) -> None:
        original(p)
        p.add_argument("--shiny", default="yes")

    monkeypatch.setattr(cli_run, "add_arguments", more)
    fast = cli_run.parse_fast(["--rm", "true"])
    assert fast is not None
    assert fast.shiny == "yes"
    with pytest.raises(AttributeError):
        _ = fast.no_such_attribute


def test_run_imports_no_argparse() -> None:
    code = ("import sys\n"
            "from jailshell.engine import cli_run\n"
            "assert cli_run.parse_fast(['--rm', '--', '/bin/true']) is not None\n"
            "import jailshell.cli\n"
            "print(sorted({'argparse', 'socket', 'importlib.util'} & set(sys.modules)))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert res.stdout.strip() == "[]", res.stdout + res.stderr


@pytest.mark.root
def test_the_quick_exit_loses_no_output() -> None:
    """`jailshell run` leaves with os._exit after flushing: what it printed and the status get out."""
    res = subprocess.run([sys.executable, "-m", "jailshell", "run", "--rm", "--timings", "--", "sh", "-c",
                          "echo out; echo err >&2; exit 3"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 3
    assert res.stdout == "out\n"
    assert res.stderr.startswith("err\njailshell: ") and " exited " in res.stderr
