"""The client's pydantic-free run lines (agentd.daemon.run_wire) against the daemon's models.

``agentd run`` through the daemon writes its request and reads the answers without importing
``protocol`` (pydantic costs ~80 ms of every run's start-up). These tests hold those lines to
the models the daemon validates with: the same bytes ``protocol.encode`` writes, a line that
``protocol.parse_request`` accepts as the same request, and the answers the daemon's models
write read back as sent.
"""

from __future__ import annotations

import os
import signal
import subprocess
from typing import get_args

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from agentd.daemon import protocol, run_wire

# Strings as Python holds what the kernel gives: any text, plus bytes that are not UTF-8 as
# surrogate escapes (os.fsdecode), never a NUL (no argv, variable or path holds one).
_BYTES = st.binary(max_size=24).filter(lambda raw: b"\0" not in raw)
OS_STRINGS = st.one_of(
    st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=24),
    _BYTES.map(os.fsdecode),
)


def _fields(argv, env, cwd, workspace, policy, agent_id, mode, audit_log, seccomp_profile):
    return dict(argv=argv, env=env, cwd=cwd, workspace=workspace, policy=policy,
                agent_id=agent_id, mode=mode, audit_log=audit_log,
                seccomp_profile=seccomp_profile)


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(
    argv=st.lists(OS_STRINGS, min_size=1, max_size=4),
    env=st.dictionaries(OS_STRINGS, OS_STRINGS, max_size=4),
    cwd=OS_STRINGS,
    workspace=st.none() | OS_STRINGS,
    policy=OS_STRINGS,
    agent_id=st.none() | OS_STRINGS,
    mode=st.sampled_from(["enforce", "audit"]),
    audit_log=st.none() | OS_STRINGS,
    seccomp_profile=st.none() | OS_STRINGS,
)
@example(argv=["/bin/true", os.fsdecode(b"\xff\xfe")], env={"A": "\u00e9\n\"\\"}, cwd="/",
         workspace=None, policy="strict", agent_id=None, mode="enforce", audit_log=None,
         seccomp_profile=None)
def test_the_run_request_is_the_line_the_model_writes_and_the_daemon_reads_it_back(**given_):
    fields = _fields(**given_)
    line = run_wire.run_request(**fields)
    model = protocol.RunRequest(**fields)
    assert line == protocol.encode(model)
    assert protocol.parse_request(line) == model


def test_the_modes_are_the_models_modes():
    assert run_wire.MODES == get_args(protocol.Mode)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP])
def test_a_forwarded_signal_is_the_line_the_model_writes(signum):
    line = run_wire.signal_request(signum)
    assert line == protocol.encode(protocol.SignalRequest(signal=int(signum)))
    assert protocol.parse_request(line) == protocol.SignalRequest(signal=int(signum))


@pytest.mark.parametrize("reply", [
    protocol.RunReply(ok=True, run_id="r-1", policy="strict", version="1"),
    protocol.RunReply(ok=False, error="policy 'x' is unknown"),
    protocol.RunReply(ok=False),
])
def test_the_run_reply_the_daemon_writes_reads_back(reply):
    assert run_wire.read_run_reply(protocol.encode(reply, reply=True)) == (reply.ok, reply.error)


@pytest.mark.parametrize("status", [0, 1, 125, 137, 255])
def test_the_run_exit_the_daemon_writes_reads_back(status):
    answer = protocol.RunExit(exit=status, records=12, supervisor={"cpu_s": 0.1})
    assert run_wire.read_run_exit(protocol.encode(answer, reply=True)) == status


@pytest.mark.parametrize("line", [
    b"", b"not json\n", b"[1]\n", b'{"ok": "yes"}\n', b'{"ok": true, "error": 3}\n',
    b"[" * 100_000 + b"\n",
])
def test_an_answer_that_is_not_a_run_reply_is_one_clear_error(line):
    with pytest.raises(run_wire.AnswerError, match="not a RunReply"):
        run_wire.read_run_reply(line)


@pytest.mark.parametrize("line", [b'{"exit": true}\n', b'{"exit": "3"}\n', b'{"ok": true}\n'])
def test_an_answer_that_is_not_a_run_exit_is_one_clear_error(line):
    with pytest.raises(run_wire.AnswerError, match="not a RunExit"):
        run_wire.read_run_exit(line)


@pytest.mark.needs_ptrace
@pytest.mark.skipif(os.geteuid() != 0, reason="the daemon runs agents as other users: root")
def test_agentd_run_through_a_daemon_imports_no_pydantic_and_no_click(tmp_path):
    """A real run through a real daemon, the client's imports listed by the interpreter: a
    well-formed ``agentd run`` line goes from the console entry to the client (click costs
    ~15 ms, pydantic ~80, typing ~3; base64 only for arguments that are not UTF-8)."""
    from helpers.agentd_daemon import DaemonUnderTest, cgroup2_mount

    if cgroup2_mount() is None:
        pytest.skip("no cgroup v2 mounted")
    daemon = DaemonUnderTest(tmp_path, policies={"test": []})
    daemon.start()
    try:
        done = subprocess.run(daemon.argv(["/bin/true"], "test"), cwd=daemon.shared,
                              env=daemon.env(PYTHONPROFILEIMPORTTIME="1"),
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        assert daemon.records(), "the run did not go through the daemon"
    finally:
        daemon.stop()
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")]
    assert "agentd.daemon.run_wire" in imported
    assert not [name for name in imported
                if name.split(".")[0] in ("pydantic", "click", "typing", "base64")]
