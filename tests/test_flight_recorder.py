"""FlightRecorder: real files in tmp_path, tampered with by hand, checked by verify()."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from agent_os.flight_recorder import (
    GENESIS_HASH,
    AuditLogError,
    AuditLogLockedError,
    FlightRecorder,
    VerifyResult,
    canonical_hash,
    default_audit_log_path,
    head_path_for,
    parse_time,
    query_file,
    verify_file,
)

RFC3339_US = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


class FakeSeverity(enum.IntEnum):  # shaped like agent_os.policy.Severity
    LOW = 1
    CRITICAL = 4


class FakeSignal(enum.Enum):  # shaped like agent_os.signals.AgentSignal
    SIGKILL = "sigkill"


class FakeMode(enum.Enum):  # shaped like agent_os.policy.ViolationMode
    SIGKILL = "sigkill"


def write_log(path: Path, count: int, fsync: str = "never", **extra) -> list[dict]:
    with FlightRecorder(path, fsync=fsync) as recorder:
        return [recorder.record(agent_id=f"agent-{i % 3}", action_type=("file_read", "shell_execute")[i % 2],
                                target=f"/work/file-{i}.txt", decision=("allow", "deny", "warn")[i % 3],
                                pattern_ids=[f"p{i}"], severity="high" if i % 3 == 1 else None, **extra)
                for i in range(count)]


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


# --- the record format ---------------------------------------------------------------------------


def test_record_fields_and_chain_on_disk(tmp_path):
    log = tmp_path / "flight.jsonl"
    with FlightRecorder(log) as recorder:
        first = recorder.record(agent_id="a1", action_type="file_read", target="/etc/shadow", decision="deny",
                                pattern_ids=("block_shadow",), severity=FakeSeverity.CRITICAL,
                                signal=FakeSignal.SIGKILL, violation_mode=FakeMode.SIGKILL, pid=42,
                                reason="matched block_shadow")
        second = recorder.record(agent_id="a1", action_type="file_read", target="/tmp/x", decision="allow")
    on_disk = [json.loads(line) for line in log.read_text().splitlines()]
    assert on_disk == [first, second]
    assert first["seq"] == 0 and second["seq"] == 1
    assert RFC3339_US.match(first["time"])
    assert first["severity"] == "critical" and first["signal"] == "SIGKILL"
    assert first["violation_mode"] == "sigkill" and first["pid"] == 42 and first["reason"] == "matched block_shadow"
    assert first["pattern_ids"] == ["block_shadow"] and second["pattern_ids"] == []
    assert second["severity"] is None and second["signal"] is None
    assert first["prev"] == GENESIS_HASH and second["prev"] == first["hash"]
    body = {k: v for k, v in first.items() if k != "hash"}
    expected = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                         ensure_ascii=False).encode()).hexdigest()
    assert first["hash"] == expected == canonical_hash(first)
    assert log.read_bytes().endswith(b"\n") and log.read_bytes().count(b"\n") == 2


def test_int_severity_and_signal_numbers(tmp_path):
    with FlightRecorder(tmp_path / "f.jsonl") as recorder:
        rec = recorder.record(decision="deny", severity=3, signal=signal.SIGSTOP)
        rec2 = recorder.record(decision="DENY", severity="Medium", signal=9)
    assert (rec["severity"], rec["signal"]) == ("high", "SIGSTOP")
    assert (rec2["decision"], rec2["severity"], rec2["signal"]) == ("deny", "medium", "SIGKILL")


def test_weird_values_never_break_logging(tmp_path):
    class Unprintable:
        def __str__(self):
            raise RuntimeError("no")

    log = tmp_path / "f.jsonl"
    weird = [b"/tmp/\xff\xfe\n\x00", os.fsdecode(b"/tmp/\xff"), "\ud800 lone", "line1\nline2\u2028",
             "x" * 1_000_000, Path("/p/q"), {1, 2}, float("nan"), dt.datetime(2026, 1, 2, 3, 4, 5),
             dt.date(2026, 1, 2), Unprintable(), {"k": [b"\x80", {3}]}, ("a", 1)]
    with FlightRecorder(log) as recorder:
        for value in weird:
            recorder.record(decision="deny", target=value, extra=value)
    assert verify_file(log).ok
    records = list(FlightRecorder.read(log))
    assert len(records) == len(weird)
    assert records[0]["target"] == "/tmp/\\xff\\xfe\n\x00"
    assert records[1]["target"] == "/tmp/\\xff"
    assert records[4]["target"] == "x" * 1_000_000
    assert records[5]["target"] == "/p/q" and records[6]["target"] == [1, 2]
    assert records[7]["target"] == "nan" and records[8]["target"] == "2026-01-02T03:04:05.000000Z"
    assert records[10]["target"] == "<unprintable Unprintable>"
    log.read_bytes().decode("utf-8")  # the file is valid UTF-8, one record per line
    assert len(log.read_bytes().splitlines()) == len(weird)


def test_caller_errors_are_refused(tmp_path):
    with FlightRecorder(tmp_path / "f.jsonl") as recorder:
        with pytest.raises(ValueError, match="decision must be one of"):
            recorder.record(decision="maybe")
        with pytest.raises(TypeError, match="seq"):
            recorder.record(decision="allow", seq=7)
        with pytest.raises(TypeError, match="hash"):
            recorder.record(decision="allow", hash="0")
    with pytest.raises(ValueError, match="fsync"):
        FlightRecorder(tmp_path / "g.jsonl", fsync="sometimes")
    assert (tmp_path / "f.jsonl").read_bytes() == b""


# --- verify: what it detects ---------------------------------------------------------------------


def test_intact_log_verifies(tmp_path):
    log = tmp_path / "f.jsonl"
    records = write_log(log, 20)
    result = verify_file(log)
    assert result == VerifyResult(True, 20, None, None, (), 19, records[-1]["hash"])


def test_edit_one_byte_in_the_middle(tmp_path):
    log = tmp_path / "f.jsonl"
    write_log(log, 5)
    data = bytearray(log.read_bytes())
    offset = data.index(b"/work/file-2.txt") + len("/work/file-")
    data[offset] = ord("9")  # the target of the third record now reads /work/file-9.txt
    log.write_bytes(bytes(data))
    result = verify_file(log)
    assert not result.ok and result.line == 3 and result.records == 2
    assert "hash mismatch" in result.error


def test_every_single_byte_edit_is_detected(tmp_path):
    log = tmp_path / "f.jsonl"
    write_log(log, 3)
    original = log.read_bytes()
    for offset in range(len(original)):
        data = bytearray(original)
        data[offset] = ord("b") if data[offset] != ord("b") else ord("c")
        log.write_bytes(bytes(data))
        result = verify_file(log)
        assert not result.ok, f"edit at byte {offset} ({original[offset:offset + 1]!r}) not detected"
        assert result.line is not None


def test_delete_a_record(tmp_path):
    log = tmp_path / "f.jsonl"
    write_log(log, 6)
    lines = lines_of(log)
    del lines[2]
    log.write_bytes(b"".join(lines))
    result = verify_file(log)
    assert not result.ok and result.line == 3
    assert "seq gap: expected seq 2, found 3" in result.error


def test_delete_the_first_record(tmp_path):
    log = tmp_path / "f.jsonl"
    write_log(log, 3)
    log.write_bytes(b"".join(lines_of(log)[1:]))
    result = verify_file(log)
    assert not result.ok and result.line == 1 and "seq gap" in result.error


def test_swap_two_records(tmp_path):
    log = tmp_path / "f.jsonl"
    write_log(log, 6)
    lines = lines_of(log)
    lines[1], lines[4] = lines[4], lines[1]
    log.write_bytes(b"".join(lines))
    result = verify_file(log)
    assert not result.ok and result.line == 2 and "seq gap" in result.error


def test_insert_a_duplicate_record(tmp_path):
    log = tmp_path / "f.jsonl"
    write_log(log, 4)
    lines = lines_of(log)
    lines.insert(2, lines[1])
    log.write_bytes(b"".join(lines))
    result = verify_file(log)
    assert not result.ok and result.line == 3 and "out of order" in result.error


def test_renumbered_record_with_recomputed_hash_breaks_the_next_link(tmp_path):
    # A careful forger rewrites record 2 and its own hash; record 3's prev still points at the old one.
    log = tmp_path / "f.jsonl"
    write_log(log, 4)
    lines = lines_of(log)
    forged = json.loads(lines[2])
    forged["decision"] = "allow"
    forged["hash"] = canonical_hash(forged)
    lines[2] = json.dumps(forged, separators=(",", ":")).encode() + b"\n"
    log.write_bytes(b"".join(lines))
    result = verify_file(log)
    assert not result.ok and result.line == 4 and "prev does not match" in result.error


def test_reformatted_line_is_detected(tmp_path):
    log = tmp_path / "f.jsonl"
    write_log(log, 2)
    lines = lines_of(log)
    lines[0] = json.dumps(json.loads(lines[0])).encode() + b"\n"  # same content, spaces added
    log.write_bytes(b"".join(lines))
    result = verify_file(log)
    assert not result.ok and result.line == 1 and "serialisation" in result.error


def test_truncated_tail_is_detected_through_the_head_sidecar(tmp_path):
    log = tmp_path / "f.jsonl"
    write_log(log, 10)
    assert json.loads(head_path_for(log).read_text())["seq"] == 9
    log.write_bytes(b"".join(lines_of(log)[:7]))
    result = verify_file(log)
    assert not result.ok and result.records == 7
    assert "truncated tail: head sidecar records seq 9 but the file ends at seq 6" in result.error


def test_emptied_log_is_detected(tmp_path):
    log = tmp_path / "f.jsonl"
    write_log(log, 3)
    log.write_bytes(b"")
    result = verify_file(log)
    assert not result.ok and "truncated tail" in result.error and "is empty" in result.error


def test_truncation_with_sidecar_deleted_is_only_a_warning(tmp_path):
    # The documented limit: without the sidecar (or an external anchor) truncation is invisible.
    log = tmp_path / "f.jsonl"
    write_log(log, 5)
    log.write_bytes(b"".join(lines_of(log)[:3]))
    head_path_for(log).unlink()
    result = verify_file(log)
    assert result.ok and result.records == 3
    assert any("truncated tail cannot be detected" in w for w in result.warnings)


def test_corrupt_sidecar_fails(tmp_path):
    log = tmp_path / "f.jsonl"
    write_log(log, 2)
    head_path_for(log).write_text("garbage")
    result = verify_file(log)
    assert not result.ok and "head sidecar" in result.error and "corrupt" in result.error


def test_rewritten_chain_disagrees_with_the_sidecar(tmp_path):
    log = tmp_path / "f.jsonl"
    write_log(log, 3)
    head = head_path_for(log).read_bytes()
    log.unlink()
    head_path_for(log).unlink()
    write_log(log, 3)  # a whole new, self-consistent chain of the same length
    head_path_for(log).write_bytes(head)
    result = verify_file(log)
    assert not result.ok and "does not match" in result.error


def test_torn_last_line_is_reported(tmp_path):
    log = tmp_path / "f.jsonl"
    write_log(log, 3)
    with open(log, "ab") as handle:
        handle.write(b'{"seq":3,"time":"2026')
    result = verify_file(log)
    assert not result.ok and result.line == 4 and result.records == 3
    assert "torn last line" in result.error


# --- reopening ----------------------------------------------------------------------------------


def test_reopen_continues_the_chain(tmp_path):
    log = tmp_path / "f.jsonl"
    first = write_log(log, 4)
    with FlightRecorder(log) as recorder:
        assert recorder.next_seq == 4 and recorder.last_hash == first[-1]["hash"]
        rec = recorder.record(agent_id="b", decision="allow")
    assert rec["seq"] == 4 and rec["prev"] == first[-1]["hash"]
    assert verify_file(log).ok and verify_file(log).records == 5


def test_reopen_after_torn_write_moves_the_fragment_aside(tmp_path, caplog):
    log = tmp_path / "f.jsonl"
    first = write_log(log, 3)
    fragment = b'{"seq":3,"time":"2026-11-27T17:00:00Z","target":"/TORN-FRAGMENT'
    with open(log, "ab") as handle:
        handle.write(fragment)
    torn_at = log.stat().st_size - len(fragment)
    with caplog.at_level(logging.WARNING, logger="agent_os.flight_recorder"):
        with FlightRecorder(log) as recorder:
            rec = recorder.record(agent_id="b", decision="deny")
    assert any("torn last line" in message for message in caplog.messages)
    side = (tmp_path / "f.jsonl.torn").read_bytes()
    assert fragment in side and f"at byte {torn_at}".encode() in side
    records = list(FlightRecorder.read(log))
    marker = records[3]
    assert marker["action_type"] == "audit_torn_tail" and marker["prev"] == first[-1]["hash"]
    assert marker["torn_bytes"] == len(fragment) and marker["torn_offset"] == torn_at
    assert marker["torn_sha256"] == hashlib.sha256(fragment).hexdigest()
    assert rec["seq"] == 4 and rec["prev"] == marker["hash"]
    assert fragment not in log.read_bytes()
    assert verify_file(log).ok


def test_reopen_refuses_a_truncated_log(tmp_path):
    log = tmp_path / "f.jsonl"
    write_log(log, 5)
    log.write_bytes(b"".join(lines_of(log)[:2]))
    before = log.read_bytes()
    with pytest.raises(AuditLogError, match="truncated tail.*seq 4.*seq 1"):
        FlightRecorder(log)
    assert log.read_bytes() == before


def test_reopen_refuses_a_deleted_log_whose_sidecar_remains(tmp_path):
    log = tmp_path / "f.jsonl"
    write_log(log, 2)
    log.unlink()
    with pytest.raises(AuditLogError, match="no complete record"):
        FlightRecorder(log)


def test_reopen_refuses_an_edited_last_record(tmp_path):
    log = tmp_path / "f.jsonl"
    write_log(log, 3)
    log.write_bytes(log.read_bytes().replace(b"file-2", b"file-X"))
    with pytest.raises(AuditLogError, match="hash mismatch.*refusing to chain"):
        FlightRecorder(log)


def test_verify_on_open_refuses_a_log_edited_in_the_middle(tmp_path):
    log = tmp_path / "f.jsonl"
    write_log(log, 3)
    log.write_bytes(log.read_bytes().replace(b"file-1", b"file-X"))
    FlightRecorder(log).close()  # only the tail is checked by default
    with pytest.raises(AuditLogError, match=":2: refusing to append"):
        FlightRecorder(log, verify_on_open=True)


# --- writers: threads, processes, locks ----------------------------------------------------------


def test_ten_thousand_records_from_threads(tmp_path):
    log = tmp_path / "f.jsonl"
    threads, per_thread = 8, 1250
    with FlightRecorder(log, fsync="interval", fsync_interval=0.05) as recorder:
        def work(n: int) -> None:
            for i in range(per_thread):
                recorder.record(agent_id=f"t{n}", action_type="file_read", target=f"/f/{n}/{i}", decision="allow")

        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert recorder.verify().ok
    result = verify_file(log)
    assert result.ok and result.records == threads * per_thread and result.last_seq == threads * per_thread - 1
    records = list(FlightRecorder.read(log))
    assert [r["seq"] for r in records] == list(range(threads * per_thread))
    for n in range(threads):
        mine = [r["target"] for r in records if r["agent_id"] == f"t{n}"]
        assert mine == [f"/f/{n}/{i}" for i in range(per_thread)]  # each thread's order is kept
    assert json.loads(head_path_for(log).read_text())["seq"] == threads * per_thread - 1


def test_second_writer_in_process_is_refused(tmp_path):
    log = tmp_path / "f.jsonl"
    with FlightRecorder(log):
        with pytest.raises(AuditLogLockedError, match="another writer holds this audit log"):
            FlightRecorder(log)
        assert verify_file(log).ok  # readers are never blocked
    FlightRecorder(log).close()  # free again after close


def test_second_writer_process_is_refused(tmp_path):
    log = tmp_path / "f.jsonl"
    script = textwrap.dedent(f"""
        from agent_os.flight_recorder import FlightRecorder, AuditLogLockedError
        try:
            FlightRecorder({str(log)!r})
        except AuditLogLockedError as exc:
            print("LOCKED", exc)
        else:
            print("OPENED")
    """)
    with FlightRecorder(log):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("LOCKED"), out.stdout + out.stderr
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.stdout.startswith("OPENED"), out.stdout + out.stderr


def test_forked_child_cannot_write(tmp_path):
    log = tmp_path / "f.jsonl"
    with FlightRecorder(log) as recorder:
        recorder.record(decision="allow")
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                recorder.record(decision="allow")
                os._exit(1)
            except AuditLogError:
                os._exit(0)
            except BaseException:
                os._exit(2)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        recorder.record(decision="deny")
    assert verify_file(log).records == 2


def test_failed_write_leaves_no_partial_line(tmp_path):
    # RLIMIT_FSIZE makes the kernel cut the write short (then EFBIG): a real short write.
    log = tmp_path / "f.jsonl"
    write_log(log, 2)
    limit = log.stat().st_size + 100
    script = textwrap.dedent(f"""
        import resource, signal
        from agent_os.flight_recorder import FlightRecorder, AuditLogError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        recorder = FlightRecorder({str(log)!r})
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))
        try:
            recorder.record(decision="deny", target="x" * 500)
        except AuditLogError as exc:
            print("REFUSED", exc)
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        print("NEXT", recorder.record(decision="allow", target="after")["seq"])
        recorder.close()
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "REFUSED" in out.stdout and "File too large" in out.stdout, out.stdout + out.stderr
    assert "NEXT 2" in out.stdout
    result = verify_file(log)
    assert result.ok and result.records == 3
    assert b"x" * 50 not in log.read_bytes()


# --- fsync policies ------------------------------------------------------------------------------


def _head_seq(log: Path) -> int | None:
    try:
        return json.loads(head_path_for(log).read_text())["seq"]
    except FileNotFoundError:
        return None


def test_fsync_always_updates_the_head_per_record(tmp_path):
    log = tmp_path / "f.jsonl"
    with FlightRecorder(log, fsync="always") as recorder:
        for i in range(3):
            recorder.record(decision="allow")
            assert _head_seq(log) == i


def test_fsync_interval_updates_the_head_within_the_interval(tmp_path):
    log = tmp_path / "f.jsonl"
    with FlightRecorder(log, fsync="interval", fsync_interval=0.2) as recorder:
        recorder.record(decision="allow")
        recorder.record(decision="allow")
        deadline = time.monotonic() + 5
        while _head_seq(log) != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _head_seq(log) == 1


def test_fsync_never_writes_the_head_on_close(tmp_path):
    log = tmp_path / "f.jsonl"
    recorder = FlightRecorder(log, fsync="never")
    recorder.record(decision="allow")
    assert _head_seq(log) is None
    recorder.close()
    assert _head_seq(log) == 0
    recorder.close()  # idempotent
    with pytest.raises(AuditLogError, match="closed"):
        recorder.record(decision="allow")


# --- rotation ------------------------------------------------------------------------------------


def test_rotate_links_the_new_file_to_the_old(tmp_path):
    log = tmp_path / "f.jsonl"
    with FlightRecorder(log) as recorder:
        old_records = [recorder.record(decision="allow", target=str(i)) for i in range(3)]
        old = recorder.rotate()
        new_record = recorder.record(decision="deny", target="after")
    assert old.name.startswith("f.jsonl.") and re.search(r"\.\d{8}T\d{6}\.\d{6}Z$", old.name)
    assert [r["target"] for r in FlightRecorder.read(old)] == ["0", "1", "2"]
    marker, after = list(FlightRecorder.read(log))
    assert marker["rotated_from"] == old.name and marker["action_type"] == "audit_rotate"
    assert marker["prev"] == old_records[-1]["hash"] and marker["seq"] == 3
    assert after == new_record and after["seq"] == 4
    assert verify_file(old).ok and verify_file(old).records == 3
    result = verify_file(log)
    assert result.ok and result.records == 2 and result.warnings == ()


def test_rotated_file_truncation_and_broken_link_are_detected(tmp_path):
    log = tmp_path / "f.jsonl"
    with FlightRecorder(log) as recorder:
        for i in range(4):
            recorder.record(decision="allow", target=str(i))
        old = recorder.rotate()
        recorder.record(decision="allow")
    old.write_bytes(b"".join(lines_of(old)[:3]))
    assert "truncated tail" in verify_file(old).error
    result = verify_file(log)
    assert not result.ok and result.line == 1 and "rotation link broken" in result.error


def test_rotated_file_archived_elsewhere_is_a_warning(tmp_path):
    log = tmp_path / "f.jsonl"
    with FlightRecorder(log) as recorder:
        recorder.record(decision="allow")
        old = recorder.rotate()
    old.rename(tmp_path / "archived")
    result = verify_file(log)
    assert result.ok and any("not here" in w for w in result.warnings)


def test_forged_rotated_from_on_a_cut_log_fails(tmp_path):
    # Cutting the head off a log and pretending it was rotated requires re-hashing: detected.
    log = tmp_path / "f.jsonl"
    write_log(log, 4)
    lines = lines_of(log)[2:]
    first = json.loads(lines[0])
    first["rotated_from"] = "f.jsonl.20260101T000000.000000Z"
    lines[0] = json.dumps(first, separators=(",", ":")).encode() + b"\n"
    log.write_bytes(b"".join(lines))
    result = verify_file(log)
    assert not result.ok and result.line == 1 and "hash mismatch" in result.error


# --- query ---------------------------------------------------------------------------------------


def test_query_filters(tmp_path):
    log = tmp_path / "f.jsonl"
    records = write_log(log, 12)
    with FlightRecorder(log) as recorder:
        assert [r["seq"] for r in recorder.query(agent_id="agent-1")] == [1, 4, 7, 10]
        assert {r["action_type"] for r in recorder.query(action_type="shell_execute")} == {"shell_execute"}
        assert [r["seq"] for r in recorder.query(decision="deny")] == [1, 4, 7, 10]
        assert [r["seq"] for r in recorder.query(agent_id="agent-0", decision="allow",
                                                  action_type="file_read")] == [0, 6]
        since = parse_time(records[5]["time"])
        until = records[8]["time"]
        assert [r["seq"] for r in recorder.query(since=since, until=until)] == [5, 6, 7]
        naive = since.replace(tzinfo=None)  # naive means UTC
        assert [r["seq"] for r in recorder.query(since=naive)] == list(range(5, 12))
        assert list(recorder.query(since="1h", agent_id="agent-2")) == [r for r in records if r["agent_id"] == "agent-2"]
        assert list(recorder.query(until="2000-01-01T00:00:00Z")) == []
    assert list(FlightRecorder.read(log)) == records
    assert len(list(query_file(log))) == 12


def test_read_skips_a_torn_line_and_reports_garbage(tmp_path):
    log = tmp_path / "f.jsonl"
    write_log(log, 2)
    with open(log, "ab") as handle:
        handle.write(b"not json\n{\"seq\":")
    with pytest.raises(AuditLogError, match=r"f.jsonl:3: line is not valid JSON"):
        list(FlightRecorder.read(log))
    assert len(list(query_file(log, on_error="skip"))) == 2


def test_parse_time_forms():
    now = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.timezone.utc)
    assert parse_time("2026-11-27T10:00:00Z") == dt.datetime(2026, 11, 27, 10, tzinfo=dt.timezone.utc)
    assert parse_time("2026-11-27T11:00:00+01:00") == dt.datetime(2026, 11, 27, 10, tzinfo=dt.timezone.utc)
    assert parse_time("90m", now=now) == dt.datetime(2026, 11, 27, 10, 30, tzinfo=dt.timezone.utc)
    assert parse_time(dt.date(2026, 11, 27)) == dt.datetime(2026, 11, 27, tzinfo=dt.timezone.utc)
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_time("yesterday")


# --- default path --------------------------------------------------------------------------------


def test_default_audit_log_path(monkeypatch, tmp_path):
    monkeypatch.setenv("AGENTD_AUDIT_LOG", str(tmp_path / "x.jsonl"))
    assert default_audit_log_path() == tmp_path / "x.jsonl"
    monkeypatch.delenv("AGENTD_AUDIT_LOG")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_audit_log_path() == Path("/var/log/agentd/flight.jsonl")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_audit_log_path() == tmp_path / ".local" / "state" / "agentd" / "flight.jsonl"


def test_new_log_directory_and_permissions(tmp_path):
    log = tmp_path / "deep" / "dir" / "f.jsonl"
    write_log(log, 1)
    assert log.stat().st_mode & 0o777 == 0o640
    assert verify_file(log).ok
