"""The audit log grows with what the agent changes and what is denied: an allowed read repeated in
a run is one record plus one summary with the count; writes and denials are recorded each time;
a policy can ask for every record (``defaults.log_level: debug`` or ``settings:
audit_every_decision: true``); the chain still verifies."""

from __future__ import annotations

import pytest

from agent_os.flight_recorder import verify_file
from helpers.agentd_run import PYTHON, deny, needs_tracing, run_agentd, write_policy

pytestmark = [needs_tracing, pytest.mark.needs_ptrace]

TIMES = 40


def _agent(data, out) -> list[str]:
    code = (
        f"import os\n"
        f"for _ in range({TIMES}):\n"
        f"    open({str(data)!r}).read()\n"
        f"    open({str(out)!r}, 'w').write('x')\n"
        f"    try:\n"
        f"        open('/etc/shadow').read()\n"
        f"    except PermissionError:\n"
        f"        pass\n"
    )
    return [PYTHON, "-c", code]


@pytest.fixture
def files(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    data = ws / "data.txt"
    data.write_text("payload\n")
    return ws, data, ws / "out.txt"


def _for(records, action_type, target):
    return [r for r in records if r.get("action_type") == action_type and r.get("target") == target]


def _run(tmp_path, files, **policy_extra):
    ws, data, out = files
    policy = write_policy(tmp_path, [deny("no_shadow", "file_read", r"^/etc/shadow$")],
                          **policy_extra)
    result = run_agentd(policy, _agent(data, out), cwd=ws)
    assert result.returncode == 0, result.stderr
    return result, str(data), str(out)


def test_repeated_allowed_reads_are_one_record_and_a_count(tmp_path, files):
    result, data, out = _run(tmp_path, files)
    reads = _for(result.records, "file_read", data)
    assert [r.get("repeats") for r in reads] == [None, TIMES - 1], reads
    assert reads[1]["syscall"] == "summary" and reads[1]["decision"] == "allow"
    # changes and denials, one record each time
    assert len(_for(result.records, "file_write", out)) == TIMES
    denied = _for(result.records, "file_read", "/etc/shadow")
    assert len(denied) == TIMES and all(r["decision"] == "deny" for r in denied)
    assert verify_file(result.audit_log).ok


@pytest.mark.parametrize("extra", [
    {"defaults": {"log_level": "debug"}},
    {"settings": {"audit_every_decision": True}},
], ids=["log_level_debug", "settings"])
def test_a_policy_can_ask_for_every_record(tmp_path, files, extra):
    result, data, _ = _run(tmp_path, files, **extra)
    reads = _for(result.records, "file_read", data)
    assert len(reads) == TIMES and not any("repeats" in r for r in reads)
    assert verify_file(result.audit_log).ok
