"""Test-wide defaults.

Agents started by the tests run with ``--network off`` unless a test asks for the network plane
(``AGENTD_NETWORK=plane`` or ``--network plane``): most tests check connect()-level control
against listeners on the host's loopback, which an agent inside its own network namespace could
not reach at all (so a denial would prove nothing). The plane has its own tests
(tests/test_netplane_*.py, tests/test_run_netplane.py).
"""

import os

os.environ.setdefault("AGENTD_NETWORK", "off")
