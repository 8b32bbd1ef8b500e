"""The syscall ledger (docs/syscalls.md) accounts for every syscall number of this machine's
kernel headers, x86_64, ia32 and x32, and for every PR_* / F_* constant of the prctl and fcntl
headers; its hand-written reasons name only what the filter really lets run; the committed page
is what the generator writes. The classification is computed from the filter an ``agentd run``
installs, run number by number (``agentd.run.syscall_ledger``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentd.kernel import seccomp
from agentd.kernel.consts import X32_SYSCALL_BIT
from agentd.run import ledger_reasons, syscall_ledger
from agentd.run.ledger_reasons import OPEN

ROOT = Path(__file__).resolve().parent.parent

MISSING = syscall_ledger._missing_headers(syscall_ledger.HEADERS)
pytestmark = pytest.mark.skipif(
    bool(MISSING),
    reason=f"kernel/libc headers missing ({', '.join(MISSING)}): "
    "apt-get install linux-libc-dev libc6-dev (scripts/setup does)",
)

# What is still OPEN (may change something outside the agent) and known to be: each entry is a
# side door the lead has to close or accept (issue 12). Empty it as they are closed; a new OPEN
# entry, or one here that is no longer OPEN, fails the test.
KNOWN_OPEN: set[str] = set()  # every OPEN entry of the ledger; empty: none is open


@pytest.fixture(scope="module")
def ledger() -> syscall_ledger.Ledger:
    return syscall_ledger.build_ledger()


def header_numbers(abi: str) -> dict[int, str]:
    return syscall_ledger.syscall_header(str(syscall_ledger.HEADERS[abi]))


@pytest.mark.parametrize("abi", syscall_ledger.ABIS)
def test_every_header_number_is_in_the_ledger(ledger, abi):
    numbers = header_numbers(abi)
    assert len(numbers) > 300, f"{abi}: the header parser found only {len(numbers)} numbers"
    in_ledger = {row.nr for row in ledger.rows(abi)}
    assert not set(numbers) - in_ledger, sorted(set(numbers) - in_ledger)


def test_no_number_or_command_is_unclassified(ledger):
    problems = ledger.unclassified()
    assert not problems, "the syscall ledger:\n" + "\n".join(problems)


def test_an_unknown_number_is_unclassified_not_allowed(tmp_path):
    """The test can fail: a header with a syscall agentd has never heard of (the next kernel's)
    leaves that number unclassified, and a foreign ABI the filter let through would too."""
    header = tmp_path / "unistd_64.h"
    original = Path(str(syscall_ledger.HEADERS["x86_64"])).read_text()
    header.write_text(original + "#define __NR_from_the_future 999\n")
    headers = {**syscall_ledger.HEADERS, "x86_64": str(header)}
    problems = syscall_ledger.build_ledger(headers).unclassified()
    assert any("999 from_the_future" in line for line in problems), problems


def test_an_unknown_command_is_unclassified(tmp_path):
    header = tmp_path / "prctl.h"
    header.write_text(Path(syscall_ledger.HEADERS["prctl"][0]).read_text())
    with open(header, "a") as handle:
        handle.write("#define PR_SET_SOMETHING_NEW 4242\n")
    headers = {**syscall_ledger.HEADERS, "prctl": (str(header),)}
    problems = syscall_ledger.build_ledger(headers).unclassified()
    assert any("PR_SET_SOMETHING_NEW" in line for line in problems), problems


def test_the_ledger_follows_the_filter(monkeypatch):
    """A syscall the filter starts refusing leaves the allowed class and its reason turns
    stale: the ledger reads the filter, it does not restate it."""
    real = syscall_ledger.filter_spec

    def with_sync_refused(profile, traced):
        spec = real(profile, traced)
        return seccomp.FilterSpec(spec.traced, {**spec.denied, "sync": seccomp.EPERM},
                                  spec.arg_rules)

    monkeypatch.setattr(syscall_ledger, "filter_spec", with_sync_refused)
    changed = syscall_ledger.build_ledger()
    row = next(row for row in changed.rows("x86_64") if row.name == "sync")
    assert (row.cls, row.detail.split(":")[0]) == (syscall_ledger.REFUSED, "ERRNO(EPERM)")
    assert any("'sync'" in line and "remove the reason" in line for line in changed.unclassified())


def test_reasons_name_only_syscalls_that_run_without_a_stop(ledger):
    """Stale data: a reason for a syscall the filter traces or refuses (or that does not exist)
    is reported by the ledger, so it is caught by test_no_number_or_command_is_unclassified;
    here the same check, spelled out."""
    unstopped = {
        row.name for row in ledger.rows("x86_64") if syscall_ledger._unstopped(row)
    }
    assert not set(ledger_reasons.ALLOWED) - unstopped, sorted(
        set(ledger_reasons.ALLOWED) - unstopped
    )


def test_every_plain_allowed_syscall_has_a_reason(ledger):
    allowed = [row for row in ledger.rows("x86_64") if row.cls == syscall_ledger.ALLOWED]
    assert len(allowed) > 100
    assert all(row.reason is not None and row.reason.text for row in allowed)


def test_foreign_abis_are_killed_before_the_number(ledger):
    for abi in ("ia32", "x32"):
        rows = ledger.rows(abi)
        assert rows and all(row.cls == syscall_ledger.REFUSED for row in rows), abi
        assert all(row.detail.startswith("KILL_PROCESS") for row in rows), abi
    assert all(row.nr & X32_SYSCALL_BIT for row in ledger.rows("x32"))


def test_open_entries_are_the_known_ones(ledger):
    open_now = set(ledger.open_entries())
    assert not open_now - KNOWN_OPEN, (
        f"new OPEN entries {sorted(open_now - KNOWN_OPEN)}: close them, or add them to "
        "KNOWN_OPEN with the reason"
    )
    assert not KNOWN_OPEN - open_now, (
        f"no longer OPEN: {sorted(KNOWN_OPEN - open_now)}: remove them from KNOWN_OPEN"
    )


def test_command_ledgers_try_each_command_in_the_filter(ledger):
    """F_SETOWN_EX is refused by an argument rule of the filter today: the command ledger must
    show what the filter answers for it, not what the data says."""
    fcntl = {row.name: row for row in ledger.commands["fcntl"]}
    prctl = {row.name: row for row in ledger.commands["prctl"]}
    assert fcntl["F_GETFD"].handling == "ALLOW"
    assert prctl["PR_GET_NAME"].handling == "ALLOW"
    assert fcntl["F_RDLCK"].argument_of == "F_SETLK"
    assert prctl["PR_SET_MM_EXE_FILE"].argument_of == "PR_SET_MM"
    assert ledger_reasons.PRCTL_COMMANDS.keys() <= prctl.keys()
    assert ledger_reasons.FCNTL_COMMANDS.keys() <= fcntl.keys()


def test_docs_syscalls_md_is_what_the_generator_writes(ledger):
    expected = syscall_ledger.render(ledger)
    page = ROOT / syscall_ledger.OUTPUT
    actual = page.read_text() if page.exists() else ""
    assert actual == expected, (
        f"{syscall_ledger.OUTPUT} is out of date: run {syscall_ledger.REGENERATE}"
    )


def test_the_script_checks_and_writes(tmp_path):
    out = tmp_path / "syscalls.md"
    script = ROOT / syscall_ledger.REGENERATE
    env = {**os.environ, "PYTHON": sys.executable}
    written = subprocess.run([str(script), "--output", str(out)], env=env, capture_output=True,
                             text=True, timeout=120)
    assert written.returncode == 0, written.stderr
    checked = subprocess.run([str(script), "--output", str(out), "--check"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stderr
    out.write_text(out.read_text() + "edited by hand\n")
    stale = subprocess.run([str(script), "--output", str(out), "--check"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert stale.returncode == 1
    assert "out of date: run scripts/syscall-ledger" in stale.stderr
