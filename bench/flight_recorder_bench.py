"""How fast the FlightRecorder appends under each fsync policy, and how fast verify reads.

Writes realistic decision records (the fields the supervisor passes) into a fresh log per policy
in a directory on a real disk (default: a new directory under /var/tmp, since /tmp may be tmpfs,
where fsync costs nothing), and prints records/s and the mean and p99 cost of one ``record()``.

    .venv/bin/python bench/flight_recorder_bench.py [--dir DIR] [--always N] [--others N]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from agent_os.flight_recorder import FlightRecorder, verify_file


def bench_policy(directory: Path, policy: str, count: int) -> dict[str, float]:
    log = directory / f"bench-{policy}.jsonl"
    costs = []
    recorder = FlightRecorder(log, fsync=policy, fsync_interval=1.0)
    start = time.perf_counter()
    for i in range(count):
        before = time.perf_counter()
        recorder.record(agent_id="bench-agent", action_type="file_read", target=f"/home/u/ws/src/module_{i}.py",
                        decision="allow" if i % 10 else "deny", pattern_ids=["allow_workspace"],
                        severity=None if i % 10 else "high", signal=None, run_id="r-1234", pid=4242,
                        ppid=4200, exe="/usr/bin/python3", syscall="openat", violation_mode=None,
                        reason="matched allow_workspace")
        costs.append(time.perf_counter() - before)
    recorder.close()  # includes the final fsync: counted, so "never" is not flattered
    elapsed = time.perf_counter() - start
    verify_start = time.perf_counter()
    result = verify_file(log)
    verify_elapsed = time.perf_counter() - verify_start
    assert result.ok and result.records == count, result
    costs.sort()
    return {
        "records": count,
        "per_second": count / elapsed,
        "mean_us": statistics.fmean(costs) * 1e6,
        "p99_us": costs[int(len(costs) * 0.99) - 1] * 1e6,
        "verify_per_second": count / verify_elapsed,
        "bytes_per_record": log.stat().st_size / count,
    }


def filesystem_of(directory: Path) -> str:
    try:
        out = subprocess.run(["df", "--output=fstype,source", str(directory)], capture_output=True, text=True,
                             check=True).stdout.splitlines()[-1].split()
        return f"{out[0]} on {out[1]}"
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="directory on the disk to measure (default: new dir in /var/tmp)")
    parser.add_argument("--always", type=int, default=2000, help="records for fsync=always (default 2000)")
    parser.add_argument("--others", type=int, default=50000, help="records for interval/never (default 50000)")
    args = parser.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="flight-bench-", dir="/var/tmp"))
    directory.mkdir(parents=True, exist_ok=True)
    print(f"# {platform.node()} {platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}, "
          f"{filesystem_of(directory)} ({directory})")
    print(f"{'fsync':<9} {'records':>8} {'records/s':>11} {'mean µs':>9} {'p99 µs':>9} {'verify rec/s':>13} {'B/rec':>6}")
    try:
        for policy, count in (("always", args.always), ("interval", args.others), ("never", args.others)):
            r = bench_policy(directory, policy, count)
            print(f"{policy:<9} {r['records']:>8} {r['per_second']:>11,.0f} {r['mean_us']:>9.1f} {r['p99_us']:>9.1f} "
                  f"{r['verify_per_second']:>13,.0f} {r['bytes_per_record']:>6.0f}")
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
