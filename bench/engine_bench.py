"""How fast the policy engine decides, beside a naive loop over patterns, in one interleaved run.

Builds policies of 10, 100 and 1000 ``file_read`` patterns (a realistic mix: path prefixes
``^/data/dirN/.*``, extensions ``.*\\.extN$``, command/tool patterns ``.*(cmdN|toolN).*``, one
lookahead per hundred patterns, one catch-all; allow, deny and warn mixed) and measures, in rounds
that interleave every size and variant so that drift of the machine hits all of them alike:
(a) uncached decisions (a stream of unique targets through ``Policy.evaluate``), (b) cached
decisions (a warmed working set of repeated targets), (c) the naive baseline of the earlier
implementation (``re.match(source, target, re.DOTALL)`` for every pattern, then the most
restrictive match) and the same loop over precompiled regexes. Latency is ``perf_counter_ns``
around each call minus the measured timer overhead, and again in thread CPU time
(``thread_time_ns``, blind to preemption on a shared machine); throughput is a tight loop, per
wall and per CPU second. Every call goes through a one-line lambda (~60 ns, not subtracted). It
also times the matcher alone as a loop and as an RE2 set at 8..64 patterns (the
``RE2_SET_THRESHOLD`` crossover), checks that every variant reaches the same decisions, prints a
table and writes JSON.

    .venv/bin/python bench/engine_bench.py [--quick] [--profile] [--out bench/out/engine.json]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import math
import os
import platform
import pstats
import random
import re
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence
from unittest import mock

from agent_os import Pattern, Policy
from agent_os import matcher as matcher_module
from agent_os.matcher import ActionTypeMatcher, is_catch_all

ACTION_TYPE = "file_read"
CONTEXT = {"agent_id": "bench-agent"}  # what the supervisor passes; no condition reads it here
SIZES = (10, 100, 1000)
CROSSOVER_SIZES = (8, 12, 16, 24, 32, 64)
TARGETS = {"uncached_p99_us": {10: 5.0, 1000: 20.0}, "cached_per_second": 1_000_000}
_RANK = {"allow": 0, "warn": 1, "deny": 2}
DEFAULT_OUT = Path(__file__).resolve().parent / "out" / "engine.json"


# --- workload -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mix:
    """How many patterns of each kind a policy of ``size`` patterns has."""

    prefixes: int
    extensions: int
    commands: int
    lookaheads: int

    @classmethod
    def for_size(cls, size: int) -> "Mix":
        lookaheads = max(1, size // 100)
        rest = size - lookaheads - 1  # one catch-all
        prefixes = round(rest * 0.4)
        extensions = round(rest * 0.3)
        return cls(prefixes, extensions, rest - prefixes - extensions, lookaheads)


def build_patterns(size: int, seed: int = 1) -> list[Pattern]:
    """``size`` patterns of one action type, shuffled so no kind sits in one block."""
    mix = Mix.for_size(size)
    severities = ("low", "medium", "high", "critical")
    patterns = [Pattern(ACTION_TYPE, ".*", "deny", "medium", id="catch_all")]
    for i in range(mix.prefixes):
        action = "deny" if i % 5 == 4 else "allow"
        patterns.append(Pattern(ACTION_TYPE, rf"^/data/dir{i}/.*", action, severities[i % 3],
                                id=f"prefix_{i}"))
    for i in range(mix.extensions):
        patterns.append(Pattern(ACTION_TYPE, rf".*\.ext{i}$", "deny" if i % 2 == 0 else "warn",
                                severities[i % 4], id=f"ext_{i}"))
    for i in range(mix.commands):
        patterns.append(Pattern(ACTION_TYPE, rf".*(cmd{i}|tool{i}).*", "warn" if i % 3 else "deny",
                                severities[(i + 1) % 4], id=f"cmd_{i}"))
    for i in range(mix.lookaheads):
        # a deny over an allowed prefix directory, except its public/ subtree: re-only (RE2 refuses)
        patterns.append(Pattern(ACTION_TYPE, rf"^/data/dir{i * 3}/(?!public/).*", "deny", "high",
                                id=f"lookahead_{i}"))
    random.Random(seed).shuffle(patterns)
    return patterns


def build_policy(patterns: Sequence[Pattern], name: str) -> Policy:
    return Policy(name, default_action="allow", patterns=[p.copy() for p in patterns]).compile()


class TargetStream:
    """Realistic, unique file paths: some under pattern directories, some tool libraries, some
    plain workspace files that only the catch-all matches. ``exotic`` adds non-ASCII and
    multi-line targets (they take the matcher's exact ``re`` path)."""

    def __init__(self, size: int, seed: int) -> None:
        self.mix = Mix.for_size(size)
        self.rng = random.Random(seed)
        self.serial = 0

    def take(self, count: int, exotic: bool = False) -> list[str]:
        rng, mix = self.rng, self.mix
        out = []
        for _ in range(count):
            self.serial += 1
            uid = self.serial
            roll = rng.random()
            if exotic and roll < 0.1:
                out.append(f"/data/dir{rng.randrange(mix.prefixes + 1)}/résumé_{uid}.ext1")
            elif exotic and roll < 0.2:
                out.append(f"/home/agent/workspace/notes_{uid}.txt\n/etc/shadow.ext0\n")
            elif roll < 0.55:
                directory = rng.randrange(int(mix.prefixes * 1.25) + 1)
                sub = "public" if rng.random() < 0.2 else f"sub{rng.randrange(50)}"
                ext = rng.randrange(int(mix.extensions * 1.25) + 1)
                out.append(f"/data/dir{directory}/{sub}/file_{uid}.ext{ext}")
            elif roll < 0.75:
                tool = rng.randrange(int(mix.commands * 1.25) + 1)
                out.append(f"/usr/lib/tool{tool}/lib_{uid}.so.{rng.randrange(9)}")
            else:
                out.append(f"/home/agent/workspace/src/pkg{rng.randrange(20)}/module_{uid}.py")
        return out


# --- the naive baseline ---------------------------------------------------------------------------

def naive_rules(patterns: Sequence[Pattern]) -> tuple[tuple, ...]:
    """Per pattern: (regex source, compiled, restrictiveness, catch-all?, id, action).

    The source is what the engine compiles (``p.regex.pattern``: ``$`` rewritten to ``\\Z``), so
    that the baseline decides exactly as the engine does.
    """
    return tuple((p.regex.pattern, p.regex, (_RANK[p.action], int(p.severity)),
                  is_catch_all(p.pattern), p.id, p.action)
                 for p in patterns if p.enabled and p.action_type == ACTION_TYPE)


def naive_decide(rules: tuple[tuple, ...], target: str) -> tuple[str, str | None]:
    """The earlier implementation: ``re.match`` every pattern, collect the matches, pick the most
    restrictive (catch-alls only when nothing else matched; first of equals wins)."""
    specific, catch_alls = [], []
    for rule in rules:
        if re.match(rule[0], target, re.DOTALL):
            (catch_alls if rule[3] else specific).append(rule)
    chosen = specific or catch_alls
    if not chosen:
        return "allow", None
    winner = max(chosen, key=lambda rule: rule[2])
    return winner[5], winner[4]


def naive_compiled_decide(rules: tuple[tuple, ...], target: str) -> tuple[str, str | None]:
    """The same loop over precompiled regexes (no trip through ``re``'s compile cache)."""
    specific, catch_alls = [], []
    for rule in rules:
        if rule[1].match(target):
            (catch_alls if rule[3] else specific).append(rule)
    chosen = specific or catch_alls
    if not chosen:
        return "allow", None
    winner = max(chosen, key=lambda rule: rule[2])
    return winner[5], winner[4]


def check_agreement(patterns: Sequence[Pattern], targets: Sequence[str]) -> list[str]:
    """Every disagreement between uncached, cached and both naive decisions (empty: all agree)."""
    policy = build_policy(patterns, "agreement")
    rules = naive_rules(patterns)
    problems = []
    for target in targets:
        uncached = policy.evaluate(ACTION_TYPE, target, CONTEXT)
        cached = policy.evaluate(ACTION_TYPE, target, CONTEXT)  # the second call is a cache hit
        engine = (uncached.action, uncached.pattern_id)
        others = {"cached": (cached.action, cached.pattern_id),
                  "naive": naive_decide(rules, target),
                  "naive_compiled": naive_compiled_decide(rules, target)}
        for name, decision in others.items():
            if decision != engine:
                problems.append(f"{target!r}: engine {engine} but {name} {decision}")
    return problems


# --- measuring ------------------------------------------------------------------------------------

def timer_overhead_ns(samples: int = 200_000,
                      now: Callable[[], int] = time.perf_counter_ns) -> float:
    """Median cost of the latency loop's bookkeeping with nothing inside it."""
    costs = []
    append = costs.append
    for _ in range(samples):
        before = now()
        after = now()
        append(after - before)
    return float(statistics.median(costs))


def latencies_ns(decide: Callable[[str], object], targets: Sequence[str],
                 budget_s: float | None = None,
                 now: Callable[[], int] = time.perf_counter_ns) -> list[int]:
    """Per-call deltas of the clock ``now`` (raw, overhead not yet subtracted).

    With ``time.thread_time_ns`` the deltas are CPU time: a call during which the scheduler ran
    another process is not inflated by the other process's time slice.
    """
    costs: list[int] = []
    append = costs.append
    deadline = time.perf_counter_ns() + int(budget_s * 1e9) if budget_s else None
    for index, target in enumerate(targets):
        before = now()
        decide(target)
        after = now()
        append(after - before)
        if deadline is not None and index % 8 == 7 and time.perf_counter_ns() > deadline:
            break
    return costs


def throughput(decide: Callable[[str], object], targets: Sequence[str],
               budget_s: float | None = None) -> tuple[int, float, float]:
    """(calls, wall seconds, CPU seconds) of a tight loop; in batches of 64 under a time budget.

    CPU seconds (``process_time``) leave out the time other processes had the CPU.
    """
    if budget_s is None:
        start, cpu_start = time.perf_counter(), time.process_time()
        for target in targets:
            decide(target)
        return len(targets), time.perf_counter() - start, time.process_time() - cpu_start
    calls, start, cpu_start = 0, time.perf_counter(), time.process_time()
    deadline = start + budget_s
    for offset in range(0, len(targets), 64):
        for target in targets[offset:offset + 64]:
            decide(target)
        calls += len(targets[offset:offset + 64])
        if time.perf_counter() > deadline:
            break
    return calls, time.perf_counter() - start, time.process_time() - cpu_start


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, math.ceil(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


class Accumulator:
    """Latency samples and throughput counts of one (size, variant), over all rounds."""

    def __init__(self) -> None:
        self.latency_ns: list[int] = []
        self.cpu_latency_ns: list[int] = []
        self.calls = 0
        self.seconds = 0.0
        self.cpu_seconds = 0.0

    def add_throughput(self, measured: tuple[int, float, float]) -> None:
        calls, seconds, cpu_seconds = measured
        self.calls += calls
        self.seconds += seconds
        self.cpu_seconds += cpu_seconds

    def summary(self, overhead_ns: float, cpu_overhead_ns: float = 0.0) -> dict[str, float]:
        values = sorted(max(0.0, v - overhead_ns) for v in self.latency_ns)
        cpu_values = sorted(max(0.0, v - cpu_overhead_ns) for v in self.cpu_latency_ns)
        cpu = {}
        if cpu_values:
            cpu = {"cpu_latency_samples": len(cpu_values),
                   "cpu_p50_us": percentile(cpu_values, 0.50) / 1000,
                   "cpu_p99_us": percentile(cpu_values, 0.99) / 1000,
                   "cpu_p999_us": percentile(cpu_values, 0.999) / 1000}
        return {**cpu,
            "decisions_per_second": self.calls / self.seconds if self.seconds else 0.0,
            "decisions_per_cpu_second": self.calls / self.cpu_seconds if self.cpu_seconds else 0.0,
            "throughput_calls": self.calls,
            "latency_samples": len(values),
            "mean_us": statistics.fmean(values) / 1000,
            "p50_us": percentile(values, 0.50) / 1000,
            "p99_us": percentile(values, 0.99) / 1000,
            "p999_us": percentile(values, 0.999) / 1000,
            "max_us": values[-1] / 1000,
        }


@dataclass(frozen=True)
class Counts:
    rounds: int
    latency_calls: int      # engine, per round and variant
    throughput_calls: int   # engine, per round and variant
    naive_budget_s: float   # naive variants: time budget per chunk (they can be very slow)
    working_set: int        # cached: distinct targets repeated
    crossover_calls: int
    agreement_targets: int


FULL = Counts(rounds=5, latency_calls=20_000, throughput_calls=40_000, naive_budget_s=0.5,
              working_set=512, crossover_calls=20_000, agreement_targets=2_000)
QUICK = Counts(rounds=2, latency_calls=3_000, throughput_calls=6_000, naive_budget_s=0.1,
               working_set=256, crossover_calls=3_000, agreement_targets=500)

VARIANTS = ("engine_uncached", "engine_cached", "naive_re_match", "naive_compiled")


def run_engine(sizes: Sequence[int], counts: Counts, overhead_ns: float,
               cpu_overhead_ns: float) -> dict:
    """The interleaved rounds; returns per size and variant the summary."""
    setups = {}
    for size in sizes:
        patterns = build_patterns(size)
        stream = TargetStream(size, seed=size)
        uncached_policy = build_policy(patterns, f"bench-{size}-uncached")
        cached_policy = build_policy(patterns, f"bench-{size}-cached")  # never sees the stream
        working_set = TargetStream(size, seed=size + 7).take(counts.working_set)
        rules = naive_rules(patterns)
        evaluate_uncached, evaluate_cached = uncached_policy.evaluate, cached_policy.evaluate
        setups[size] = {
            "stream": stream,
            "working_set": working_set,
            "cached_policy": cached_policy,
            "decide": {
                "engine_uncached": lambda t, ev=evaluate_uncached: ev(ACTION_TYPE, t, CONTEXT),
                "engine_cached": lambda t, ev=evaluate_cached: ev(ACTION_TYPE, t, CONTEXT),
                "naive_re_match": lambda t, r=rules: naive_decide(r, t),
                "naive_compiled": lambda t, r=rules: naive_compiled_decide(r, t),
            },
        }
        for variant in VARIANTS:  # warm-up, discarded
            decide = setups[size]["decide"][variant]
            for target in (working_set if variant == "engine_cached" else stream.take(200)):
                decide(target)
    results = {size: {variant: Accumulator() for variant in VARIANTS} for size in sizes}
    for round_index in range(counts.rounds):
        for size in sizes:
            setup = setups[size]
            for variant in VARIANTS:
                decide = setup["decide"][variant]
                acc = results[size][variant]
                budget = counts.naive_budget_s if variant.startswith("naive") else None
                if variant == "engine_cached":
                    for target in setup["working_set"]:  # re-warm: must all be hits
                        decide(target)
                    repeats = -(-counts.latency_calls // len(setup["working_set"]))
                    lat_targets = (setup["working_set"] * repeats)[:counts.latency_calls]
                    cpu_targets = lat_targets
                    repeats = -(-counts.throughput_calls // len(setup["working_set"]))
                    thr_targets = (setup["working_set"] * repeats)[:counts.throughput_calls]
                else:
                    lat_targets = setup["stream"].take(counts.latency_calls)
                    cpu_targets = setup["stream"].take(counts.latency_calls)
                    thr_targets = setup["stream"].take(counts.throughput_calls)
                acc.latency_ns.extend(latencies_ns(decide, lat_targets, budget))
                acc.cpu_latency_ns.extend(latencies_ns(decide, cpu_targets, budget,
                                                       time.thread_time_ns))
                acc.add_throughput(throughput(decide, thr_targets, budget))
        print(f"  round {round_index + 1}/{counts.rounds} done", file=sys.stderr)
    return {size: {variant: results[size][variant].summary(overhead_ns, cpu_overhead_ns)
                   for variant in VARIANTS} for size in sizes}


def run_exotic(size: int, counts: Counts, overhead_ns: float) -> dict:
    """Uncached latency when one target in five is non-ASCII or multi-line (exact ``re`` path)."""
    policy = build_policy(build_patterns(size), f"bench-{size}-exotic")
    stream = TargetStream(size, seed=size + 11)
    targets = [t for t in stream.take(counts.latency_calls * 3, exotic=True)
               if not (t.isascii() and "\n" not in t)][:counts.latency_calls // 2]
    acc = Accumulator()
    acc.latency_ns = latencies_ns(lambda t: policy.evaluate(ACTION_TYPE, t, CONTEXT), targets)
    summary = acc.summary(overhead_ns)
    return {"patterns": size, "targets": len(targets), "p50_us": summary["p50_us"],
            "p99_us": summary["p99_us"], "mean_us": summary["mean_us"]}


def run_crossover(counts: Counts, overhead_ns: float) -> dict:
    """``ActionTypeMatcher.matching`` alone, as a loop and as an RE2 set, interleaved."""
    if matcher_module._re2 is None:
        return {"skipped": "google-re2 is not installed: the matcher always loops"}
    setups = {}
    for size in CROSSOVER_SIZES:
        regexes = [p.pattern for p in build_patterns(size)]
        built = {}
        for kind, threshold in (("loop", 10**9), ("re2_set", 0)):
            with mock.patch.object(matcher_module, "RE2_SET_THRESHOLD", threshold):
                built[kind] = ActionTypeMatcher(regexes)
        assert built["loop"]._set is None and built["re2_set"]._set is not None
        setups[size] = (built, TargetStream(size, seed=size + 3))
    results = {size: {"loop": Accumulator(), "re2_set": Accumulator()} for size in CROSSOVER_SIZES}
    for _ in range(counts.rounds):
        for size in CROSSOVER_SIZES:
            built, stream = setups[size]
            targets = stream.take(counts.crossover_calls)
            for kind in ("loop", "re2_set"):
                acc = results[size][kind]
                acc.latency_ns.extend(latencies_ns(built[kind].matching, targets))
                acc.add_throughput(throughput(built[kind].matching, targets))
    table = {size: {kind: results[size][kind].summary(overhead_ns) for kind in ("loop", "re2_set")}
             for size in CROSSOVER_SIZES}
    # medians: on a shared machine the mean is mostly preemption
    faster = [size for size in CROSSOVER_SIZES
              if table[size]["re2_set"]["p50_us"] < table[size]["loop"]["p50_us"]]
    return {"sizes": table, "set_faster_from": faster[0] if faster else None,
            "current_threshold": matcher_module.RE2_SET_THRESHOLD}


def profile_uncached(size: int, calls: int, out_dir: Path) -> str:
    """cProfile of uncached decisions at ``size`` patterns; returns the top of the report."""
    policy = build_policy(build_patterns(size), f"bench-{size}-profile")
    targets = TargetStream(size, seed=size + 5).take(calls)
    profiler = cProfile.Profile()
    profiler.enable()
    for target in targets:
        policy.evaluate(ACTION_TYPE, target, CONTEXT)
    profiler.disable()
    out_dir.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(str(out_dir / f"engine-uncached-{size}.prof"))
    import io
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(14)
    return text.getvalue()


# --- reporting ------------------------------------------------------------------------------------

def verdicts(engine: dict) -> list[dict]:
    out = []
    for size, limit in TARGETS["uncached_p99_us"].items():
        if size in engine:
            for clock, field in (("wall", "p99_us"), ("CPU", "cpu_p99_us")):
                value = engine[size]["engine_uncached"][field]
                out.append({"what": f"uncached p99 ({clock}) at {size} patterns",
                            "limit": f"<= {limit} µs", "measured": round(value, 2),
                            "met": value <= limit})
    if engine:
        for clock, field in (("wall", "decisions_per_second"), ("CPU", "decisions_per_cpu_second")):
            slowest = min(engine, key=lambda s: engine[s]["engine_cached"][field])
            value = engine[slowest]["engine_cached"][field]
            out.append({"what": f"cached decisions per {clock} second (slowest size: {slowest})",
                        "limit": f">= {TARGETS['cached_per_second']:,}", "measured": round(value),
                        "met": value >= TARGETS["cached_per_second"]})
    return out


def format_report(report: dict) -> str:
    lines = [f"# {report['machine']}", f"# timer overhead {report['timer_overhead_ns']:.0f} ns "
             f"(perf_counter_ns), {report['cpu_timer_overhead_ns']:.0f} ns (thread_time_ns), "
             "subtracted from every latency sample; GC enabled; "
             f"{report['counts']['rounds']} interleaved rounds",
             "# contention during the engine rounds: load average {0[0]:.1f} -> {0[1]:.1f}, "
             "{1} involuntary context switches, this process had the CPU {2:.0%} of the wall time"
             .format(report["contention"]["load_average_1m"],
                     report["contention"]["involuntary_context_switches"],
                     report["contention"]["cpu_share"]),
             f"{'patterns':>8}  {'variant':<16} {'decisions/s':>12} {'per CPU-s':>11} {'p50 µs':>9} "
             f"{'p99 µs':>9} {'p99.9 µs':>9} {'cpu p50':>8} {'cpu p99':>8} {'samples':>8}"]
    for size, variants in report["engine"].items():
        for variant, row in variants.items():
            lines.append(f"{size:>8}  {variant:<16} {row['decisions_per_second']:>12,.0f} "
                         f"{row['decisions_per_cpu_second']:>11,.0f} "
                         f"{row['p50_us']:>9.2f} {row['p99_us']:>9.2f} {row['p999_us']:>9.2f} "
                         f"{row['cpu_p50_us']:>8.2f} {row['cpu_p99_us']:>8.2f} "
                         f"{row['latency_samples']:>8}")
    exotic = report.get("exotic")
    if exotic:
        lines.append(f"non-ASCII/multi-line targets (exact re path), {exotic['patterns']} patterns: "
                     f"p50 {exotic['p50_us']:.1f} µs, p99 {exotic['p99_us']:.1f} µs")
    crossover = report.get("crossover", {})
    if "sizes" in crossover:
        lines.append("RE2 crossover, ActionTypeMatcher.matching alone (p50 / p99 µs):")
        lines.append(f"{'patterns':>8}  {'loop':>15}  {'re2 set':>15}")
        for size, kinds in crossover["sizes"].items():
            loop, candidate_set = kinds["loop"], kinds["re2_set"]
            lines.append(f"{size:>8}  {loop['p50_us']:>6.2f} / {loop['p99_us']:>6.2f}"
                         f"  {candidate_set['p50_us']:>6.2f} / {candidate_set['p99_us']:>6.2f}")
        lines.append(f"set faster from {crossover['set_faster_from']} patterns "
                     f"(RE2_SET_THRESHOLD = {crossover['current_threshold']})")
    elif crossover:
        lines.append(f"RE2 crossover skipped: {crossover['skipped']}")
    lines.append(f"agreement (uncached = cached = naive = naive_compiled): "
                 f"{'yes' if not report['disagreements'] else report['disagreements'][:5]}")
    for verdict in report["verdicts"]:
        lines.append(f"target {verdict['what']}: {verdict['measured']} ({verdict['limit']}) "
                     f"{'MET' if verdict['met'] else 'MISSED'}")
    return "\n".join(lines)


def run(sizes: Sequence[int] = SIZES, counts: Counts = FULL, crossover: bool = True,
        exotic: bool = True) -> dict:
    """The whole benchmark as data (what the JSON file holds)."""
    disagreements = []
    for size in sizes:
        targets = TargetStream(size, seed=size + 13).take(counts.agreement_targets, exotic=True)
        disagreements += check_agreement(build_patterns(size), targets)
    overhead = timer_overhead_ns()
    cpu_overhead = timer_overhead_ns(now=time.thread_time_ns)
    load_before = os.getloadavg()[0]
    usage_before, wall_before = resource.getrusage(resource.RUSAGE_SELF), time.time()
    engine = run_engine(sizes, counts, overhead, cpu_overhead)
    usage, wall = resource.getrusage(resource.RUSAGE_SELF), time.time() - wall_before
    report = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cpus, "
                   f"Python {platform.python_version()}, google-re2 "
                   f"{'present' if matcher_module._re2 is not None else 'absent'}",
        "timer_overhead_ns": overhead,
        "cpu_timer_overhead_ns": cpu_overhead,
        "counts": counts.__dict__,
        "action_type": ACTION_TYPE,
        "mix": {size: Mix.for_size(size).__dict__ for size in sizes},
        "disagreements": disagreements,
        "engine": engine,
        # other work on the machine shows in the tails: how often we were preempted, and how
        # much of the wall time this process got the CPU
        "contention": {
            "load_average_1m": [load_before, os.getloadavg()[0]],
            "involuntary_context_switches": usage.ru_nivcsw - usage_before.ru_nivcsw,
            "cpu_share": (usage.ru_utime + usage.ru_stime - usage_before.ru_utime
                          - usage_before.ru_stime) / wall,
        },
    }
    if exotic:
        report["exotic"] = run_exotic(max(sizes), counts, overhead)
    if crossover:
        report["crossover"] = run_crossover(counts, overhead)
    report["verdicts"] = verdicts(report["engine"])
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and calls (~20 s)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)),
                        help="comma-separated policy sizes (default 10,100,1000)")
    parser.add_argument("--no-crossover", action="store_true", help="skip the RE2 crossover")
    parser.add_argument("--profile", action="store_true",
                        help="also cProfile uncached decisions at the largest size")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON file (default {DEFAULT_OUT})")
    parser.add_argument("--counts", help=argparse.SUPPRESS)  # tests: rounds,latency,throughput
    args = parser.parse_args(argv)
    counts = QUICK if args.quick else FULL
    if args.counts:
        rounds, latency, through = (int(x) for x in args.counts.split(","))
        counts = Counts(rounds, latency, through, 0.02, 32, latency, latency)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    report = run(sizes, counts, crossover=not args.no_crossover)
    print(format_report(report))
    if args.profile:
        text = profile_uncached(max(sizes), counts.latency_calls, args.out.parent)
        report["profile_top"] = text
        print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"# wrote {args.out}")
    return 1 if report["disagreements"] else 0


if __name__ == "__main__":
    gc.collect()
    sys.exit(main())
