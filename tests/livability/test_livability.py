"""Livability: real tools nobody here wrote run under ``agentd run`` and still do their job.

Each workload of ``workloads.WORKLOADS`` (git, make, cargo, pip, compileall, npm, CPython's own
regression tests) runs in a fresh workspace under the built-in ``strict`` and ``permissive``
policies, supervised by ``agentd run --embedded`` and by a private ``agentd daemon``. A test
passes when the workload's check holds (the commits exist, the binary prints its value, the
tests passed) **and** every denial in the audit log is one that ``EXPECTED_DENIALS`` lists for
that workload and policy: a denial nobody decided to accept fails the test with the grouped
listing, even when the tool shrugged it off. A workload whose tool this host lacks is skipped
with the reason. ``tests/livability/run_workload.py`` runs the same workloads by hand.
"""

from __future__ import annotations

from types import MappingProxyType

import pytest

from helpers.agentd_run import needs_tracing
from livability_harness import (PrivateDaemon, Supervision, daemon_unavailable, format_groups,
                                group_records, new_workspace, run_workload, unexpected_denials)
from workloads import WORKLOADS, missing_tools

pytestmark = [pytest.mark.livability, needs_tracing, pytest.mark.needs_ptrace]

# (workload, policy) -> the (action type, pattern id) denials accepted for it: refusals the
# policy means, which the tool survives. Anything else a workload meets is a finding. Calls the
# kernel itself fails (agentd:kernel_refuses: fchmod of a closed descriptor, open(""), a symlink
# loop) are no policy matter and never listed (livability_harness.kernel_refusals).
_CPYTHON_OUTSIDE_WORKSPACE = frozenset({
    # strict writes only in the workspace and TMPDIR. CPython's tests try writes elsewhere and
    # expect them to fail or skip: mkdir("/") (test_pathlib, test_os: EEXIST, which the agent
    # gets: errno_probe), sqlite3.connect("/foo/bar/bla/23534/mydb.db") (test_sqlite3: ENOENT),
    # and test_zipfile writes (then unlinks) test_zipfile.try next to the installed stdlib,
    # where it skips when it cannot.
    ("file_write", "block_other_writes"),
    ("file_delete", "block_other_deletes"),
    # Without a network plane (the suite runs --network off) the host's loopback is the host's:
    # glibc's getaddrinfo connects UDP sockets to [::]:8000 and 0.0.0.0:8000 to sort addresses
    # (test_httpservers; it carries on), and test_xmlrpc connects to 127.0.0.1:9999, where
    # nothing listens, expecting ECONNREFUSED, which it gets. The servers the tests start
    # themselves are reached (agentd:own_network).
    ("network_connect", "block_internal_connects"),
})
EXPECTED_DENIALS: MappingProxyType = MappingProxyType({
    ("cpython", "strict"): _CPYTHON_OUTSIDE_WORKSPACE,
})


@pytest.fixture(scope="session")
def livability_daemon(tmp_path_factory):
    why = daemon_unavailable()
    if why:
        pytest.skip(f"no private agentd daemon: {why}")
    with PrivateDaemon(tmp_path_factory.mktemp("livability-daemon")) as daemon:
        yield daemon


@pytest.mark.parametrize("supervisor", ["embedded", "daemon"])
@pytest.mark.parametrize("policy", ["strict", "permissive"])
@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda workload: workload.name)
def test_workload_lives(workload, policy, supervisor, tmp_path, request):
    missing = missing_tools(workload)
    if missing:
        pytest.skip(f"{workload.name}: not on this host: {', '.join(missing)}")
    daemon = request.getfixturevalue("livability_daemon") if supervisor == "daemon" else None
    workspace = new_workspace(tmp_path, workload)
    outcome = run_workload(workload, workspace, Supervision(policy, "enforce", daemon))
    unexpected = unexpected_denials(outcome.records,
                                    EXPECTED_DENIALS.get((workload.name, policy), ()))
    problems = []
    if outcome.failure:
        problems.append(f"{workload.name} under {outcome.supervision.label} failed its check "
                        f"({outcome.seconds:.1f} s):\n{outcome.failure}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected denial(s) (add a justified entry to "
                        f"EXPECTED_DENIALS or fix the policy):\n"
                        f"{format_groups(group_records(unexpected))}")
    if not outcome.records:
        problems.append("the audit log holds no record of this run: the run proved nothing")
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)
