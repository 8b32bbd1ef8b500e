"""Seccomp filters the supervisor inherits (systemd's unit hardening) against the TOCTOU rewrite.

Every pinned open runs as openat2 with RESOLVE_NO_SYMLINKS (supervisor/agentd/trace/pinning.py), and
the agent inherits every filter of the process that starts it. systemd's ``RestrictSUIDSGID=yes``
answers openat2 with ENOSYS, which killed every agent under agentd.service in the loader
("libc.so.6: cannot open shared object file: Error 38"). Here a real filter with exactly that
rule is installed before ``agentd run`` starts: the run must refuse up front with the reason
(exit 125, nothing of the agent runs), while the same run without the filter works.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from helpers.agentd_run import AGENTD, needs_tracing, write_policy

import pytest

pytestmark = [needs_tracing, pytest.mark.needs_ptrace]

# Installs {openat2: ERRNO(ENOSYS), everything else: ALLOW} under no_new_privs, then execs argv:
# the rule systemd's RestrictSUIDSGID= adds (x86_64 only, like agentd).
_WITH_FILTER = textwrap.dedent("""
    import ctypes, os, struct, sys
    libc = ctypes.CDLL(None, use_errno=True)
    def ins(code, jt, jf, k): return struct.pack("HBBI", code, jt, jf, k)
    allow = 0x7FFF0000
    prog = b"".join([
        ins(0x20, 0, 0, 4), ins(0x15, 1, 0, 0xC000003E), ins(0x06, 0, 0, allow),
        ins(0x20, 0, 0, 0), ins(0x15, 0, 1, 437), ins(0x06, 0, 0, 0x00050000 | 38),
        ins(0x06, 0, 0, allow)])
    buf = ctypes.create_string_buffer(prog)
    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
    assert libc.prctl(38, 1, 0, 0, 0) == 0                              # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0, ctypes.get_errno()  # FILTER mode
    os.execv(sys.argv[1], sys.argv[1:])
""")


def _run(tmp_path, with_filter: bool) -> subprocess.CompletedProcess:
    policy = write_policy(tmp_path, [])
    marker = tmp_path / "ran"
    argv = [AGENTD, "run", "--embedded", "--policy", str(policy),
            "--audit-log", str(tmp_path / "audit.jsonl"), "--workspace", str(tmp_path),
            "--", "/bin/sh", "-c", f"echo yes > {marker}"]
    if with_filter:
        argv = [sys.executable, "-c", _WITH_FILTER, *argv]
    return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "AGENTD_RUNS_DIR": str(tmp_path / "runs")})


def test_a_run_works_without_the_inherited_filter(tmp_path):
    result = _run(tmp_path, with_filter=False)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ran").read_text() == "yes\n"


def test_an_inherited_filter_refusing_openat2_stops_the_run_before_the_agent(tmp_path):
    result = _run(tmp_path, with_filter=True)
    assert result.returncode == 125, (result.returncode, result.stderr)
    assert "openat2" in result.stderr and "RestrictSUIDSGID" in result.stderr, result.stderr
    assert "Error 38" not in result.stderr
    assert not (tmp_path / "ran").exists()
