"""agentd.cli: the command line, one module per command group.

Owns the console entry (``entry``: ``agentd run`` takes a fast path without click, its command
line read by ``run_fast``), the click group (``main``) and the commands:
``run``/``ps``/``resume``/``kill`` (``run``), the daemon's (``daemon``), ``policy`` (``policy``)
and ``audit`` (``audit``).

May import everything below it: ``agentd.daemon``, ``agentd.run``, ``agentd.netplane``,
``agentd.trace``, ``agentd.kernel`` and ``agent_os``.
"""
