"""The real-world half of ``run_bench.py --real``: the livability suite's tools, timed.

Owns which of ``tests/livability/workloads.py``'s workloads the bench runs (git, make, cargo,
compileall and cpython by default; pip and npm when named: all of them offline), the loop of
repetitions x workloads x runners in a rotating order, each run in a fresh workspace laid out
and prepared (not timed) by ``tests/livability/livability_harness.py``, the workload's own check
after every timed script (a failed check makes the cell "FAIL", never a time), the medians, and
the table and text of its README section. It knows nothing about how a runner runs a command:
``run_bench`` hands ``run`` a ``run_one`` built on its runner prefixes, ``measure`` and its
daemon, so that the synthetic and the real-world tables share one definition of each runner.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

LIVABILITY = Path(__file__).resolve().parent.parent / "tests" / "livability"
if str(LIVABILITY) not in sys.path:
    sys.path.insert(0, str(LIVABILITY))

# check_outcome is the harness's verdict on a finished script (the check's AssertionError, or
# what the check tripped over), the very text the livability suite reports; reused, not copied.
from livability_harness import check_outcome, new_workspace, workload_environment  # noqa: E402
from workloads import WORKLOADS, Workload, by_name, missing_tools  # noqa: E402

SECTION = "## agentd run: real-world workloads"
RUNNERS = ("native", "floor", "strace", "agentd", "agentd-plane", "agentd-daemon", "baseline")
DEFAULT = ("git", "make", "cargo", "compileall", "cpython")
NAMES = tuple(workload.name for workload in WORKLOADS)
QUOTABLE_REPS = 3  # fewer repetitions: the README labels the table a quick run

# run_one(runner, workspace, scratch, argv, env, timeout) -> run_bench.Timed: runs ``argv`` in
# ``workspace`` under ``runner`` (files of its own, e.g. an audit log, go in ``scratch``, outside
# the workspace) and returns its wall and CPU seconds, its CompletedProcess and timed_out.
RunOne = Callable[[str, Path, Path, list[str], dict[str, str], float], Any]


def choose(spec: str) -> tuple[list[Workload], dict[str, str]]:
    """The workloads ``spec`` names ("" or "default": the default set; "all"; or a comma list)
    that this host can run, and those it cannot, with the reason (their missing tools)."""
    if spec in ("", "default"):
        names = list(DEFAULT)
    elif spec == "all":
        names = list(NAMES)
    else:
        names = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in names if name not in NAMES]
    if unknown:
        raise SystemExit(
            f"run_bench: unknown real-world workload {', '.join(unknown)} "
            f"(known: {', '.join(NAMES)}; or 'all')"
        )
    chosen, skipped = [], {}
    for workload in map(by_name, names):
        missing = missing_tools(workload)
        if missing:
            skipped[workload.name] = f"missing on this host: {', '.join(missing)}"
        else:
            chosen.append(workload)
    return chosen, skipped


def _rotated(runners: list[str], shift: int) -> list[str]:
    shift %= len(runners)
    return runners[shift:] + runners[:shift]


def run(
    workloads: list[Workload],
    runners: list[str],
    reps: int,
    run_one: RunOne,
    base: Path,
    log=sys.stderr,
) -> dict:
    """Every workload under every runner, ``reps`` times, interleaved as the synthetic part is
    (each repetition runs every workload under every runner, the order rotating); one line on
    ``log`` per run. Returns the report (``kind: real``) without host facts."""
    walls: dict[str, dict[str, list[float]]] = {w.name: {r: [] for r in runners} for w in workloads}
    cpus: dict[str, dict[str, list[float]]] = {w.name: {r: [] for r in runners} for w in workloads}
    failures: dict[str, dict[str, list[str]]] = {w.name: {} for w in workloads}
    prepares: dict[str, list[float]] = {w.name: [] for w in workloads}
    began = time.perf_counter()
    for rep in range(reps):
        for index, workload in enumerate(workloads):
            for runner in _rotated(runners, rep + index):
                scratch = base / f"{workload.name}-{rep}-{runner}"
                started = time.perf_counter()
                workspace = new_workspace(scratch, workload)  # scratch/<name>, prepared natively
                prepares[workload.name].append(time.perf_counter() - started)
                timed = run_one(
                    runner,
                    workspace,
                    scratch,
                    ["bash", "-c", workload.script],
                    workload_environment(workload, workspace),
                    workload.timeout,
                )
                if timed.timed_out:
                    failure = f"timed out after {workload.timeout:.0f} s (killed)"
                else:
                    failure = check_outcome(workload, workspace, timed.completed)
                shutil.rmtree(scratch, ignore_errors=True)
                verdict = "ok" if failure is None else "FAIL"
                print(
                    f"real {rep + 1}/{reps} {workload.name:<10} {runner:<13} "
                    f"{timed.wall_s:7.2f} s wall {timed.cpu_s:7.2f} s CPU  {verdict}",
                    file=log,
                    flush=True,
                )
                if failure is not None:
                    print("    " + failure.replace("\n", "\n    "), file=log, flush=True)
                    failures[workload.name].setdefault(runner, []).append(
                        f"repetition {rep + 1}: {failure}"
                    )
                else:
                    walls[workload.name][runner].append(timed.wall_s)
                    cpus[workload.name][runner].append(timed.cpu_s)
    results = {
        w.name: _summary(w, walls[w.name], cpus[w.name], failures[w.name], prepares[w.name])
        for w in workloads
    }
    return {
        "kind": "real",
        "repetitions": reps,
        "runners": runners,
        "elapsed_s": time.perf_counter() - began,
        "workloads": results,
    }


def _summary(
    workload: Workload,
    walls: dict[str, list[float]],
    cpus: dict[str, list[float]],
    failures: dict[str, list[str]],
    prepares: list[float],
) -> dict:
    """Medians and ratios to native of the runners whose every repetition passed its check."""
    passed = [runner for runner, values in walls.items() if values and runner not in failures]
    medians = {r: statistics.median(walls[r]) for r in passed}
    cpu_medians = {r: statistics.median(cpus[r]) for r in passed}
    base, cpu_base = medians.get("native"), cpu_medians.get("native")
    return {
        "livability_cost": workload.cost,
        "prepare_median_s": statistics.median(prepares),
        "median_s": medians,
        "ratio_to_native": {r: (m / base if base else None) for r, m in medians.items()},
        "samples_s": {r: v for r, v in walls.items() if v},
        "cpu_median_s": cpu_medians,
        "cpu_ratio_to_native": {
            r: (m / cpu_base if cpu_base else None) for r, m in cpu_medians.items()
        },
        "failed": failures,
    }


def host_facts() -> dict:
    return {
        "machine": platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),
    }


def _grid(report: dict, runners: list[str], median_key: str, ratio_key: str) -> list[str]:
    lines = ["| workload | " + " | ".join(runners) + " |", "|---|" + "---:|" * len(runners)]
    for name, data in report["workloads"].items():
        cells = []
        for runner in runners:
            median = data[median_key].get(runner)
            ratio = data[ratio_key].get(runner)
            if runner in data["failed"]:
                cells.append("FAIL")
            elif median is None:
                cells.append("-")
            else:
                shown = "" if runner == "native" or ratio is None else f" ({ratio:.2f}x)"
                cells.append(f"{median:.2f} s{shown}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def table(report: dict) -> str:
    runners = [r for r in RUNNERS if r in report["runners"]]
    reps = report["repetitions"]
    lines = [f"Wall time of the script, median of {reps} (ratio to native); prepare not timed:", ""]
    lines += _grid(report, runners, "median_s", "ratio_to_native")
    lines += [
        "",
        "CPU time of the whole process tree (user + sys, tracer and daemon's share "
        "included), median (ratio to native):",
        "",
    ]
    lines += _grid(report, runners, "cpu_median_s", "cpu_ratio_to_native")
    notes = [
        f"FAIL: {runner} on {name}, {reasons[0].splitlines()[0]}"
        + (f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else "")
        for name, data in report["workloads"].items()
        for runner, reasons in data["failed"].items()
    ]
    notes += [f"Not run: {name}, {why}." for name, why in report.get("skipped", {}).items()]
    if notes:
        lines += [""] + notes
    load = ", ".join(f"{x:.2f}" for x in report["host"]["loadavg_at_end"])
    lines += [
        "",
        f"The run took {report['elapsed_s'] / 60:.1f} min (prepare included). "
        f"Load average at the end: {load}.",
    ]
    return "\n".join(lines)


README_INTRO = """{section}

```
.venv/bin/python bench/run_bench.py --real          # ~6 min; bench/out/real.json, this section
.venv/bin/python bench/run_bench.py --real git,make --reps 1 --no-readme     # a quick check
.venv/bin/python bench/run_bench.py --real all      # pip and npm too
```

**Workloads**: the livability suite's (`tests/livability/workloads.py`), run as the suite runs
them (`livability_harness`: a fresh workspace `W` with `W/home` and `W/tmp`, `HOME` and
`TMPDIR` there, the workload's own variables, cwd `W`, `bash -c` the workload's script), with
no network: `git` (600 standard-library files: init, two commits, gc, fsck, clone), `make` (41
`gcc -O1` compiles with `-j2` and a link), `cargo` (build and test of a crate without
dependencies, `--offline`), `compileall` (byte-compiles 600 standard-library files with Debian's
python3), `cpython` (17 of CPython 3.11's regression test modules, `-j2`, four of them talking
to servers on loopback). `pip` (a venv and a local wheel) and `npm` (pack and install a local
package) run when named. A workload whose tools this host lacks is skipped with one line.
**Each run** of a workload under a runner gets a fresh workspace; `prepare` (copying the
sources, writing the crate) is not timed; the script is (wall clock, and the CPU of the whole
process tree, as in the table above); then the workload's check must pass (the commits exist,
the binary prints its value, the tests passed): a run whose check fails makes its cell FAIL, with
the reason printed, never a time. **Runners**, the synthetic part's, around `bash -c SCRIPT`:
native; `strace -f --seccomp-bpf -e trace=<agentd's traced set> -o /dev/null`; `agentd` —
`agentd run --policy permissive --network off`, standalone, its audit log beside the workspace;
`agentd-daemon` — through the bench's private daemon (`network: off`); `baseline` with
`--baseline AGENTD`. Repetitions: {reps}; medians; the runner order rotating.

**Two sections, two files.** `run_bench.py` writes the section above and `bench/out/run.json`;
`run_bench.py --real` writes this one and `bench/out/real.json`. Each run replaces only its own
section (from its heading line to the next `## ` heading), so one kind of run never wipes the
other's table; `--from-json FILE` rewrites the section of the kind of run FILE holds.

"""


def readme_section(report: dict, text: str) -> str:
    """The whole section: the intro, then the table under a heading that says a quick run is
    one (fewer than QUOTABLE_REPS repetitions)."""
    reps = report["repetitions"]
    heading = "### Measured"
    if reps < QUOTABLE_REPS:
        heading += (
            f" (quick run: {reps} repetition{'s' if reps > 1 else ''}, a check of the "
            "bench, not figures to quote)"
        )
    intro = README_INTRO.format(section=SECTION, reps=reps)
    return intro + heading + "\n\n" + text + "\n"
