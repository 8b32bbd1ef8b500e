"""agentd.run.policy_cache: a cached policy decides exactly as a freshly loaded one; the cache is
invalidated by any change to what the policy depends on, and a foreign or tampered entry is
never unpickled."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from agent_os.loader import load_policy
from agentd.run import policy_cache as C

VARIABLES = {"WORKSPACE": "/home/u/ws", "HOME": "/home/u", "TMPDIR": "/tmp"}
PROBES = [("file_read", "/etc/shadow"), ("file_read", "/home/u/ws/a.txt"),
          ("file_write", "/etc/passwd"), ("file_write", "/home/u/ws/out.txt"),
          ("shell_execute", "rm -rf /"), ("shell_execute", "ls -la"),
          ("network_connect", "127.0.0.1:8080"), ("file_read", "/home/u/.ssh/id_rsa"),
          ("file_delete", "/home/u/ws/x"), ("process_spawn", "/usr/bin/sudo")]


@pytest.fixture
def cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("AGENTD_POLICY_CACHE", raising=False)
    return tmp_path / "cache" / "agentd" / "policies"


def _decisions(policy):
    out = []
    for action_type, target in PROBES:
        result = policy.evaluate(action_type, target, {"agent_id": "t"})
        out.append((result.action, result.pattern_id, result.violation_mode))
    return out


@pytest.mark.parametrize("name", ["strict", "permissive", "read_only"])
def test_cached_policy_decides_like_a_fresh_load(cache_home, name):
    fresh = load_policy(name, variables=dict(VARIABLES))
    first = C.load_policy_cached(name, VARIABLES)      # miss: loads and stores
    entries = list(cache_home.iterdir())
    assert len(entries) == 1 and oct(entries[0].stat().st_mode & 0o777) == "0o600"
    assert oct(cache_home.stat().st_mode & 0o777) == "0o700"
    second = C.load_policy_cached(name, VARIABLES)     # hit
    assert second is not first
    assert _decisions(first) == _decisions(second) == _decisions(fresh)


def test_a_hit_in_a_new_process_skips_yaml_and_decides_the_same(cache_home):
    C.load_policy_cached("strict", VARIABLES)
    code = ("import sys; from agentd.run.policy_cache import load_policy_cached as L; "
            f"p = L('strict', {VARIABLES!r}); "
            "print('yaml' in sys.modules, p.evaluate('file_read', '/etc/shadow', {'agent_id': 't'}).pattern_id)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, XDG_CACHE_HOME=str(cache_home.parent.parent)))
    expected = load_policy("strict", variables=dict(VARIABLES)).evaluate(
        "file_read", "/etc/shadow", {"agent_id": "t"}).pattern_id
    assert out.stdout.split() == ["False", str(expected)]


def test_changed_policy_file_or_variables_miss(cache_home, tmp_path):
    policy_file = tmp_path / "p.yaml"
    policy_file.write_text("name: p\npatterns:\n  - id: deny_x\n    action_type: file_read\n"
                           "    pattern: '^/x$'\n    action: deny\n")
    assert C.load_policy_cached(str(policy_file), VARIABLES).evaluate("file_read", "/x").action == "deny"
    policy_file.write_text("name: p\npatterns:\n  - id: allow_x\n    action_type: file_read\n"
                           "    pattern: '^/x$'\n    action: allow\n")
    again = C.load_policy_cached(str(policy_file), VARIABLES)
    assert again.evaluate("file_read", "/x").pattern_id == "allow_x"
    assert C.policy_key("strict", VARIABLES) != C.policy_key("strict", dict(VARIABLES, HOME="/h"))


class _Boom:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["AGENTD_TEST_MARKER"]),))


def test_tampered_entries_are_not_unpickled(cache_home, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("AGENTD_TEST_MARKER", str(marker))
    C.load_policy_cached("strict", VARIABLES)
    entry = next(cache_home.iterdir())
    key = C.policy_key("strict", VARIABLES)
    evil = key.encode() + b"\n" + pickle.dumps({"key": key, "policy": _Boom()})
    # group-writable file: refused
    entry.write_bytes(evil)
    entry.chmod(0o620)
    policy = C.load_policy_cached("strict", VARIABLES)
    assert not marker.exists() and hasattr(policy, "evaluate")
    # a cache directory others can enter: refused
    entry.write_bytes(evil)
    entry.chmod(0o600)
    cache_home.chmod(0o755)
    policy = C.load_policy_cached("strict", VARIABLES)
    assert not marker.exists() and hasattr(policy, "evaluate")
    # a symlinked entry: refused (O_NOFOLLOW)
    cache_home.chmod(0o700)
    target = tmp_path / "elsewhere"
    target.write_bytes(evil)
    target.chmod(0o600)
    entry.unlink()
    entry.symlink_to(target)
    policy = C.load_policy_cached("strict", VARIABLES)
    assert not marker.exists() and hasattr(policy, "evaluate")


def test_disabled_by_environment(cache_home, monkeypatch):
    monkeypatch.setenv("AGENTD_POLICY_CACHE", "0")
    C.load_policy_cached("strict", VARIABLES)
    assert not cache_home.exists()


def test_one_entry_per_policy_and_a_bounded_directory(cache_home, tmp_path, monkeypatch):
    policy_file = tmp_path / "p.yaml"
    for action in ("deny", "allow", "deny"):
        policy_file.write_text(f"name: p\npatterns:\n  - id: x\n    action_type: file_read\n"
                               f"    pattern: '^/x$'\n    action: {action}\n")
        C.load_policy_cached(str(policy_file), VARIABLES)
    assert len(list(cache_home.iterdir())) == 1
    monkeypatch.setattr(C, "MAX_ENTRIES", 3)
    for i in range(6):
        C.load_policy_cached(str(policy_file), dict(VARIABLES, WORKSPACE=f"/ws{i}"))
    assert len(list(cache_home.iterdir())) == 3


def test_the_agent_cannot_plant_a_cache_entry(tmp_path):
    """The cache is unpickled by later runs: agentd run keeps the agent out of it."""
    cache = tmp_path / "cache"
    entries = cache / "agentd" / "policies"
    agent = ("import os, sys\n"
             f"d = {str(entries)!r}\n"
             "os.makedirs(d, exist_ok=True)\n"
             "try:\n    open(os.path.join(d, 'planted.pickle'), 'wb').write(b'x'); print('written')\n"
             "except PermissionError: print('refused')\n")
    agentd = os.path.join(os.path.dirname(sys.executable), "agentd")
    proc = subprocess.run([agentd, "run", "--embedded", "--policy", "permissive",
                           "--audit-log", str(tmp_path / "audit.jsonl"), "--", sys.executable, "-c", agent],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, XDG_CACHE_HOME=str(cache)))
    assert proc.stdout.strip() == "refused", proc.stderr
    assert not (entries / "planted.pickle").exists()


def test_a_change_to_an_extended_file_elsewhere_misses(cache_home, tmp_path):
    base_dir, child_dir = tmp_path / "base", tmp_path / "child"
    base_dir.mkdir()
    child_dir.mkdir()
    base = base_dir / "base.yaml"
    child = child_dir / "child.yaml"
    child.write_text(f"name: child\nextends: [{base}]\npatterns: []\n")
    for action in ("deny", "allow"):
        base.write_text("name: base\npatterns:\n  - id: b\n    action_type: file_read\n"
                        f"    pattern: '^/b$'\n    action: {action}\n")
        C.load_policy_cached(str(child), VARIABLES)               # miss: stores
        cached = C.load_policy_cached(str(child), VARIABLES)      # hit
        assert cached.evaluate("file_read", "/b").action == action
        entry = next(cache_home.iterdir()).read_bytes()
        assert str(base).encode() in entry.split(b"\n")[1]        # the extended file is listed
