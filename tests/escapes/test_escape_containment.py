"""Containment: what no policy can allow. Under policies/allow_all.yaml (every action allowed)
the agent still may not touch the supervisor's audit log (append, truncate, unlink, rename, chmod,
or write through a symlink, a hard link or /proc/<parent>/fd/N), nor write the memory of a
process outside its tree through /proc/PID/mem, nor ptrace or signal the supervisor or a sibling.

The outside checks: the audit log still exists with its mode, holds no junk and its hash chain
verifies; the sibling (a process this test started) is alive with its memory unchanged; the
supervisor was not killed. Without the sandbox the "audit log" is a plain file the stand-in
parent holds open, and every probe changes it.
"""

from __future__ import annotations

import os

import pytest

from escape_harness import (POLICY_DIR, PROBE_DIR, PYTHON, Probe, judge, sibling_harmed,
                            start_sibling, stop_sibling)

pytestmark = pytest.mark.escape_probe

CONTAIN = str(PROBE_DIR / "containment.py")
ALLOW_ALL = POLICY_DIR / "allow_all.yaml"
AUDIT_MODES = ["audit_append", "audit_truncate", "audit_unlink", "audit_rename", "audit_chmod",
               "audit_symlink_write", "audit_hardlink_write", "audit_proc_fd_write"]
ORIGINAL = b"original\n"


def _make_log(lay) -> None:
    path = lay.extra["audit"]
    if lay.sandboxed:   # the supervisor's log; under the daemon the daemon's: never emptied
        path.touch()
    else:
        path.write_bytes(ORIGINAL)
    os.chmod(path, 0o600)


def _log_harmed(result) -> str | None:
    path = result.layout.extra["audit"]
    if not path.exists():
        return f"the audit log {path} is gone"
    mode = os.stat(path).st_mode & 0o7777
    if mode != 0o600:
        return f"the audit log's mode changed to {oct(mode)}"
    data = path.read_bytes()
    if b"TAMPERED" in data:
        return "junk was written into the audit log"
    if not result.layout.sandboxed:
        return None if data == ORIGINAL else "the audit log's content changed"
    if not data.strip():
        return "the audit log was emptied"
    from agent_os.flight_recorder import verify_file
    verdict = verify_file(path)
    if not verdict.ok:
        return f"the audit log's hash chain is broken: {verdict.error}"
    return None


@pytest.mark.parametrize("mode", AUDIT_MODES)
def test_audit_log_is_out_of_reach(arena, mode):
    judge(arena, Probe(f"contain-{mode}", lambda lay: [PYTHON, CONTAIN, mode,
                                                      str(lay.extra["audit"])],
                       setup=_make_log, deed=_log_harmed, policy=ALLOW_ALL,
                       env={"ESCAPE_STANDIN_HOLD": "{audit}"},
                       default_deeds=False))


def test_sibling_memory_via_proc_mem(arena):
    judge(arena, Probe("contain-proc_mem_write-sibling",
                       lambda lay: [PYTHON, CONTAIN, "proc_mem_write", str(lay.extra["sibling_pid"])],
                       setup=start_sibling, cleanup=stop_sibling, deed=sibling_harmed,
                       policy=ALLOW_ALL))


def _supervisor_killed(result) -> str | None:
    return "the supervisor was killed by SIGKILL" if result.returncode == -9 else None


@pytest.mark.parametrize("mode", ["ptrace-attach", "kill", "pidfd-kill"])
def test_supervisor_out_of_reach_whatever_the_policy(arena, probe_bin, mode):
    judge(arena, Probe(f"contain-{mode}-supervisor",
                       lambda lay: [str(probe_bin / "sidedoors"), mode, "ppid"],
                       deed=_supervisor_killed, policy=ALLOW_ALL))


@pytest.mark.parametrize("mode", ["ptrace-attach", "kill", "vm-writev"])
def test_sibling_out_of_reach_whatever_the_policy(arena, probe_bin, mode):
    judge(arena, Probe(f"contain-{mode}-sibling",
                       lambda lay: [str(probe_bin / "sidedoors"), mode, str(lay.extra["sibling_pid"])],
                       setup=start_sibling, cleanup=stop_sibling, deed=sibling_harmed,
                       policy=ALLOW_ALL))
