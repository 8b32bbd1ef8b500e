"""The VM suite: tests that need a whole machine of their own (systemd as PID 1, agentd.service,
root, real users), run by scripts/vm-test inside a throwaway QEMU VM where vm/guest/run-tests
sets AGENTD_IN_VM=1. Anywhere else every test here is skipped with the reason, so the host's
normal pytest run never touches the host's own systemd. Any test_*.py added here runs in the VM.
"""

import os

import pytest

IN_VM = os.environ.get("AGENTD_IN_VM") == "1"


@pytest.fixture(autouse=True)
def _only_in_the_test_vm():
    if not IN_VM:
        pytest.skip("VM suite: runs only inside the test VM (scripts/vm-test sets AGENTD_IN_VM=1)")
