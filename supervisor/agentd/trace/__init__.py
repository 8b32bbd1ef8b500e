"""agentd.trace: one supervised agent tree, stop -> decode -> decide -> enforce.

Owns the loop (``tracer``: one blocking waitpid over every task), the syscall table
(``syscall_table``), decoding registers and tracee memory into actions (``decode``, ``paths``,
``exec_identity``), deciding them with the policy engine (``decide``), carrying out the verdict
(``enforce``, ``errno_probe``), the TOCTOU defence (``pinning``), the SIGSTOP review as a state
of the loop (``hold``), and the wiring of one seccomp stop end to end with its audit records
(``session``).

May import: ``agentd.kernel`` and ``agent_os``. Never ``agentd.run``, ``agentd.netplane``,
``agentd.daemon`` or ``agentd.cli`` (tests/test_layers.py checks it).
"""
