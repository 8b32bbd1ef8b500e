"""The console entry's click-free path for ``agentd run``: it reads a command line exactly as
the click command does, hands everything else to click, and really leaves click unimported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from agentd.cli.run import run as click_run
from agentd.cli.run_fast import parse_run_args, parse_run_line

LINES = [
    ["--", "/bin/true"],
    ["/bin/echo", "--policy", "x"],
    ["--policy", "permissive", "--", "ls", "-la"],
    ["--policy=read_only", "--mode", "audit", "python3", "-c", "pass"],
    ["--agent-id", "a1", "--audit-log", "/tmp/a.jsonl", "--embedded", "--", "sh", "-c", "exit 3"],
    ["--workspace", "/tmp", "--policy", "strict", "--policy", "permissive", "--", "--weird-cmd"],
    ["--seccomp-profile", "seccomp_profiles/default.json", "--", "true"],
    ["--mode=enforce", "--", "--"],
]
FALLBACK = [
    ["--help"], ["-h"], ["--bogus", "--", "x"], ["--policy"], ["--mode", "nope", "--", "x"],
    ["--workspace", "/nonexistent/dir", "--", "x"], ["--seccomp-profile", "/", "--", "x"], [],
    ["--"], ["--embedded=yes", "--", "x"],
]


@pytest.mark.parametrize("argv", LINES, ids=lambda a: " ".join(a))
def test_fast_parse_matches_click(argv):
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    fast = parse_run_args(list(argv))
    ctx = click_run.make_context("run", list(argv))
    assert fast == ctx.params


@pytest.mark.parametrize("argv", LINES + [["--network", "off", "--dns-upstream=1.1.1.1:53",
                                           "--", "--network"]], ids=lambda a: " ".join(a))
def test_the_options_a_line_names_are_clicks_command_line_sources(argv):
    """What the daemon hand-off asks (was --network given on this line?), answered as click's
    parameter sources would, not fooled by the command's own arguments."""
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ctx = click_run.make_context("run", list(argv))
    by_click = {"--" + name.replace("_name", "").replace("_", "-") for name in ctx.params
                if ctx.get_parameter_source(name).name == "COMMANDLINE"}
    assert parse_run_line(list(argv))[1] == by_click - {"--command"}


@pytest.mark.parametrize("argv", FALLBACK, ids=lambda a: " ".join(a) or "(empty)")
def test_anything_unusual_goes_to_click(argv):
    assert parse_run_args(list(argv)) is None
    assert parse_run_line(list(argv)) is None


def test_agentd_run_does_not_import_click_or_yaml(tmp_path):
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('click' in sys.modules, 'yaml' in sys.modules, file=sys.stderr))\n"
            "sys.argv = ['agentd', 'run', '--policy', 'permissive', '--embedded', '--audit-log', "
            f"{str(tmp_path / 'audit.jsonl')!r}, '--', '/bin/sh', '-c', 'exit 7']\n"
            "from agentd.cli.entry import main\nmain()\n")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert first.returncode == 7, first.stderr
    second = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert second.returncode == 7, second.stderr
    # the first run loads the YAML and fills the cache; the second needs neither click nor YAML
    assert second.stderr.split()[-2:] == ["False", "False"], second.stderr
    assert (tmp_path / "audit.jsonl").stat().st_size > 0


def test_a_bad_option_still_gets_clicks_message(tmp_path):
    agentd = os.path.join(os.path.dirname(sys.executable), "agentd")
    proc = subprocess.run([agentd, "run", "--bogus", "--", "/bin/true"], capture_output=True, text=True)
    assert proc.returncode == 2 and "No such option" in proc.stderr
