"""A tiny run of bench/engine_bench.py: it produces numbers, and the engine's uncached and cached
decisions agree with the naive loop over patterns. No timing assertions (those are the bench's)."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "engine_bench.py"


@pytest.fixture(scope="module")
def engine_bench():
    spec = importlib.util.spec_from_file_location("engine_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_numbers(engine_bench, tmp_path, capsys):
    out = tmp_path / "engine.json"
    status = engine_bench.main(["--sizes", "10,40", "--counts", "1,200,300", "--out", str(out)])
    assert status == 0
    report = json.loads(out.read_text())
    assert report["disagreements"] == []
    assert report["timer_overhead_ns"] > 0
    for size in ("10", "40"):
        variants = report["engine"][size]
        assert set(variants) == {"engine_uncached", "engine_cached", "naive_re_match", "naive_compiled"}
        for row in variants.values():
            for name in ("decisions_per_second", "decisions_per_cpu_second", "p50_us", "p99_us",
                         "mean_us", "cpu_p50_us", "cpu_p99_us"):
                assert math.isfinite(row[name]) and row[name] >= 0, (size, name, row)
            assert row["decisions_per_second"] > 0 and row["latency_samples"] > 0
    crossover = report["crossover"]
    if "skipped" not in crossover:
        assert set(crossover["sizes"]) >= {"8", "16", "24", "32", "64"}
        assert all(kinds["re2_set"]["decisions_per_second"] > 0 for kinds in crossover["sizes"].values())
    printed = capsys.readouterr().out
    assert "engine_uncached" in printed and "target uncached p99 (wall) at 10 patterns" in printed


@pytest.mark.parametrize("size", [10, 30, 100])
def test_cached_and_uncached_decisions_agree_with_naive_loop(engine_bench, size):
    patterns = engine_bench.build_patterns(size, seed=size)
    targets = engine_bench.TargetStream(size, seed=size + 1).take(400, exotic=True)
    # the mix reaches allow, warn, deny and the catch-all, so agreement is not vacuous
    rules = engine_bench.naive_rules(patterns)
    decisions = {engine_bench.naive_compiled_decide(rules, t)[0] for t in targets}
    assert decisions == {"allow", "warn", "deny"}
    assert engine_bench.check_agreement(patterns, targets) == []
