"""Which layer enforces what: the proof that a policy's file rules are an allow-list of hierarchies.

The soundness rule under test: Landlock may only refuse what the policy refuses. Regex bounds are
checked against ``re`` itself on generated strings; plans are checked on the reference's
data_processor policy, the built-in policies and hand-made policies for every way a proof must
fail; the last test applies a derived plan in a real child and compares the kernel's answers with
the policy's.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_os.loader import load_policy, policy_from_yaml_string
from agent_os.policy import Pattern, Policy, PolicyException, Severity, ViolationMode
from agent_os.stack import PolicyStack
from agentd.kernel import landlock as ll
from helpers.landlock_child import attempt, run_in_child, write_file
from agent_os.prefixes import EXACT, EXACT_OR_NEWLINE, PREFIX, Prefix, match_prefixes, may_match_starting_with
from agentd.run.sandbox_plan import LANDLOCK, REMOVE_RIGHTS, TRACER, plan_sandbox

ABI7 = ll.LandlockSupport(7)
ALL_DIRS = lambda path: "dir"  # noqa: E731 - plan as if every directory existed


def covered(plan, target: str) -> bool:
    """Whether the plan's Landlock rules allow writing ``target``."""
    for rule in plan.ruleset.path_rules:
        if target == rule.path or target.startswith(rule.path.rstrip("/") + "/"):
            return True
    return False


# --- regex bounds ---------------------------------------------------------------------------------

@pytest.mark.parametrize("regex, expected", [
    (r"^/data/output/.*", {Prefix("/data/output/", PREFIX)}),
    (r"/data/output/.*", {Prefix("/data/output/", PREFIX)}),
    (r"/data/(input|staging|archive)/.*", {Prefix("/data/input/", PREFIX),
                                           Prefix("/data/staging/", PREFIX),
                                           Prefix("/data/archive/", PREFIX)}),
    (r"^/ws(?:/.*)?$", {Prefix("/ws", EXACT_OR_NEWLINE), Prefix("/ws/", PREFIX)}),
    (r"^/dev/null\Z", {Prefix("/dev/null", EXACT)}),
    (r"/ws(/.*)?", {Prefix("/ws", PREFIX), Prefix("/ws/", PREFIX)}),  # no anchor: /wsX too
    (r".*\.txt", {Prefix("", PREFIX)}),
    (r"/a/b+c", {Prefix("/a/b", PREFIX)}),
    (r"[/]ws[x]/", {Prefix("/wsx/", PREFIX)}),
    (r"(?m)^/a$", {Prefix("/a", PREFIX)}),
    (r"/a(?i:b)", {Prefix("/a", PREFIX)}),
])
def test_match_prefixes(regex: str, expected: set[Prefix]) -> None:
    assert set(match_prefixes(regex)) == expected


def test_case_insensitive_regex_has_no_literal_prefix() -> None:
    with pytest.raises(ValueError, match="case-insensitively"):
        match_prefixes(r"(?i)/ws/.*")


def _in_bound(prefixes, target: str) -> bool:
    return any((p.kind == PREFIX and target.startswith(p.text))
               or (p.kind == EXACT and target == p.text)
               or (p.kind == EXACT_OR_NEWLINE and target in (p.text, p.text + "\n"))
               for p in prefixes)


_PIECES = ["/", "a", "b", "ws", ".", "\n", ".*", "(?:a|b)", "(?:/.*)?", "[ab]", "a?", "b+",
           "$", r"\Z", "(?:ws|a/)", "x{2}", "(?=a)", "[^/]*"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), min_size=1, max_size=6),
       st.lists(st.text(alphabet="/abwsx.\n", max_size=8), min_size=1, max_size=20))
def test_every_match_lies_within_the_bound(pieces: list[str], targets: list[str]) -> None:
    regex = "".join(pieces)
    compiled = re.compile(regex, re.DOTALL)
    prefixes = match_prefixes(regex)
    for target in targets:
        if compiled.match(target):
            assert _in_bound(prefixes, target), (regex, target, prefixes)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES + ["unix:", "@", "u", "(?:unix:/|x)", "[a-z]+", r"\d"]),
                min_size=1, max_size=6),
       st.text(alphabet="unix:@/ab", max_size=6))
def test_may_match_starting_with_never_misses(pieces: list[str], suffix: str) -> None:
    regex = "".join(pieces)
    if re.compile(regex, re.DOTALL).match("unix:@" + suffix):
        assert may_match_starting_with(regex, "unix:@")


@pytest.mark.parametrize("regex, expected", [
    (r"^(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|\[[0-9a-fA-F:.]+\]):53$", False),
    (r"^unix:/run/nscd/socket$", False),
    (r"^unix:@", True),
    (r".*", True),
    (r"(?i)UNIX:@x", True),
    (r"^(?:api\.github\.com|api\.openai\.com):443$", False),
])
def test_may_match_starting_with(regex: str, expected: bool) -> None:
    assert may_match_starting_with(regex, "unix:@") is expected


# --- plans ----------------------------------------------------------------------------------------

def data_processor_policy() -> Policy:
    """The policy reference's data_processor example, verbatim."""
    policy = Policy(name="data_processor_policy", description="Policy for data processing agents",
                    version="2.1.0", default_action="deny", violation_mode=ViolationMode.SIGKILL)
    policy.add_pattern(Pattern(id="read_data_dirs", action_type="file_read",
                               pattern=r"/data/(input|staging|archive)/.*", action="allow",
                               severity=Severity.LOW))
    policy.add_pattern(Pattern(id="write_output", action_type="file_write",
                               pattern=r"/data/output/.*", action="allow", severity=Severity.LOW))
    policy.add_pattern(Pattern(id="block_other_writes", action_type="file_write", pattern=r".*",
                               action="deny", severity=Severity.HIGH,
                               message="File writes only allowed in /data/output/"))
    policy.add_pattern(Pattern(id="db_read", action_type="database_read", pattern=r".*",
                               action="allow"))
    return policy


def test_data_processor_writes_go_under_landlock() -> None:
    plan = plan_sandbox(data_processor_policy(), support=ABI7, kind=ALL_DIRS)
    assert plan.layers_for("file_write") == (TRACER, LANDLOCK)
    assert plan.layers_for("file_delete") == (TRACER, LANDLOCK)
    assert plan.layers_for("file_read") == (TRACER,)
    assert [r.path for r in plan.ruleset.path_rules] == ["/data/output"]
    rights = plan.ruleset.path_rules[0].access
    assert rights & ll.LANDLOCK_ACCESS_FS_WRITE_FILE and rights & REMOVE_RIGHTS
    assert rights & ll.LANDLOCK_ACCESS_FS_TRUNCATE and rights & ll.LANDLOCK_ACCESS_FS_REFER
    assert not plan.ruleset.handled_fs & (ll.LANDLOCK_ACCESS_FS_READ_FILE
                                          | ll.LANDLOCK_ACCESS_FS_EXECUTE
                                          | ll.LANDLOCK_ACCESS_FS_IOCTL_DEV)
    # default deny and no network_connect pattern: no TCP destination at all
    assert plan.ruleset.handled_net == ll.LANDLOCK_ACCESS_NET_CONNECT_TCP
    assert plan.ruleset.port_rules == ()
    assert plan.ruleset.scoped == ll.ALL_SCOPES
    assert plan.warnings == ()
    text = plan.explain()
    assert "file_write" in text and "tracer + landlock" in text and "/data/output" in text
    assert "block_other_writes" in text


def test_a_missing_directory_gets_no_rule_and_the_plan_says_so() -> None:
    plan = plan_sandbox(data_processor_policy(), support=ABI7, kind=lambda path: None)
    assert plan.ruleset.path_rules == ()
    assert plan.ruleset.handled_fs  # writes are still refused everywhere else
    assert any("/data/output does not exist" in note for note in plan.notes)
    assert any("/data/output" in caveat for caveat in plan.caveats)


@pytest.fixture
def variables(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "ws").mkdir()
    (tmp_path / "tmp").mkdir()
    return {"WORKSPACE": str(tmp_path / "ws"), "HOME": str(tmp_path / "home"),
            "TMPDIR": str(tmp_path / "tmp")}


def _builtin(name: str, variables: dict[str, str]):
    """A built-in policy; one that does not load is a failure here, never a skip."""
    return load_policy(name, variables=variables)


SAMPLE_TARGETS = ["{WORKSPACE}", "{WORKSPACE}/a.txt", "{WORKSPACE}/sub/dir/b", "{TMPDIR}/x",
                  "{WORKSPACE}x", "{HOME}/.bashrc", "{HOME}/notes.txt", "/etc/passwd",
                  "/usr/lib/x", "/dev/null", "/dev/tty", "/dev/pts/3", "/dev/shm/sem.q",
                  "/dev/sda", "/tmp/other", "/", "/data/output/x", "{WORKSPACE}/.ssh/id",
                  "{WORKSPACE}/__pycache__/m.pyc", "/proc/1/mem"]


@pytest.mark.parametrize("name", ["strict", "read_only", "permissive"])
def test_builtin_policies_landlock_never_refuses_what_the_policy_allows(
        name: str, variables: dict[str, str]) -> None:
    policy = _builtin(name, variables)
    plan = plan_sandbox(policy, support=ABI7)
    targets = [t.format(**variables) for t in SAMPLE_TARGETS]
    for action_type in ("file_write", "file_delete"):
        if LANDLOCK not in plan.layers_for(action_type):
            continue
        for target in targets:
            if policy.evaluate(action_type, target).allowed and os.path.exists(
                    os.path.dirname(target) or "/"):
                exists_as_dir = os.path.isdir(target)
                assert exists_as_dir or covered(plan, target), (action_type, target)


def test_strict_plan(variables: dict[str, str]) -> None:
    policy = _builtin("strict", variables)
    plan = plan_sandbox(policy, support=ABI7)
    assert plan.layers_for("file_write") == (TRACER, LANDLOCK)
    assert plan.layers_for("file_read") == (TRACER,)
    rule_paths = {r.path for r in plan.ruleset.path_rules}
    assert {variables["WORKSPACE"], variables["TMPDIR"]} <= rule_paths
    assert "/dev/null" in rule_paths
    null_rule = next(r for r in plan.ruleset.path_rules if r.path == "/dev/null")
    assert null_rule.access == ll.LANDLOCK_ACCESS_FS_WRITE_FILE | ll.LANDLOCK_ACCESS_FS_TRUNCATE
    assert not covered(plan, "/etc/passwd") and not covered(plan, variables["HOME"] + "/x")
    # strict allows DNS and HTTPS by address: TCP stays with the tracer; no abstract socket
    assert plan.layers_for("network_connect (tcp)") == (TRACER,)
    assert plan.layers_for("network_connect (abstract unix)") == (TRACER, LANDLOCK)


def _write_policy(*patterns: Pattern, default: str = "deny", **kwargs) -> Policy:
    return Policy(name="t", default_action=default, patterns=list(patterns), **kwargs)


ALLOW_WS = Pattern(id="allow_ws", action_type="file_write", pattern=r"^/ws/.*", action="allow")
DENY_ALL = Pattern(id="deny_all", action_type="file_write", pattern=r".*", action="deny")


@pytest.mark.parametrize("policy, reason", [
    (_write_policy(ALLOW_WS, default="allow"), "default action is allow"),
    (_write_policy(ALLOW_WS, default="warn"), "default action is warn"),
    (_write_policy(ALLOW_WS, Pattern(id="w", action_type="file_write", pattern=".*",
                                     action="warn"), default="allow"), "'w' (warn)"),
    (_write_policy(ALLOW_WS, Pattern(id="txt", action_type="file_write", pattern=r".*\.txt",
                                     action="allow")), "'txt'"),
    (_write_policy(Pattern(id="ci", action_type="file_write", pattern=r"(?i)/ws/.*",
                           action="allow")), "case-insensitively"),
    (_write_policy(Pattern(id="root", action_type="file_write", pattern=r"/t.*",
                           action="allow")), "anywhere under /"),
    (_write_policy(ALLOW_WS, DENY_ALL, default="allow", violation_mode="log_only"),
     "lets every unmatched"),
    (_write_policy(ALLOW_WS, violation_mode="sigwarn"), "sigwarn"),
    # a reviewer may allow a held action (agentd resume --allow): Landlock must not refuse it
    (_write_policy(ALLOW_WS, violation_mode="sigstop"), "sigstop"),
    (_write_policy(ALLOW_WS, Pattern(id="hold", action_type="file_write", pattern=".*",
                                     action="deny", violation_mode="sigstop")), "'hold'"),
    (_write_policy(ALLOW_WS, Pattern(id="soft", action_type="file_write", pattern=r".*\.bak",
                                     action="deny", violation_mode="log_only")), "'soft'"),
    (_write_policy(ALLOW_WS, default="deny", violation_handler=lambda v: None),
     "violation_handler"),
    (_write_policy(ALLOW_WS, Pattern(id="cond_deny", action_type="file_write", pattern=".*",
                                     action="deny", conditions={"max_size_bytes": 10}),
                   default="allow"), "default action is allow"),
    (_write_policy(ALLOW_WS, DENY_ALL, default="allow",
                   exceptions=[PolicyException("agent-.*", ["deny_all"])]),
     "default action is allow"),
])
def test_what_cannot_be_proven_stays_with_the_tracer(policy: Policy, reason: str) -> None:
    plan = plan_sandbox(policy, support=ABI7, kind=ALL_DIRS)
    assert plan.layers_for("file_write") == (TRACER,)
    assert plan.ruleset.handled_fs == 0 and plan.ruleset.path_rules == ()
    write_reason = next(c.reason for c in plan.classes if c.name == "file_write")
    assert reason in write_reason, write_reason


def test_a_provable_policy_with_allow_and_warn_inside_the_workspace() -> None:
    policy = _write_policy(
        ALLOW_WS, DENY_ALL,
        Pattern(id="warn_env", action_type="file_write", pattern=r"^/ws/.*\.env$", action="warn"),
        Pattern(id="deny_etc", action_type="file_write", pattern=r"^/etc/.*", action="deny"),
        Pattern(id="allow_all_loses", action_type="file_write", pattern=".*", action="allow"))
    plan = plan_sandbox(policy, support=ABI7, kind=ALL_DIRS)
    assert plan.layers_for("file_write") == (TRACER, LANDLOCK)
    assert [r.path for r in plan.ruleset.path_rules] == ["/ws"]


def test_a_deny_that_lets_through_counts_as_allowing() -> None:
    policy = _write_policy(ALLOW_WS, Pattern(id="soft", action_type="file_write",
                                             pattern=r"^/etc/.*", action="deny",
                                             violation_mode="log_only"))
    plan = plan_sandbox(policy, support=ABI7, kind=ALL_DIRS)
    assert policy.evaluate("file_write", "/etc/x").allowed
    assert {r.path for r in plan.ruleset.path_rules} == {"/ws", "/etc"}


def test_deletes_that_are_not_an_allow_list_leave_removal_to_the_tracer() -> None:
    # file_delete default allow, file_move not refused: the tracer checks a rename as a write of
    # both names, so the policy refuses mv /elsewhere/x /ws/x as Landlock does; writes go under
    # Landlock, removal stays with the tracer
    policy = _write_policy(ALLOW_WS, DENY_ALL, default="allow")
    plan = plan_sandbox(policy, support=ABI7, kind=ALL_DIRS)
    assert plan.layers_for("file_write") == (TRACER, LANDLOCK)
    assert plan.layers_for("file_delete") == (TRACER,)
    assert not plan.ruleset.handled_fs & REMOVE_RIGHTS
    assert not policy.evaluate("file_write", "/elsewhere/x").allowed


def test_deletes_stay_with_the_tracer_when_renames_are_refused() -> None:
    policy = _write_policy(ALLOW_WS, DENY_ALL,
                           Pattern(id="no_moves", action_type="file_move", pattern=".*",
                                   action="deny"), default="allow")
    plan = plan_sandbox(policy, support=ABI7, kind=ALL_DIRS)
    assert plan.layers_for("file_write") == (TRACER, LANDLOCK)
    assert plan.layers_for("file_delete") == (TRACER,)
    assert not plan.ruleset.handled_fs & REMOVE_RIGHTS


def test_delete_hierarchies_join_the_write_hierarchies() -> None:
    policy = _write_policy(ALLOW_WS, DENY_ALL,
                           Pattern(id="del_tmp", action_type="file_delete", pattern=r"^/scratch/.*",
                                   action="allow"),
                           Pattern(id="del_one", action_type="file_delete",
                                   pattern=r"^/var/log/agent\.log\Z", action="allow"))
    plan = plan_sandbox(policy, support=ABI7, kind=ALL_DIRS)
    assert {r.path for r in plan.ruleset.path_rules} == {"/ws", "/scratch", "/var/log"}
    assert all(r.access & REMOVE_RIGHTS for r in plan.ruleset.path_rules)


def test_policy_stack_is_analysed_layer_by_layer() -> None:
    override = Policy(name="agent", default_action="allow", patterns=[
        Pattern(id="allow_out", action_type="file_write", pattern=r"^/out/.*", action="allow")])
    baseline = _write_policy(ALLOW_WS, DENY_ALL)
    plan = plan_sandbox(PolicyStack([override, baseline]), support=ABI7, kind=ALL_DIRS)
    assert {r.path for r in plan.ruleset.path_rules} == {"/out", "/ws"}
    loose = Policy(name="loose", patterns=[
        Pattern(id="anything", action_type="file_write", pattern=".*", action="allow")])
    plan = plan_sandbox(PolicyStack([loose, baseline]), support=ABI7, kind=ALL_DIRS)
    assert plan.layers_for("file_write") == (TRACER,)


def test_audit_mode_uses_no_landlock() -> None:
    plan = plan_sandbox(data_processor_policy(), support=ABI7, mode="audit", kind=ALL_DIRS)
    assert plan.ruleset.empty
    assert all(LANDLOCK not in c.layers for c in plan.classes)
    assert "--mode audit" in plan.explain()


# --- older kernels: the plan degrades, with a warning ---------------------------------------------

def test_no_landlock_degrades_everything_to_the_tracer_with_a_warning() -> None:
    plan = plan_sandbox(data_processor_policy(), kind=ALL_DIRS,
                        support=ll.LandlockSupport(0, problem="not built in (test)"))
    assert plan.ruleset.empty and plan.prepare_landlock() == (None, ())
    assert all(LANDLOCK not in c.layers for c in plan.classes)
    assert len(plan.warnings) == 1
    warning = plan.warnings[0]
    assert "Landlock is not available: not built in (test)" in warning
    assert "file_write" in warning and "tracer only" in warning
    assert "Warnings:" in plan.explain()


def test_abi_1_cannot_take_file_writes() -> None:
    plan = plan_sandbox(data_processor_policy(), support=ll.LandlockSupport(1), kind=ALL_DIRS)
    assert plan.layers_for("file_write") == (TRACER,)
    assert plan.ruleset.empty
    assert any("ABI 1 refuses every rename" in w for w in plan.warnings)
    assert any("no network rights" in w for w in plan.warnings)


def test_abi_2_loses_truncate_and_the_rest_with_warnings() -> None:
    plan = plan_sandbox(data_processor_policy(), support=ll.LandlockSupport(2), kind=ALL_DIRS)
    assert plan.layers_for("file_write") == (TRACER, LANDLOCK)
    assert not plan.ruleset.handled_fs & ll.LANDLOCK_ACCESS_FS_TRUNCATE
    assert plan.ruleset.handled_fs & ll.LANDLOCK_ACCESS_FS_REFER
    assert plan.ruleset.handled_net == 0 and plan.ruleset.scoped == 0
    assert any("truncate(2)" in w for w in plan.warnings)
    assert plan.layers_for("network_connect (tcp)") == (TRACER,)
    assert plan.layers_for("signals outside the agent") == (TRACER,)


def test_abi_5_has_tcp_but_no_scopes() -> None:
    plan = plan_sandbox(data_processor_policy(), support=ll.LandlockSupport(5), kind=ALL_DIRS)
    assert plan.ruleset.handled_net == ll.LANDLOCK_ACCESS_NET_CONNECT_TCP
    assert plan.ruleset.scoped == 0
    assert plan.layers_for("network_connect (abstract unix)") == (TRACER,)


# --- end to end on the real kernel ----------------------------------------------------------------

SUPPORT = ll.probe()


@pytest.mark.skipif(SUPPORT.abi < 3, reason=f"needs Landlock ABI 3: {SUPPORT.describe()}")
def test_a_derived_plan_refuses_only_what_the_policy_refuses(tmp_path: Path) -> None:
    ws, other = tmp_path / "ws", tmp_path / "other"
    (ws / "sub").mkdir(parents=True)
    other.mkdir()
    policy = policy_from_yaml_string("""
name: e2e
defaults: {action: deny}
patterns:
  - {id: allow_ws, action_type: file_write, pattern: '^${WORKSPACE}/.*', action: allow}
  - {id: allow_ws_delete, action_type: file_delete, pattern: '^${WORKSPACE}/.*', action: allow}
  - {id: deny_writes, action_type: file_write, pattern: '.*', action: deny}
""", variables={"WORKSPACE": str(ws)})
    plan = plan_sandbox(policy)
    assert plan.layers_for("file_write") == (TRACER, LANDLOCK)
    targets = [ws / "a.txt", ws / "sub" / "b.txt", other / "c.txt", tmp_path / "d.txt"]
    prepared, warnings = plan.prepare_landlock()
    assert prepared is not None and warnings == ()
    result = run_in_child(prepared, lambda: {str(t): attempt(lambda t=t: write_file(t))
                                             for t in targets})
    for target in targets:
        allowed = policy.evaluate("file_write", str(target)).allowed
        assert result[str(target)] == (0 if allowed else errno.EACCES), target
        assert target.exists() is allowed
