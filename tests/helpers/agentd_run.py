"""Run programs under the real ``agentd run`` (the venv's console script) in integration tests.

``write_policy(dir, patterns)`` writes a YAML policy (default allow) from a list of pattern
dicts; ``run_agentd(...)`` runs ``agentd run`` as a subprocess and returns the completed process
with the audit log's records attached (``.records``). ``needs_tracing`` skips a test, with the
reason, on a host where ptrace + seccomp cannot work (``tracing_unavailable`` says why), and
``agentd_run_help`` says whether ``agentd run`` itself can start (the escape suite uses both).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# The agentd under test: this venv's, or $AGENTD_UNDER_TEST (e.g. a wrapper running an older
# checkout, to show that a new escape probe escapes the code before its fix). Every test
# helper and the escape harness take it from here.
AGENTD = os.environ.get("AGENTD_UNDER_TEST") or str(Path(sys.executable).with_name("agentd"))
PYTHON = sys.executable


def tracing_unavailable() -> str | None:
    """Why ``agentd run`` cannot trace its children on this host, or None."""
    try:
        with open("/proc/self/status") as handle:
            status = dict(line.split(":", 1) for line in handle if ":" in line)
    except OSError:
        return "cannot read /proc/self/status"
    if status.get("TracerPid", "0").strip() != "0":
        return "the test runner is itself traced: agentd cannot trace its children"
    if not status.get("Seccomp", "").strip():
        return "kernel without seccomp"
    try:
        scope = Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip()
    except OSError:
        scope = "0"
    if scope == "3":
        return "ptrace disabled by yama (ptrace_scope=3)"
    return None


needs_tracing = pytest.mark.skipif(tracing_unavailable() is not None,
                                   reason=tracing_unavailable() or "")


def agentd_run_help() -> tuple[str | None, str]:
    """(why `agentd run` cannot be used, or None; its --help text)."""
    try:
        done = subprocess.run([AGENTD, "run", "--help"], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`agentd run --help` cannot run: {exc}", ""
    if done.returncode != 0:
        return (f"`agentd run` is not available yet (`agentd run --help` exited "
                f"{done.returncode}: {done.stderr.strip()[:200]})"), ""
    return None, done.stdout


def write_policy(directory: Path, patterns: list[dict], default_action: str = "allow",
                 name: str = "test_policy", **extra) -> Path:
    path = Path(directory) / f"{name}.yaml"
    document = {"name": name, "default_action": default_action, "patterns": patterns, **extra}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def deny(id: str, action_type: str, pattern: str, mode: str = "block", **more) -> dict:
    return {"id": id, "action_type": action_type, "pattern": pattern, "action": "deny",
            "violation_mode": mode, "severity": "high", **more}


def read_records(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def run_agentd(policy: Path | str, command: list[str], *, cwd: Path, options: tuple = (),
               timeout: float = 60, env: dict | None = None, input: str | None = None,
               audit_log: Path | None = None) -> subprocess.CompletedProcess:
    audit_log = Path(audit_log or Path(cwd) / ".." / f"audit-{os.urandom(4).hex()}.jsonl").resolve()
    full_env = dict(os.environ if env is None else env)
    full_env.setdefault("AGENTD_RUNS_DIR", str(Path(cwd).resolve().parent / "runs"))
    argv = [AGENTD, "run", "--policy", str(policy), "--audit-log", str(audit_log),
            "--workspace", str(cwd), *options, "--", *command]
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env=full_env, input=input)
    result.records = read_records(audit_log)
    result.audit_log = audit_log
    return result
