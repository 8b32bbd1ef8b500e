"""decide() judges a connect as its address and as every name the run's DNS stub resolved to
that address (most restrictive wins), with ``dest_ip`` in the context; the run's own plane
endpoints (DNS stub, proxy) are reachable whatever the policy says about their addresses."""

from __future__ import annotations

from agent_os.loader import policy_from_yaml_string
from agentd.trace import decide as D
from agentd.trace.decode import Action, DecodedSyscall

POLICY = """
name: net_test
default_action: allow
patterns:
  - id: block_evil_name
    action_type: network_connect
    pattern: '^evil\\.example:443$'
    action: deny
    severity: high
    message: evil.example is off limits
  - id: block_private
    action_type: network_connect
    pattern: '^10\\..*'
    action: deny
    severity: high
"""

TREE = D.AgentTree(lambda pid: True, lambda: [])


def verdict(target, network=None, policy=None):
    policy = policy or policy_from_yaml_string(POLICY)
    decoded = DecodedSyscall("connect", 42, (), (Action("network_connect", target),))
    return D.decide(decoded, policy, {"agent_id": "t"}, TREE, network)


def test_an_address_alone_is_judged_as_itself():
    assert verdict("203.0.113.9:443").outcome == "allow"


def test_a_name_resolved_to_the_address_is_judged_too():
    network = D.NetworkView(lambda ip: ("evil.example",) if ip == "203.0.113.9" else ())
    result = verdict("203.0.113.9:443", network)
    assert result.outcome == "block"
    assert [e.target for e in result.evaluations] == ["203.0.113.9:443", "evil.example:443"]
    assert result.deciding.pattern_ids == ("block_evil_name",)


def test_the_address_rule_still_holds_when_a_name_is_allowed():
    network = D.NetworkView(lambda ip: ("fine.example",))
    assert verdict("10.1.2.3:443", network).outcome == "block"


def test_ipv6_targets_are_split_for_names():
    seen = []
    network = D.NetworkView(lambda ip: seen.append(ip) or ())
    verdict("[2001:db8::1]:443", network)
    assert seen == ["2001:db8::1"]


def test_plane_endpoints_are_reachable():
    network = D.NetworkView(lambda ip: (), frozenset({"10.255.0.1:3128"}))
    result = verdict("10.255.0.1:3128", network)
    assert result.outcome == "allow"
    assert result.evaluations[0].pattern_ids == ("agentd:network_plane",)
    assert verdict("10.255.0.1:22", network).outcome == "block"


def test_dest_ip_reaches_the_engine():
    class Spy:
        def __init__(self):
            self.contexts = []

        def evaluate(self, action_type, target, context):
            self.contexts.append(dict(context))
            return policy_from_yaml_string(POLICY).evaluate(action_type, target, context)

    spy = Spy()
    verdict("[::1]:80", None, spy)
    assert spy.contexts[0]["dest_ip"] == "::1"


def test_split_host_port():
    assert D.split_host_port("1.2.3.4:80") == ("1.2.3.4", 80)
    assert D.split_host_port("[::1]:22") == ("::1", 22)
    assert D.split_host_port("unix:/run/x.sock") is None
    assert D.split_host_port("name.example:443") is None
