"""Selection of the livability suite (tests/livability): the ``livability`` marker, so that
``pytest -m livability`` runs only it and ``-m 'not livability'`` leaves it out."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for directory in (HERE, HERE.parent):          # workloads, livability_harness; tests/helpers
    if str(directory) not in sys.path:
        sys.path.insert(0, str(directory))


def pytest_configure(config):
    config.addinivalue_line("markers", "livability: real developer tools (git, make, cargo, "
                            "pip, npm, CPython's tests) under agentd run, outcome checked")
