"""Fuzz target: DNS messages at the network plane's stub (``agentd.netplane.dns``).

Feeds ``DnsStub._answer_query`` (what the UDP and TCP listeners call with every datagram or
framed message the agent sends) with random bytes and with real queries (dnspython-built: any
name, type, class, opcode, EDNS options, several questions) mutated byte by byte, and the
upstream side, ``_matching_response`` + ``_learned`` (what reads the resolver's answer and
teaches the name book), with mutated answers (CNAME chains, A/AAAA, HTTPS hints). The stub has no
upstream here (every forwarded query is answered SERVFAIL) and a judge that refuses some names:
no packet leaves the machine.

Asserts: nothing raises out; the stub drops (None) or answers a message dnspython reads back,
with the query's id, marked as a response, and rcode FORMERR, NOTIMP, REFUSED or SERVFAIL; a
response is never answered.
"""

from __future__ import annotations

import struct

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from fuzz_settings import fuzz
from hypothesis import event, example, given
from hypothesis import strategies as st

from agentd.netplane import dns as stub_module
from agentd.netplane.dns import DnsStub, NameBook
from agentd.trace.decide import Evaluation, Outcome

ANSWERED = {dns.rcode.FORMERR, dns.rcode.NOTIMP, dns.rcode.REFUSED, dns.rcode.SERVFAIL}


def judge(name: str, qtype: str) -> Evaluation | None:
    if "blocked" in name:
        return Evaluation("network_connect", name, "deny", Outcome.BLOCK, "blocked by the test",
                          ("test_block",))
    if name.startswith("boom"):
        raise RuntimeError("the judge fails")  # must refuse (fail closed), not raise out
    return None


@pytest.fixture(scope="module")
def stub():
    server = DnsStub([("127.0.0.1", 0)], upstream=[], judge=judge, book=NameBook())
    yield server
    server.close()


LABELS = st.one_of(
    st.sampled_from(["example", "blocked", "boom", "a" * 63, "xn--", "*", "_tcp", "."]),
    st.binary(min_size=1, max_size=20).map(lambda raw: raw.decode("latin-1")),
)
NAMES = st.lists(LABELS, min_size=0, max_size=5)
RDTYPES = st.one_of(st.sampled_from([1, 28, 5, 16, 255, 251, 252, 65, 64, 0, 65535]),
                    st.integers(0, 65535))


def _name(labels: list[str]) -> dns.name.Name:
    try:
        return dns.name.from_text(".".join(labels) or ".")
    except Exception:  # noqa: BLE001 - a name dnspython will not build: the root then
        return dns.name.root


@st.composite
def queries(draw) -> bytes:
    message = dns.message.make_query(_name(draw(NAMES)), draw(RDTYPES),
                                     draw(st.sampled_from([1, 3, 4, 254, 255])))
    message.id = draw(st.integers(0, 65535))
    message.set_opcode(draw(st.sampled_from([0, 0, 0, 1, 2, 4, 5, 15])))
    if draw(st.booleans()):
        options = [dns.edns.GenericOption(draw(st.integers(0, 65535)), draw(st.binary(max_size=20)))
                   for _ in range(draw(st.integers(0, 2)))]
        message.use_edns(draw(st.integers(0, 1)), 0, draw(st.integers(0, 65535)), options=options)
    wire = message.to_wire()
    if draw(st.booleans()):  # a second question: qdcount 2 and the question again
        qd = wire[12:]
        wire = wire[:4] + struct.pack("!H", 2) + wire[6:12] + qd + qd
    return mutate(draw, wire)


def mutate(draw, wire: bytes) -> bytes:
    data = bytearray(wire)
    for _ in range(draw(st.integers(0, 3))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        edit = draw(st.sampled_from(["flip", "insert", "delete", "pointer"]))
        if edit == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif edit == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        else:  # a compression pointer to anywhere, itself included (loops)
            data[at:at + 2] = struct.pack("!H", 0xC000 | draw(st.integers(0, max(0, len(data)))))
    return bytes(data)


def check_query(stub: DnsStub, wire: bytes, transport: str = "udp") -> None:
    report = stub_module._new_report(transport, ("127.0.0.1", 5353))
    stub_module._dnspython()
    reply = stub._answer_query(wire, transport, report)
    event(f"rcode {report['rcode']}")
    if reply is None:
        assert report["rcode"] == "dropped", report
        return
    assert len(wire) >= 12 and not struct.unpack_from("!H", wire, 2)[0] & dns.flags.QR
    answer = dns.message.from_wire(reply)
    assert answer.id == struct.unpack_from("!H", wire)[0]
    assert answer.flags & dns.flags.QR
    assert answer.rcode() in ANSWERED, (answer.rcode(), report)
    assert report["rcode"] in ("FORMERR", "NOTIMP", "REFUSED", "SERVFAIL"), report


@fuzz(300)
@given(st.binary(max_size=120))
@example(b"")
@example(b"\x00" * 12)
@example(b"\x12\x34\x80\x00" + b"\x00" * 8)  # a response: dropped
@example(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01")  # loop
def test_fuzz_random_datagrams(stub, wire):
    check_query(stub, wire)


@fuzz(400)
@given(queries(), st.sampled_from(["udp", "tcp"]))
def test_fuzz_mutated_queries(stub, wire, transport):
    check_query(stub, wire, transport)


@st.composite
def upstream_answers(draw) -> tuple[dns.message.Message, bytes]:
    qname = _name(draw(NAMES))
    outgoing = dns.message.make_query(qname, draw(st.sampled_from([1, 28, 65])))
    response = dns.message.make_response(outgoing)
    owner = qname
    for _ in range(draw(st.integers(0, 20))):
        kind = draw(st.sampled_from(["CNAME", "A", "AAAA", "HTTPS"]))
        ttl = draw(st.integers(0, 2**31 - 1))
        if kind == "CNAME":
            target = draw(st.one_of(st.just(owner), st.just(qname), NAMES.map(_name)))
            rrset = dns.rrset.from_text(owner, ttl, "IN", "CNAME", target.to_text())
            owner = target
        elif kind == "A":
            rrset = dns.rrset.from_text(owner, ttl, "IN", "A",
                                        ".".join(str(draw(st.integers(0, 255))) for _ in range(4)))
        elif kind == "AAAA":
            rrset = dns.rrset.from_text(owner, ttl, "IN", "AAAA", "2001:db8::1")
        else:
            rrset = dns.rrset.from_text(owner, ttl, "IN", "HTTPS",
                                        '1 . alpn="h2" ipv4hint=192.0.2.1 ipv6hint=2001:db8::2')
        response.answer.append(rrset)
    response.set_rcode(draw(st.sampled_from([0, 0, 2, 3])))
    return outgoing, mutate(draw, response.to_wire())


@fuzz(250)
@given(upstream_answers())
def test_fuzz_upstream_answers(answer):
    outgoing, wire = answer
    stub_module._dnspython()
    response = stub_module._matching_response(outgoing, wire)
    if response is None:
        return
    addresses, cnames, ttl = stub_module._learned(outgoing.question[0].name, response)
    assert len(cnames) <= stub_module.MAX_CNAME_CHAIN
    assert (ttl is None) == (not addresses)
    book = NameBook()
    if addresses:
        book.remember(stub_module.normalize_name(outgoing.question[0].name), addresses, ttl)
