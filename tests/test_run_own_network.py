"""The agent's own network is not an internal network (docs/policies.md, "The agent's own
network"). Under strict, without a network plane (`--network off`): a loopback server the agent
started itself is reachable, a host service on loopback is not (its listener sees nothing), and a
host listener sharing the port (SO_REUSEPORT) makes the port not the agent's. Netlink requests
(getifaddrs, interface lists) are no network connections, and a root agent cannot change the
network state with them (it has no CAP_NET_ADMIN).
"""

from __future__ import annotations

import select
import socket
import subprocess

import pytest

from helpers.agentd_run import PYTHON, needs_tracing, run_agentd

pytestmark = [needs_tracing, pytest.mark.needs_ptrace]

OWN_SERVER = r"""
import socket, sys, threading
host_port = int(sys.argv[1])
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1)
port = server.getsockname()[1]
threading.Thread(target=lambda: server.accept()[0].sendall(b"hello"), daemon=True).start()
with socket.create_connection(("127.0.0.1", port)) as client:
    print("OWN", client.recv(5).decode(), flush=True)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", 0))
socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", udp.getsockname())
print("UDP", udp.recv(1).decode(), flush=True)
try:
    socket.create_connection(("127.0.0.1", host_port), timeout=5).close()
    print("HOST reached", flush=True)
except PermissionError:
    print("HOST refused", flush=True)
print("IFACES", sorted(name for _, name in socket.if_nameindex()) != [], flush=True)
probe = socket.socket()
probe.bind(("127.0.0.1", 0))
free_port = probe.getsockname()[1]
probe.close()                       # now nothing listens there
try:
    socket.create_connection(("127.0.0.1", free_port), timeout=5).close()
    print("FREE reached", flush=True)
except ConnectionRefusedError:
    print("FREE ECONNREFUSED", flush=True)
except PermissionError:
    print("FREE EACCES", flush=True)
"""


def _seen(listener: socket.socket) -> bool:
    listener.setblocking(False)
    ready, _, _ = select.select([listener], [], [], 0.3)
    return bool(ready)


def test_own_loopback_server_is_reachable_and_the_hosts_is_not(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    host = socket.socket()
    host.bind(("127.0.0.1", 0))
    host.listen(4)
    try:
        done = run_agentd("strict", [PYTHON, "-c", OWN_SERVER, str(host.getsockname()[1])],
                          cwd=ws, options=("--network", "off"))
        assert not _seen(host), "the host's loopback listener saw a connection"
    finally:
        host.close()
    assert done.returncode == 0, done.stderr
    # a port nobody listens on: refused by the policy, and the agent gets the kernel's answer
    assert done.stdout.split("\n")[:5] == ["OWN hello", "UDP x", "HOST refused", "IFACES True",
                                           "FREE ECONNREFUSED"]
    own = [r for r in done.records if "agentd:own_network" in (r.get("pattern_ids") or [])]
    assert len(own) == 2   # the TCP connect and the UDP sendto
    refused = [r for r in done.records if r.get("decision") == "deny"]
    assert [r["pattern_ids"] for r in refused] == [["block_internal_connects"]] * 2
    assert "nothing listens there: ECONNREFUSED" in refused[1]["reason"]


SHARED_PORT = r"""
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(1)
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5).close()
    print("reached", flush=True)
except PermissionError:
    print("refused", flush=True)
"""


def test_a_port_shared_with_a_host_listener_is_not_the_agents(tmp_path):
    """SO_REUSEPORT lets the agent listen on a host service's port; a connect there could reach
    the host's socket, so the port is not the agent's own."""
    ws = tmp_path / "ws"
    ws.mkdir()
    host = socket.socket()
    host.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    host.bind(("127.0.0.1", 0))
    host.listen(4)
    try:
        done = run_agentd("strict", [PYTHON, "-c", SHARED_PORT, str(host.getsockname()[1])],
                          cwd=ws, options=("--network", "off"))
        assert not _seen(host)
    finally:
        host.close()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "refused"


@pytest.mark.skipif(subprocess.run(["id", "-u"], capture_output=True, text=True).stdout.strip()
                    != "0", reason="needs root: the point is a root agent without CAP_NET_ADMIN")
def test_a_root_agent_reads_but_cannot_change_the_network_over_netlink(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    netns = f"agentd-test-{tmp_path.name[-20:]}"
    script = "ip -o link show lo >/dev/null && echo READ; ip link set lo up 2>&1 && echo CHANGED; true"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        boxed = subprocess.run(
            ["ip", "netns", "exec", netns, *run_agentd_argv(tmp_path, ws, ["sh", "-c", script])],
            cwd=ws, capture_output=True, text=True, timeout=60)
        link = subprocess.run(["ip", "netns", "exec", netns, "ip", "-o", "link", "show", "lo"],
                              capture_output=True, text=True, check=True).stdout
        control = subprocess.run(["ip", "netns", "exec", netns, "sh", "-c", script],
                                 capture_output=True, text=True, timeout=60)
    finally:
        subprocess.run(["ip", "netns", "del", netns])
    assert boxed.returncode == 0, boxed.stderr
    assert "READ" in boxed.stdout and "CHANGED" not in boxed.stdout, boxed.stdout
    assert "Operation not permitted" in boxed.stdout
    assert "state DOWN" in link, link
    assert "CHANGED" in control.stdout, "the probe proves nothing: root could not change it"


def run_agentd_argv(tmp_path, ws, command):
    from helpers.agentd_run import AGENTD
    return [AGENTD, "run", "--policy", "strict", "--network", "off", "--audit-log",
            str(tmp_path / "audit.jsonl"), "--workspace", str(ws), "--", *command]
