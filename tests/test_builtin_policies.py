"""The built-in policies (policies/strict.yaml, permissive.yaml, read_only.yaml).

Three layers of evidence: the policy unit tests as data in tests/policy_cases/ (every refusal and
every carve-out named in issue 2 and docs/policies.md), properties of the policies themselves
(what kills, what only blocks, batch deletes, linear-time regexes), and real runs under
``agentd run``: an ordinary Python agent lives under each built-in without a single denial,
while strict's refusals really happen (the file is not created, the listener sees nothing, the
agent is killed for a CRITICAL violation and the victim is intact).
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent_os.loader import load_policy
from agent_os.policy import Severity, ViolationMode
from agent_os.policy_cases import load_cases, run_case

sys.path.insert(0, str(Path(__file__).parent))
from helpers.agentd_run import PYTHON, needs_tracing, run_agentd  # noqa: E402

CASES_DIR = Path(__file__).parent / "policy_cases"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "policies.md"
VARIABLES = {"WORKSPACE": "/home/u/ws", "HOME": "/home/u", "TMPDIR": "/tmp"}
BUILTINS = ("strict", "permissive", "read_only")


def builtin(name: str):
    return load_policy(name, variables=VARIABLES)


def _all_cases():
    for name in BUILTINS:
        for case in load_cases(CASES_DIR / f"{name}.yaml"):
            yield pytest.param(name, case, id=f"{name}:{case.line}:{case.name[:60]}")


# --- policy unit tests as data ------------------------------------------------------------------

@pytest.mark.parametrize("name, case", list(_all_cases()))
def test_case(name, case):
    outcome = run_case(builtin(name), case)
    assert outcome.passed, (f"{case.file}:{case.line} {case.action_type} {case.target!r}\n"
                            f"  expected {outcome.expected_line()}\n"
                            f"  actual   {outcome.actual_line()}  ({outcome.result.reason})")


def test_every_builtin_has_cases_and_strict_has_many():
    counts = {name: len(load_cases(CASES_DIR / f"{name}.yaml")) for name in BUILTINS}
    assert counts["strict"] >= 40
    assert all(count >= 20 for count in counts.values()), counts


def test_every_pattern_of_every_builtin_is_exercised_by_a_case():
    for name in BUILTINS:
        policy = builtin(name)
        winners = {run_case(policy, case).result.pattern_id
                   for case in load_cases(CASES_DIR / f"{name}.yaml")}
        # reached only after the rate limit: test_strict_batch_deletes_need_confirmation
        winners.add("allow_workspace_batch_delete_confirmed")
        unexercised = [p.id for p in policy.patterns if p.id not in winners]
        assert not unexercised, f"{name}: no case reaches {unexercised}"


# --- consequences: what kills, what blocks ------------------------------------------------------

@pytest.mark.parametrize("action_type, target", [
    ("file_read", "/etc/shadow"),
    ("file_read", "/home/u/.ssh/id_rsa"),
    ("file_write", "/etc/passwd"),
    ("shell_execute", "sudo ls"),
    ("file_chmod", "/etc/shadow:0666"),
])
def test_strict_critical_violations_kill(action_type, target):
    result = builtin("strict").evaluate(action_type, target)
    assert not result.allowed
    assert result.severity == Severity.CRITICAL
    assert result.violation_mode is ViolationMode.SIGKILL


@pytest.mark.parametrize("action_type, target", [
    ("file_read", "/etc/crontab"),
    ("file_read", "/proc/1/environ"),
    ("file_write", "/home/u/notes.txt"),
    ("file_write", "/usr/lib/python3.11/__pycache__/os.cpython-311.pyc.77"),
    ("network_connect", "127.0.0.1:8080"),
    ("env_read", "OPENAI_API_KEY"),
    # dangerous commands are refused, not killed for: what they would do is judged file by file
    ("shell_execute", "rm -rf /"),
    ("shell_execute", "chmod 777 f"),
    ("shell_execute", "dd if=/dev/zero of=img bs=1M count=1"),
])
def test_strict_ordinary_refusals_block_and_let_the_agent_go_on(action_type, target):
    result = builtin("strict").evaluate(action_type, target)
    assert not result.allowed
    assert result.violation_mode is ViolationMode.BLOCK


def test_permissive_never_kills_or_stops():
    policy = builtin("permissive")
    for pattern in policy.patterns:
        if pattern.action == "deny":
            assert pattern.severity < Severity.CRITICAL, pattern.id
            assert pattern.violation_mode in (None, ViolationMode.BLOCK), pattern.id
    assert policy.violation_mode is None
    assert policy.evaluate("shell_execute", "sudo ls").violation_mode is ViolationMode.BLOCK


def test_warnings_in_permissive_allow_and_signal():
    result = builtin("permissive").evaluate("file_delete", "/home/u/ws/old.txt")
    assert result.allowed and result.action == "warn"
    assert result.violation_mode is ViolationMode.SIGWARN


def test_strict_batch_deletes_need_confirmation():
    policy = builtin("strict")
    ctx = {"agent_id": "batch"}
    decisions = [policy.evaluate("file_delete", f"/home/u/ws/f{i}", ctx) for i in range(101)]
    assert all(d.allowed for d in decisions[:100])
    assert not decisions[100].allowed and decisions[100].pattern_id == "block_other_deletes"
    confirmed = policy.evaluate("file_delete", "/home/u/ws/f101", {**ctx, "confirmed": True})
    assert confirmed.allowed and confirmed.pattern_id == "allow_workspace_batch_delete_confirmed"
    # another agent has its own budget
    assert policy.evaluate("file_delete", "/home/u/ws/g", {"agent_id": "other"}).allowed


def test_workspace_variable_is_escaped_and_anchored():
    policy = load_policy("strict", variables={"WORKSPACE": "/srv/a.b+c", "HOME": "/home/u",
                                              "TMPDIR": "/tmp"})
    assert policy.evaluate("file_write", "/srv/a.b+c/x").allowed
    assert not policy.evaluate("file_write", "/srv/aXb+c/x").allowed
    assert not policy.evaluate("file_write", "/srv/a.b+cd/x").allowed


# --- carve-outs are documented --------------------------------------------------------------------

ETC_CARVE_OUTS = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d/", "localtime", "timezone",
                  "locale.alias", "locale.conf", "nsswitch.conf", "host.conf", "hosts",
                  "resolv.conf", "gai.conf", "netsvc.conf", "svc.conf", "services", "protocols",
                  "passwd", "group", "shells", "userdb/", "os-release", "debian_version",
                  "lsb-release", "issue", "issue.net", "hostname", "pip.conf", "xdg/", "npmrc",
                  "rustup/", "gitconfig", "gitattributes", "wgetrc", "inputrc", "bash.bashrc",
                  "profile", "profile.d/", "mime.types", "mailcap", "magic", "papersize",
                  "fonts/", "ssl/openssl.cnf", "ssl/certs/", "pki/tls/certs/",
                  "pki/ca-trust/extracted/", "python3.11/")


def test_every_etc_carve_out_is_allowed_and_documented():
    policy = builtin("strict")
    docs = DOCS.read_text()
    for carve_out in ETC_CARVE_OUTS:
        target = "/etc/" + carve_out + ("x" if carve_out.endswith("/") else "")
        assert policy.evaluate("file_read", target).allowed, target
        assert f"/etc/{carve_out}" in docs, f"/etc/{carve_out} is not justified in {DOCS}"
    for other in ("/proc/filesystems", "/proc/meminfo", "/proc/sys/", "/sys/devices/system/cpu/",
                  "/sys/kernel/mm/transparent_hugepage/", "/sys/fs/cgroup/", "/dev/urandom",
                  "/dev/null", "/dev/pts/", "__pycache__", "certifi/cacert.pem"):
        assert other in docs, f"{other} is not justified in {DOCS}"


# --- regexes run in linear time -------------------------------------------------------------------

ADVERSARIAL = {
    "separators": "a;" * 10_000,
    "newlines": "ls\n" * 7_000,
    "wrappers": "nice " * 4_000 + "x",
    "pipes": "ls | " * 4_000,
    "unterminated pipe": "ls | " * 4_000 + "rm",
    "redirects": "ls 2>" * 4_000,
    "spaces": "ls" + " " * 20_000,
    "sql comments": "DROP /*" * 3_000,
    "nested dirs": "/etc/" + "a/" * 10_000,
    "pycache": "/usr/" + "__pycache__/" * 2_000,
    "arrows": "/home/u/ws/a -> " * 2_000,
    "chmod args": "chmod " + "1 " * 10_000,
    "userinfo": "https://" + "a@" * 10_000,
    "find": "find" + " -name" * 4_000,
}


def _best_of_three(regex, target: str) -> float:
    best = float("inf")
    for _ in range(3):  # the best of three: a loaded test machine only ever adds time
        started = time.perf_counter()
        regex.match(target)
        best = min(best, time.perf_counter() - started)
    return best


@pytest.mark.parametrize("name", BUILTINS)
def test_no_pattern_backtracks_catastrophically(name):
    slowest = (0.0, "")
    for pattern in builtin(name).patterns:
        for label, target in ADVERSARIAL.items():
            slowest = max(slowest, (_best_of_three(pattern.regex, target), f"{pattern.id} {label}"))
    assert slowest[0] < 0.25, f"{name}: {slowest[1]} took {slowest[0]:.3f}s"


# --- real runs under agentd ---------------------------------------------------------------------

ORDINARY_AGENT = textwrap.dedent("""
    import asyncio, collections, csv, datetime, email, getpass, hashlib, http.client, json
    import locale, logging, mimetypes, multiprocessing, os, pathlib, platform, random, re
    import socket, sqlite3, ssl, subprocess, sys, threading, urllib.request, uuid, zoneinfo
    assert open("input.txt").read() == "hello\\n"
    assert socket.getaddrinfo("localhost", 80)
    ssl.create_default_context()
    mimetypes.guess_type("a.csv")
    locale.setlocale(locale.LC_ALL, "")
    zoneinfo.ZoneInfo("Europe/Paris")
    datetime.datetime.now().astimezone()
    getpass.getuser(); os.cpu_count(); uuid.uuid4(); os.urandom(8)
    lock = multiprocessing.Lock(); lock.acquire(); lock.release()
    sqlite3.connect(":memory:").execute("select 1")
    assert subprocess.run(["ls", "-la"], capture_output=True).returncode == 0
    assert subprocess.run(["cat", "input.txt"], capture_output=True).stdout == b"hello\\n"
    assert subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True).stdout == b"1\\n"
    assert subprocess.run("ls | wc -l", shell=True, capture_output=True).returncode == 0
    subprocess.run(["ls"], stdout=subprocess.DEVNULL)
    print("ORDINARY OK")
""")

WRITING_AGENT = textwrap.dedent("""
    import os, shutil, subprocess, sys, tempfile
    sys.path.insert(0, os.getcwd())
    pathlib_out = open("out.txt", "w"); pathlib_out.write("x"); pathlib_out.close()
    os.makedirs("build/sub", exist_ok=True); open("build/sub/f", "w").close()
    shutil.rmtree("build")
    open("helper.py", "w").write("VALUE = 41\\n")
    import helper
    assert helper.VALUE == 41
    with tempfile.NamedTemporaryFile() as handle:
        handle.write(b"scratch")
    with tempfile.TemporaryDirectory() as scratch:
        open(os.path.join(scratch, "f"), "w").close()
    os.chmod("out.txt", 0o640)
    os.replace("out.txt", "final.txt")
    os.remove("final.txt")
    print("WRITER OK")
""")


# A regular file in /etc that no carve-out covers (a symlink would be judged by its target).
ETC_PROBE = next((Path(p) for p in ("/etc/fstab", "/etc/hostname", "/etc/login.defs",
                                    "/etc/debian_version", "/etc/shells")
                  if Path(p).is_file() and not Path(p).is_symlink()), Path("/etc/fstab"))


def _agent_env(tmp_path: Path) -> dict:
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(scratch)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _workspace(tmp_path: Path, script: str) -> Path:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "input.txt").write_text("hello\n")
    (workspace / "agent.py").write_text(script)
    return workspace


def _denials(records: list[dict]) -> list[tuple]:
    return [(r.get("action_type"), r.get("target"), r.get("pattern_ids"))
            for r in records if r.get("decision") == "deny"]


@needs_tracing
@pytest.mark.needs_ptrace
@pytest.mark.parametrize("name", BUILTINS)
def test_ordinary_python_agent_lives_under_builtin(tmp_path, name):
    workspace = _workspace(tmp_path, ORDINARY_AGENT)
    result = run_agentd(name, [PYTHON, "agent.py"], cwd=workspace, env=_agent_env(tmp_path),
                        timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ORDINARY OK" in result.stdout
    assert result.records, "agentd wrote no audit records"
    assert _denials(result.records) == []


@needs_tracing
@pytest.mark.needs_ptrace
@pytest.mark.parametrize("name", ("strict", "permissive"))
def test_writing_agent_lives_under_strict_and_permissive(tmp_path, name):
    workspace = _workspace(tmp_path, WRITING_AGENT)
    result = run_agentd(name, [PYTHON, "agent.py"], cwd=workspace, env=_agent_env(tmp_path),
                        timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "WRITER OK" in result.stdout
    assert _denials(result.records) == []
    assert (workspace / "__pycache__").is_dir()


@needs_tracing
@pytest.mark.needs_ptrace
def test_read_only_refuses_writes_but_the_agent_goes_on(tmp_path):
    workspace = _workspace(tmp_path, textwrap.dedent("""
        import subprocess
        try:
            open("out.txt", "w")
            print("WROTE")
        except PermissionError:
            print("WRITE REFUSED")
        try:
            subprocess.run(["rm", "input.txt"], capture_output=True)
            print("RM RAN")
        except PermissionError:
            print("RM REFUSED")
        print(open("input.txt").read().strip())
    """))
    result = run_agentd("read_only", [PYTHON, "agent.py"], cwd=workspace,
                        env=_agent_env(tmp_path), timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "WRITE REFUSED" in result.stdout and "WROTE" not in result.stdout
    assert "RM REFUSED" in result.stdout
    assert not (workspace / "out.txt").exists()
    assert (workspace / "input.txt").read_text() == "hello\n"
    denied = {ids[0] for _, _, ids in _denials(result.records) if ids}
    assert {"block_writes", "block_other_commands"} <= denied


@needs_tracing
@pytest.mark.needs_ptrace
def test_strict_refusals_really_happen_and_the_agent_goes_on(tmp_path):
    outside = tmp_path / "outside.txt"
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    workspace = _workspace(tmp_path, textwrap.dedent(f"""
        import os, socket
        def attempt(label, action):
            try:
                action()
                print(label, "DONE")
            except OSError as exc:
                print(label, "REFUSED", exc.errno)
        attempt("etc", lambda: open({str(ETC_PROBE)!r}).read())
        attempt("environ", lambda: open("/proc/1/environ", "rb").read())
        attempt("outside", lambda: open({str(outside)!r}, "w").write("x"))
        attempt("loopback", lambda: socket.create_connection(("127.0.0.1", {port}), timeout=2))
        print("SECRET", os.environ.get("AGENTD_TEST_API_KEY"))
        print("WORKSPACE", open("input.txt").read().strip())
    """))
    env = {**_agent_env(tmp_path), "AGENTD_TEST_API_KEY": "sk-test-123"}
    try:
        result = run_agentd("strict", [PYTHON, "agent.py"], cwd=workspace, env=env, timeout=120)
        try:
            listener.accept()
            connected = True
        except BlockingIOError:
            connected = False
    finally:
        listener.close()
    assert result.returncode == 0, result.stderr[-2000:]
    for label in ("etc", "environ", "outside", "loopback"):
        assert f"{label} REFUSED" in result.stdout, result.stdout
    assert "WORKSPACE hello" in result.stdout
    assert not outside.exists()
    assert not connected, "the loopback listener saw a connection"
    assert "sk-test-123" not in result.stdout


@needs_tracing
@pytest.mark.needs_ptrace
@pytest.mark.parametrize("command, pattern_id", [
    (["cat", "/etc/shadow"], "block_shadow_files"),
    (["bin/sudo", "-n", "true"], "block_privilege_escalation"),
    ([PYTHON, "-c", "open('/etc/passwd', 'a')"], "block_system_dirs"),
])
def test_strict_kills_on_critical_violations(tmp_path, command, pattern_id):
    workspace = _workspace(tmp_path, "")
    # a harmless program named sudo: the policy judges the name of what really runs
    (workspace / "bin").mkdir()
    shutil.copy("/bin/true", workspace / "bin" / "sudo")
    victim = workspace / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    (victim / "keep.txt").chmod(0o644)
    passwd_before = Path("/etc/passwd").stat().st_mtime_ns
    result = run_agentd("strict", command, cwd=workspace, env=_agent_env(tmp_path), timeout=60)
    assert result.returncode == 137, (result.returncode, result.stderr[-2000:])
    assert any(pattern_id in (r.get("pattern_ids") or []) and r.get("decision") == "deny"
               for r in result.records), _denials(result.records)
    assert (victim / "keep.txt").read_text() == "keep"
    assert stat.S_IMODE((victim / "keep.txt").stat().st_mode) == 0o644
    assert Path("/etc/passwd").stat().st_mtime_ns == passwd_before


@needs_tracing
@pytest.mark.needs_ptrace
@pytest.mark.parametrize("command, pattern_id", [
    (["rm", "-rf", "victim"], "block_rm_recursive_force"),
    (["chmod", "777", "victim/keep.txt"], "block_chmod_world_writable"),
])
def test_strict_refuses_dangerous_commands_and_the_agent_goes_on(tmp_path, command, pattern_id):
    workspace = _workspace(tmp_path, "")
    victim = workspace / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    (victim / "keep.txt").chmod(0o644)
    script = ("import subprocess\n"
              "try:\n"
              f"    subprocess.run({command!r}, check=True)\n"
              "    print('RAN')\n"
              "except PermissionError as exc:\n"
              "    print('REFUSED', exc)\n")
    result = run_agentd("strict", [PYTHON, "-c", script], cwd=workspace,
                        env=_agent_env(tmp_path), timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("REFUSED"), result.stdout
    assert any(pattern_id in (r.get("pattern_ids") or []) and r.get("enforced") == "block"
               for r in result.records), _denials(result.records)
    assert (victim / "keep.txt").read_text() == "keep"
    assert stat.S_IMODE((victim / "keep.txt").stat().st_mode) == 0o644


@needs_tracing
@pytest.mark.needs_ptrace
def test_git_config_global_and_a_commit_under_strict(tmp_path):
    """A fresh machine: no identity until the agent sets one with `git config --global` in a
    $HOME outside the workspace and TMPDIR; then commits, edits, commits and gcs 300 files.
    Only ~/.gitconfig (with its lock) is writable there: the rest of $HOME stays refused."""
    home = tmp_path / "home"
    home.mkdir()
    workspace = tmp_path / "ws"
    workspace.mkdir()
    env = {**_agent_env(tmp_path), "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1"}
    for key in [k for k in env if k.startswith("GIT_") and k != "GIT_CONFIG_NOSYSTEM"]:
        env.pop(key)
    script = textwrap.dedent("""\
        set -e
        git config --global user.email agent@example.invalid
        git config --global user.name Agent
        git config --global core.autocrlf false
        git init -q repo && cd repo
        for i in $(seq 1 300); do echo "line $i" > f$i.txt; done
        git add -A && git commit -qm initial
        for i in $(seq 1 300); do echo edit >> f$i.txt; done
        git commit -qam edit && git gc -q
        git log --format=%ae | sort -u
        echo x > "$HOME/notes.txt" 2>/dev/null || echo "notes refused"
    """)
    result = run_agentd("strict", ["sh", "-c", script], cwd=workspace, env=env, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["agent@example.invalid", "notes", "refused"], result.stdout
    assert "email = agent@example.invalid" in (home / ".gitconfig").read_text()
    assert not (home / "notes.txt").exists()
    assert _denials(result.records) == [("file_write", str(home.resolve() / "notes.txt"),
                                         ["block_other_writes"])]
