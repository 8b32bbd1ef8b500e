"""Denied or failed, the agent sees the truth: where the kernel fails a call anyway (a closed
descriptor, an empty, too long or looping path, a bad pointer, a missing file, a name that
exists), the agent gets the kernel's own errno under agentd, never a made-up EACCES.

Each case in tests/data/errno_cases.py is one syscall; the same program runs natively and under
`agentd run` (permissive, where most of them are let through or cannot be decoded, and strict,
which refuses several of them by policy), and the errno of every case must be the same. A second
test races a descriptor being opened against the refused call: the call never runs unchecked.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.agentd_run import needs_tracing, run_agentd, write_policy

pytestmark = [needs_tracing, pytest.mark.needs_ptrace]

CASES = Path(__file__).parent / "data" / "errno_cases.py"
# The interpreter the agent runs: the test's own (a venv's python is a symlink into /usr).
PYTHON = sys.executable


def native(workdir: Path) -> dict[str, int]:
    done = subprocess.run([PYTHON, str(CASES)], cwd=workdir, capture_output=True, text=True,
                          timeout=60, check=True)
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def expected(tmp_path_factory) -> dict[str, int]:
    errors = native(tmp_path_factory.mktemp("native"))
    assert all(errors.values()), f"every case must fail natively: {errors}"
    return errors


@pytest.mark.parametrize("policy", ["permissive", "strict"])
def test_agent_sees_the_kernels_errno(tmp_path, policy, expected):
    workdir = tmp_path / "ws"
    workdir.mkdir()
    done = run_agentd(policy, [PYTHON, str(CASES)], cwd=workdir, options=("--network", "off"))
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    wrong = {case: f"native {os.strerror(expected[case])}, under agentd "
                   f"{os.strerror(seen[case]) if seen.get(case) else seen.get(case)}"
             for case in expected if seen.get(case) != expected[case]}
    assert not wrong, wrong
    # a call the kernel fails for its own reasons is no policy matter, and the record says so
    refusals = {r["syscall"]: r for r in done.records
                if "agentd:kernel_refuses" in (r.get("pattern_ids") or [])}
    assert {"fchmod", "openat", "unlinkat", "chmod"} <= set(refusals), sorted(refusals)
    assert "the kernel fails this call (EBADF)" in refusals["fchmod"]["reason"]
    if policy == "strict":
        # the policy really refused some of them: the errno came from the probe, not from a
        # call that ran
        refused = {r["target"] for r in done.records if r.get("decision") == "deny"}
        assert "/etc/agentd-no-such.conf" in refused and "/etc" in refused, refused


RACE = r"""
import os, sys, threading
victim, fd_number, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
stop = False
def opener():
    while not stop:
        fd = os.open(victim, os.O_RDONLY)
        if fd != fd_number:
            os.dup2(fd, fd_number)
            os.close(fd)
        os.close(fd_number)
thread = threading.Thread(target=opener)
thread.start()
errors = set()
for _ in range(rounds):
    try:
        os.fchmod(fd_number, 0o777)
    except OSError as exc:
        errors.add(exc.errno)
stop = True
thread.join()
print(sorted(errors))
"""


def test_a_descriptor_opened_during_the_check_is_never_changed(tmp_path):
    """fchmod(N) while another thread keeps opening a protected file on N: whether agentd
    decodes N as closed (the kernel's EBADF) or as the protected file (refused), the call
    never runs on the protected file."""
    workdir = tmp_path / "ws"
    workdir.mkdir()
    victim = tmp_path / "protected"
    victim.write_text("x")
    victim.chmod(0o644)
    policy = write_policy(tmp_path, [{"id": "protect", "action_type": "file_chmod",
                                      "pattern": f"^{victim}:.*", "action": "deny",
                                      "severity": "high"}])
    done = run_agentd(policy, [PYTHON, "-c", RACE, str(victim), "611", "3000"], cwd=workdir,
                      options=("--network", "off"), timeout=120)
    assert done.returncode == 0, done.stderr
    assert victim.stat().st_mode & 0o7777 == 0o644
    assert set(json.loads(done.stdout)) <= {9, 13}, done.stdout   # EBADF, EACCES
