"""``agentd policy validate|show|explain|test|list``: output and exit status (0 ok, 1 invalid or
failing, 2 usage error). The exit-status contract is also checked on the installed ``agentd``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentd.cli.main import main

DATA = Path(__file__).parent / "data"
ENTERPRISE = str(DATA / "enterprise_security.yaml")
CASES = str(DATA / "enterprise_cases.yaml")


def run(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, ["policy", *args], env=env, catch_exceptions=False)


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return str(path)


BAD = """
    name: bad
    patterns:
      - id: block_ssh
        action_type: file_raed
        pattern: "("
"""


# --- validate ----------------------------------------------------------------------------------

def test_validate_valid_file_exits_0():
    result = run("validate", ENTERPRISE)
    assert result.exit_code == 0
    assert result.output == f"{ENTERPRISE}: ok\n"


def test_validate_prints_every_problem_one_line_each_and_exits_1(tmp_path):
    bad = write(tmp_path, "bad.yaml", BAD)
    result = run("validate", bad, ENTERPRISE)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"{bad}:4: pattern 'block_ssh': unknown action type 'file_raed' (hint: did you mean 'file_read'?)",
        f"{bad}:5: pattern 'block_ssh': invalid regex '(': missing ), unterminated subpattern at "
        "position 0 (hint: escape literal parentheses as \\()",
        f"{ENTERPRISE}: ok",
    ]


def test_validate_missing_file_is_a_usage_error(tmp_path):
    result = run("validate", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert "no such file" in result.stderr


def test_validate_without_arguments_is_a_usage_error():
    assert run("validate").exit_code == 2


def test_validate_binds_variables(tmp_path):
    path = write(tmp_path, "v.yaml", 'patterns:\n  - {id: a, action_type: file_read, pattern: "^${DATA}/"}\n')
    assert run("validate", path).exit_code == 1
    assert run("validate", path, "--var", "DATA=/srv/data").exit_code == 0


# --- show, list --------------------------------------------------------------------------------

def test_show_prints_the_file_as_written():
    result = run("show", "base_security_policy", "--policy-dir", str(DATA))
    assert result.exit_code == 0
    assert result.output == (DATA / "base_security_policy.yaml").read_text()


def test_show_resolved_prints_the_flattened_policy():
    result = run("show", "enterprise_security", "--policy-dir", str(DATA), "--resolved")
    assert result.exit_code == 0
    assert "base_block_shadow" in result.output and "extends" not in result.output.split("\n", 1)[1]


def test_show_unknown_name_is_a_usage_error():
    result = run("show", "enterprise_securty", "--policy-dir", str(DATA))
    assert result.exit_code == 2
    assert "did you mean 'enterprise_security'?" in result.stderr


@pytest.mark.parametrize("name", ["strict", "permissive", "read_only"])
def test_show_builtin(name):
    from agent_os.loader import BUILTIN_POLICY_DIR
    path = BUILTIN_POLICY_DIR / f"{name}.yaml"
    if not path.is_file():
        pytest.skip(f"{path} is not written yet")
    result = run("show", name)
    assert result.exit_code == 0 and result.output == path.read_text()


def test_list_shows_search_path_policies_first_wins(tmp_path):
    write(tmp_path, "base_security_policy.yaml", "description: shadowing copy\n")
    result = run("list", "--policy-dir", str(tmp_path), "--policy-dir", str(DATA))
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    base = next(line for line in lines if line.startswith("base_security_policy"))
    assert "shadowing copy" in base and str(tmp_path) in base
    assert any(line.startswith("enterprise_security ") and "Security policy for enterprise" in line
               for line in lines)
    assert f"(shadowed: {DATA / 'base_security_policy.yaml'})" in lines


# --- explain -----------------------------------------------------------------------------------

def test_explain_names_winner_matches_mode_and_why():
    result = run("explain", "--policy", ENTERPRISE, "network_request", "http://example.com/")
    assert result.exit_code == 0
    out = result.output
    assert "decision: deny (refused)" in out
    assert "winner:   block_plaintext_http (deny, severity high" in out
    assert "mode:     sigkill: the policy's violation_mode (no mode on the pattern)" in out
    assert "signal:   SIGKILL" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("  ")]
    assert rows[0][:4] == ["block_plaintext_http", "deny", "high", "decided"]
    assert rows[1][:4] == ["block_other_networks", "deny", "medium", "catch-all:"]


def test_explain_context_values_are_yaml_scalars():
    small = run("explain", "--policy", ENTERPRISE, "--json", "--context", "size_bytes=100",
                "file_write", "/workspace/a")
    big = run("explain", "--policy", ENTERPRISE, "--json", "--context", "size_bytes=209715200",
              "file_write", "/workspace/a")
    small_json, big_json = json.loads(small.output), json.loads(big.output)
    assert small_json["context"] == {"size_bytes": 100}
    assert (small_json["decision"], small_json["pattern_id"]) == ("allow", "allow_workspace_write")
    assert (big_json["decision"], big_json["pattern_id"]) == ("deny", None)
    assert big_json["patterns"][0]["status"].startswith("did not apply")


def test_explain_agent_and_workspace(tmp_path):
    policy = write(tmp_path, "ws.yaml", """
        default_action: deny
        patterns:
          - {id: ws, action_type: file_write, pattern: "^${WORKSPACE}/.*", action: allow}
          - {id: no_tmp, action_type: file_write, pattern: "^/tmp/.*", action: deny, severity: high}
        exceptions:
          - {agent_pattern: "trusted", patterns: [no_tmp]}
        """)
    inside = json.loads(run("explain", "--policy", policy, "--workspace", "/srv/ws", "--json",
                            "file_write", "/srv/ws/out.txt").output)
    assert inside["decision"] == "allow" and inside["pattern_id"] == "ws"
    trusted = json.loads(run("explain", "--policy", policy, "--agent", "trusted", "--json",
                             "file_write", "/tmp/x").output)
    assert trusted["context"] == {"agent_id": "trusted"} and trusted["pattern_id"] is None


def test_explain_usage_errors(tmp_path):
    assert run("explain", "--policy", ENTERPRISE, "file_wrte", "/x").exit_code == 2
    assert run("explain", "--policy", ENTERPRISE, "--context", "novalue", "file_read", "/x").exit_code == 2
    assert run("explain", "--policy", str(tmp_path / "none.yaml"), "file_read", "/x").exit_code == 2
    bad = run("explain", "--policy", write(tmp_path, "bad.yaml", BAD), "file_read", "/x")
    assert bad.exit_code == 2 and "invalid regex" in bad.stderr


# --- test --------------------------------------------------------------------------------------

def test_policy_test_all_pass():
    result = run("test", "--policy", ENTERPRISE, CASES)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(line.startswith("PASS  ") for line in lines[:-1])
    assert lines[-1].startswith("7 passed, 0 failed")


def test_policy_test_failure_prints_a_diff_and_exits_1(tmp_path):
    cases = write(tmp_path, "cases.yaml", """
        - name: wrong on purpose
          action_type: file_read
          target: /workspace/a
          expect: deny
          pattern_id: block_sensitive_files
        - action_type: file_read
          target: /workspace/b
          expect: allow
        """)
    result = run("test", "--policy", ENTERPRISE, cases)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"FAIL  wrong on purpose  ({cases}:1)",
        "      - expected  decision: deny   pattern: block_sensitive_files",
        "      + actual    decision: allow  pattern: allow_workspace_read",
        "        reason: matched allow pattern 'allow_workspace_read'",
        "PASS  file_read /workspace/b",
        "1 passed, 1 failed (2 cases, policy enterprise_security_policy)",
    ]


def test_policy_test_checks_a_null_pattern_id_as_the_default(tmp_path):
    cases = write(tmp_path, "cases.yaml", """
        - {action_type: process_spawn, target: /bin/ls, expect: deny, pattern_id: null}
        - {action_type: file_read, target: /workspace/a, expect: allow, pattern_id: null}
        """)
    result = run("test", "--policy", ENTERPRISE, cases)
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0] == "PASS  process_spawn /bin/ls"
    assert "- expected  decision: allow  pattern: (default)" in result.stdout


def test_policy_test_bad_case_file_is_a_usage_error(tmp_path):
    cases = write(tmp_path, "cases.yaml", """
        - action_type: file_read
          target: /a
          expect: allow
        - action_type: file_raed
          target: /a
          expect: block
          colour: red
        """)
    result = run("test", "--policy", ENTERPRISE, cases)
    assert result.exit_code == 2
    problems = [line for line in result.stderr.splitlines() if line.startswith(cases)]
    assert problems == [
        f"{cases}:4: case 1: unknown key 'colour' (hint: allowed keys: name, action_type, target, "
        "context, agent_id, expect, pattern_id)",
        f"{cases}:4: case 1: unknown action type 'file_raed' (hint: did you mean 'file_read'?)",
        f"{cases}:4: case 1: bad expect 'block': use allow, deny or warn",
    ]
    assert run("test", "--policy", ENTERPRISE, str(tmp_path / "none.yaml")).exit_code == 2
    assert run("test", CASES).exit_code == 2  # --policy is required


# --- the installed command ---------------------------------------------------------------------

def test_installed_agentd_exit_statuses(tmp_path):
    agentd = shutil.which("agentd") or str(Path(sys.executable).parent / "agentd")
    if not os.access(agentd, os.X_OK):
        pytest.skip("the agentd console script is not installed in this environment")
    bad = write(tmp_path, "bad.yaml", BAD)

    def status(*args: str) -> int:
        return subprocess.run([agentd, "policy", *args], capture_output=True, timeout=60).returncode

    assert status("validate", ENTERPRISE) == 0
    assert status("validate", bad) == 1
    assert status("validate", str(tmp_path / "missing.yaml")) == 2
    assert status("test", "--policy", ENTERPRISE, CASES) == 0
