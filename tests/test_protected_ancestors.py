"""The supervisor's own paths cannot be carried away from above.

The audit log, the runs directory and the per-user policy cache are protected from the agent
whatever the policy allows (``decide.containment_of_protected``). Protecting them by prefix
alone left the directories *above* them open: under a policy that allowed it, an agent could
rename ``$XDG_CACHE_HOME`` away and make a directory of its own in its place, where the next
``agentd run`` would unpickle a cache entry it had planted (code run by the supervisor, outside
the sandbox). These tests hold the rule on its own, and in real runs under ``permissive``
with the deed checked from outside: the directory is still there, the same inode, and nothing
the agent made stands in a protected path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from agentd.trace.decide import Evaluation, containment_of_protected
from helpers.agentd_run import AGENTD


def _judged(action: str, target: str, protected: tuple[str, ...]):
    return containment_of_protected(Evaluation(action, target, "allow", "allow", ""), protected)


def test_inside_and_the_directory_itself(tmp_path):
    runs = f"{tmp_path}/runs/"
    assert _judged("file_write", f"{runs}r1.json", (runs,)) is not None
    assert _judged("file_move", f"{tmp_path}/runs -> {tmp_path}/gone", (runs,)) is not None
    assert _judged("file_chmod", f"{tmp_path}/runs", (runs,)) is not None
    assert _judged("file_write", f"{tmp_path}/runs2/x", (runs,)) is None


def test_moving_a_directory_above_is_refused_either_way(tmp_path):
    log = f"{tmp_path}/logs/audit.jsonl"
    for move in (f"{tmp_path}/logs -> {tmp_path}/moved", f"{tmp_path}/other -> {tmp_path}/logs",
                 f"{tmp_path} -> /elsewhere", f"/elsewhere -> {tmp_path}"):
        denied = _judged("file_move", move, (log,))
        assert denied is not None and denied.outcome == "block", move
        assert denied.pattern_ids == ("agentd:containment",)
    assert _judged("file_delete", f"{tmp_path}/logs", (log,)) is not None
    # a sibling, and a name that only shares the prefix, are not above it
    assert _judged("file_move", f"{tmp_path}/logsx -> {tmp_path}/y", (log,)) is None
    assert _judged("file_move", f"{tmp_path}/other -> {tmp_path}/y", (log,)) is None


def test_writing_above_is_refused_only_where_it_would_make_the_directory(tmp_path):
    (tmp_path / "cache").mkdir()
    protected = (f"{tmp_path}/cache/agentd/policies/",)
    # exists: mkdir says EEXIST, utime and chmod replace nothing; the policy decides
    assert _judged("file_write", f"{tmp_path}/cache", protected) is None
    assert _judged("file_chmod", f"{tmp_path}/cache", protected) is None
    # missing: a symlink there would redirect the path to a directory of the agent's; a
    # directory may be made (`mkdir ~/.cache` by pip), the protected path below stays protected
    missing = f"{tmp_path}/cache/agentd"
    assert _judged("file_write", missing, protected) is not None  # unknown syscall: refused
    for syscall in ("symlink", "symlinkat"):
        assert containment_of_protected(
            Evaluation("file_write", missing, "allow", "allow", ""), protected, syscall)
    for syscall in ("mkdir", "mkdirat", "openat"):
        assert containment_of_protected(
            Evaluation("file_write", missing, "allow", "allow", ""), protected, syscall) is None
    assert containment_of_protected(
        Evaluation("file_write", f"{missing}/policies", "allow", "allow", ""), protected,
        "mkdir") is not None  # the protected directory itself


AGENT = textwrap.dedent("""
    import errno, os, sys
    cache, log = sys.argv[1], sys.argv[2]
    def attempt(label, call, *args):
        try:
            call(*args)
        except OSError as exc:
            print(label, errno.errorcode[exc.errno])
        else:
            print(label, "DONE")
    attempt("cache-rename", os.rename, cache, cache + ".moved")
    attempt("cache-parent-rename", os.rename, os.path.dirname(cache),
            os.path.dirname(cache) + ".moved")
    attempt("log-dir-rename", os.rename, os.path.dirname(log), os.path.dirname(log) + ".moved")
    os.mkdir("decoy")
    attempt("cache-exchange", os.rename, "decoy", cache)
""")


@pytest.mark.needs_ptrace
def test_an_agent_cannot_move_the_cache_or_the_logs_directory(tmp_path):
    xdg = tmp_path / "xdg"
    logs = tmp_path / "logs"
    logs.mkdir()
    ws = tmp_path / "ws"
    ws.mkdir()
    env = dict(os.environ, XDG_CACHE_HOME=str(xdg))
    argv = [AGENTD, "run", "--embedded", "--policy", "permissive", "--network", "off",
            "--workspace", str(ws), "--audit-log", str(logs / "audit.jsonl"), "--"]
    first = subprocess.run([*argv, "/bin/true"], env=env, cwd=ws, capture_output=True,
                           text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    cache = xdg / "agentd"
    assert cache.is_dir(), "the first run did not fill the policy cache"
    before = (cache.stat().st_ino, xdg.stat().st_ino, logs.stat().st_ino)
    done = subprocess.run([*argv, sys.executable, "-c", AGENT, str(cache), str(logs / "x")],
                          env=env, cwd=ws, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    said = dict(line.split() for line in done.stdout.splitlines())
    assert said == {"cache-rename": "EACCES", "cache-parent-rename": "EACCES",
                    "log-dir-rename": "EACCES", "cache-exchange": "EACCES"}, done.stdout
    assert (cache.stat().st_ino, xdg.stat().st_ino, logs.stat().st_ino) == before
    assert not (tmp_path / "xdg.moved").exists() and not (tmp_path / "logs.moved").exists()


@pytest.mark.needs_ptrace
def test_an_agent_cannot_make_the_missing_cache_directory_a_symlink(tmp_path):
    """With the cache off nothing is stored, so ``$XDG_CACHE_HOME/agentd`` is missing: the
    agent may not put a symlink there for a later run. It may make it a directory (as pip makes
    ``~/.cache``), but not the protected ``policies`` directory inside."""
    xdg = tmp_path / "xdg"
    xdg.mkdir()
    ws = tmp_path / "ws"
    ws.mkdir()
    evil = tmp_path / "evil"
    (evil / "policies").mkdir(parents=True, mode=0o700)
    env = dict(os.environ, XDG_CACHE_HOME=str(xdg), AGENTD_POLICY_CACHE="0")
    code = ("import os, sys\n"
            "for make in (lambda: os.symlink(sys.argv[2], sys.argv[1]),"
            " lambda: os.mkdir(sys.argv[1]), lambda: os.mkdir(sys.argv[1] + '/policies')):\n"
            "    try:\n        make()\n        print('DONE')\n"
            "    except OSError as exc:\n        print(exc.errno)\n")
    done = subprocess.run([AGENTD, "run", "--embedded", "--policy", "permissive", "--network",
                           "off", "--workspace", str(ws), "--audit-log", str(tmp_path / "a.jsonl"),
                           "--", sys.executable, "-c", code, str(xdg / "agentd"), str(evil)],
                          env=env, cwd=ws, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["13", "DONE", "13"], done.stdout  # EACCES, made, EACCES
    assert (xdg / "agentd").is_dir() and not (xdg / "agentd").is_symlink()
    assert not os.path.lexists(xdg / "agentd" / "policies")


def test_the_supervisors_code_and_configuration_are_protected_unless_in_the_workspace(tmp_path):
    import agent_os
    from agentd.run.assembly import supervisor_paths

    package = os.path.dirname(os.path.realpath(agent_os.__file__))
    source = os.path.dirname(package) + "/"
    protected = supervisor_paths(str(tmp_path))
    assert source in protected
    assert os.path.dirname(os.path.realpath(os.__file__)) + "/" in protected  # the stdlib
    # handed to the agent: a workspace that is the source, or inside it, or above it
    for workspace in (source, package, os.path.dirname(source.rstrip("/"))):
        assert source not in supervisor_paths(workspace), workspace


@pytest.mark.needs_ptrace
def test_an_agent_cannot_plant_code_for_the_next_supervisor(tmp_path):
    """Under ``permissive`` (which allows writing outside the system directories) the agent may
    not add a module to the supervisor's own packages or a policy to its built-in policies."""
    import agent_os
    from agentd.run.assembly import supervisor_paths

    package = os.path.dirname(os.path.realpath(agent_os.__file__))
    targets = [os.path.join(package, f"planted_{os.getpid()}.py")]
    builtin = [p for p in supervisor_paths(str(tmp_path)) if p.endswith("/policies/")]
    targets += [os.path.join(builtin[0], f"planted_{os.getpid()}.yaml")] if builtin else []
    ws = tmp_path / "ws"
    ws.mkdir()
    code = ("import os, sys\n"
            "for path in sys.argv[1:]:\n"
            "    try:\n        open(path, 'w').write('x = 1\\n')\n        print('DONE')\n"
            "    except OSError as exc:\n        print(exc.errno)\n")
    try:
        done = subprocess.run([AGENTD, "run", "--embedded", "--policy", "permissive", "--network",
                               "off", "--workspace", str(ws), "--audit-log",
                               str(tmp_path / "a.jsonl"), "--", sys.executable, "-c", code,
                               *targets], cwd=ws, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["13"] * len(targets), done.stdout
        assert not [t for t in targets if os.path.lexists(t)]
    finally:
        for target in targets:
            if os.path.lexists(target):
                os.unlink(target)


def test_the_caches_are_protected_even_inside_the_workspace(tmp_path, monkeypatch):
    """An agent working in $HOME: the policy cache (unpickled) and the compiled filters
    (installed) of later runs under $HOME/.cache stay out of its reach."""
    from agentd.run.assembly import supervisor_paths

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home" / ".cache"))
    assert f"{tmp_path}/home/.cache/agentd/policies/" in supervisor_paths(str(tmp_path / "home"))


def test_a_sys_path_entry_nothing_was_imported_from_is_not_protected(tmp_path, monkeypatch):
    """``python -m`` puts the working directory on sys.path: $HOME, say. Nothing of agentd comes
    from there, and protecting it refused `git config --global` its lock."""
    import sys

    from agentd.run.assembly import supervisor_paths

    monkeypatch.setattr(sys, "path", [str(tmp_path / "home"), *sys.path])
    (tmp_path / "home").mkdir()
    protected = supervisor_paths(str(tmp_path / "ws"))
    assert f"{tmp_path}/home/" not in protected
    assert os.path.dirname(os.path.realpath(os.__file__)) + "/" in protected


@pytest.mark.needs_ptrace
def test_git_config_global_when_agentd_runs_with_python_m_from_home(tmp_path):
    home, ws, tmp = tmp_path / "home", tmp_path / "ws", tmp_path / "tmp"
    for directory in (home, ws, tmp):
        directory.mkdir()
    env = dict(os.environ, HOME=str(home), TMPDIR=str(tmp))
    env.pop("AGENTD_UNDER_TEST", None)
    done = subprocess.run(
        [sys.executable, "-m", "agentd.cli.entry", "run", "--embedded", "--policy", "strict",
         "--network", "off", "--workspace", str(ws), "--audit-log", str(tmp_path / "a.jsonl"),
         "--", "git", "config", "--global", "user.email", "agent@example.invalid"],
        cwd=home, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "agent@example.invalid" in (home / ".gitconfig").read_text()
