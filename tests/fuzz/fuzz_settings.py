"""The hypothesis settings every fuzz target in tests/fuzz uses: reproducible and bounded.

``derandomize=True`` and ``database=None``: the same examples on every machine and every run, so
a failure in CI is a failure on a laptop, and no ``.hypothesis`` directory is written. Each
target says how many examples it runs (``fuzz(N)``); ``AGENTD_FUZZ_SCALE`` multiplies them for a
longer local hunt (``AGENTD_FUZZ_SCALE=20 pytest tests/fuzz``), without changing the suite's
default budget. ``deadline=None``: the machine is shared and slow, and no test here asserts on
time.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

SCALE = float(os.environ.get("AGENTD_FUZZ_SCALE", "1") or 1)


def fuzz(max_examples: int) -> settings:
    """The settings of one fuzz target running ``max_examples`` examples (times the scale)."""
    return settings(
        max_examples=max(1, int(max_examples * SCALE)),
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=True,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
        ],
    )
