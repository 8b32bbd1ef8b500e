"""Property tests: a strict merge is never less restrictive than either input, a permissive one
never more restrictive than either, and a YAML round trip preserves every decision."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_os import Pattern, Policy

ACTION_TYPES = ["file_read", "file_write", "shell_execute"]
REGEXES = [r".*", r"^.*$", r"/data/.*", r"/data/out/.*", r"/etc/.*", r".*\.pem$", r"/tmp/.*",
           r".*(rm\s+-rf|sudo).*", r"^(?!/data/).*", r"/data/(in|out)/[a-z]+$"]
TARGETS = ["/data/out/x", "/data/in/a", "/data/x.pem", "/etc/passwd", "/tmp/t", "/home/u/f",
           "sudo ls", "rm -rf /", "ls\nrm -rf /", "/data/out/", ""]

patterns = st.builds(
    Pattern,
    action_type=st.sampled_from(ACTION_TYPES),
    pattern=st.sampled_from(REGEXES),
    action=st.sampled_from(["allow", "deny", "warn"]),
    severity=st.sampled_from(["low", "medium", "high", "critical"]),
    violation_mode=st.sampled_from([None, "sigkill", "sigstop", "sigwarn", "log_only", "block"]),
)
policies = st.builds(
    lambda pats, default, mode, name: Policy(name=name, default_action=default,
                                             violation_mode=mode, patterns=_unique(pats)),
    st.lists(patterns, max_size=8),
    st.sampled_from(["allow", "deny", "warn"]),
    st.sampled_from([None, "sigkill", "sigstop", "block", "sigwarn", "log_only"]),
    st.sampled_from(["a", "b", "c"]),
)


def _unique(pats):
    seen, out = set(), []
    for p in pats:
        if p.id not in seen:
            seen.add(p.id)
            out.append(p)
    return out


def _all_decisions(policy):
    return {(t, x): policy.evaluate(t, x) for t in ACTION_TYPES for x in TARGETS}


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(policies, policies)
def test_strict_merge_never_less_restrictive(a, b):
    merged = a.merge(b, strategy="strict")
    for t in ACTION_TYPES:
        for x in TARGETS:
            m, ra, rb = merged.evaluate(t, x), a.evaluate(t, x), b.evaluate(t, x)
            assert m.restrictiveness() >= ra.restrictiveness(), (t, x, m, ra)
            assert m.restrictiveness() >= rb.restrictiveness(), (t, x, m, rb)
            assert m.allowed <= (ra.allowed and rb.allowed)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(policies, policies)
def test_permissive_merge_never_more_restrictive(a, b):
    merged = a.merge(b, strategy="permissive")
    for t in ACTION_TYPES:
        for x in TARGETS:
            m = merged.evaluate(t, x)
            assert m.restrictiveness() <= a.evaluate(t, x).restrictiveness()
            assert m.restrictiveness() <= b.evaluate(t, x).restrictiveness()


def _essence(result):
    return (result.allowed, result.action, result.pattern_id, result.matched, result.severity,
            result.violation_mode, result.signal)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(policies)
def test_yaml_round_trip_preserves_decisions(policy):
    again = Policy.from_yaml_string(policy.to_yaml())
    before, after = _all_decisions(policy), _all_decisions(again)
    assert {k: _essence(v) for k, v in before.items()} == {k: _essence(v) for k, v in after.items()}


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(policies, policies)
def test_yaml_round_trip_of_a_strict_merge(a, b):
    merged = a.merge(b, strategy="strict")
    again = Policy.from_yaml_string(merged.to_yaml())
    for t in ACTION_TYPES:
        for x in TARGETS:
            assert _essence(merged.evaluate(t, x)) == _essence(again.evaluate(t, x))


@settings(max_examples=200, deadline=None)
@given(policies, st.sampled_from(ACTION_TYPES), st.text(max_size=40))
def test_cached_decision_equals_fresh_decision(policy, action_type, target):
    first = policy.evaluate(action_type, target)
    cached = policy.evaluate(action_type, target)
    policy.compile()
    assert _essence(first) == _essence(cached)
