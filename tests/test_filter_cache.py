"""What a process that forks runs (the daemon) prepares once: the compiled seccomp filter, reused
within the process (``run.supervise.prepare_filter``), and the modules a run imports late
(``run.assembly.warm_imports``). The filter:
the daemon compiles its profile's once (``warm_filter``) and every forked supervisor finds it;
a profile that changed on disk, another traced set or the IPC setting compile anew."""

from __future__ import annotations

import json
import os
import shutil

from agentd.run import supervise
from agentd.trace.syscall_table import traced_syscalls


def test_the_same_profile_is_compiled_once_and_a_changed_one_again(tmp_path):
    profile = tmp_path / "profile.json"
    shutil.copy(supervise.DEFAULT_PROFILE, profile)
    traced = traced_syscalls()
    first = supervise.prepare_filter(str(profile), traced)
    assert supervise.prepare_filter(str(profile), traced) is first
    assert supervise.prepare_filter(str(profile), traced, shared_ipc=True) is not first

    document = json.loads(profile.read_text())
    document["syscalls"].append({"names": ["sync"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1})
    profile.write_text(json.dumps(document))
    os.utime(profile, ns=(1, 1))  # another mtime even within the clock's granularity
    changed = supervise.prepare_filter(str(profile), traced)
    assert changed is not first
    assert changed.program != first.program


def test_warm_filter_fills_what_a_run_then_takes(tmp_path):
    profile = tmp_path / "warm.json"
    shutil.copy(supervise.DEFAULT_PROFILE, profile)
    supervise.warm_filter(str(profile))
    key = supervise._filter_key(str(profile), traced_syscalls(), False)
    assert supervise.prepare_filter(str(profile), traced_syscalls()) is supervise._PREPARED[key]


def test_warm_imports_loads_what_a_run_imports_late():
    import subprocess
    import sys

    modules = ("agent_os.prefixes", "agent_os.stack", "agentd.kernel.capabilities",
               "agentd.kernel.ipc_namespace")
    code = ("import sys; from agentd.run.assembly import warm_imports; warm_imports(); "
            f"print(all(m in sys.modules for m in {modules!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "True"
