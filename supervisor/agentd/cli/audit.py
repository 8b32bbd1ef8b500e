"""``agentd audit``: read and verify the FlightRecorder audit log from the command line.

Only presentation lives here: the log format, the chain check, filtering and the default log
location all come from ``agent_os.flight_recorder``. Exit status of ``verify``: 0 the chain is
intact, 1 it is not (one line naming the file, the line and the reason), 2 usage error (no such
log, unreadable, bad option).
"""

from __future__ import annotations

import collections
import json
import logging
import os
from pathlib import Path
from typing import Any

import click

from agent_os.flight_recorder import default_audit_log_path, parse_time, query_file, verify_file

EXIT_OK = 0
EXIT_TAMPERED = 1
EXIT_USAGE = 2

_TABLE_COLUMNS = (
    ("TIME", "time"),
    ("SEQ", "seq"),
    ("AGENT", "agent_id"),
    ("ACTION", "action_type"),
    ("DECISION", "decision"),
    ("SEVERITY", "severity"),
    ("SIGNAL", "signal"),
    ("PATTERNS", "pattern_ids"),
    ("TARGET", "target"),
)


def _usage_error(message: str) -> click.exceptions.Exit:
    click.echo(f"agentd audit: {message}", err=True)
    return click.exceptions.Exit(EXIT_USAGE)


def _resolve_log(log: str | None) -> Path:
    path = Path(log) if log else default_audit_log_path()
    if not path.exists():
        hint = "" if log else " (set --log FILE or $AGENTD_AUDIT_LOG)"
        raise _usage_error(f"no audit log at {path}{hint}")
    if not path.is_file():
        raise _usage_error(f"{path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise _usage_error(f"{path}: permission denied")
    return path


def _check_time(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        parse_time(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return value


def _cell(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    if value is None:
        return "-"
    if key == "pattern_ids":
        return ",".join(str(item) for item in value) if isinstance(value, list) and value else "-"
    if key == "decision" and isinstance(record.get("repeats"), int):
        # a run's summary of an allowed decision that came again (docs/audit-log.md)
        return f"{value} +{record['repeats']} repeats"
    if key == "time" and isinstance(value, str):
        return value.replace("T", " ").rstrip("Z")[:23]  # millisecond precision for reading
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _printable(text: str) -> str:
    """``text`` as the terminal can take it: a lone surrogate (JSON may say ``"\\ud800"``,
    the recorder never writes one) becomes ``\\ud800``, never a UnicodeEncodeError."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _table_cell(text: str) -> str:
    """One cell on one line: newlines and tabs shown as ``\\n`` and ``\\t``."""
    return _printable(text).replace("\n", "\\n").replace("\t", "\\t")


def _json_line(value: Any) -> str:
    """``value`` as one JSON line, UTF-8 as is; ``\\u`` escapes only where UTF-8 cannot say it."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, separators=(",", ":"))
    return text


def _print_table(records: list[dict[str, Any]]) -> None:
    rows = [[_table_cell(_cell(record, key)) for _, key in _TABLE_COLUMNS] for record in records]
    headers = [title for title, _ in _TABLE_COLUMNS]
    widths = [
        max([len(headers[i])] + [len(row[i]) for row in rows]) for i in range(len(headers) - 1)
    ]
    for row in [headers] + rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)] + [row[-1]]
        click.echo("  ".join(cells).rstrip())


@click.group("audit")
def audit() -> None:
    """Read and verify the FlightRecorder audit log.

    The log is $AGENTD_AUDIT_LOG, else /var/log/agentd/flight.jsonl for root, else
    ~/.local/state/agentd/flight.jsonl.
    """


@audit.command("show")
@click.option(
    "--log", "log", metavar="FILE", help="Audit log to read (default: see `agentd audit --help`)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the matching records as JSON lines.")
@click.option("--agent", "agent_id", metavar="ID", help="Only records of this agent id.")
@click.option(
    "--action", "action_type", metavar="TYPE", help="Only this action type (file_read, ...)."
)
@click.option(
    "--decision",
    type=click.Choice(["allow", "deny", "warn"], case_sensitive=False),
    help="Only this decision.",
)
@click.option(
    "--since",
    metavar="T",
    callback=_check_time,
    help="Records at or after T: RFC 3339 (2026-11-27T10:00:00Z) or an age (15m, 2h, 7d).",
)
@click.option(
    "--until", metavar="T", callback=_check_time, help="Records before T (same forms as --since)."
)
@click.option(
    "--tail", metavar="N", type=click.IntRange(min=1), help="Only the last N matching records."
)
def show(
    log: str | None,
    as_json: bool,
    agent_id: str | None,
    action_type: str | None,
    decision: str | None,
    since: str | None,
    until: str | None,
    tail: int | None,
) -> None:
    """Print the records of the audit log (a table, or JSON lines with --json).

    This does not check the chain; run `agentd audit verify` for that.
    """
    path = _resolve_log(log)
    skipped: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            skipped.append(record.getMessage())

    collector = _Collect(level=logging.WARNING)
    source_logger = logging.getLogger("agent_os.flight_recorder")
    source_logger.addHandler(collector)
    try:
        matching = query_file(
            path,
            agent_id=agent_id,
            action_type=action_type,
            decision=decision,
            since=since,
            until=until,
            on_error="skip",
        )
        records = list(collections.deque(matching, maxlen=tail)) if tail else list(matching)
    except OSError as exc:
        raise _usage_error(f"{path}: {exc.strerror or exc}") from None
    finally:
        source_logger.removeHandler(collector)
    if as_json:
        for record in records:
            click.echo(_json_line(record))
    elif records:
        _print_table(records)
    else:
        click.echo("no matching records", err=True)
    for message in skipped:
        click.echo(_printable(f"warning: {message} (run `agentd audit verify`)"), err=True)


@audit.command("verify")
@click.option(
    "--log", "log", metavar="FILE", help="Audit log to check (default: see `agentd audit --help`)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object.")
@click.option("--strict", is_flag=True, help="Treat warnings (e.g. no head sidecar) as failure.")
def verify(log: str | None, as_json: bool, strict: bool) -> None:
    """Check the hash chain of the audit log.

    Exit 0 if intact, 1 if a record was edited, removed, inserted or reordered, the last line is
    torn or the tail was truncated (one line names the line and the reason), 2 on usage errors.
    """
    path = _resolve_log(log)
    try:
        result = verify_file(path)
    except OSError as exc:
        raise _usage_error(f"{path}: {exc.strerror or exc}") from None
    failed = not result.ok or (strict and bool(result.warnings))
    if as_json:
        click.echo(
            _printable(json.dumps({"log": str(path), **result.to_dict()}, ensure_ascii=False))
        )
    elif result.ok:
        head = f"; last seq {result.last_seq}, hash {result.last_hash}" if result.last_hash else ""
        click.echo(f"OK {path}: {result.records} records, chain intact{head}")
    else:
        where = f"{path}:{result.line}" if result.line else str(path)
        click.echo(f"TAMPERED {where}: {result.error}")
    if not as_json:
        for warning in result.warnings:
            click.echo(f"warning: {warning}", err=True)
    raise click.exceptions.Exit(EXIT_TAMPERED if failed else EXIT_OK)
