"""Where a seccomp stop's microseconds go: ``agentd run`` of a workload under cProfile, the
supervisor's CPU time grouped by the step of the stop loop that spent it, per stop.

    .venv/bin/python bench/stop_profile.py                 # py_files (2,000 files), permissive
    .venv/bin/python bench/stop_profile.py --workload fork_loop --policy strict

cProfile adds its own cost to every Python call (roughly doubling small functions), so read the
shares, not the absolute figures; the wall-clock cost per stop is ``bench/run_bench.py``'s. The
groups are by function (a step's own time plus the C calls it makes), listed in
docs/performance.md.
"""

from __future__ import annotations

import argparse
import pstats
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
AGENTD = Path(sys.executable).with_name("agentd")

# The steps of a stop, by the function that performs each (file suffix, function), nested as the
# code nests them; cumulative time, so a line includes the lines indented under it.
STEPS: list[tuple[int, str, str, str]] = [
    (0, "one seccomp stop, whole (Tracer.handle)", "trace/tracer.py", "handle"),
    (1, "TOCTOU pinning of memory operands", "trace/tracer.py", "_pin"),
    (1, "session: decode, decide, record, enforce", "trace/session.py", "on_syscall"),
    (2, "registers (PTRACE_GETREGS)", "kernel/ptrace.py", "getregs"),
    (2, "decode (operands, paths, exec identity)", "trace/decode.py", "decode_syscall"),
    (3, "path resolution", "trace/paths.py", "resolve_tracee_path"),
    (2, "decision (policy engine)", "trace/decide.py", "decide"),
    (2, "audit record", "trace/session.py", "_record"),
    (2, "resume the agent (enforce.allow)", "trace/enforce.py", "allow"),
    (0, "waiting for the agent (waitpid)", "~", "<built-in method posix.waitpid>"),
]


def workload_argv(name: str, tmp: Path) -> list[str]:
    if name == "py_files":
        files = tmp / "files"
        files.mkdir()
        for i in range(2000):
            (files / f"f{i:05d}.txt").write_bytes(b"x" * (64 + i % 512))
        return [sys.executable, "-I", str(HERE / "workloads" / "py_files.py"), str(files)]
    if name == "fork_loop":
        return ["/bin/sh", str(HERE / "workloads" / "fork_loop.sh"), "400"]
    raise SystemExit(f"unknown workload {name!r} (py_files, fork_loop)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="py_files")
    parser.add_argument("--policy", default="permissive")
    parser.add_argument("--top", type=int, default=0, help="also list the N costliest functions")
    parser.add_argument("--agentd", default=str(AGENTD),
                        help="the agentd to profile (e.g. a wrapper for another checkout)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentd-stop-profile-") as name:
        tmp = Path(name)
        argv = workload_argv(args.workload, tmp)
        profile = tmp / "run.prof"
        log = tmp / "audit.jsonl"
        subprocess.run([sys.executable, "-m", "cProfile", "-o", str(profile), args.agentd, "run",
                        "--policy", args.policy, "--network", "off", "--workspace", str(tmp),
                        "--audit-log", str(log), "--", *argv],
                       check=True, stdout=subprocess.DEVNULL)
        stats = pstats.Stats(str(profile))
        stops = _stops(stats)
        cumulative: dict[tuple[str, str], float] = {}
        for (file, _, function), (_, _, _, cum, _) in stats.stats.items():  # type: ignore[attr-defined]
            for _, _, suffix, name in STEPS:
                if function == name and file.endswith(suffix):
                    cumulative[suffix, name] = cumulative.get((suffix, name), 0.0) + cum
        total = sum(own for _, _, own, _, _ in stats.stats.values())  # type: ignore[attr-defined]
        print(f"{args.workload} under {args.policy}: {stops} seccomp stops; supervisor CPU "
              f"under cProfile {total * 1e3:.0f} ms in all (start-up and end included)")
        for depth, label, suffix, name in STEPS:
            seconds = cumulative.get((suffix, name), 0.0)
            print(f"  {'  ' * depth}{label:{44 - 2 * depth}} {seconds * 1e3:8.1f} ms "
                  f"{seconds / max(stops, 1) * 1e6:7.1f} µs/stop")
        if args.top:
            stats.sort_stats("tottime").print_stats(args.top)
    return 0


def _stops(stats: pstats.Stats) -> int:
    for (file, _, function), (_, calls, _, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        if file.endswith("trace/session.py") and function == "on_syscall":
            return calls
    return 0


if __name__ == "__main__":
    sys.exit(main())
