"""The per-run DNS stub (agentd.netplane.dns) against a fake upstream nameserver on loopback.

Real sockets on 127.0.0.1 only; the fake upstream answers from a small zone with dnspython and
counts what reached it, so a refused or malformed query is shown never to have left the stub.
Clients are dnspython's ``dns.query.udp/tcp`` and raw sockets; the one libc (getaddrinfo) test
runs its client in a private mount namespace whose /etc/resolv.conf names the stub.
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from agentd.trace.decide import Evaluation
from agentd.netplane.dns import DnsStub, DnsStubError, NameBook, system_nameservers

ZONE = {
    ("a.test.", "A"): [("A", 300, ["192.0.2.1", "192.0.2.2"])],
    ("a.test.", "AAAA"): [("AAAA", 300, ["2001:db8::1"])],
    ("six.test.", "AAAA"): [("AAAA", 300, ["2001:db8::6", "::ffff:192.0.2.7"])],
    ("alias.test.", "A"): [("CNAME@alias.test.", 30, ["mid.test."]),
                           ("CNAME@mid.test.", 600, ["real.test."]),
                           ("A@real.test.", 120, ["192.0.2.9"]),
                           ("A@unrelated.test.", 120, ["192.0.2.66"])],
    ("loop.test.", "A"): [("CNAME@loop.test.", 60, ["loop2.test."]),
                          ("CNAME@loop2.test.", 60, ["loop.test."])],
    ("big.test.", "TXT"): [("TXT", 60, ['"%s"' % (c * 200) for c in "abcdef"])],
    ("blocked.test.", "A"): [("A", 300, ["192.0.2.50"])],
    ("warned.test.", "A"): [("A", 300, ["192.0.2.51"])],
    ("zero.test.", "A"): [("A", 0, ["192.0.2.60"])],
}


class FakeUpstream:
    """A nameserver on 127.0.0.1 (UDP and TCP, one port) answering from ZONE; NXDOMAIN else.
    ``mode``: "answer", "silent" (reads, never answers) or "wrong-id" (answers with another id)."""

    def __init__(self, mode: str = "answer"):
        self.mode = mode
        self.queries: list[tuple[str, str, int]] = []
        self.sent: list[bytes] = []
        self.udp, self.tcp = _bound_pair()
        self.port = self.udp.getsockname()[1]
        self.tcp.listen(8)
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def address(self):
        return ("127.0.0.1", self.port)

    def answer(self, wire: bytes) -> bytes | None:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        key = (question.name.to_text().lower(), dns.rdatatype.to_text(question.rdtype))
        self.queries.append(key + (query.flags,))
        if self.mode == "silent":
            return None
        response = dns.message.make_response(query, recursion_available=True)
        response.flags |= dns.flags.AA
        records = ZONE.get(key)
        if records is None:
            response.set_rcode(dns.rcode.NXDOMAIN)
        for spec, ttl, values in records or ():
            rdtype, _, owner = spec.partition("@")
            response.answer.append(dns.rrset.from_text_list(owner or question.name, ttl, "IN",
                                                            rdtype, values))
        if self.mode == "wrong-id":
            response.id = (query.id + 1) % 65536
        wire = response.to_wire()
        self.sent.append(wire)
        return wire

    def _serve(self):
        selector = selectors.DefaultSelector()
        selector.register(self.udp, selectors.EVENT_READ, "udp")
        selector.register(self.tcp, selectors.EVENT_READ, "tcp")
        selector.register(self._stop_r, selectors.EVENT_READ, "stop")
        while True:
            for key, _ in selector.select():
                if key.data == "stop":
                    selector.close()
                    return
                if key.data == "udp":
                    wire, peer = self.udp.recvfrom(65535)
                    reply = self.answer(wire)
                    if reply is not None:
                        self.udp.sendto(reply, peer)
                else:
                    conn, _ = self.tcp.accept()
                    with conn:
                        conn.settimeout(2)
                        (length,) = struct.unpack("!H", _recv(conn, 2))
                        reply = self.answer(_recv(conn, length))
                        if reply is not None:
                            conn.sendall(struct.pack("!H", len(reply)) + reply)

    def close(self):
        os.write(self._stop_w, b"x")
        self._thread.join(5)
        for sock in (self.udp, self.tcp):
            sock.close()
        os.close(self._stop_r)
        os.close(self._stop_w)


def _bound_pair():
    """A UDP and a TCP socket on one free 127.0.0.1 port (retried: the port UDP got may be in
    use on TCP by some connection's local end)."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind(("127.0.0.1", udp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            continue
        return udp, tcp
    raise OSError("no port free on both UDP and TCP")


def _recv(conn, count):
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def _block_names(name, qtype):
    if name.endswith("blocked.test"):
        return Evaluation("network_connect", name, "deny", "block", "no such hosts",
                          ("block_test_names",), message="test names are blocked")
    if name == "warned.test":
        return Evaluation("network_connect", name, "warn", "warn", "careful")
    return None


@pytest.fixture
def upstream():
    server = FakeUpstream()
    yield server
    server.close()


@pytest.fixture
def reports():
    return []


@pytest.fixture
def stub(upstream, reports):
    with DnsStub([("127.0.0.1", 0)], upstream=[upstream.address], judge=_block_names,
                 on_query=reports.append, timeout=1.0) as running:
        yield running


def _where(stub):
    return stub.addresses[0]


def _udp(stub, name, qtype="A", **kwargs):
    ip, port = _where(stub)
    return dns.query.udp(dns.message.make_query(name, qtype, **kwargs), ip, port=port, timeout=3)


def _raw_udp(address, wire, timeout=1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(wire, address)
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


# -- relaying -------------------------------------------------------------------------------

def test_answer_is_relayed_unchanged(stub, upstream):
    query = dns.message.make_query("a.test", "A", use_edns=0)
    query.id = 4242
    wire = query.to_wire()
    through_stub = _raw_udp(_where(stub), wire)
    assert through_stub is not None and len(upstream.sent) == 1
    # every byte the upstream sent (flags, record order, EDNS), with the client's id put back
    assert through_stub == wire[:2] + upstream.sent[0][2:]
    response = dns.message.from_wire(through_stub)
    assert response.id == 4242
    assert response.flags & dns.flags.AA and response.flags & dns.flags.RA
    assert [q[:2] for q in upstream.queries] == [("a.test.", "A")]


def test_nxdomain_and_tcp_are_relayed(stub, upstream, reports):
    response = _udp(stub, "nope.test")
    assert response.rcode() == dns.rcode.NXDOMAIN
    ip, port = _where(stub)
    tcp = dns.query.tcp(dns.message.make_query("a.test", "AAAA"), ip, port=port, timeout=3)
    assert [rd.address for rd in tcp.answer[0]] == ["2001:db8::1"]
    assert reports[-1]["transport"] == "tcp" and reports[-1]["addresses"] == ("2001:db8::1",)
    assert stub.book.names_for("2001:db8::1") == ("a.test",)


def test_big_answer_truncated_over_udp_then_complete_over_tcp(stub):
    response = _udp(stub, "big.test", "TXT")
    assert response.flags & dns.flags.TC
    ip, port = _where(stub)
    tcp = dns.query.tcp(dns.message.make_query("big.test", "TXT"), ip, port=port, timeout=3)
    assert not tcp.flags & dns.flags.TC and len(tcp.answer[0]) == 6


def test_only_the_question_goes_upstream(stub, upstream):
    query = dns.message.make_query("a.test", "A", use_edns=0,
                                   options=[dns.edns.GenericOption(65001, b"exfiltrated")])
    query.additional.append(dns.rrset.from_text("smuggled.test.", 60, "IN", "TXT", '"data"'))
    ip, port = _where(stub)
    response = dns.query.udp(query, ip, port=port, timeout=3)
    assert response.rcode() == dns.rcode.NOERROR
    # the fake upstream's parse of what it got: one question, no options, no extra records
    seen = []
    original = upstream.answer
    upstream.answer = lambda wire: seen.append(dns.message.from_wire(wire)) or original(wire)
    dns.query.udp(query, ip, port=port, timeout=3)
    assert seen and list(seen[0].options) == [] and list(seen[0].additional) == []
    assert seen[0].edns == 0 and len(seen[0].question) == 1


# -- the name book through the stub -----------------------------------------------------------

def test_book_learns_names_cname_chains_and_mapped_addresses(stub, reports):
    _udp(stub, "A.Test.")
    assert set(stub.book.addresses_for("a.test")) == {"192.0.2.1", "192.0.2.2"}
    assert stub.book.names_for("192.0.2.1") == ("a.test",)
    assert stub.book.names_for("::ffff:192.0.2.2") == ("a.test",)       # mapped v6 as v4
    _udp(stub, "alias.test")
    assert stub.book.names_for("192.0.2.9") == ("alias.test",)           # the asked name
    assert stub.book.addresses_for("real.test") == ()                    # not the CNAME target
    assert stub.book.names_for("192.0.2.66") == ()                       # not an unrelated record
    assert reports[-1]["cnames"] == ("mid.test", "real.test") and reports[-1]["ttl"] == 30
    _udp(stub, "six.test", "AAAA")
    assert stub.book.names_for("192.0.2.7") == ("six.test",)
    assert stub.book.names_for("::ffff:192.0.2.7") == ("six.test",)
    assert stub.book.names_for("2001:db8::6") == ("six.test",)
    _udp(stub, "loop.test")                                               # a CNAME loop: nothing
    assert stub.book.addresses_for("loop.test") == ()


def test_book_ttl_through_the_stub_with_injected_clock(upstream):
    now = [1000.0]
    book = NameBook(min_ttl=5, max_ttl=100, clock=lambda: now[0])
    with DnsStub([("127.0.0.1", 0)], upstream=[upstream.address], book=book) as stub:
        _udp(stub, "alias.test")       # chain TTLs 30, 600, 120: the smallest counts
        _udp(stub, "zero.test")        # TTL 0: the floor keeps it for 5 s
        now[0] += 4.9
        assert book.names_for("192.0.2.9") == ("alias.test",)
        assert book.names_for("192.0.2.60") == ("zero.test",)
        now[0] += 0.2
        assert book.names_for("192.0.2.60") == ()
        now[0] += 24.8
        assert book.names_for("192.0.2.9") == ("alias.test",)
        now[0] += 0.2
        assert book.names_for("192.0.2.9") == ()


# -- the judge --------------------------------------------------------------------------------

def test_refused_names_never_reach_the_upstream(stub, upstream, reports):
    response = _udp(stub, "www.blocked.test", use_edns=0)
    assert response.rcode() == dns.rcode.REFUSED
    ede = [opt for opt in response.options if opt.otype == dns.edns.OptionType.EDE]
    assert ede and ede[0].code == dns.edns.EDECode.PROHIBITED
    assert "block_test_names" in ede[0].text and "test names are blocked" in ede[0].text
    ip, port = _where(stub)
    tcp = dns.query.tcp(dns.message.make_query("blocked.test", "A"), ip, port=port, timeout=3)
    assert tcp.rcode() == dns.rcode.REFUSED
    assert upstream.queries == []
    assert stub.book.names_for("192.0.2.50") == ()
    report = reports[0]
    assert report["name"] == "www.blocked.test" and report["qtype"] == "A"
    assert report["refused"] is True and report["rcode"] == "REFUSED"
    assert report["evaluation"].pattern_ids == ("block_test_names",)


def test_warned_names_are_forwarded_and_reported(stub, upstream, reports):
    assert _udp(stub, "warned.test").rcode() == dns.rcode.NOERROR
    assert upstream.queries[0][:2] == ("warned.test.", "A")
    assert reports[0]["refused"] is False and reports[0]["evaluation"].outcome == "warn"
    assert reports[0]["addresses"] == ("192.0.2.51",)


def test_a_failing_judge_refuses(upstream, reports):
    def broken(name, qtype):
        raise RuntimeError("engine exploded")
    with DnsStub([("127.0.0.1", 0)], upstream=[upstream.address], judge=broken,
                 on_query=reports.append) as stub:
        assert _udp(stub, "a.test").rcode() == dns.rcode.REFUSED
    assert upstream.queries == []
    assert reports[0]["evaluation"].pattern_ids == ("agentd:fail_closed",)
    assert "engine exploded" in reports[0]["reason"]


def test_other_classes_and_zone_transfers_are_refused(stub, upstream):
    assert _udp(stub, "version.bind", "TXT", rdclass="CH").rcode() == dns.rcode.REFUSED
    ip, port = _where(stub)
    axfr = dns.query.tcp(dns.message.make_query("a.test", "AXFR"), ip, port=port, timeout=3)
    assert axfr.rcode() == dns.rcode.REFUSED
    assert upstream.queries == []


# -- garbage ----------------------------------------------------------------------------------

def test_malformed_input_gets_formerr_or_nothing_and_the_stub_keeps_serving(stub, upstream,
                                                                              reports):
    where = _where(stub)
    garbage = struct.pack("!HH", 777, 0x0100) + bytes(range(200))
    answer = _raw_udp(where, garbage)
    assert answer is not None
    parsed = dns.message.from_wire(answer)
    assert parsed.id == 777 and parsed.rcode() == dns.rcode.FORMERR
    assert _raw_udp(where, b"\x01\x02\x03", timeout=0.3) is None          # too short: dropped
    response = dns.message.make_response(dns.message.make_query("a.test", "A"))
    assert _raw_udp(where, response.to_wire(), timeout=0.3) is None       # an answer: dropped
    oversize = struct.pack("!HH", 778, 0x0100) + b"\0" * 4000
    assert dns.message.from_wire(_raw_udp(where, oversize)).rcode() == dns.rcode.FORMERR
    notify = dns.message.make_query("a.test", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert dns.message.from_wire(_raw_udp(where, notify.to_wire())).rcode() == dns.rcode.NOTIMP
    two = dns.message.make_query("a.test", "A")
    two.question.append(dns.rrset.RRset(dns.name.from_text("b.test."), 1, 1))
    assert dns.message.from_wire(_raw_udp(where, two.to_wire())).rcode() == dns.rcode.FORMERR
    assert upstream.queries == []                                          # none left the stub
    assert _udp(stub, "a.test").rcode() == dns.rcode.NOERROR               # still serving
    assert [r["rcode"] for r in reports] == ["FORMERR", "dropped", "dropped", "FORMERR",
                                             "NOTIMP", "FORMERR", "NOERROR"]


def test_tcp_garbage_and_oversize_lengths(stub, upstream):
    ip, port = _where(stub)
    with socket.create_connection((ip, port), timeout=2) as conn:
        conn.sendall(struct.pack("!H", 60000))                             # oversize: closed
        assert conn.recv(10) == b""
    with socket.create_connection((ip, port), timeout=2) as conn:
        garbage = struct.pack("!HH", 99, 0x0100) + b"\xff" * 30
        conn.sendall(struct.pack("!H", len(garbage)) + garbage)
        (length,) = struct.unpack("!H", _recv(conn, 2))
        assert dns.message.from_wire(_recv(conn, length)).rcode() == dns.rcode.FORMERR
        # the same connection goes on serving real queries
        query = dns.message.make_query("a.test", "A").to_wire()
        conn.sendall(struct.pack("!H", len(query)) + query)
        (length,) = struct.unpack("!H", _recv(conn, 2))
        assert dns.message.from_wire(_recv(conn, length)).rcode() == dns.rcode.NOERROR
    assert [q[:2] for q in upstream.queries] == [("a.test.", "A")]


def test_fuzzed_queries_never_crash_and_only_questions_go_upstream(stub, upstream, reports):
    """Random bytes and bit-flipped real queries; the stub answers or drops each and goes on."""
    import random
    rng = random.Random(6)
    seed = dns.message.make_query("a.test", "A", use_edns=0).to_wire()
    packets = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300))) for _ in range(150)]
    for _ in range(150):
        mutated = bytearray(seed)
        for _ in range(rng.randrange(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.getrandbits(8)
        packets.append(bytes(mutated))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for packet in packets:
            sock.sendto(packet, _where(stub))
            time.sleep(0.001)          # a burst of 300 could overflow the socket buffer: UDP loss
    deadline = time.monotonic() + 10
    while len(reports) < len(packets) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(reports) == len(packets) and stub.dropped_busy == 0   # each one was dealt with
    assert not [r for r in reports if "internal error" in r["reason"]]
    assert _udp(stub, "a.test").rcode() == dns.rcode.NOERROR   # still serving
    for name, qtype, flags in upstream.queries:                # what left: real questions only
        assert dns.name.from_text(name) and qtype and not flags & dns.flags.QR


# -- upstream failures ------------------------------------------------------------------------

def _closed_port():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_upstream_down_gives_servfail(reports):
    with DnsStub([("127.0.0.1", 0)], upstream=[("127.0.0.1", _closed_port())],
                 on_query=reports.append, timeout=1.0) as stub:
        started = time.monotonic()
        assert _udp(stub, "a.test").rcode() == dns.rcode.SERVFAIL
        assert time.monotonic() - started < 0.9                 # ICMP refusal, not the timeout
        ip, port = _where(stub)
        tcp = dns.query.tcp(dns.message.make_query("a.test", "A"), ip, port=port, timeout=3)
        assert tcp.rcode() == dns.rcode.SERVFAIL
    assert reports[0]["rcode"] == "SERVFAIL" and "unreachable" in reports[0]["reason"]


@pytest.mark.parametrize("mode", ["silent", "wrong-id"])
def test_upstream_timeout_gives_servfail_and_next_server_is_tried(mode, reports):
    bad, good = FakeUpstream(mode), FakeUpstream()
    try:
        with DnsStub([("127.0.0.1", 0)], upstream=[bad.address], timeout=0.3,
                     on_query=reports.append) as stub:
            started = time.monotonic()
            assert _udp(stub, "a.test").rcode() == dns.rcode.SERVFAIL
            assert 0.3 <= time.monotonic() - started < 2
            assert stub.book.names_for("192.0.2.1") == ()
        with DnsStub([("127.0.0.1", 0)], upstream=[bad.address, good.address],
                     timeout=0.3) as stub:
            assert _udp(stub, "a.test").rcode() == dns.rcode.NOERROR
    finally:
        bad.close()
        good.close()
    assert "timed out" in reports[0]["reason"]


# -- life cycle -------------------------------------------------------------------------------

def _open_fds():
    return set(os.listdir("/proc/self/fd"))


def test_close_leaves_no_thread_or_socket(upstream):
    silent = FakeUpstream("silent")
    fds_before = _open_fds()
    threads_before = set(threading.enumerate())
    stub = DnsStub([("127.0.0.1", 0)], upstream=[silent.address], timeout=10).start()
    ip, port = _where(stub)
    asker = threading.Thread(target=lambda: _raw_udp((ip, port), dns.message.make_query(
        "a.test", "A").to_wire(), timeout=1))
    asker.start()
    idle = socket.create_connection((ip, port), timeout=2)   # a TCP client that says nothing
    deadline = time.monotonic() + 3
    while not silent.queries and time.monotonic() < deadline:
        time.sleep(0.01)
    assert silent.queries                                    # a worker waits on the upstream
    started = time.monotonic()
    stub.close()
    assert time.monotonic() - started < 1.5                  # not the 10 s upstream timeout
    assert idle.recv(10) == b""                              # the idle client was let go
    idle.close()
    asker.join(5)
    silent.close()
    assert set(threading.enumerate()) - threads_before == set()
    assert _open_fds() - fds_before == set()
    stub.close()                                             # idempotent
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind((ip, port))                               # the port is free again


def test_premade_sockets_are_served_and_closed(upstream):
    udp, tcp = _bound_pair()
    with DnsStub(sockets=[udp, tcp], upstream=[upstream.address]) as stub:
        assert stub.addresses == [udp.getsockname()]
        ip, port = _where(stub)
        assert _udp(stub, "a.test").rcode() == dns.rcode.NOERROR
        tcp_answer = dns.query.tcp(dns.message.make_query("a.test", "A"), ip, port=port,
                                   timeout=3)
        assert tcp_answer.rcode() == dns.rcode.NOERROR
    assert udp.fileno() == -1 and tcp.fileno() == -1


def test_ipv6_listener(upstream):
    try:
        stub = DnsStub([("::1", 0)], upstream=[upstream.address])
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    with stub:
        ip, port = _where(stub)
        assert ip == "::1"
        answer = dns.query.udp(dns.message.make_query("a.test", "A"), ip, port=port, timeout=3)
        assert answer.rcode() == dns.rcode.NOERROR
        tcp = dns.query.tcp(dns.message.make_query("a.test", "A"), ip, port=port, timeout=3)
        assert tcp.rcode() == dns.rcode.NOERROR


def test_construction_errors(upstream, tmp_path):
    with pytest.raises(ValueError):
        DnsStub(upstream=[upstream.address])
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    with pytest.raises(DnsStubError, match="loop"):
        DnsStub(sockets=[taken], upstream=[taken.getsockname()])
    assert taken.fileno() == -1           # handed over: closed even when construction fails
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# test\nsearch example\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n")
    assert system_nameservers(str(resolv)) == [("192.0.2.53", 53), ("2001:db8::53", 53)]
    resolv.write_text("search example\n")
    with pytest.raises(DnsStubError):
        system_nameservers(str(resolv))


def test_many_concurrent_queries(stub, upstream):
    errors = []

    def ask(n):
        try:
            name = "a.test" if n % 2 else "nope%d.test" % n
            _udp(stub, name)
        except Exception as exc:       # pragma: no cover - reported below
            errors.append(exc)
    threads = [threading.Thread(target=ask, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == [] and len(upstream.queries) == 40


# -- a real libc client ------------------------------------------------------------------------

LIBC_STUB_IP = "127.0.77.53"


def test_libc_getaddrinfo_through_the_stub(upstream, tmp_path):
    """glibc only reads /etc/resolv.conf and only asks port 53, so the client runs in a private
    mount namespace whose /etc/resolv.conf (bind mount) names the stub; the host's is untouched."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    try:
        stub = DnsStub([(LIBC_STUB_IP, 53)], upstream=[upstream.address]).start()
    except OSError as exc:
        pytest.skip(f"cannot listen on {LIBC_STUB_IP}:53: {exc}")
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {LIBC_STUB_IP}\noptions timeout:2 attempts:1\n")
    script = ("import socket; print(sorted({a[4][0] for a in socket.getaddrinfo("
              "'a.test', 80, proto=socket.IPPROTO_TCP)}))")
    try:
        result = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount --bind "$1" /etc/resolv.conf && exec "$2" -c "$3"', "sh", str(resolv),
             sys.executable, script], capture_output=True, text=True, timeout=30)
    finally:
        stub.close()
    if result.returncode != 0 and "mount" in result.stderr:
        pytest.skip(f"private mount namespace not possible here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['192.0.2.1', '192.0.2.2', '2001:db8::1']"
    assert stub.book.names_for("192.0.2.1") == ("a.test",)
    assert stub.book.names_for("2001:db8::1") == ("a.test",)
    assert {q[:2] for q in upstream.queries} == {("a.test.", "A"), ("a.test.", "AAAA")}


# -- the name book alone -----------------------------------------------------------------------

def test_book_floor_ceiling_and_refresh():
    now = [0.0]
    book = NameBook(min_ttl=60, max_ttl=3600, clock=lambda: now[0])
    book.remember("x.test", ["192.0.2.1"], 0)
    book.remember("y.test", ["192.0.2.2"], 10**9)
    now[0] = 59
    assert book.names_for("192.0.2.1") == ("x.test",)
    now[0] = 61
    assert book.names_for("192.0.2.1") == ()
    assert book.addresses_for("x.test") == ()
    now[0] = 3599
    book.remember("y.test", ["192.0.2.2"], 1)         # a shorter answer never shortens the entry
    assert book.names_for("192.0.2.2") == ("y.test",)
    now[0] = 3601
    assert book.names_for("192.0.2.2") == ("y.test",)   # refreshed at 3599 for the floor of 60 s
    now[0] = 3660
    assert book.names_for("192.0.2.2") == ()
    assert len(book) == 0


def test_book_many_names_per_address_and_eviction():
    book = NameBook(max_entries=3)
    book.remember("cdn-a.test.", ["192.0.2.1"], 300)
    book.remember("CDN-B.test", ["::ffff:192.0.2.1"], 300)
    assert book.names_for("192.0.2.1") == ("cdn-b.test", "cdn-a.test")   # newest first
    assert book.names_for("[::ffff:c000:201]") == ("cdn-b.test", "cdn-a.test")
    book.remember("c.test", ["192.0.2.3", "2001:db8::3"], 300)
    assert len(book) == 3
    assert book.names_for("192.0.2.1") == ("cdn-b.test",)                # the oldest went
    book.remember("cdn-b.test", ["192.0.2.1"], 300)                      # refresh: newest again
    book.remember("d.test", ["192.0.2.4"], 300)
    assert book.names_for("192.0.2.1") == ("cdn-b.test",)
    assert book.addresses_for("c.test") == ("2001:db8::3",)
    with pytest.raises(ValueError):
        book.names_for("not-an-address")
    with pytest.raises(ValueError):
        book.remember("e.test", ["999.1.1.1"], 60)


def test_book_is_thread_safe():
    book = NameBook(max_entries=500)

    def learn(offset):
        for n in range(2000):
            book.remember(f"n{offset}-{n}.test", [f"10.{offset}.{n // 256}.{n % 256}"], 60)
            book.names_for(f"10.{offset}.{n // 256}.{n % 256}")
    threads = [threading.Thread(target=learn, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(book) == 500
    found = [book.names_for(f"10.{k}.{n // 256}.{n % 256}") for k in range(4) for n in range(2000)]
    assert sum(len(names) for names in found) == 500     # the indexes agree with the entries


def test_parse_upstream():
    from agentd.netplane.dns import parse_upstream

    assert parse_upstream(None) is None and parse_upstream("") is None
    assert parse_upstream("192.0.2.53,[2001:db8::53]:5353, 198.51.100.1:5300,::1") == [
        ("192.0.2.53", 53), ("2001:db8::53", 5353), ("198.51.100.1", 5300), ("::1", 53)]
    for bad in ("resolver.example", "resolver.example:53", "192.0.2.53:99999", "192.0.2.53:x",
                "192.0.2.53,"):
        with pytest.raises(ValueError):
            parse_upstream(bad)
