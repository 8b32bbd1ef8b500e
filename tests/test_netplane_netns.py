"""netplane/netns.py: a real per-agent network namespace. Children forked by the test enter it
and look around or send traffic; the test's own sockets on the supervisor's side (or inside the
namespace) say what arrived, and nftables counters say what was refused. Every address used is
in a namespace the test created or on loopback; TEST-NET destinations are refused inside the
agent's namespace, so nothing reaches the host's real network."""

from __future__ import annotations

import errno
import ipaddress
import os
import pickle
import select
import shutil
import signal
import socket
import struct
import time

import pytest
from pyroute2 import IPRoute

from agentd.netplane.netns import (
    AGENT_IFNAME,
    AgentNetwork,
    NetnsError,
    NetnsUnavailable,
    _nameservers,
    _pick_subnet,
    cleanup_stale,
)


def _netns_possible() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces and veth pairs)"
    if shutil.which("nft") is None and not os.path.exists("/usr/sbin/nft"):
        return "needs nft (nftables); scripts/setup installs it"
    try:
        AgentNetwork.create("probe").close()
    except Exception as exc:  # the reason becomes the skip reason
        return f"cannot build a network namespace here: {exc}"
    return None


SKIP = _netns_possible()
needs_netns = pytest.mark.skipif(SKIP is not None, reason=SKIP or "")


class Child:
    """A forked child that enters the agent's namespace, runs ``fn`` and pipes back its result
    (or the errno of the OSError it raised)."""

    def __init__(self, network: AgentNetwork, fn, *args):
        read_end, write_end = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child: enter, run, report, _exit
            os.close(read_end)
            try:
                network.enter()
                outcome = ("ok", fn(*args))
            except OSError as exc:
                outcome = ("oserror", exc.errno, str(exc))
            except BaseException as exc:
                outcome = ("error", repr(exc))
            try:
                os.write(write_end, pickle.dumps(outcome))
            finally:
                os._exit(0)
        os.close(write_end)
        self.read_end = read_end

    def result(self, timeout: float = 10.0):
        chunks, deadline = [], time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.read_end], [], [], left)[0]:
                    os.kill(self.pid, signal.SIGKILL)
                    raise AssertionError(f"child {self.pid} gave no answer in {timeout}s")
                chunk = os.read(self.read_end, 65536)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(self.read_end)
            os.waitpid(self.pid, 0)
        return pickle.loads(b"".join(chunks))


def in_child(network, fn, *args, timeout=10.0):
    return Child(network, fn, *args).result(timeout)


@pytest.fixture
def network():
    with AgentNetwork.create(f"test-{os.getpid()}") as net:
        yield net


def bound(address: str, kind: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, kind)
    sock.bind((address, 0))
    if kind == socket.SOCK_STREAM:
        sock.listen(8)
    sock.settimeout(5)
    return sock


# -- what the agent sees ---------------------------------------------------------------------

def look_around():
    names = sorted(name for _, name in socket.if_nameindex())
    with open("/proc/net/route", encoding="ascii") as handle:
        routes = [line.split() for line in handle.readlines()[1:]]
    with open("/proc/net/if_inet6", encoding="ascii") as handle:
        v6_interfaces = sorted({line.split()[-1] for line in handle})
    return names, routes, v6_interfaces


@needs_netns
def test_before_the_redirects_the_agent_has_no_way_out(network):
    status, (names, routes, _) = in_child(network, look_around)
    assert status == "ok" and names == sorted(["lo", AGENT_IFNAME]) and routes == []
    status, (outcome, _) = in_child(network, timed_connect, network.host_address, 3128)
    assert (status, outcome) == ("ok", "ENETUNREACH")


@needs_netns
def test_the_agent_sees_loopback_the_veth_and_one_default_route(network):
    network.install_redirects(dns_port=5300, proxy_port=3128)
    status, (names, routes, v6_interfaces) = in_child(network, look_around)
    assert status == "ok"
    assert names == sorted(["lo", AGENT_IFNAME])
    assert len(routes) == 1, routes
    iface, destination, gateway, _flags, *_ = routes[0]
    assert (iface, destination) == (AGENT_IFNAME, "00000000")
    assert socket.inet_ntoa(struct.pack("<I", int(gateway, 16))) == network.host_address
    assert v6_interfaces == ["lo"]  # no IPv6 on the veth: no v6 way out


@needs_netns
def test_the_host_end_routes_nothing_and_filters_sources(network):
    for family in ("ipv4", "ipv6"):
        assert network.host_sysctl(family, "forwarding") == "0"
    assert network.host_sysctl("ipv4", "rp_filter") == "1"
    assert network.host_sysctl("ipv6", "disable_ipv6") == "1"
    with IPRoute() as ipr:
        (link,) = ipr.link("get", index=ipr.link_lookup(ifname=network.host_ifname)[0])
        assert link.get_attr("IFLA_IFALIAS").startswith("agentd-netplane run=test-")
        addresses = [(m.get_attr("IFA_ADDRESS"), m["prefixlen"])
                     for m in ipr.addr("dump", index=link["index"], family=socket.AF_INET)]
    assert addresses == [(network.host_address, 30)]


# -- reaching the supervisor, and nothing else -------------------------------------------------

def tcp_exchange(address, port, payload=b"hello"):
    with socket.create_connection((address, port), timeout=5) as sock:
        local = sock.getsockname()
        sock.sendall(payload)
        return local, sock.recv(100)


def serve_one(listener, reply=b"ok", network=None):
    """Accept one connection, read, answer; with ``network`` also return what
    ``redirected_destination`` says of the accepted socket."""
    conn, peer = listener.accept()
    with conn:
        conn.settimeout(5)
        data = conn.recv(100)
        redirected = network.redirected_destination(conn) if network else None
        conn.sendall(reply)
    return (peer, data, redirected) if network else (peer, data)


@needs_netns
def test_a_server_on_the_host_address_is_reachable_from_inside(network):
    # an agent told HTTP_PROXY=http://host_address:proxy_port goes there directly
    with bound(network.host_address, socket.SOCK_STREAM) as listener:
        network.install_redirects(dns_port=5300, proxy_port=listener.getsockname()[1])
        child = Child(network, tcp_exchange, network.host_address, listener.getsockname()[1])
        peer, data, redirected = serve_one(listener, b"welcome", network)
        assert redirected is None
        # not redirected: the original destination is the proxy itself
        assert network.original_destination(peer[1]) == (network.host_address,
                                                         listener.getsockname()[1])
        assert child.result() == ("ok", ((network.agent_address, peer[1]), b"welcome"))
    assert (peer[0], data) == (network.agent_address, b"hello")


def timed_connect(address, port):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    start = time.monotonic()
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        try:
            sock.connect((address, port))
            return "connected", time.monotonic() - start
        except OSError as exc:
            return errno.errorcode.get(exc.errno, str(exc)), time.monotonic() - start


def udp_probe(address, port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        try:
            sock.connect((address, port))
            sock.send(b"x")
            sock.recv(100)
            return "answered"
        except OSError as exc:
            return errno.errorcode.get(exc.errno, str(exc))


@needs_netns
def test_everything_else_is_refused_at_once_inside_the_namespace(network):
    with bound(network.host_address, socket.SOCK_STREAM) as other:
        network.install_redirects(dns_port=5300, proxy_port=3128)
        before = network.counters()
        status, (outcome, seconds) = in_child(network, timed_connect, "192.0.2.1", 22)
        assert (status, outcome) == ("ok", "ECONNREFUSED") and seconds < 1.0
        # the supervisor's other ports are out of reach too, though its socket listens
        status, (outcome, _) = in_child(network, timed_connect, network.host_address,
                                        other.getsockname()[1])
        assert (status, outcome) == ("ok", "ECONNREFUSED")
        other.setblocking(False)
        with pytest.raises(BlockingIOError):
            other.accept()
    # the dropped datagram fails its send() with EPERM (the ICMP error follows too late)
    status, outcome = in_child(network, udp_probe, "192.0.2.1", 9)
    assert (status, outcome) == ("ok", "EPERM")
    status, (outcome, seconds) = in_child(network, timed_connect, "2001:db8::1", 80)
    assert (status, outcome) == ("ok", "ENETUNREACH") and seconds < 1.0
    after = network.counters()
    assert after["refused_tcp"] >= before["refused_tcp"] + 2  # the two SYNs, stopped inside
    assert after["refused_other"] >= before["refused_other"] + 1


# -- redirects ---------------------------------------------------------------------------------

def udp_query(address, port, payload):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(payload, (address, port))
        data, source = sock.recvfrom(100)
        return data, source


@needs_netns
@pytest.mark.parametrize("nameserver", ["198.51.100.53", "127.0.0.53"])
def test_dns_to_any_nameserver_reaches_the_stub(network, nameserver):
    with bound(network.host_address, socket.SOCK_DGRAM) as stub:
        network.install_redirects(dns_port=stub.getsockname()[1], proxy_port=3128)
        child = Child(network, udp_query, nameserver, 53, b"query")
        data, source = stub.recvfrom(100)
        stub.sendto(b"answer", source)
        # the agent sees the answer come from the nameserver it asked
        assert child.result() == ("ok", (b"answer", (nameserver, 53)))
    assert (data, source[0]) == (b"query", network.agent_address)
    assert network.counters()["redirected_dns"] >= 1


@needs_netns
def test_dns_over_tcp_reaches_the_stub(network):
    with bound(network.host_address, socket.SOCK_STREAM) as stub:
        network.install_redirects(dns_port=stub.getsockname()[1], proxy_port=3128)
        child = Child(network, tcp_exchange, "198.51.100.53", 53, b"\x00\x05query")
        peer, data = serve_one(stub, b"\x00\x06answer")
        assert child.result()[0] == "ok"
    assert (peer[0], data) == (network.agent_address, b"\x00\x05query")


@needs_netns
@pytest.mark.parametrize("port", [80, 443])
def test_web_traffic_reaches_the_proxy_which_learns_the_real_destination(network, port):
    with bound(network.host_address, socket.SOCK_STREAM) as proxy:
        network.install_redirects(dns_port=5300, proxy_port=proxy.getsockname()[1])
        child = Child(network, tcp_exchange, "203.0.113.7", port, b"GET / HTTP/1.0\r\n\r\n")
        peer, data, redirected = serve_one(proxy, b"HTTP/1.0 204 No Content\r\n\r\n", network)
        assert redirected == ("203.0.113.7", port)
        assert network.original_destination(peer[1]) == ("203.0.113.7", port)
        assert child.result()[1][1] == b"HTTP/1.0 204 No Content\r\n\r\n"
    assert (peer[0], data) == (network.agent_address, b"GET / HTTP/1.0\r\n\r\n")
    assert network.original_destination(65000) is None


@needs_netns
def test_a_stub_can_listen_on_the_agents_own_loopback(network):
    network.install_redirects(dns_port=5300, proxy_port=3128, loopback_dns=False)
    with network.listen_socket_inside(socket.AF_INET, socket.SOCK_DGRAM,
                                      ("127.0.0.53", 53)) as stub:
        stub.settimeout(5)
        child = Child(network, udp_query, "127.0.0.53", 53, b"query")
        data, source = stub.recvfrom(100)
        stub.sendto(b"answer", source)
        assert child.result() == ("ok", (b"answer", ("127.0.0.53", 53)))
    assert data == b"query" and source[0] == "127.0.0.1"
    # the same address in the supervisor's namespace is not this socket's
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as host_side:
        host_side.bind(("127.0.0.53", 0))


# -- many runs, and the end of a run -------------------------------------------------------------

@needs_netns
def test_concurrent_networks_get_distinct_subnets_and_each_works():
    with AgentNetwork.create("a") as first, AgentNetwork.create("b") as second:
        assert first.subnet != second.subnet and not first.subnet.overlaps(second.subnet)
        assert first.host_ifname != second.host_ifname
        for net in (first, second):
            with bound(net.host_address, socket.SOCK_STREAM) as listener:
                net.install_redirects(dns_port=5300, proxy_port=listener.getsockname()[1])
                child = Child(net, tcp_exchange, net.host_address, listener.getsockname()[1])
                peer, _ = serve_one(listener)
                assert child.result()[0] == "ok" and peer[0] == net.agent_address


@needs_netns
def test_supervisors_in_parallel_never_share_a_subnet():
    go_read, go_write = os.pipe()
    report_read, report_write = os.pipe()
    children = []
    for index in range(4):
        pid = os.fork()
        if pid == 0:
            os.read(go_read, 1)  # all start together
            with AgentNetwork.create(f"parallel{index}") as net:
                os.write(report_write, f"{net.subnet}\n".encode())
                time.sleep(0.5)  # hold it while the others allocate
            os._exit(0)
        children.append(pid)
    os.close(report_write)
    os.write(go_write, b"xxxx")
    reports = b""
    while chunk := os.read(report_read, 1000):
        reports += chunk
    for pid in children:
        os.waitpid(pid, 0)
    subnets = reports.decode().split()
    assert len(subnets) == 4 and len(set(subnets)) == 4, subnets


def link_exists(name: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=name))


@needs_netns
def test_close_removes_the_veth_and_is_idempotent():
    net = AgentNetwork.create("closing")
    name, fd = net.host_ifname, net.netns_fd
    assert link_exists(name)
    net.close()
    assert not link_exists(name)
    with pytest.raises(OSError):
        os.fstat(fd)
    net.close()
    assert not os.path.exists("/run/netns/agentd-closing")  # anonymous: no mount to leave


def wait_until(predicate, seconds=5.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@needs_netns
def test_nothing_outlives_a_supervisor_that_dies_without_closing():
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        net = AgentNetwork.create("crashed")
        os.write(write_end, net.host_ifname.encode())
        os._exit(0)  # no close(): the kernel drops the namespace and both veth ends
    os.close(write_end)
    name = os.read(read_end, 100).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert wait_until(lambda: not link_exists(name)), f"{name} outlived its supervisor"


@needs_netns
def test_cleanup_stale_cuts_off_an_agent_whose_supervisor_died():
    read_end, write_end = os.pipe()
    supervisor = os.fork()
    if supervisor == 0:
        net = AgentNetwork.create("orphan")
        agent = os.fork()
        if agent == 0:  # the agent: holds the namespace after its supervisor is gone
            net.enter()
            signal.pause()
            os._exit(0)
        os.write(write_end, f"{net.host_ifname} {agent}".encode())
        os._exit(0)
    os.close(write_end)
    name, agent = os.read(read_end, 100).decode().split()
    os.close(read_end)
    os.waitpid(supervisor, 0)
    try:
        assert link_exists(name)  # the agent keeps the namespace, and so the veth, alive
        with AgentNetwork.create("alive") as alive:
            removed = cleanup_stale()
            assert name in removed and alive.host_ifname not in removed
            assert not link_exists(name) and link_exists(alive.host_ifname)
    finally:
        os.kill(int(agent), signal.SIGKILL)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another uid")
def test_create_refuses_without_root_and_says_why():
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.setresuid(65534, 65534, 65534)
            AgentNetwork.create("nobody")
            message = "created"
        except NetnsUnavailable as exc:
            message = f"NetnsUnavailable: {exc}"
        except BaseException as exc:
            message = repr(exc)
        os.write(write_end, message.encode())
        os._exit(0)
    os.close(write_end)
    message = os.read(read_end, 1000).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert message.startswith("NetnsUnavailable: a per-agent network namespace needs root")


# -- choosing a subnet -----------------------------------------------------------------------

def test_a_subnet_the_host_uses_or_asks_for_names_is_skipped(tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# comment\nnameserver 10.255.0.5\nnameserver ::1\nsearch example\n")
    used = [ipaddress.IPv4Network("10.255.0.0/30"), *_nameservers(str(resolv))]
    pool = ipaddress.IPv4Network("10.255.0.0/28")
    assert _pick_subnet(pool, used) == ipaddress.IPv4Network("10.255.0.8/30")
    assert _pick_subnet(ipaddress.IPv4Network("10.255.0.0/29"), used) is None


@needs_netns
def test_a_pool_with_no_free_subnet_is_an_error_that_says_so(network):
    with pytest.raises(NetnsError, match=f"no free /30 left in the pool {network.subnet}"):
        AgentNetwork.create("second", subnet=str(network.subnet))
