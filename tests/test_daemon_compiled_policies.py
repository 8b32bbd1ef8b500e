"""The daemon compiles a run's policy once per (policy version, variables) and every later
supervisor with the same ones inherits it across the fork (``Daemon._compiled``), instead of
parsing the YAML again; a policy it cannot compile is left to the supervisor, which says why."""

from __future__ import annotations

import types
from pathlib import Path

from agentd.daemon import service
from agentd.daemon.policy_store import PolicyEntry
from agentd.daemon.supervisor import SupervisorPlan

STRICT = Path(__file__).resolve().parent.parent / "policies" / "strict.yaml"


def _plan(entry: PolicyEntry, workspace: str, home: str = "/root") -> SupervisorPlan:
    return SupervisorPlan(
        run_id="r1", agent_id="a", argv=["true"], env={"HOME": home, "TMPDIR": "/nonexistent-tmp"}, cwd=workspace,
        workspace=workspace, uid=0, gid=0, groups=[], home=home, user="root", policy=entry,
        mode="enforce", policy_dir="/nonexistent", runs_dir="/tmp/runs", audit_path="/tmp/a",
        seccomp_profile=None, cgroup_procs=None)


def _service() -> types.SimpleNamespace:
    fake = types.SimpleNamespace(compiled_policies={})
    fake.compiled = lambda plan: service.Daemon._compiled(fake, plan)
    return fake


def test_same_version_and_variables_share_one_compiled_policy(tmp_path):
    entry = PolicyEntry.from_file(str(STRICT), "strict")
    daemon = _service()
    first = daemon.compiled(_plan(entry, str(tmp_path)))
    assert first is not None
    assert daemon.compiled(_plan(entry, str(tmp_path))) is first
    # another workspace binds ${WORKSPACE} otherwise: its own policy, with its own paths
    other = daemon.compiled(_plan(entry, str(tmp_path / "other")))
    assert other is not first
    write = "file_write"
    assert other.evaluate(write, f"{tmp_path}/other/x.txt").allowed
    assert not other.evaluate(write, f"{tmp_path}/y.txt").allowed
    assert first.evaluate(write, f"{tmp_path}/y.txt").allowed
    # a new version of the policy is compiled anew
    changed = PolicyEntry(entry.name, entry.path, entry.text + "\n", entry.version + "x")
    assert daemon.compiled(_plan(changed, str(tmp_path))) is not first


def test_the_cache_is_bounded_and_keeps_the_newest(tmp_path):
    entry = PolicyEntry.from_file(str(STRICT), "strict")
    daemon = _service()
    keep = daemon.compiled(_plan(entry, str(tmp_path / "kept")))
    for i in range(service.COMPILED_POLICIES + 5):
        daemon.compiled(_plan(entry, str(tmp_path / f"w{i}")))
        assert daemon.compiled(_plan(entry, str(tmp_path / "kept"))) is keep  # used: kept
    assert len(daemon.compiled_policies) == service.COMPILED_POLICIES


def test_a_policy_that_does_not_compile_is_left_to_the_supervisor(tmp_path):
    broken = PolicyEntry("bad", "/x/bad.yaml", "version: [\n", "v1")
    assert _service().compiled(_plan(broken, str(tmp_path))) is None
