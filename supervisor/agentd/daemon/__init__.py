"""agentd.daemon.service: the root daemon that runs agents for other users (``agentd.service``).

Owns the daemon's event loop (``service``), its configuration (``config``) and the client side
of its socket (``client``).

May import: ``agentd.kernel``, ``agentd.trace``, ``agentd.netplane``, ``agentd.run`` and
``agent_os``. Never ``agentd.cli.main`` (tests/test_layers.py checks it).
"""
