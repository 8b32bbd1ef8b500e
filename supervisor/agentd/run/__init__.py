"""agentd.run: assembling and supervising one run, for ``agentd run`` and the daemon alike.

Owns the start of an agent under the tracer and its supervision to the end (``supervise``), the
one assembly of a run (``assembly``: policy, audit log, registration, network plane, Landlock,
child steps), the sandbox plan (``sandbox_plan``: which layer enforces what), the policy cache
(``policy_cache``) and the runs directory with its control socket (``registry``).

May import: ``agentd.kernel``, ``agentd.trace``, ``agentd.netplane`` and ``agent_os``. Never
``agentd.daemon.service`` or ``agentd.cli.main`` (tests/test_layers.py checks it).
"""
