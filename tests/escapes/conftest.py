"""Fixtures and the tally of the escape suite (tests/escapes).

Owns the session-wide pieces: whether ``agentd run`` exists (every probe skips, with the reason,
while ``agentd run --help`` fails), the C probes built once with gcc into a session tmp dir, the
``--escape-attempts`` budget of the TOCTOU probes, a fresh ``Arena`` per test, and the line
"escape suite: N probes, N contained" at the end of the session. A probe is one test marked
``escape_probe``: passed = contained, failed with ``ProbeEscaped`` = escaped, failed otherwise =
broken (e.g. ``ProbeProvedNothing``), skipped = skipped, xfailed = a known escape (``KNOWN``).

Every test that takes ``arena`` runs twice, through the session fixture ``agentd_mode``:
``[embedded]`` (``agentd run --embedded`` supervises) and ``[daemon]`` (one ``agentd daemon`` per
session, started here with its own socket, runs dir, audit log and cgroup subtree, supervises;
skipped with the reason where it cannot run: not root, no cgroup v2). The tally counts both
modes, each on its own line too, and names every probe whose outcome differs between them.
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

from escape_harness import PROBE_DIR, Arena, ProbeEscaped, Supervision  # noqa: E402
from helpers.agentd_daemon import DaemonUnderTest, cgroup2_mount  # noqa: E402
from helpers.agentd_run import AGENTD, agentd_run_help, tracing_unavailable  # noqa: E402

DEFAULT_ATTEMPTS = 100_000
MODES = ("embedded", "daemon")
_TALLY = pytest.StashKey[dict]()
_DAEMON_LOG = pytest.StashKey[str]()
# Known escapes of one mode, by test id without the mode: (mode, reason); the test is then
# xfail(strict=True): it must escape, and fails the day it is contained (then remove the line).
KNOWN: dict[str, tuple[str, str]] = {}


def pytest_addoption(parser):
    parser.addoption("--escape-attempts", type=int,
                     default=int(os.environ.get("AGENTD_ESCAPE_ATTEMPTS", DEFAULT_ATTEMPTS)),
                     help="TOCTOU race attempts in total across the TOCTOU probes and the "
                          "modes (embedded, daemon: half each) "
                          f"(default {DEFAULT_ATTEMPTS}, or $AGENTD_ESCAPE_ATTEMPTS)")


KINDS = ("contained", "escaped", "known", "broken", "skipped")


def pytest_configure(config):
    config.addinivalue_line("markers", "escape_probe: one escape attempt of tests/escapes")
    # tally[mode][kind]: node ids; outcome[test id without the mode][mode]: kind
    config.stash[_TALLY] = {"tally": {}, "outcome": {}}


def _mode_of(item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("agentd_mode") if callspec is not None else None


def _without_mode(item) -> str:
    """The test's id with its mode taken out: the same probe in both modes has the same one."""
    mode, callspec = _mode_of(item), getattr(item, "callspec", None)
    if mode is None or callspec is None:
        return item.nodeid
    parts = callspec.id.split("-")
    parts.remove(mode)
    base = item.nodeid[:item.nodeid.index("[")]
    return f"{base}[{'-'.join(parts)}]" if parts else base


def pytest_collection_modifyitems(config, items):
    for item in items:
        known = KNOWN.get(_without_mode(item))
        if known is not None and known[0] == _mode_of(item):
            item.add_marker(pytest.mark.xfail(strict=True, raises=ProbeEscaped, reason=known[1]))


def _kind(report, call) -> str | None:
    if report.when == "call":
        if hasattr(report, "wasxfail"):
            return "known" if report.skipped else "broken"   # XPASS(strict): fix KNOWN
        if report.passed:
            return "contained"
        if report.failed:
            escaped = call.excinfo is not None and call.excinfo.errisinstance(ProbeEscaped)
            return "escaped" if escaped else "broken"
        return "skipped"
    if report.when == "setup" and (report.skipped or report.failed):
        return "skipped" if report.skipped else "broken"
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if item.get_closest_marker("escape_probe") is None:
        return
    kind = _kind(report, call)
    if kind is None:
        return
    stash, mode = item.config.stash[_TALLY], _mode_of(item) or "-"
    stash["tally"].setdefault(mode, {k: [] for k in KINDS})[kind].append(item.nodeid)
    stash["outcome"].setdefault(_without_mode(item), {})[mode] = kind


def _count_line(label: str, nodeids: dict[str, list[str]]) -> str:
    ran = sum(len(nodeids[k]) for k in ("contained", "escaped", "known", "broken"))
    known = f", {len(nodeids['known'])} known (xfail)" if nodeids["known"] else ""
    return (f"{label}: {ran} probes, {len(nodeids['contained'])} contained"
            f" ({len(nodeids['escaped'])} escaped{known}, {len(nodeids['broken'])} broken,"
            f" {len(nodeids['skipped'])} skipped)")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    stash = config.stash.get(_TALLY, None)
    if not stash or not stash["tally"]:
        return
    by_mode = stash["tally"]
    tally = {kind: [n for per_mode in by_mode.values() for n in per_mode[kind]] for kind in KINDS}
    write = terminalreporter.write_line
    terminalreporter.section("escape suite")
    write(_count_line("escape suite", tally))
    for mode, per_mode in by_mode.items():
        write(_count_line(f"  {mode}", per_mode))
    for kind in ("escaped", "known", "broken"):
        for nodeid in tally[kind]:
            write(f"  {kind.upper()}: {nodeid}")
    for test_id, by_mode in sorted(stash["outcome"].items()):
        if len(set(by_mode.values())) > 1:
            seen = ", ".join(f"{mode}: {kind}" for mode, kind in sorted(by_mode.items()))
            write(f"  DIFFERS: {test_id} ({seen})")
    if _DAEMON_LOG in config.stash:
        write(f"  the daemon's log: {config.stash[_DAEMON_LOG]}")


def _agentd_run_unavailable() -> str | None:
    missing, help_text = agentd_run_help()
    if missing:
        return missing
    if "--embedded" not in help_text:
        return "`agentd run` has no --embedded option"
    return tracing_unavailable()


def daemon_unavailable() -> str | None:
    """Why the suite cannot start an agentd daemon on this host, or None."""
    if os.geteuid() != 0:
        return "the agentd daemon runs agents as their caller and needs root"
    if cgroup2_mount() is None:
        return "no cgroup v2 mounted: the agentd daemon needs one for its runs"
    return None


@pytest.fixture(scope="session")
def escape_daemon(tmp_path_factory, request):
    """One ``agentd daemon`` for the session's daemon-mode probes: its own socket, runs dir,
    audit log and cgroup subtree, no policy of its own (the probes name their policy files,
    which root may), the network plane as $AGENTD_NETWORK says. Stopped at the end of the
    session; its log is named in the tally."""
    reason = daemon_unavailable()
    if reason:
        pytest.skip(reason)
    # The daemon's network is its configuration's, not the client's --network: it follows
    # $AGENTD_NETWORK as embedded runs do (tests/conftest.py: off, so the network probes measure
    # the tracer, not a namespace the test's loopback listeners are not in).
    network = "plane" if os.environ.get("AGENTD_NETWORK") in ("plane", "auto") else "off"
    daemon = DaemonUnderTest(tmp_path_factory.mktemp("escape-daemon"), network=network)
    request.config.stash[_DAEMON_LOG] = str(daemon.root / "daemon.log")
    try:
        daemon.start()   # raises with the daemon's log when READY=1 does not come
    except BaseException:
        daemon.stop()
        raise
    try:
        if "policies loaded" not in daemon.log_text():   # logged before READY=1
            pytest.skip("the agentd daemon logs to the journal (systemd-python), where the suite "
                        "cannot see that a run's supervisor died")
        yield daemon
    finally:
        died = None if daemon.alive() else daemon.process.returncode
        daemon.stop()
    if died is not None:
        raise AssertionError(f"the escape suite's agentd daemon died (status {died}); its log:\n"
                             f"{daemon.log_text()[-5000:]}")


@pytest.fixture(scope="session", params=MODES)
def agentd_mode(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def supervision(agentd_mode, request) -> Supervision:
    """Who supervises the sandboxed runs of this mode. ``embedded``: ``agentd run --embedded``,
    so the agent's parent is ``agentd run`` itself. ``daemon``: the session's daemon, so the
    agent's parent is the daemon's per-run supervisor. Either way the probes that attack "the
    supervisor" aim at their parent, and the bare run's stand-in is their parent too."""
    reason = _agentd_run_unavailable()
    if reason:
        pytest.skip(reason)
    if agentd_mode == "embedded":
        return Supervision("embedded", [AGENTD, "run", "--embedded"])
    return Supervision("daemon", [AGENTD, "run"], request.getfixturevalue("escape_daemon"))


@pytest.fixture(scope="session")
def agentd_argv(supervision) -> list[str]:
    """``agentd run`` and the options every sandboxed probe of this mode gets."""
    return supervision.argv


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
def escape_attempts(request, agentd_mode) -> int:
    """This mode's share of the TOCTOU budget: the budget is split evenly between the modes
    the session runs (both: half each), so the suite races as often as it did with one mode.
    The option exists only when pytest is started on tests/escapes (a conftest option);
    $AGENTD_ESCAPE_ATTEMPTS works from anywhere."""
    value = request.config.getoption("--escape-attempts", default=None)
    if value is None:
        value = int(os.environ.get("AGENTD_ESCAPE_ATTEMPTS", DEFAULT_ATTEMPTS))
    racing = {_mode_of(item) for item in request.session.items
              if "escape_attempts" in getattr(item, "fixturenames", ())} or {agentd_mode}
    return max(1, value // len(racing))


@pytest.fixture
def arena(tmp_path, supervision) -> Arena:
    return Arena(tmp_path, supervision)
