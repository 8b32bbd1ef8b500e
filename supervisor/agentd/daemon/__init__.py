"""agentd.daemon: the root daemon that runs agents for other users (``agentd.service``).

Owns the daemon's event loop and its table of runs (``service``), the socket protocol shared by
the daemon and its clients (``protocol``: pydantic models for every request and answer), the
client side of the socket (``client``), the per-run supervisor process it forks (``supervisor``),
its policies as validated snapshots (``policy_store``), its configuration (``config``) and what
it says to systemd (``systemd``: sd_notify, the journal).

May import: ``agentd.kernel``, ``agentd.trace``, ``agentd.netplane``, ``agentd.run`` and
``agent_os``. Never ``agentd.cli`` (tests/test_layers.py checks it).
"""
