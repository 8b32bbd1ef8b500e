"""`agentd audit show|verify`: exit codes and output, through click's CliRunner and the real entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent_os.flight_recorder import FlightRecorder, head_path_for
from agentd.cli.main import main


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "flight.jsonl"
    with FlightRecorder(path, fsync="never") as recorder:
        recorder.record(agent_id="alpha", action_type="file_read", target="/work/a.txt", decision="allow")
        recorder.record(agent_id="alpha", action_type="file_read", target="/etc/shadow", decision="deny",
                        pattern_ids=["block_shadow"], severity="critical", signal="SIGKILL")
        recorder.record(agent_id="beta", action_type="shell_execute", target="sudo ls", decision="deny",
                        pattern_ids=["block_sudo", "catch_all"], severity="high")
        recorder.record(agent_id="beta", action_type="network_connect", target="127.0.0.1:8080", decision="warn")
    return path


def _runner() -> CliRunner:
    try:
        return CliRunner(mix_stderr=False)  # click 8.1 mixes stderr into output unless told not to
    except TypeError:
        return CliRunner()  # click >= 8.2 always keeps stderr apart


def run(*args: str, env: dict[str, str] | None = None):
    return _runner().invoke(main, ["audit", *args], env=env, catch_exceptions=False)


def test_show_table(log):
    result = run("show", "--log", str(log))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["TIME", "SEQ", "AGENT", "ACTION", "DECISION", "SEVERITY", "SIGNAL", "PATTERNS", "TARGET"]
    assert len(lines) == 5
    assert "/etc/shadow" in lines[2] and "deny" in lines[2] and "critical" in lines[2] and "SIGKILL" in lines[2]
    assert "block_sudo,catch_all" in lines[3]


def test_show_json_and_filters(log):
    result = run("show", "--log", str(log), "--json", "--decision", "deny")
    assert result.exit_code == 0
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["target"] for r in records] == ["/etc/shadow", "sudo ls"]
    assert records == [r for r in FlightRecorder.read(log) if r["decision"] == "deny"]

    result = run("show", "--log", str(log), "--json", "--agent", "beta", "--action", "network_connect")
    assert [json.loads(line)["target"] for line in result.stdout.splitlines()] == ["127.0.0.1:8080"]

    result = run("show", "--log", str(log), "--json", "--tail", "2")
    assert [json.loads(line)["seq"] for line in result.stdout.splitlines()] == [2, 3]

    first = next(FlightRecorder.read(log))
    result = run("show", "--log", str(log), "--json", "--since", "1h", "--until", first["time"])
    assert result.stdout == ""

    result = run("show", "--log", str(log), "--json", "--since", first["time"], "--agent", "alpha")
    assert len(result.stdout.splitlines()) == 2


def test_show_no_match_and_bad_options(log, tmp_path):
    result = run("show", "--log", str(log), "--agent", "nobody")
    assert result.exit_code == 0 and result.stdout == "" and "no matching records" in result.stderr
    assert run("show", "--log", str(log), "--since", "last tuesday").exit_code == 2
    assert run("show", "--log", str(log), "--decision", "maybe").exit_code == 2
    assert run("show", "--log", str(log), "--tail", "0").exit_code == 2
    missing = run("show", "--log", str(tmp_path / "missing.jsonl"))
    assert missing.exit_code == 2 and "no audit log at" in missing.stderr


def test_show_warns_about_garbage_lines(log):
    with open(log, "ab") as handle:
        handle.write(b"garbage\n")
    result = run("show", "--log", str(log), "--json")
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 4
    assert "line is not valid JSON" in result.stderr and "agentd audit verify" in result.stderr


def test_verify_ok(log):
    result = run("verify", "--log", str(log))
    assert result.exit_code == 0
    assert result.stdout.startswith(f"OK {log}: 4 records, chain intact")


def test_verify_tampered_names_the_line(log):
    log.write_bytes(log.read_bytes().replace(b"sudo ls", b"sudo id"))
    result = run("verify", "--log", str(log))
    assert result.exit_code == 1
    assert len(result.stdout.splitlines()) == 1
    assert result.stdout.startswith(f"TAMPERED {log}:3: hash mismatch")


def test_verify_truncated_tail(log):
    log.write_bytes(b"".join(log.read_bytes().splitlines(keepends=True)[:2]))
    result = run("verify", "--log", str(log))
    assert result.exit_code == 1 and "truncated tail" in result.stdout


def test_verify_json(log):
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(lines[0] + lines[2] + lines[3])
    result = run("verify", "--log", str(log), "--json")
    assert result.exit_code == 1
    body = json.loads(result.stdout)
    assert body["ok"] is False and body["line"] == 2 and body["records"] == 1 and "seq gap" in body["error"]


def test_verify_strict_makes_warnings_fatal(log):
    head_path_for(log).unlink()
    relaxed = run("verify", "--log", str(log))
    assert relaxed.exit_code == 0 and "truncated tail cannot be detected" in relaxed.stderr
    assert run("verify", "--log", str(log), "--strict").exit_code == 1


def test_verify_usage_errors(tmp_path):
    missing = run("verify", "--log", str(tmp_path / "nope.jsonl"))
    assert missing.exit_code == 2 and "no audit log at" in missing.stderr
    assert run("verify", "--log", str(tmp_path)).exit_code == 2  # a directory
    assert run("verify", "--bogus").exit_code == 2


def test_default_log_from_environment(log, tmp_path):
    result = run("verify", env={"AGENTD_AUDIT_LOG": str(log)})
    assert result.exit_code == 0 and str(log) in result.stdout
    missing = run("show", env={"AGENTD_AUDIT_LOG": str(tmp_path / "none.jsonl")})
    assert missing.exit_code == 2 and "$AGENTD_AUDIT_LOG" in missing.stderr


def test_installed_entry_point(log):
    agentd = Path(sys.executable).parent / "agentd"
    if not agentd.exists():
        agentd = shutil.which("agentd")
        if agentd is None:
            pytest.skip("the agentd entry point is not installed (run scripts/setup)")
    ok = subprocess.run([str(agentd), "audit", "verify", "--log", str(log)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "chain intact" in ok.stdout, ok.stderr
    log.write_bytes(log.read_bytes().replace(b"/etc/shadow", b"/etc/shadoW"))
    bad = subprocess.run([str(agentd), "audit", "verify", "--log", str(log)], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and ":2: hash mismatch" in bad.stdout
    shown = subprocess.run([str(agentd), "audit", "show", "--log", str(log), "--json", "--agent", "beta"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and len(shown.stdout.splitlines()) == 2


def test_show_table_says_how_often_a_summarised_decision_came_again(tmp_path):
    path = tmp_path / "flight.jsonl"
    with FlightRecorder(path, fsync="never") as recorder:
        recorder.record(agent_id="alpha", action_type="file_read", target="/lib/x.so",
                        decision="allow", syscall="openat")
        recorder.record(agent_id="alpha", action_type="file_read", target="/lib/x.so",
                        decision="allow", syscall="summary", repeats=39)
    result = run("show", "--log", str(path))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "/lib/x.so" in line]
    assert len(lines) == 2
    assert "+39 repeats" in lines[1] and "repeats" not in lines[0]
