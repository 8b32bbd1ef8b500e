"""The audit summary at the level of the Session: an allowed, unchanging decision is recorded
once and counted after; a policy switch writes the counts first and follows the new policy's
wish for every record (docs/audit-log.md "What is recorded")."""

from __future__ import annotations

from types import SimpleNamespace

from agent_os import Policy
from agentd.trace.decide import Evaluation, Outcome, Verdict
from agentd.trace.session import Session


class Recorder:
    def __init__(self) -> None:
        self.records: list[dict] = []

    def record(self, **fields) -> None:
        self.records.append(fields)


def _read(target: str) -> Verdict:
    evaluation = Evaluation("file_read", target, "allow", Outcome.ALLOW, "default", ())
    return Verdict(Outcome.ALLOW, "allowed", (evaluation,))


def _session(policy: Policy) -> tuple[Session, Recorder]:
    recorder = Recorder()
    return Session(policy, "run1", "agent", recorder=recorder), recorder


TASK = SimpleNamespace(tid=10, tgid=10, ppid=1, exe="/usr/bin/python3")


def _reads(recorder: Recorder, target: str) -> list[dict]:
    return [r for r in recorder.records if r.get("target") == target]


def test_repeats_are_counted_and_flushed_once():
    session, recorder = _session(Policy(name="p"))
    for _ in range(5):
        assert session._record(TASK, "openat", _read("/lib/a"))
    assert len(_reads(recorder, "/lib/a")) == 1
    assert session.flush_repeats()
    assert [r.get("repeats") for r in _reads(recorder, "/lib/a")] == [None, 4]
    assert session.flush_repeats()  # nothing left to say
    assert len(_reads(recorder, "/lib/a")) == 2


def test_a_warning_or_a_refusal_is_never_summarised():
    session, recorder = _session(Policy(name="p"))
    evaluation = Evaluation("file_read", "/x", "warn", Outcome.WARN, "careful", ("w",))
    for _ in range(3):
        session._record(TASK, "openat", Verdict(Outcome.WARN, "careful", (evaluation,)))
    assert len(_reads(recorder, "/x")) == 3


def test_a_switch_flushes_the_counts_and_follows_the_new_policy():
    session, recorder = _session(Policy(name="p"))
    for _ in range(3):
        session._record(TASK, "openat", _read("/lib/a"))
    session.switch_policy(Policy(name="debug", log_level="debug"))
    assert [r.get("repeats") for r in _reads(recorder, "/lib/a")] == [None, 2]
    for _ in range(3):
        session._record(TASK, "openat", _read("/lib/b"))
    assert len(_reads(recorder, "/lib/b")) == 3  # every record, as the new policy asks
    session.switch_policy(Policy(name="p2"))
    for _ in range(3):
        session._record(TASK, "openat", _read("/lib/c"))
    assert len(_reads(recorder, "/lib/c")) == 1


def test_settings_ask_for_every_record_too():
    session, recorder = _session(Policy(name="s", settings={"audit_every_decision": True}))
    for _ in range(3):
        session._record(TASK, "openat", _read("/lib/a"))
    assert len(_reads(recorder, "/lib/a")) == 3


def test_a_switch_from_another_thread_while_the_tracer_counts():
    """The plane's thread may apply a reload while the tracer's thread records: no error on
    either side (the counts are swapped out, then read from a copy)."""
    import sys
    import threading

    session, recorder = _session(Policy(name="p"))
    errors: list[BaseException] = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over as often as the interpreter can
    done = threading.Event()

    def tracer() -> None:
        try:
            for i in range(20000):
                session._record(TASK, "openat", _read(f"/lib/{i % 7}"))
                session._record(TASK, "openat", _read(f"/lib/new{i}"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=tracer)
    thread.start()
    switches = 0
    try:
        while not done.is_set():
            session.switch_policy(Policy(name=f"p{switches}"))
            switches += 1
    except BaseException as exc:  # noqa: BLE001
        errors.append(exc)
    finally:
        sys.setswitchinterval(interval)
    thread.join()
    assert errors == [] and switches > 0
    assert session.flush_repeats()
