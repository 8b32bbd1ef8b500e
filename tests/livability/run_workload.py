#!/usr/bin/env python3
"""Run livability workloads by hand: natively, or under ``agentd run`` (embedded or daemon).

    .venv/bin/python tests/livability/run_workload.py --native
    .venv/bin/python tests/livability/run_workload.py --policy strict --mode audit git make
    .venv/bin/python tests/livability/run_workload.py --policy permissive --daemon --keep cargo

For each workload: a fresh workspace, ``prepare``, the script, the check; then the outcome (check
passed, or the assertion), the wall time and the denials of the audit log grouped by (action
type, pattern ids) with counts and example targets (``--all-targets``: every distinct target).
``--json FILE`` also writes the outcomes as JSON. Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from livability_harness import (PrivateDaemon, Supervision, daemon_unavailable,  # noqa: E402
                                format_outcome, group_records, new_workspace, run_workload)
from workloads import WORKLOADS, by_name, missing_tools  # noqa: E402


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--native", action="store_true", help="run without agentd")
    where.add_argument("--policy", default="strict",
                       help="strict, permissive, read_only or a policy file (default: strict)")
    parser.add_argument("--daemon", action="store_true",
                        help="through a private agentd daemon (root, cgroup v2) instead of "
                             "agentd run --embedded")
    parser.add_argument("--mode", choices=("enforce", "audit"), default="enforce")
    parser.add_argument("--keep", action="store_true", help="keep the workspaces (printed)")
    parser.add_argument("--all-targets", action="store_true",
                        help="list every distinct denied target, not 3 per group")
    parser.add_argument("--json", metavar="FILE", help="also write the outcomes as JSON")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"workloads (default: all): {', '.join(w.name for w in WORKLOADS)}")
    return parser.parse_args(argv)


def _as_json(outcome) -> dict:
    return {"workload": outcome.workload, "supervision": outcome.supervision.label,
            "passed": outcome.passed, "failure": outcome.failure,
            "seconds": round(outcome.seconds, 2), "exit": outcome.completed.returncode,
            "stderr_tail": outcome.completed.stderr[-3000:],
            "records": len(outcome.records),
            **{f"{decision}_groups": [
                {"action_type": g.action_type, "pattern_ids": list(g.pattern_ids),
                 "count": g.count, "targets": [[t, n, list(e)] for t, n, e in g.targets]}
                for g in group_records(outcome.decided(decision))]
               for decision in ("deny", "warn")}}


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    try:
        chosen = [by_name(name) for name in args.names] if args.names else list(WORKLOADS)
    except KeyError as exc:
        print(exc.args[0], file=sys.stderr)
        return 2
    if args.daemon and (args.native or (why := daemon_unavailable())):
        print("--daemon: " + ("not with --native" if args.native else why), file=sys.stderr)
        return 2
    base = Path(tempfile.mkdtemp(prefix="livability-"))
    results, failed = [], 0
    with ExitStack() as stack:
        daemon = stack.enter_context(PrivateDaemon(base / "daemon")) if args.daemon else None
        supervision = Supervision(None if args.native else args.policy, args.mode, daemon)
        for workload in chosen:
            missing = missing_tools(workload)
            if missing:
                print(f"{workload.name}: SKIPPED (missing on this host: {', '.join(missing)})\n")
                continue
            workspace = new_workspace(base, workload)
            outcome = run_workload(workload, workspace, supervision)
            failed += not outcome.passed
            print(format_outcome(outcome, None if args.all_targets else 3) + "\n", flush=True)
            results.append(_as_json(outcome))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.keep:
        print(f"workspaces kept in {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
