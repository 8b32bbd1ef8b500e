"""network_connect under `agentd run`: connect, sendto, sendmsg over TCP, UDP and unix sockets,
IPv4, IPv6 and IPv4-mapped IPv6, all aimed at loopback listeners this test owns. A denied
destination is refused with EACCES and the listener sees nothing; an allowed one still works."""

from __future__ import annotations

import select
import socket
import threading

import pytest

from helpers.agentd_run import PYTHON, deny, needs_tracing, run_agentd, write_policy

pytestmark = [needs_tracing, pytest.mark.needs_ptrace]


class Listener:
    """A loopback TCP listener and UDP socket on one port that count what reaches them."""

    def __init__(self, family=socket.AF_INET, host="127.0.0.1"):
        self.tcp = socket.socket(family, socket.SOCK_STREAM)
        self.tcp.bind((host, 0))
        self.tcp.listen(16)
        self.port = self.tcp.getsockname()[1]
        self.udp = socket.socket(family, socket.SOCK_DGRAM)
        self.udp.bind((host, self.port))
        self.seen = 0

    def drain(self):
        while True:
            ready, _, _ = select.select([self.tcp, self.udp], [], [], 0.2)
            if not ready:
                return self.seen
            for sock in ready:
                if sock is self.tcp:
                    sock.accept()[0].close()
                else:
                    sock.recv(100)
                self.seen += 1

    def close(self):
        self.tcp.close()
        self.udp.close()


AGENT = r"""
import socket, sys
results = []
def attempt(tag, fn):
    try:
        fn(); results.append(f'{tag}:OK')
    except PermissionError: results.append(f'{tag}:EACCES')
    except OSError as e: results.append(f'{tag}:{e.errno}')
port, port6, ok_port, sock_path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def tcp(host, p, fam=socket.AF_INET):
    s = socket.socket(fam, socket.SOCK_STREAM); s.connect((host, p)); s.close()
def udp_sendto(host, p, fam=socket.AF_INET):
    s = socket.socket(fam, socket.SOCK_DGRAM); s.sendto(b'x', (host, p)); s.close()
def udp_sendmsg(host, p):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendmsg([b'x'], [], 0, (host, p)); s.close()
def unix(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.connect(path); s.close()
attempt('tcp4', lambda: tcp('127.0.0.1', port))
attempt('udp4', lambda: udp_sendto('127.0.0.1', port))
attempt('sendmsg4', lambda: udp_sendmsg('127.0.0.1', port))
attempt('mapped', lambda: tcp('::ffff:127.0.0.1', port, socket.AF_INET6))
attempt('tcp6', lambda: tcp('::1', port6, socket.AF_INET6))
attempt('udp6', lambda: udp_sendto('::1', port6, socket.AF_INET6))
attempt('unix', lambda: unix(sock_path))
attempt('allowed', lambda: tcp('127.0.0.1', ok_port))
print(' '.join(results))
"""


def test_denied_destinations_see_nothing(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    v4 = Listener()
    try:
        v6 = Listener(socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback on this host")
    ok = Listener()
    unix_path = str(tmp_path / "agent.sock")
    unix_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix_listener.bind(unix_path)
    unix_listener.listen(4)
    policy = write_policy(tmp_path, [
        deny("no_v4", "network_connect", rf"^127\.0\.0\.1:{v4.port}$"),
        deny("no_v6", "network_connect", rf"^\[::1\]:{v6.port}$"),
        deny("no_unix", "network_connect", r"^unix:.*/agent\.sock$"),
    ])
    try:
        result = run_agentd(policy, [PYTHON, "-c", AGENT, str(v4.port), str(v6.port),
                                     str(ok.port), unix_path], cwd=ws)
        outcome = dict(item.split(":") for item in result.stdout.split())
        assert outcome == {"tcp4": "EACCES", "udp4": "EACCES", "sendmsg4": "EACCES",
                           "mapped": "EACCES", "tcp6": "EACCES", "udp6": "EACCES",
                           "unix": "EACCES", "allowed": "OK"}, result.stderr
        assert v4.drain() == 0
        assert v6.drain() == 0
        assert ok.drain() == 1
        unix_listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            unix_listener.accept()
        targets = {r["target"] for r in result.records if r["decision"] == "deny"}
        assert f"127.0.0.1:{v4.port}" in targets and f"[::1]:{v6.port}" in targets
        assert f"unix:{unix_path}" in targets
    finally:
        for listener in (v4, v6, ok):
            listener.close()
        unix_listener.close()


def test_control_without_the_sandbox_reaches_the_listeners(tmp_path):
    """The same agent, unsandboxed, gets through: the probes above prove something."""
    import subprocess

    v4, v6, ok = Listener(), Listener(socket.AF_INET6, "::1"), Listener()
    unix_path = str(tmp_path / "agent.sock")
    unix_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix_listener.bind(unix_path)
    unix_listener.listen(4)
    try:
        out = subprocess.run([PYTHON, "-c", AGENT, str(v4.port), str(v6.port), str(ok.port),
                              unix_path], capture_output=True, text=True, timeout=30).stdout
        assert set(item.split(":")[1] for item in out.split()) == {"OK"}
        assert v4.drain() == 4 and v6.drain() == 2
    finally:
        for listener in (v4, v6, ok):
            listener.close()
        unix_listener.close()
