"""Each rule of docs/policy-semantics.md, checked on the engine."""

import datetime as dt

import pytest

from agent_os import KernelSpace, Pattern, Policy, PolicyStack
from agent_os.kernel import AgentTerminated, PolicyViolation
from agent_os.policy import PolicyException, Severity, ViolationMode
from agent_os.signals import AgentSignal


def data_policy():
    policy = Policy(name="data", default_action="deny", violation_mode=ViolationMode.SIGKILL)
    policy.add_pattern(Pattern(id="write_output", action_type="file_write",
                               pattern=r"/data/output/.*", action="allow", severity=Severity.LOW))
    policy.add_pattern(Pattern(id="block_other_writes", action_type="file_write", pattern=r".*",
                               action="deny", severity=Severity.HIGH, message="only /data/output/"))
    return policy


# --- 1. matching ----------------------------------------------------------------------------

def test_match_is_anchored_at_start_only():
    p = Policy(patterns=[Pattern("network_request", r"https://(api\.good\.com)/.*", "allow")],
               default_action="deny")
    assert p.evaluate("network_request", "https://api.good.com/x").allowed
    assert not p.evaluate("network_request", "https://evil/?u=https://api.good.com/").allowed


def test_dot_matches_newline_so_multiline_commands_cannot_slip_through():
    p = Policy(patterns=[Pattern("shell_execute", r".*rm\s+-rf.*", "deny", Severity.HIGH)])
    result = p.evaluate("shell_execute", "ls\nrm -rf /")
    assert not result.allowed and result.pattern_id.startswith("shell_execute_")


def test_dollar_means_end_of_target_not_before_a_final_newline():
    p = Policy(default_action="deny", patterns=[Pattern("file_write", r"^/dev/null$", "allow")])
    assert p.evaluate("file_write", "/dev/null").allowed
    assert not p.evaluate("file_write", "/dev/null\n").allowed
    big = Policy(default_action="deny", patterns=[
        Pattern("file_write", rf"^/dir{i}/null$", "allow") for i in range(40)])  # the RE2 path
    assert big.evaluate("file_write", "/dir7/null").allowed
    assert not big.evaluate("file_write", "/dir7/null\n").allowed


def test_disabled_pattern_does_not_match_and_enable_restores():
    p = Policy(patterns=[Pattern("file_read", r"/secret.*", "deny", id="s")])
    p.disable_pattern("s")
    assert p.evaluate("file_read", "/secret/a").allowed
    p.enable_pattern("s")
    assert not p.evaluate("file_read", "/secret/a").allowed


# --- 2. which pattern decides ----------------------------------------------------------------

def test_catch_all_is_only_a_fallback():
    p = data_policy()
    assert p.evaluate("file_write", "/data/output/r.csv").allowed
    denied = p.evaluate("file_write", "/etc/passwd")
    assert not denied.allowed and denied.pattern_id == "block_other_writes"
    assert denied.signal is AgentSignal.SIGKILL


def test_most_restrictive_wins_and_all_matches_are_listed():
    p = Policy(default_action="deny", patterns=[
        Pattern(id="allow_ws", action_type="file_read", pattern=r"^/workspace/.*", action="allow"),
        Pattern(id="pem", action_type="file_read", pattern=r".*\.(pem|key)$", action="deny",
                severity="critical"),
        Pattern(id="warn_ws", action_type="file_read", pattern=r"^/workspace/.*", action="warn"),
    ])
    r = p.evaluate("file_read", "/workspace/server.pem")
    assert (r.allowed, r.pattern_id, r.matched) == (False, "pem", ("allow_ws", "pem", "warn_ws"))
    w = p.evaluate("file_read", "/workspace/a.txt")
    assert (w.allowed, w.action, w.pattern_id) == (True, "warn", "warn_ws")


def test_higher_severity_then_order_breaks_ties():
    p = Policy(patterns=[
        Pattern(id="a", action_type="file_read", pattern="/x.*", action="deny", severity="high"),
        Pattern(id="b", action_type="file_read", pattern="/x.*", action="deny", severity="critical"),
        Pattern(id="c", action_type="file_read", pattern="/x.*", action="deny", severity="critical"),
    ])
    assert p.evaluate("file_read", "/x").pattern_id == "b"


def test_default_action_applies_without_match():
    assert Policy(default_action="deny").evaluate("file_read", "/a").allowed is False
    assert Policy(default_action="allow").evaluate("file_read", "/a").allowed is True
    warn = Policy(default_action="warn").evaluate("file_read", "/a")
    assert warn.allowed and warn.signal is AgentSignal.SIGWARN


def test_unknown_action_type_is_refused_clearly():
    with pytest.raises(ValueError, match="did you mean 'file_read'"):
        Pattern("file_raed", ".*", "deny")


# --- 3. violation modes ----------------------------------------------------------------------

@pytest.mark.parametrize("severity,mode,allowed", [
    ("low", ViolationMode.BLOCK, False), ("medium", ViolationMode.BLOCK, False),
    ("high", ViolationMode.BLOCK, False), ("critical", ViolationMode.SIGKILL, False)])
def test_unset_mode_floor(severity, mode, allowed):
    r = Policy(patterns=[Pattern("file_read", "/x", "deny", severity)]).evaluate("file_read", "/x")
    assert (r.violation_mode, r.allowed) == (mode, allowed)


def test_pattern_mode_beats_policy_mode_and_explicit_warn_lets_through():
    p = Policy(violation_mode="sigkill", patterns=[
        Pattern("file_read", "/a", "deny", violation_mode=ViolationMode.SIGSTOP),
        Pattern("file_read", "/b", "deny", violation_mode="sigwarn"),
        Pattern("file_read", "/c", "deny"),
    ])
    a, b, c = (p.evaluate("file_read", t) for t in ("/a", "/b", "/c"))
    assert (a.allowed, a.signal) == (False, AgentSignal.SIGSTOP)
    assert (b.allowed, b.signal) == (True, AgentSignal.SIGWARN)
    assert (c.allowed, c.signal) == (False, AgentSignal.SIGKILL)


def test_warn_low_logs_only_medium_signals():
    p = Policy(patterns=[Pattern("file_read", "/l", "warn", "low"),
                         Pattern("file_read", "/m", "warn", "medium")])
    low, medium = p.evaluate("file_read", "/l"), p.evaluate("file_read", "/m")
    assert low.allowed and low.violation_mode is ViolationMode.LOG_ONLY and low.signal is None
    assert medium.allowed and medium.signal is AgentSignal.SIGWARN


def test_violation_handler_as_in_reference():
    seen = []

    def handler(violation):
        seen.append(violation)
        if violation.severity == "critical":
            return AgentSignal.SIGKILL
        if violation.severity == "high":
            return AgentSignal.SIGSTOP
        return AgentSignal.SIGWARN

    p = Policy(name="h", violation_handler=handler, patterns=[
        Pattern(id="c", action_type="file_read", pattern="/c", action="deny", severity="critical"),
        Pattern(id="h", action_type="file_read", pattern="/h", action="deny", severity="high"),
        Pattern(id="l", action_type="file_read", pattern="/l", action="deny", severity="low"),
    ])
    assert p.evaluate("file_read", "/c").signal is AgentSignal.SIGKILL
    assert p.evaluate("file_read", "/h").signal is AgentSignal.SIGSTOP
    low = p.evaluate("file_read", "/l")
    assert low.allowed and low.signal is AgentSignal.SIGWARN
    p.evaluate("file_read", "/c")  # cached decision: the handler still runs
    assert [v.pattern_id for v in seen] == ["c", "h", "l", "c"]


def test_broken_handler_fails_closed():
    def handler(violation):
        raise RuntimeError("siem down")
    p = Policy(violation_handler=handler, patterns=[Pattern("file_read", "/x", "warn")])
    r = p.evaluate("file_read", "/x")
    assert not r.allowed and "siem down" in r.reason


def test_non_string_target_fails_closed():
    r = Policy().evaluate("file_read", b"/etc/shadow")
    assert not r.allowed and "string" in r.reason


def test_severity_and_mode_parsing():
    assert Severity.CRITICAL == "critical" and Severity.CRITICAL == 4 and Severity.LOW < Severity.HIGH
    assert Pattern("file_read", "x", severity=4).severity is Severity.CRITICAL
    assert ViolationMode.parse("SIGKILL") is ViolationMode.SIGKILL
    with pytest.raises(ValueError):
        Severity.parse("severe")


# --- 4. conditions ---------------------------------------------------------------------------

def test_allow_grants_only_inside_envelope():
    p = Policy(default_action="deny", patterns=[
        Pattern("file_write", "/ws/.*", "allow", conditions={"max_size_bytes": 100})])
    assert p.evaluate("file_write", "/ws/a", {"size_bytes": 50}).allowed
    assert not p.evaluate("file_write", "/ws/a", {"size_bytes": 500}).allowed
    assert not p.evaluate("file_write", "/ws/a", {}).allowed  # missing evidence


def test_warn_fires_outside_envelope():
    p = Policy(patterns=[Pattern("file_write", ".*", "warn", "medium",
                                 conditions={"max_size_bytes": 10, "require_confirmation": True})])
    assert p.evaluate("file_write", "/a", {"size_bytes": 5, "confirmed": True}).action == "allow"
    assert p.evaluate("file_write", "/a", {"size_bytes": 50, "confirmed": True}).action == "warn"


def test_time_and_day_conditions():
    p = Policy(default_action="deny", patterns=[Pattern("database_write", ".*", "allow", conditions={
        "time_range": {"start": "09:00", "end": "17:00"},
        "days": ["monday", "tuesday", "wednesday", "thursday", "friday"], "require_mfa": True})])
    monday_10 = dt.datetime(2026, 11, 23, 10, 0)
    assert p.evaluate("database_write", "UPDATE t", {"now": monday_10, "mfa_verified": True}).allowed
    assert not p.evaluate("database_write", "UPDATE t", {"now": monday_10}).allowed
    sunday = dt.datetime(2026, 11, 22, 10, 0)
    assert not p.evaluate("database_write", "UPDATE t", {"now": sunday, "mfa_verified": True}).allowed
    late = dt.datetime(2026, 11, 23, 18, 0)
    assert not p.evaluate("database_write", "UPDATE t", {"now": late, "mfa_verified": True}).allowed


def test_rate_condition_counts_per_agent():
    p = Policy(default_action="deny", patterns=[
        Pattern("database_write", ".*", "allow", conditions={"max_operations_per_minute": 3})])
    results = [p.evaluate("database_write", "INSERT", {"agent_id": "a"}).allowed for _ in range(5)]
    assert results == [True, True, True, False, False]
    assert p.evaluate("database_write", "INSERT", {"agent_id": "b"}).allowed


def test_sql_and_http_conditions():
    p = Policy(patterns=[
        Pattern("database_write", ".*UPDATE.*", "warn", conditions={
            "require_where_clause": True, "max_affected_rows": 1000}),
        Pattern("network_request", "https://api.github.com/.*", "allow",
                conditions={"allowed_methods": ["GET", "POST"], "require_auth_header": True}),
    ], default_action="deny")
    assert p.evaluate("database_write", "UPDATE t SET a=1 WHERE id=2",
                      {"affected_rows": 1}).action == "deny"  # no warn -> default deny
    assert p.evaluate("database_write", "UPDATE t SET a='WHERE'", {"affected_rows": 1}).action == "warn"
    ok = {"method": "get", "headers": {"authorization": "Bearer x"}}
    assert p.evaluate("network_request", "https://api.github.com/repos", ok).allowed
    assert not p.evaluate("network_request", "https://api.github.com/repos",
                          {"method": "DELETE", "headers": ok["headers"]}).allowed


def test_unknown_condition_is_an_error():
    with pytest.raises(ValueError, match="unknown condition 'max_size'.*did you mean"):
        Pattern("file_write", ".*", "allow", conditions={"max_size": 3})


# --- exceptions, elevation, changes -----------------------------------------------------------

def test_exceptions_apply_until_they_expire():
    patterns = [Pattern(id="block_sys", action_type="file_write", pattern="/etc/.*", action="deny")]
    live = Policy(patterns=patterns, exceptions=[PolicyException(
        "admin_agent_.*", ["block_sys"], "ops", dt.date.today() + dt.timedelta(days=1))])
    assert live.evaluate("file_write", "/etc/x", {"agent_id": "admin_agent_7"}).allowed
    assert not live.evaluate("file_write", "/etc/x", {"agent_id": "other"}).allowed
    expired = Policy(patterns=[p.copy() for p in patterns], exceptions=[PolicyException(
        "admin_agent_.*", ["block_sys"], "ops", dt.date(2024, 12, 31))])
    assert not expired.evaluate("file_write", "/etc/x", {"agent_id": "admin_agent_7"}).allowed


def test_elevated_privileges_softens_non_critical_only():
    p = Policy(patterns=[Pattern(id="dd", action_type="database_delete", pattern=".*", action="deny",
                                 severity="high"),
                         Pattern(id="k", action_type="file_write", pattern="/etc/.*", action="deny",
                                 severity="critical")])
    ctx = {"agent_id": "admin_agent"}
    assert not p.evaluate("database_delete", "DELETE FROM t", ctx).allowed
    with p.elevated_privileges("admin_agent"):
        assert p.evaluate("database_delete", "DELETE FROM t", ctx).allowed
        assert not p.evaluate("database_delete", "DELETE FROM t", {"agent_id": "x"}).allowed
        assert not p.evaluate("file_write", "/etc/passwd", ctx).allowed
    assert not p.evaluate("database_delete", "DELETE FROM t", ctx).allowed


def test_on_change_events_and_cache_invalidation():
    events = []
    p = Policy(name="dyn")
    p.on_change(lambda e: events.append((e.change_type, e.pattern_id)))
    assert p.evaluate("network_request", "https://malicious-domain.com/x").allowed
    p.add_pattern(Pattern(id="emergency_block", action_type="network_request",
                          pattern=r".*malicious-domain\.com.*", action="deny", severity="critical"))
    assert not p.evaluate("network_request", "https://malicious-domain.com/x").allowed
    p.remove_pattern("emergency_block")
    assert p.evaluate("network_request", "https://malicious-domain.com/x").allowed
    assert events == [("pattern_added", "emergency_block"), ("pattern_removed", "emergency_block")]


# --- 5. combining ----------------------------------------------------------------------------

def test_inheritance_child_adds_and_overrides():
    base = Policy(name="base", default_action="deny",
                  patterns=[Pattern(id="r", action_type="file_read", pattern=".*", action="allow")])
    child = Policy(name="child", extends=base, patterns=[
        Pattern(id="w", action_type="file_write", pattern="/app/data/.*", action="allow")])
    assert child.default_action == "deny"
    assert [p.id for p in child.patterns] == ["r", "w"]
    assert child.evaluate("file_read", "/x").allowed and child.evaluate("file_write", "/app/data/1").allowed
    assert not child.evaluate("file_write", "/app/other").allowed
    child.disable_pattern("r")
    assert base.evaluate("file_read", "/x").allowed  # the parent is not changed by the child


def test_stack_first_matching_layer_decides_else_baseline_default():
    top = Policy(name="top", default_action="allow",
                 patterns=[Pattern("file_read", "/ok/.*", "allow")])
    base = Policy(name="base", default_action="deny",
                  patterns=[Pattern("file_read", "/ok/secret.*", "deny")])
    stack = PolicyStack([top, base])
    assert stack.evaluate("file_read", "/ok/secret").allowed  # layer 1 matched first
    assert not stack.evaluate("file_read", "/other").allowed  # baseline default


def test_strict_merge_is_monotone_where_a_union_would_not_be():
    a = Policy(name="a", patterns=[Pattern("file_write", "/data/.*", "allow"),
                                   Pattern("file_write", ".*", "deny")])
    b = Policy(name="b", patterns=[Pattern("file_write", "/tmp/.*", "allow")])
    merged = a.merge(b, strategy="strict")
    assert not merged.evaluate("file_write", "/tmp/x").allowed
    assert merged.evaluate("file_write", "/data/x").allowed
    assert a.merge(b, strategy="permissive").evaluate("file_write", "/tmp/x").allowed


def test_override_and_custom_merge():
    a = Policy(name="a", patterns=[Pattern("file_read", "/x", "deny", "high", id="p")])
    b = Policy(name="b", patterns=[Pattern("file_read", "/x", "allow", "low", id="q")])
    assert a.merge(b, strategy="override").evaluate("file_read", "/x").allowed

    def prefer_higher(p1, p2):
        return p1 if p1.severity > p2.severity else p2
    custom = a.merge(b, strategy="custom", conflict_resolver=prefer_higher)
    assert not custom.evaluate("file_read", "/x").allowed
    with pytest.raises(ValueError):
        a.merge(b, strategy="custom")
    with pytest.raises(ValueError):
        a.merge(b, strategy="loose")


# --- KernelSpace -----------------------------------------------------------------------------

def test_kernel_execute_runs_allowed_refuses_and_terminates():
    kernel = KernelSpace(policy=data_policy())
    ran = []
    out = kernel.execute("a1", {"action_type": "file_write", "target": "/data/output/x",
                                "run": lambda: ran.append(1) or "done"})
    assert out.value == "done" and ran == [1]
    with pytest.raises(PolicyViolation, match="block_other_writes"):
        kernel.execute("a1", {"action_type": "file_write", "target": "/etc/passwd",
                              "run": lambda: ran.append(2)})
    assert ran == [1]
    with pytest.raises(AgentTerminated):
        kernel.execute("a1", {"action_type": "file_write", "target": "/data/output/y"})
