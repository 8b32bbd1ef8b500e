"""Fixtures and the tally of the escape suite (tests/escapes).

Owns the session-wide pieces: whether ``agentd run`` exists (every probe skips, with the reason,
while ``agentd run --help`` fails), the C probes built once with gcc into a session tmp dir, the
``--escape-attempts`` budget of the TOCTOU probes, a fresh ``Arena`` per test, and the line
"escape suite: N probes, N contained" at the end of the session. A probe is one test marked
``escape_probe``: passed = contained, failed with ``ProbeEscaped`` = escaped, failed otherwise =
broken (e.g. ``ProbeProvedNothing``), skipped = skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
if str(HERE.parent) not in sys.path:      # tests/helpers (cbuild, try_syscall)
    sys.path.insert(0, str(HERE.parent))

from escape_harness import AGENTD, PROBE_DIR, Arena, ProbeEscaped  # noqa: E402
from helpers.agentd_run import agentd_run_help, tracing_unavailable  # noqa: E402

DEFAULT_ATTEMPTS = 100_000
_TALLY = pytest.StashKey[dict]()


def pytest_addoption(parser):
    parser.addoption("--escape-attempts", type=int,
                     default=int(os.environ.get("AGENTD_ESCAPE_ATTEMPTS", DEFAULT_ATTEMPTS)),
                     help="TOCTOU race attempts in total across the TOCTOU probes "
                          f"(default {DEFAULT_ATTEMPTS}, or $AGENTD_ESCAPE_ATTEMPTS)")


def pytest_configure(config):
    config.addinivalue_line("markers", "escape_probe: one escape attempt of tests/escapes")
    config.stash[_TALLY] = {"contained": [], "escaped": [], "broken": [], "skipped": []}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if item.get_closest_marker("escape_probe") is None:
        return
    tally = item.config.stash[_TALLY]
    if report.when == "call":
        if report.passed:
            tally["contained"].append(item.nodeid)
        elif report.failed:
            escaped = call.excinfo is not None and call.excinfo.errisinstance(ProbeEscaped)
            tally["escaped" if escaped else "broken"].append(item.nodeid)
        elif report.skipped:
            tally["skipped"].append(item.nodeid)
    elif report.when == "setup" and (report.skipped or report.failed):
        tally["skipped" if report.skipped else "broken"].append(item.nodeid)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    tally = config.stash.get(_TALLY, None)
    if not tally or not any(tally.values()):
        return
    ran = len(tally["contained"]) + len(tally["escaped"]) + len(tally["broken"])
    write = terminalreporter.write_line
    terminalreporter.section("escape suite")
    write(f"escape suite: {ran} probes, {len(tally['contained'])} contained"
          f" ({len(tally['escaped'])} escaped, {len(tally['broken'])} broken,"
          f" {len(tally['skipped'])} skipped)")
    for key in ("escaped", "broken"):
        for nodeid in tally[key]:
            write(f"  {key.upper()}: {nodeid}")


@pytest.fixture(scope="session")
def agentd_argv() -> list[str]:
    """``agentd run`` and the options every sandboxed probe gets. ``--embedded``: the run is
    supervised by the `agentd run` process itself even where an agentd daemon listens, so the
    agent's parent is its supervisor (the probes that attack "the supervisor" aim at ppid)."""
    missing, help_text = agentd_run_help()
    reason = missing or tracing_unavailable()
    if reason:
        pytest.skip(reason)
    return [AGENTD, "run", *(["--embedded"] if "--embedded" in help_text else [])]


@pytest.fixture(scope="session")
def probe_bin(tmp_path_factory) -> Path:
    """The C probes (tests/escapes/probes/*.c), built once; the directory holding them."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler on this host: cannot build the C escape probes")
    out = tmp_path_factory.mktemp("escape-probes")
    for source in sorted(PROBE_DIR.glob("*.c")):
        done = subprocess.run([compiler, "-O2", "-Wall", "-Wextra", "-Werror", "-pthread",
                               "-o", str(out / source.stem), str(source)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"building {source} failed:\n{done.stderr}")
    return out


@pytest.fixture(scope="session")
def escape_attempts(request) -> int:
    """The option exists only when pytest is started on tests/escapes (a conftest option);
    $AGENTD_ESCAPE_ATTEMPTS works from anywhere."""
    value = request.config.getoption("--escape-attempts", default=None)
    if value is None:
        value = int(os.environ.get("AGENTD_ESCAPE_ATTEMPTS", DEFAULT_ATTEMPTS))
    return max(1, value)


@pytest.fixture
def arena(tmp_path, agentd_argv) -> Arena:
    return Arena(tmp_path, agentd_argv)
