"""The UNTRACED argument rules agentd run adds to its filter: ``sendto`` without an address runs
without a tracer stop (checked in the BPF interpreter), ``sendto`` with one still stops and is
decided (checked with a real agent and a loopback UDP listener)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from agentd.kernel import bpf
from agentd.run import supervise as runner
from agentd.kernel.consts import AUDIT_ARCH_X86_64
from agentd.kernel.seccomp import SECCOMP_RET_ALLOW, SECCOMP_RET_TRACE
from agentd.kernel.syscall_numbers import SYSCALL_NUMBERS
from agentd.trace.syscall_table import traced_syscalls

ACTION_MASK = 0xFFFF0000


def _outcome(program, name, args):
    data = bpf.SeccompData(SYSCALL_NUMBERS[name], AUDIT_ARCH_X86_64, tuple(args))
    return bpf.run(program, data) & ACTION_MASK


def test_sendto_without_address_is_untraced_with_address_traced():
    program = runner.prepare_filter(None, traced_syscalls()).program
    assert _outcome(program, "sendto", (3, 0x1000, 10, 0, 0, 0)) == SECCOMP_RET_ALLOW
    assert _outcome(program, "sendto", (3, 0x1000, 10, 0, 0x2000, 0)) == SECCOMP_RET_ALLOW
    assert _outcome(program, "sendto", (3, 0x1000, 10, 0, 0x2000, 16)) == SECCOMP_RET_TRACE
    # the high half of the length is not part of socklen_t: still "no length"
    assert _outcome(program, "sendto", (3, 0x1000, 10, 0, 0x2000, 1 << 32)) == SECCOMP_RET_ALLOW
    assert _outcome(program, "connect", (3, 0x2000, 16, 0, 0, 0)) == SECCOMP_RET_TRACE


def test_a_real_sendto_with_an_address_is_still_decided(tmp_path):
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    policy = tmp_path / "p.yaml"
    policy.write_text("name: p\ndefault_action: allow\npatterns:\n"
                      f"  - id: no_udp\n    action_type: network_connect\n    pattern: '^127\\.0\\.0\\.1:{port}$'\n"
                      "    action: deny\n    severity: high\n")
    agent = ("import socket\n"
             "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
             f"try:\n    s.sendto(b'x', ('127.0.0.1', {port})); print('sent')\n"
             "except PermissionError: print('refused')\n"
             f"c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n")
    log = tmp_path / "audit.jsonl"
    agentd = os.path.join(os.path.dirname(sys.executable), "agentd")
    proc = subprocess.run([agentd, "run", "--embedded", "--policy", str(policy), "--audit-log", str(log),
                           "--", sys.executable, "-c", agent], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache")))
    assert proc.stdout.strip() == "refused", proc.stderr
    listener.settimeout(0.2)
    try:
        listener.recv(10)
        raise AssertionError("the listener got the datagram")
    except socket.timeout:
        pass
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(r["syscall"] == "sendto" and r["decision"] == "deny" for r in records)
