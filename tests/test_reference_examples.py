"""The policy reference's Python examples (docs/reference-examples.md) run as written."""

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reference-examples.md"
DATA = Path(__file__).resolve().parent / "data"

SMALL_POLICY = """\
name: {name}
default_action: allow
patterns:
  - id: {name}_rule
    action_type: file_read
    pattern: "^/secret/.*"
    action: deny
"""


def blocks():
    text = DOC.read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


@pytest.fixture
def reference_dir(tmp_path, monkeypatch):
    policies = tmp_path / "policies"
    policies.mkdir()
    for name in ("enterprise_security", "base_security_policy", "compliance_policy"):
        shutil.copy(DATA / f"{name}.yaml", policies / f"{name}.yaml")
    for name in ("my_policy", "agent_overrides", "app_rules", "org_baseline", "updated_policy",
                 "production", "development"):
        (policies / f"{name}.yaml").write_text(SMALL_POLICY.format(name=name))
    (tmp_path / "path" / "to").mkdir(parents=True)
    (tmp_path / "path" / "to" / "policy.yaml").write_text(SMALL_POLICY.format(name="loaded"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_example_runs_in_order(reference_dir):
    from agent_os import Policy

    alerts = []
    namespace = {
        "send_security_alert": alerts.append,
        "log_to_siem": lambda violation: None,
        "admin_task": {"action_type": "database_read", "target": "SELECT 1"},
        "other_policy": Policy(name="other", default_action="deny"),
    }
    found = blocks()
    assert len(found) >= 18, "the examples page lost blocks"
    for index, code in enumerate(found):
        try:
            exec(compile(code, f"{DOC.name}[block {index}]", "exec"), namespace)
        except Exception as exc:  # name the block that failed
            raise AssertionError(f"reference example block {index} failed: {exc!r}\n{code}") from exc
    # the last custom handler policy is live: a critical violation alerts and kills
    assert "custom_violation_handler" in namespace
