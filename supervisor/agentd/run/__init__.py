"""agentd.run: assembling and supervising one run, for ``agentd run`` and the daemon alike.

Owns the start of an agent under the tracer and its supervision to the end (``supervise``), the
one assembly of a run that ``agentd run`` and the daemon's per-run supervisor share
(``assembly``: session, network plane, child steps, registration, signals, the end), what
``agentd run`` alone adds to it (``standalone``: policy cache, audit log, Landlock, the terminal),
the sandbox plan (``sandbox_plan``: which layer enforces what), the policy cache
(``policy_cache``), the runs directory with its control socket (``registry``) and the syscall
ledger of docs/syscalls.md (``syscall_ledger``, with its reasons in ``ledger_reasons``).

May import: ``agentd.kernel``, ``agentd.trace``, ``agentd.netplane`` and ``agent_os``. Never
``agentd.daemon`` or ``agentd.cli`` (tests/test_layers.py checks it).
"""
