"""What the TOCTOU defence (supervisor/agentd/trace/pinning.py) costs: before/after in the same run.

Runs, interleaved, under ``agentd run --policy permissive``: with the defence (the default) and
without it (``AGENTD_BENCH_NO_PINNING=1``, a switch for this bench only), plus native:
- ``opens``: one Python process opening and closing a file N times (default 2,000), minus the
  same program with 0 opens, so start-up cancels out: the cost per open;
- ``execs``: a shell running /bin/true M times (default 200): the cost per exec (the region is
  installed at every exec).
Prints medians and the per-operation difference. Usage:
``.venv/bin/python bench/toctou_cost.py [--opens 2000] [--execs 200] [--rounds 7]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AGENTD = str(Path(sys.executable).with_name("agentd"))
OPEN_LOOP = ("import os,sys\nn=int(sys.argv[1]);p=sys.argv[2]\n"
             "for _ in range(n):\n    os.close(os.open(p, os.O_RDONLY))\n")


def timed(argv: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the process and everything it waited for): on a shared
    machine the CPU time is the steadier figure."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{argv} exited {child.returncode}")
    return wall, usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opens", type=int, default=2000)
    parser.add_argument("--execs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    options = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="toctou-bench-"))
    target = work / "file.txt"
    target.write_text("x\n")
    on = dict(os.environ)
    on.pop("AGENTD_BENCH_NO_PINNING", None)
    off = dict(on, AGENTD_BENCH_NO_PINNING="1")

    def agentd(env_name: str) -> list[str]:
        return [AGENTD, "run", "--policy", "permissive", "--workspace", str(work),
                "--audit-log", str(work / f"audit-{env_name}.jsonl"), "--"]

    workloads = {
        "opens": lambda n: [sys.executable, "-S", "-c", OPEN_LOOP, str(n), str(target)],
        "execs": lambda n: ["sh", "-c", f"i=0; while [ $i -lt {n} ]; do /bin/true; i=$((i+1)); done"],
    }
    counts = {"opens": options.opens, "execs": options.execs}
    runners = {"native": ([], on), "agentd, no defence": (agentd("off"), off),
               "agentd, defence": (agentd("on"), on)}
    samples: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
    for _ in range(options.rounds):
        for workload, build in workloads.items():
            for n in (0, counts[workload]):
                for runner, (prefix, env) in runners.items():
                    samples.setdefault((workload, runner, n), []).append(
                        timed(prefix + build(n), env))
    print(f"median of {options.rounds} rounds, interleaved; per op = (T(N) - T(0)) / N; "
          f"wall clock and CPU time (supervisor + agent)")
    for workload in workloads:
        n = counts[workload]
        print(f"\n{workload} (N={n})")
        for which, label in ((0, "wall"), (1, "cpu ")):
            per_op = {}
            for runner in runners:
                full = statistics.median(s[which] for s in samples[(workload, runner, n)])
                empty = statistics.median(s[which] for s in samples[(workload, runner, 0)])
                per_op[runner] = (full - empty) / n * 1e6
                print(f"  {label} {runner:20s} T(N)={full * 1e3:8.1f} ms  "
                      f"T(0)={empty * 1e3:7.1f} ms  per op {per_op[runner]:7.1f} us")
            extra = per_op["agentd, defence"] - per_op["agentd, no defence"]
            print(f"  {label} the defence adds {extra:+.1f} us per op")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
