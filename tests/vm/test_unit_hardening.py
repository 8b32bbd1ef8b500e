"""The unit's seccomp hardening against the TOCTOU rewrite, under the VM's real systemd (252).

Every pinned open of an agent runs as openat2 with RESOLVE_NO_SYMLINKS (supervisor/agentd/
scratch.py), and an agent inherits every seccomp filter of its supervisor. systemd's
``RestrictSUIDSGID=yes`` answers openat2 with ENOSYS: under it (as agentd.service once had it)
every agent died in the dynamic loader ("libc.so.6: cannot open shared object file: Error 38").
Here transient units run ``agentd run --embedded`` with and without that setting: without it the
agent runs; with it agentd refuses before starting the agent, naming the reason (exit 125).
The shipped unit itself is tested by test_daemon_systemd.py. Runs only inside the test VM.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
AGENTD = shutil.which("agentd") or "/usr/local/bin/agentd"
POLICY = REPO / "policies" / "permissive.yaml"


def transient_run(tmp_path: Path, *properties: str) -> tuple[subprocess.CompletedProcess, Path]:
    marker = tmp_path / f"ran-{uuid.uuid4().hex[:8]}"
    argv = ["systemd-run", "--wait", "--pipe", "--quiet", "--collect",
            f"--unit=agentd-hardening-{uuid.uuid4().hex[:8]}",
            *(f"--property={p}" for p in properties),
            AGENTD, "run", "--embedded", "--policy", str(POLICY),
            "--audit-log", str(tmp_path / "audit.jsonl"), "--workspace", str(tmp_path),
            "--", "/bin/sh", "-c", f"echo yes > {marker}"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180,
                            stdin=subprocess.DEVNULL)
    return result, marker


def test_an_agent_runs_under_a_plain_transient_unit(tmp_path):
    result, marker = transient_run(tmp_path, "NoNewPrivileges=yes")
    assert result.returncode == 0, result.stderr
    assert marker.read_text() == "yes\n"


def test_restrict_suid_sgid_refuses_openat2_and_agentd_says_so(tmp_path):
    result, marker = transient_run(tmp_path, "RestrictSUIDSGID=yes")
    assert result.returncode == 125, (result.returncode, result.stderr)
    assert "openat2" in result.stderr and "Function not implemented" in result.stderr
    assert not marker.exists()

