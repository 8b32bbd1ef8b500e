"""Address sets (agent_os/netaddr.py) and the destination conditions, alone and in policies.

netaddr is pure: each named set, the IPv4-in-IPv6 forms, literal CIDRs, target parsing and bad
input are checked directly. The conditions ``destination_in`` / ``destination_not_in`` are checked
through ``Policy.evaluate`` (with and without ``dest_ip``, with decision caching), through YAML
validation, and through the built-in policies on the examples of issue 6; permissive's log of
external connections is checked in a real FlightRecorder file.
"""

from __future__ import annotations

import ipaddress

import pytest

from agent_os import netaddr
from agent_os.errors import PolicyValidationError
from agent_os.flight_recorder import FlightRecorder
from agent_os.kernel import KernelSpace
from agent_os.loader import load_policy, policy_from_yaml_string
from agent_os.policy import Pattern, Policy, Severity, ViolationMode

VARIABLES = {"WORKSPACE": "/home/u/ws", "HOME": "/home/u", "TMPDIR": "/tmp"}


# --- the named sets -------------------------------------------------------------------------------

@pytest.mark.parametrize("address, expected", [
    ("127.0.0.1", {"loopback"}), ("127.255.255.254", {"loopback"}), ("::1", {"loopback"}),
    ("10.0.0.5", {"private"}), ("172.16.0.1", {"private"}), ("172.31.255.255", {"private"}),
    ("192.168.1.1", {"private"}),
    ("169.254.1.1", {"link_local"}), ("fe80::1", {"link_local"}), ("fe80::1%eth0", {"link_local"}),
    ("169.254.169.254", {"link_local", "metadata"}), ("fd00:ec2::254", {"ula", "metadata"}),
    ("169.254.170.2", {"link_local", "metadata"}), ("100.100.100.200", {"cgnat", "metadata"}),
    ("fd12:3456::1", {"ula"}), ("fc00::1", {"ula"}),
    ("100.64.0.1", {"cgnat"}), ("100.127.255.254", {"cgnat"}),
    ("224.0.0.251", {"multicast"}), ("239.1.2.3", {"multicast"}), ("ff02::1", {"multicast"}),
    ("0.0.0.0", {"unspecified"}), ("0.1.2.3", {"unspecified"}), ("::", {"unspecified"}),
    ("255.255.255.255", {"reserved"}), ("240.0.0.1", {"reserved"}), ("192.0.2.1", {"reserved"}),
    ("198.18.0.1", {"reserved"}), ("2001:db8::1", {"reserved"}), ("fec0::1", {"reserved"}),
    ("4000::1", {"reserved"}),
])
def test_every_named_set(address, expected):
    assert netaddr.classify(address) == frozenset(expected | {"internal"})


@pytest.mark.parametrize("address", [
    "8.8.8.8", "140.82.112.5", "1.1.1.1", "172.32.0.1", "100.128.0.1", "11.0.0.1",
    "2606:4700::1111", "2a00:1450:4001::1", "::ffff:8.8.8.8", "2002:808:808::1",
])
def test_public_addresses_are_only_public(address):
    assert netaddr.classify(address) == {"public"}


@pytest.mark.parametrize("address, expected", [
    ("::ffff:127.0.0.1", "loopback"),          # IPv4-mapped
    ("::ffff:7f00:1", "loopback"),             # the same, hex spelling
    ("::ffff:169.254.169.254", "metadata"),
    ("::ffff:10.0.0.5", "private"),
    ("::10.0.0.5", "private"),                 # IPv4-compatible (deprecated)
    ("64:ff9b::a00:5", "private"),             # NAT64 well-known prefix
    ("64:ff9b::7f00:1", "loopback"),
    ("2002:a00:5::1", "private"),              # 6to4 of 10.0.0.5
    ("2002:a9fe:a9fe::", "metadata"),
])
def test_ipv4_in_ipv6_forms_are_judged_as_their_ipv4_address(address, expected):
    names = netaddr.classify(address)
    assert expected in names and "internal" in names and "public" not in names


def test_loopback_and_unspecified_ipv6_are_not_read_as_ipv4_compatible():
    assert netaddr.effective_addresses(ipaddress.ip_address("::1")) == (ipaddress.ip_address("::1"),)
    assert netaddr.classify("::1") == {"loopback", "internal"}


@pytest.mark.parametrize("bad", ["", "localhost", "1.2.3", "300.1.1.1", "::g", "10.0.0.0/8", None])
def test_classify_refuses_what_is_not_an_address(bad):
    with pytest.raises(ValueError):
        netaddr.classify(bad)


# --- targets --------------------------------------------------------------------------------------

@pytest.mark.parametrize("target, expected", [
    ("1.2.3.4:443", ("1.2.3.4", 443)), ("[::1]:80", ("::1", 80)),
    ("[::ffff:127.0.0.1]:22", ("::ffff:127.0.0.1", 22)),
    ("api.github.com:443", ("api.github.com", 443)), ("localhost:8080", ("localhost", 8080)),
    ("unix:/run/x.sock", None), ("unix:@abstract", None), ("::1:80", None), ("[::1]", None),
    ("1.2.3.4", None), ("1.2.3.4:99999", None), ("1.2.3.4:", None), (":80", None),
    ("[nothex]:80", None), ("a b:80", None),
])
def test_split_connect_target(target, expected):
    assert netaddr.split_connect_target(target) == expected


@pytest.mark.parametrize("target, expected", [
    ("https://api.github.com/x", None), ("http://127.0.0.1:8080/admin", "127.0.0.1"),
    ("https://user:pw@10.0.0.1/", "10.0.0.1"), ("http://[::1]:8443/", "::1"),
    ("http://[::ffff:127.0.0.1]/", "::ffff:7f00:1"),
    # numeric hosts getaddrinfo reads as IPv4 (inet_aton), and a client connects there
    ("http://2130706433/", "127.0.0.1"), ("http://0x7f000001/", "127.0.0.1"),
    ("http://0177.0.0.1/", "127.0.0.1"), ("http://127.1/", "127.0.0.1"),
    ("http://169.254.43518/", "169.254.169.254"),
    ("127.0.0.1:8080", "127.0.0.1"), ("[fd00::1]:443", "fd00::1"), ("db.example:5432", None),
    # parser-differential tricks give no address at all (the caller fails closed)
    ("http://1.2.3.4\\@127.0.0.1/", None), ("http://127.0.0.1 @8.8.8.8/", None),
    ("http://[::1/", None), ("http://1.2.3.4:99999/", None), ("unix:/run/x.sock", None),
])
def test_target_address(target, expected):
    found = netaddr.target_address(target)
    assert (str(found) if found is not None else None) == expected


def test_inet_aton_forms_out_of_range_are_names():
    assert netaddr.parse_host("256.0.0.1") is None
    assert netaddr.parse_host("1.2.3.4.5") is None
    assert netaddr.parse_host("1.16777216") is None
    assert netaddr.parse_host("08.0.0.1") is None  # 08 is not octal


# --- set lists (condition values) -----------------------------------------------------------------

def test_literal_cidrs_match_and_mapped_forms_match_ipv4_cidrs():
    sets = netaddr.compile_address_sets(["10.1.0.0/16", "2001:db8::/32", "192.0.2.7"])
    assert sets.match(ipaddress.ip_address("10.1.200.3")) == "10.1.0.0/16"
    assert sets.match(ipaddress.ip_address("::ffff:10.1.0.9")) == "10.1.0.0/16"
    assert sets.match(ipaddress.ip_address("2001:db8::5")) == "2001:db8::/32"
    assert sets.match(ipaddress.ip_address("192.0.2.7")) == "192.0.2.7"
    assert sets.match(ipaddress.ip_address("10.2.0.1")) is None
    assert sets.match(ipaddress.ip_address("8.8.8.8")) is None


def test_named_and_literal_items_combine():
    sets = netaddr.compile_address_sets(["loopback", "203.0.113.0/24"])
    assert sets.match(ipaddress.ip_address("::ffff:127.0.0.1")) == "loopback"
    assert sets.match(ipaddress.ip_address("203.0.113.9")) == "203.0.113.0/24"
    assert sets.match(ipaddress.ip_address("10.0.0.1")) is None


@pytest.mark.parametrize("value, message", [
    (["privat"], "unknown address set 'privat' (did you mean 'private'?)"),
    (["lan"], "unknown address set 'lan'"),
    (["10.1.0.1/16"], "host bits set (did you mean '10.1.0.0/16'?)"),
    (["10.0.0.0/33"], "invalid CIDR '10.0.0.0/33'"),
    (["fe80::/129"], "invalid CIDR 'fe80::/129'"),
    ([], "expected a non-empty list"), ("internal", "expected a non-empty list"),
    ([3], "is not a set name or CIDR"), (["internal", "nope"], "unknown address set 'nope'"),
])
def test_bad_set_lists_are_explained(value, message):
    problem = netaddr.validate_address_sets(value)
    assert problem is not None and message in problem
    with pytest.raises(ValueError, match="address set|CIDR|non-empty|set name"):
        netaddr.compile_address_sets(value)


def test_good_set_lists_validate():
    assert netaddr.validate_address_sets(list(netaddr.SET_NAMES)) is None
    assert netaddr.validate_address_sets(["10.0.0.0/8", "::/0", "fd00::1", "::"]) is None


# --- the conditions through Policy.evaluate -------------------------------------------------------

def _guarded_policy() -> Policy:
    return Policy(name="guarded", default_action="allow", patterns=[
        Pattern(id="no_internal", action_type="network_connect", pattern=r"^(?!unix:).*:[0-9]+$",
                action="deny", severity=Severity.HIGH, message="internal",
                conditions={"destination_not_in": ["internal", "203.0.113.0/24"]}),
        Pattern(id="lab_only", action_type="network_request", pattern=r"^https://.*",
                action="allow", conditions={"destination_in": ["10.9.0.0/16"]}),
        Pattern(id="others", action_type="network_request", pattern=r".*", action="deny"),
    ])


@pytest.mark.parametrize("target, context, allowed", [
    ("8.8.8.8:443", {}, True),
    ("127.0.0.1:8080", {}, False),
    ("[::ffff:127.0.0.1]:8080", {}, False),
    ("203.0.113.9:443", {}, False),                       # a literal CIDR in the list
    ("api.github.com:443", {"dest_ip": "140.82.112.5"}, True),
    ("api.github.com:443", {"dest_ip": "10.0.0.5"}, False),  # resolved to a private address
    ("api.github.com:443", {"dest_ip": "::ffff:10.0.0.5"}, False),
    ("api.github.com:443", {}, False),                     # no address: missing evidence
    ("api.github.com:443", {"dest_ip": "not-an-ip"}, False),
    ("api.github.com:443", {"dest_ip": ""}, False),
    ("api.github.com:443", {"dest_ip": ["140.82.112.5", "10.0.0.5"]}, False),  # every one counts
    ("api.github.com:443", {"dest_ip": ["140.82.112.5", "140.82.112.6"]}, True),
    ("8.8.8.8:443", {"dest_ip": "127.0.0.1"}, False),      # both the literal and dest_ip count
])
def test_destination_not_in_with_and_without_dest_ip(target, context, allowed):
    result = _guarded_policy().evaluate("network_connect", target, context)
    assert result.allowed is allowed, result.reason
    if not allowed:
        assert result.pattern_id == "no_internal"


@pytest.mark.parametrize("url, context, allowed", [
    ("https://lab.example/x", {"dest_ip": "10.9.3.4"}, True),
    ("https://10.9.3.4/x", {}, True),
    ("https://lab.example/x", {"dest_ip": "10.8.0.1"}, False),
    ("https://lab.example/x", {}, False),                 # unknown never grants
    ("http://10.9.3.4/x", {}, False),                     # the regex still has to match
])
def test_destination_in_grants_only_inside(url, context, allowed):
    assert _guarded_policy().evaluate("network_request", url, context).allowed is allowed


def test_decision_cache_keys_on_dest_ip():
    policy = _guarded_policy()
    target = "api.github.com:443"
    for _ in range(3):  # repeated: the second and third answers come from the cache
        assert policy.evaluate("network_connect", target, {"dest_ip": "140.82.112.5"}).allowed
        assert not policy.evaluate("network_connect", target, {"dest_ip": "10.0.0.5"}).allowed
        assert not policy.evaluate("network_connect", target, {}).allowed


def test_condition_notes_say_why():
    policy = Policy(default_action="deny", patterns=[
        Pattern(id="internal_ok", action_type="network_connect", pattern=r".*:[0-9]+$",
                action="allow", conditions={"destination_in": ["private"]})])
    result = policy.evaluate("network_connect", "db.example:5432", {})
    assert not result.allowed
    assert "destination address unknown" in result.reason and "db.example" in result.reason
    result = policy.evaluate("network_connect", "8.8.8.8:53", {})
    assert "8.8.8.8" in result.reason and "none of ['private']" in result.reason


def test_bad_condition_values_are_validation_errors():
    with pytest.raises(ValueError, match="unknown address set 'privat'"):
        Pattern("network_connect", ".*", "deny", conditions={"destination_not_in": ["privat"]})
    text = ("name: bad\npatterns:\n  - id: p\n    action_type: network_connect\n"
            "    pattern: '.*'\n    action: deny\n    conditions:\n"
            "      destination_not_in: [internal, 10.1.0.1/16]\n")
    with pytest.raises(PolicyValidationError) as error:
        policy_from_yaml_string(text)
    message = str(error.value)
    assert "pattern 'p'" in message and "destination_not_in" in message
    assert "did you mean '10.1.0.0/16'" in message


def test_yaml_round_trip_keeps_the_condition():
    text = ("name: lab\npatterns:\n  - id: lab\n    action_type: network_request\n"
            "    pattern: '^https://.*'\n    action: allow\n    conditions:\n"
            "      destination_in: [private, '2001:db8::/32']\n")
    policy = policy_from_yaml_string(text)
    again = policy_from_yaml_string(policy.to_yaml())
    assert again.get_pattern("lab").conditions == {"destination_in": ["private", "2001:db8::/32"]}
    assert again.evaluate("network_request", "https://x/", {"dest_ip": "2001:db8::9"}).allowed


# --- the built-in policies on the examples of issue 6 ---------------------------------------------

def _builtin(name: str) -> Policy:
    return load_policy(name, variables=VARIABLES)


def test_strict_refuses_a_name_that_resolves_to_a_private_address():
    strict = _builtin("strict")
    for action_type, target in (("network_connect", "api.github.com:443"),
                                ("network_request", "https://api.github.com/repos/o/r")):
        refused = strict.evaluate(action_type, target, {"dest_ip": "10.0.0.5"})
        assert not refused.allowed and refused.violation_mode is ViolationMode.BLOCK
        assert refused.pattern_id in ("block_internal_connects", "block_internal_networks")
        assert strict.evaluate(action_type, target, {"dest_ip": "140.82.112.5"}).allowed


def test_strict_allows_https_to_public_addresses_only():
    strict = _builtin("strict")
    assert strict.evaluate("network_connect", "140.82.112.5:443").allowed
    assert strict.evaluate("network_connect", "[2606:4700::1111]:443").allowed
    assert not strict.evaluate("network_connect", "140.82.112.5:80").allowed
    for internal in ("127.0.0.1:443", "[::ffff:127.0.0.1]:443", "10.0.0.5:443", "[fd00::1]:443",
                     "100.64.0.1:443", "[64:ff9b::a00:5]:443", "0.0.0.0:443"):
        assert not strict.evaluate("network_connect", internal).allowed, internal


def test_strict_keeps_dns_on_any_address():
    strict = _builtin("strict")
    for resolver in ("127.0.0.53:53", "10.0.2.3:53", "[fd00::53]:53", "8.8.8.8:53"):
        assert strict.evaluate("network_connect", resolver).allowed, resolver


@pytest.mark.parametrize("name", ["strict", "read_only"])
def test_metadata_is_critical_on_certain_evidence(name):
    policy = _builtin(name)
    ctx = {"method": "GET"}
    for action_type, target in (("network_connect", "169.254.169.254:80"),
                                ("network_connect", "[::ffff:169.254.169.254]:80"),
                                ("network_connect", "[fd00:ec2::254]:80"),
                                ("network_request", "http://169.254.169.254/latest/meta-data/")):
        result = policy.evaluate(action_type, target, ctx)
        assert not result.allowed and result.severity == Severity.CRITICAL, (action_type, target)
        assert result.violation_mode is ViolationMode.SIGKILL
    # a name resolving there is refused, without killing on an inference
    rebound = policy.evaluate("network_connect", "x.example:80", {"dest_ip": "169.254.169.254"})
    assert not rebound.allowed and rebound.violation_mode is ViolationMode.BLOCK


def test_read_only_allows_get_and_head_and_refuses_post():
    read_only = _builtin("read_only")
    public = {"dest_ip": "93.184.216.34"}
    for method in ("GET", "HEAD", "get"):
        assert read_only.evaluate("network_request", "https://example.com/a",
                                  {**public, "method": method}).allowed, method
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        result = read_only.evaluate("network_request", "https://example.com/a",
                                    {**public, "method": method})
        assert not result.allowed and result.pattern_id == "block_non_get_requests", method
    assert not read_only.evaluate("network_request", "https://example.com/a", public).allowed


def test_permissive_records_every_external_connection(tmp_path):
    log = tmp_path / "flight.jsonl"
    with FlightRecorder(str(log)) as recorder:
        kernel = KernelSpace(_builtin("permissive"), recorder=recorder)
        outside = kernel.evaluate("a1", "network_connect", "api.github.com:443",
                                  {"dest_ip": "140.82.112.5"})
        inside = kernel.evaluate("a1", "network_connect", "127.0.0.1:5432")
        request = kernel.evaluate("a1", "network_request", "https://93.184.216.34/")
    assert outside.allowed and outside.action == "warn"
    assert outside.violation_mode is ViolationMode.LOG_ONLY and outside.signal is None
    assert inside.allowed and inside.action == "allow" and request.allowed
    records = list(FlightRecorder.read(str(log)))
    external = [(r["target"], r["pattern_id"]) for r in records if r["decision"] == "warn"]
    assert external == [("api.github.com:443", "log_external_connections"),
                        ("https://93.184.216.34/", "log_external_requests")]
    assert [r["decision"] for r in records if r["target"] == "127.0.0.1:5432"] == ["allow"]
