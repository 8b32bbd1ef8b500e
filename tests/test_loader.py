"""Loading policies from YAML: the seed's enterprise example, the search path, ${VAR} expansion,
extends, exceptions, defaults, merge documents, and dumping back to YAML with the same decisions."""

from __future__ import annotations

import datetime as dt
import os
import textwrap
from pathlib import Path

import pytest
import yaml

from agent_os import MergedPolicy, Pattern, Policy
from agent_os.errors import PolicyNotFoundError
from agent_os.loader import (BUILTIN_POLICY_DIR, bind_variables, load_policy,
                             policy_from_yaml_string, policy_search_path, policy_to_yaml,
                             validate_yaml_file)
from agent_os.policy import Severity, ViolationMode

DATA = Path(__file__).parent / "data"
ENTERPRISE = DATA / "enterprise_security.yaml"


def write(directory: Path, name: str, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


# --- the seed's enterprise example -----------------------------------------------------------

def test_enterprise_example_loads_unchanged():
    policy = Policy.from_yaml(str(ENTERPRISE))
    assert policy.name == "enterprise_security_policy"
    assert policy.version == "3.0.0"
    assert policy.default_action == "deny"
    assert policy.violation_mode is ViolationMode.SIGKILL
    assert policy.log_level == "info"
    assert policy.settings == {"max_file_size_mb": 100, "max_network_timeout_seconds": 30,
                               "enable_audit_logging": True, "require_encryption": True}
    assert policy.metadata == {"author": "security-team@company.com", "created": "2024-01-15",
                               "updated": "2024-06-20"}
    own = ["allow_workspace_read", "allow_workspace_write", "block_sensitive_files",
           "block_system_dirs", "allow_select_queries", "block_ddl_operations",
           "warn_bulk_updates", "allow_safe_commands", "block_destructive_commands",
           "block_network_tools", "allow_internal_apis", "allow_approved_external",
           "block_plaintext_http", "block_other_networks"]
    ids = [p.id for p in policy.patterns]
    # inherited first (base, then compliance); the child's block_plaintext_http replaces base's
    assert ids[:3] == ["base_block_shadow", "block_plaintext_http", "compliance_block_env_dump"]
    assert set(ids) == set(own) | {"base_block_shadow", "compliance_block_env_dump"}
    assert len(ids) == len(set(ids))
    sensitive = policy.get_pattern("block_sensitive_files")
    assert sensitive.severity is Severity.CRITICAL
    assert sensitive.metadata == {"compliance": ["SOC2", "HIPAA", "PCI-DSS"]}
    assert policy.get_pattern("allow_approved_external").conditions == {
        "allowed_methods": ["GET", "POST"], "require_auth_header": True}
    [exception] = policy.exceptions
    assert exception.agent_pattern == "admin_agent_.*"
    assert exception.patterns == ("block_system_dirs", "block_ddl_operations")
    assert exception.expires == dt.date(2024, 12, 31)
    assert exception.approved_by == "security@company.com"


def test_enterprise_example_decides_as_its_comments_say():
    policy = load_policy(ENTERPRISE)
    assert policy.evaluate("file_read", "/workspace/notes.txt").action == "allow"
    pem = policy.evaluate("file_read", "/workspace/server.pem")
    assert (pem.action, pem.pattern_id) == ("deny", "block_sensitive_files")
    http = policy.evaluate("network_request", "http://example.com/")
    assert (http.action, http.pattern_id) == ("deny", "block_plaintext_http")  # child's, not base's
    assert policy.evaluate("file_read", "/etc/shadow").pattern_id == "base_block_shadow"
    assert policy.evaluate("env_read", "DATABASE_PASSWORD").pattern_id == "compliance_block_env_dump"
    # the admin exception expired on 2024-12-31: it no longer applies
    admin = policy.evaluate("file_write", "/etc/hosts", {"agent_id": "admin_agent_1"})
    assert (admin.allowed, admin.pattern_id) == (False, "block_system_dirs")


# --- the search path ---------------------------------------------------------------------------

def test_builtin_dir_is_the_repository_policies_directory():
    assert BUILTIN_POLICY_DIR == Path(__file__).resolve().parents[1] / "policies"


def test_search_path_order(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENT_OS_POLICY_PATH", f"{tmp_path / 'env1'}::{tmp_path / 'env2'}")
    assert policy_search_path([str(tmp_path / "arg")]) == [
        tmp_path / "arg", tmp_path / "env1", tmp_path / "env2",
        Path("/etc/agentd/policies"), BUILTIN_POLICY_DIR]


def test_names_resolve_along_the_search_path_first_wins(tmp_path, monkeypatch):
    write(tmp_path / "arg", "team.yaml", "name: from_arg\n")
    write(tmp_path / "env", "team.yaml", "name: from_env\n")
    write(tmp_path / "env", "other.yaml", "name: other_from_env\n")
    monkeypatch.setenv("AGENT_OS_POLICY_PATH", str(tmp_path / "env"))
    assert load_policy("team", search_path=[str(tmp_path / "arg")]).name == "from_arg"
    assert load_policy("team").name == "from_env"
    assert load_policy("other", search_path=[str(tmp_path / "arg")]).name == "other_from_env"


def test_unknown_name_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("AGENT_OS_POLICY_PATH", str(tmp_path))
    write(tmp_path, "strictest.yaml", "name: s\n")
    with pytest.raises(PolicyNotFoundError) as info:
        load_policy("strictst")
    assert "did you mean 'strictest'?" in str(info.value) and str(tmp_path) in str(info.value)
    with pytest.raises(PolicyNotFoundError):
        load_policy(tmp_path / "missing.yaml")


@pytest.mark.parametrize("name", ["strict", "permissive", "read_only"])
def test_builtin_names_resolve(name):
    if not (BUILTIN_POLICY_DIR / f"{name}.yaml").is_file():
        pytest.skip(f"{BUILTIN_POLICY_DIR}/{name}.yaml is not written yet")
    policy = load_policy(name, variables={"WORKSPACE": "/home/u/ws"})
    assert policy.source == str(BUILTIN_POLICY_DIR / f"{name}.yaml")
    assert policy.patterns


def test_the_builtin_directory_is_the_last_resort(tmp_path, monkeypatch):
    import agent_os.loader as loader
    write(tmp_path / "builtin", "strict.yaml", "name: fixture_strict\n")
    monkeypatch.setattr(loader, "BUILTIN_POLICY_DIR", tmp_path / "builtin")
    monkeypatch.delenv("AGENT_OS_POLICY_PATH", raising=False)
    assert load_policy("strict").name == "fixture_strict"
    write(tmp_path / "override", "strict.yaml", "name: site_strict\n")
    monkeypatch.setenv("AGENT_OS_POLICY_PATH", str(tmp_path / "override"))
    assert load_policy("strict").name == "site_strict"


def test_a_files_own_directory_is_searched_first_for_extends(tmp_path, monkeypatch):
    write(tmp_path / "env", "base.yaml", "name: wrong_base\n")
    monkeypatch.setenv("AGENT_OS_POLICY_PATH", str(tmp_path / "env"))
    write(tmp_path / "mine", "base.yaml", "name: right_base\ndefaults: {action: warn}\n")
    child = write(tmp_path / "mine", "child.yaml", "name: child\nextends: [base]\n")
    assert load_policy(child).extends[0].name == "right_base"
    assert load_policy(child).default_action == "warn"  # inherited


def test_extends_from_a_string_uses_the_search_path(tmp_path):
    write(tmp_path, "base.yaml", "patterns:\n  - {id: b, action_type: file_read, pattern: '/b', action: deny}\n")
    policy = policy_from_yaml_string("extends: [base]\n", search_path=[str(tmp_path)])
    assert [p.id for p in policy.patterns] == ["b"]


def test_diamond_inheritance_loads_the_shared_parent_once(tmp_path):
    write(tmp_path, "root.yaml", "patterns:\n  - {id: r, action_type: file_read, pattern: '/r'}\n")
    write(tmp_path, "left.yaml", "extends: [root]\n")
    write(tmp_path, "right.yaml", "extends: [root]\n")
    top = write(tmp_path, "top.yaml", "extends: [left, right]\n")
    policy = load_policy(top)
    assert [p.id for p in policy.patterns] == ["r"]
    assert policy.extends[0].extends[0] is policy.extends[1].extends[0]


# --- variables -----------------------------------------------------------------------------------

def test_variables_are_escaped_and_trailing_slashes_dropped(tmp_path):
    text = """
        patterns:
          - id: ws
            action_type: file_write
            pattern: "^${WORKSPACE}/.*"
            action: allow
        default_action: deny
    """
    policy = policy_from_yaml_string(textwrap.dedent(text), variables={"WORKSPACE": "/srv/a.b+c/"})
    assert policy.get_pattern("ws").pattern == r"^/srv/a\.b\+c/.*"
    assert policy.evaluate("file_write", "/srv/a.b+c/x").allowed
    assert not policy.evaluate("file_write", "/srv/aXb+c/x").allowed
    root = policy_from_yaml_string(textwrap.dedent(text), variables={"WORKSPACE": "/"})
    assert root.get_pattern("ws").pattern == "^/.*"


def test_default_variables(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", "/home/someone")
    monkeypatch.delenv("TMPDIR", raising=False)
    bound = bind_variables()
    assert bound["WORKSPACE"] == os.path.realpath(tmp_path)
    assert bound["HOME"] == "/home/someone"
    assert bound["TMPDIR"] == "/tmp"
    monkeypatch.setenv("TMPDIR", "/var/tmp/")
    assert bind_variables()["TMPDIR"] == "/var/tmp"


def test_path_variables_are_resolved_like_targets(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    assert bind_variables({"WORKSPACE": str(tmp_path / "link")})["WORKSPACE"] == str(real)


def test_caller_variables_extend_the_defaults():
    policy = policy_from_yaml_string(
        'patterns:\n  - {id: api, action_type: network_request, pattern: "^https://${API_HOST}/.*", action: allow}\n',
        variables={"API_HOST": "api.example.com"})
    assert policy.get_pattern("api").pattern == r"^https://api\.example\.com/.*"


# --- defaults, exceptions ----------------------------------------------------------------------

def test_python_api_spelling_of_defaults():
    policy = policy_from_yaml_string("default_action: warn\nviolation_mode: block\n")
    assert (policy.default_action, policy.violation_mode) == ("warn", ViolationMode.BLOCK)
    seed = policy_from_yaml_string(textwrap.dedent("""
        name: quick_policy
        default_action: deny
        patterns:
          - action_type: file_read
            pattern: ".*"
            action: allow
        """))
    assert seed.evaluate("file_read", "/anything").allowed
    assert not seed.evaluate("file_write", "/anything").allowed


def test_unexpired_exception_applies_and_expired_does_not():
    future = (dt.date.today() + dt.timedelta(days=30)).isoformat()
    text = f"""
        default_action: allow
        patterns:
          - {{id: no_etc, action_type: file_write, pattern: "^/etc/.*", action: deny, severity: high}}
        exceptions:
          - agent_pattern: "admin_.*"
            patterns: [no_etc]
            expires: {future}
          - agent_pattern: "old_.*"
            patterns: [no_etc]
            expires: 2020-01-01
    """
    policy = policy_from_yaml_string(textwrap.dedent(text))
    assert policy.evaluate("file_write", "/etc/x", {"agent_id": "admin_1"}).allowed
    assert not policy.evaluate("file_write", "/etc/x", {"agent_id": "old_1"}).allowed
    assert not policy.evaluate("file_write", "/etc/x", {"agent_id": "user_1"}).allowed


def test_disabled_pattern_and_per_pattern_mode():
    policy = policy_from_yaml_string(textwrap.dedent("""
        patterns:
          - {id: disabled_one, action_type: file_read, pattern: "/a", action: deny, enabled: false}
          - {id: stop, action_type: file_read, pattern: "/b", action: deny, violation_mode: sigstop}
        """))
    assert policy.evaluate("file_read", "/a").allowed
    assert policy.evaluate("file_read", "/b").violation_mode is ViolationMode.SIGSTOP


# --- merge documents -------------------------------------------------------------------------------

MERGE_DOC = """
    name: merged
    merge:
      strategy: strict
      policies:
        - base
        - name: inline
          default_action: allow
          patterns:
            - {id: no_tmp, action_type: file_write, pattern: "^/tmp/.*", action: deny, severity: high}
"""


def test_merge_document_builds_a_merged_policy(tmp_path):
    write(tmp_path, "base.yaml", """
        name: base
        default_action: allow
        patterns:
          - {id: no_etc, action_type: file_write, pattern: "^/etc/.*", action: deny, severity: high}
        """)
    policy = policy_from_yaml_string(textwrap.dedent(MERGE_DOC), search_path=[str(tmp_path)])
    assert isinstance(policy, MergedPolicy)
    assert (policy.name, policy.strategy) == ("merged", "strict")
    assert [part.name for part in policy.parts] == ["base", "inline"]
    assert policy.evaluate("file_write", "/etc/x").pattern_id == "no_etc"
    assert policy.evaluate("file_write", "/tmp/x").pattern_id == "no_tmp"
    assert policy.evaluate("file_write", "/home/x").allowed


# --- dumping -------------------------------------------------------------------------------------

PROBES = [
    ("file_read", "/workspace/a.txt", {}), ("file_read", "/workspace/k.pem", {}),
    ("file_read", "/etc/shadow", {}), ("file_write", "/workspace/x", {"size_bytes": 10}),
    ("file_write", "/workspace/x", {"size_bytes": 10**9}), ("file_write", "/etc/passwd", {}),
    ("file_write", "/etc/passwd", {"agent_id": "admin_agent_1"}),
    ("database_execute", "DROP TABLE t", {}), ("database_write", "UPDATE t SET a=1", {}),
    ("database_write", "UPDATE t SET a=1 WHERE id=1", {"query": "UPDATE t SET a=1 WHERE id=1",
                                                       "affected_rows": 1}),
    ("shell_execute", "ls -la", {}), ("shell_execute", "sudo ls", {}),
    ("shell_execute", "curl x", {}), ("network_request", "http://a/", {}),
    ("network_request", "https://api.github.com/x", {"method": "GET", "auth_header": True}),
    ("network_request", "https://api.github.com/x", {"method": "DELETE"}),
    ("network_request", "https://x.internal.company.com/y", {}),
    ("env_read", "DATABASE_PASSWORD", {}), ("process_spawn", "/bin/ls", {}),
]


def decisions(policy, probes=PROBES):
    return [(r.action, r.allowed, r.pattern_id, r.violation_mode)
            for r in (policy.evaluate(a, t, c) for a, t, c in probes)]


def test_dump_round_trips_the_enterprise_example():
    policy = load_policy(ENTERPRISE)
    text = policy_to_yaml(policy)
    document = yaml.safe_load(text)
    assert "extends" not in document  # self-contained: inherited patterns flattened
    assert document["author"] == "security-team@company.com" and "metadata" not in document
    assert document["defaults"] == {"action": "deny", "violation_mode": "sigkill"}
    again = policy_from_yaml_string(text)
    assert decisions(again) == decisions(policy)
    assert [p.id for p in again.patterns] == [p.id for p in policy.patterns]
    assert again.exceptions == policy.exceptions
    assert policy_to_yaml(again) == text  # a fixed point


def test_dump_contains_expanded_variables():
    policy = policy_from_yaml_string(
        'patterns:\n  - {id: ws, action_type: file_read, pattern: "^${WORKSPACE}/.*"}\n',
        variables={"WORKSPACE": "/w.s"})
    assert yaml.safe_load(policy_to_yaml(policy))["patterns"][0]["pattern"] == r"^/w\.s/.*"


def test_dump_of_a_python_policy_round_trips():
    policy = Policy(name="py", default_action="deny", violation_mode=ViolationMode.BLOCK,
                    patterns=[Pattern(action_type="file_read", pattern=r"/data/.*", action="allow",
                                      metadata={"tags": ("a", "b")}),
                              Pattern(id="no_env", action_type="env_read", pattern=r".*KEY.*",
                                      severity=4, message="no keys", description="keys stay put")])
    policy.disable_pattern("no_env")
    again = policy_from_yaml_string(policy.to_yaml())
    probes = [("file_read", "/data/x", {}), ("file_read", "/etc/x", {}), ("env_read", "API_KEY", {})]
    assert decisions(again, probes) == decisions(policy, probes)
    assert again.get_pattern("no_env").enabled is False
    assert again.get_pattern("no_env").description == "keys stay put"
    assert [p.id for p in again.patterns] == [p.id for p in policy.patterns]


def test_dump_of_a_merged_policy_round_trips(tmp_path):
    write(tmp_path, "base.yaml", """
        default_action: allow
        patterns:
          - {id: no_etc, action_type: file_write, pattern: "^/etc/.*", action: deny, severity: high}
        """)
    policy = policy_from_yaml_string(textwrap.dedent(MERGE_DOC), search_path=[str(tmp_path)])
    again = policy_from_yaml_string(policy_to_yaml(policy))
    assert isinstance(again, MergedPolicy) and again.strategy == "strict"
    probes = [("file_write", t, {}) for t in ("/etc/x", "/tmp/x", "/home/x")]
    assert decisions(again, probes) == decisions(policy, probes)


def test_unrepresentable_metadata_is_an_error_not_a_silent_loss():
    from agent_os.errors import PolicyError
    policy = Policy(name="odd", metadata={"when": object()})
    with pytest.raises(PolicyError, match="cannot write policy.metadata.when"):
        policy_to_yaml(policy)


def test_dollar_brace_in_a_python_regex_survives_the_round_trip():
    # From Python, "${" is an end anchor and a literal brace, not a variable reference.
    policy = Policy(name="d", default_action="allow", patterns=[
        Pattern(id="brace", action_type="env_read", pattern=r"[${]HOME", action="deny")])
    again = policy_from_yaml_string(policy_to_yaml(policy))
    probes = [("env_read", "{HOME", {}), ("env_read", "$HOME", {}), ("env_read", "HOME", {})]
    assert decisions(again, probes) == decisions(policy, probes)
    assert [r[0] for r in decisions(again, probes)] == ["deny", "deny", "allow"]


def test_only_plain_descriptive_metadata_is_lifted_to_the_top_level():
    policy = Policy(name="m", metadata={"author": {"team": "sec"}, "created": "2024-01-01"})
    document = yaml.safe_load(policy_to_yaml(policy))
    assert document["created"] == "2024-01-01"
    assert document["metadata"] == {"author": {"team": "sec"}}
    assert policy_from_yaml_string(policy_to_yaml(policy)).metadata == policy.metadata


SHIPPED = sorted(BUILTIN_POLICY_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED or [None], ids=[p.name for p in SHIPPED] or ["none"])
def test_every_shipped_policy_validates_and_round_trips(path):
    if path is None:
        pytest.skip(f"no policies in {BUILTIN_POLICY_DIR} yet")
    variables = {"WORKSPACE": "/home/agent/ws", "HOME": "/home/agent", "TMPDIR": "/tmp"}
    assert [str(i) for i in validate_yaml_file(path, variables=variables)] == []
    policy = load_policy(path, variables=variables)
    again = policy_from_yaml_string(policy_to_yaml(policy))
    assert [p.id for p in again.patterns] == [p.id for p in policy.patterns]
    assert (again.default_action, again.violation_mode) == (policy.default_action, policy.violation_mode)
