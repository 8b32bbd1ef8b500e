"""agentd.kernel: the kernel bindings, one module per subsystem, and nothing about policies.

Owns the raw interfaces agentd drives: ptrace requests (``ptrace``), seccomp-bpf filters and their
assembler/interpreter (``seccomp``, ``bpf``), Landlock rulesets (``landlock``), the x86_64
syscall numbers and kernel constants (``syscall_numbers``, ``consts``), reads and writes of a
tracee's memory (``tracee_memory``), the one reader of ``/proc`` (``procfs``), cgroup v2
(``cgroups``), the capability bounding set (``capabilities``), the agent's own IPC namespace
(``ipc_namespace``), the ioctl request codes that change files (``ioctl_ledger``, data) and statx
birth times (``statx``).

May import: the standard library, python-ptrace's bindings, and other ``agentd.kernel``
modules. Never ``agentd.trace``, ``agentd.run``, ``agentd.netplane``, ``agentd.daemon`` or
``agentd.cli`` (tests/test_layers.py checks it).
"""
