"""agentd: the enforcement side of Agent OS.

The policy engine (package ``agent_os``) decides; this package makes the decision the law of a
process tree: a ptrace + seccomp-bpf tracer, the syscall -> action table, the daemon and the CLI.
Modules here may import ``agent_os``; ``agent_os`` never imports ``agentd``.
"""

__version__ = "0.1.0"
