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


# --- the per-user cache on disk (run/filter_cache.py) -------------------------------------------

def _fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("AGENTD_POLICY_CACHE", raising=False)
    monkeypatch.setattr(supervise, "_PREPARED", {})


def test_a_later_process_takes_the_compiled_program_from_disk(monkeypatch, tmp_path):
    import subprocess
    import sys

    _fresh(monkeypatch, tmp_path)
    compiled = supervise.prepare_filter(None, traced_syscalls())
    assert type(compiled).__name__ == "PreparedFilter"
    code = ("import sys; from agentd.run import supervise; "
            "from agentd.trace.syscall_table import traced_syscalls; "
            "p = supervise.prepare_filter(None, traced_syscalls()); "
            "sys.stdout.buffer.write(type(p).__name__.encode() + b' ' + "
            "str('agentd.kernel.bpf' in sys.modules).encode() + b' ' + p.blob.hex().encode())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True,
                          env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "xdg")))
    kind, compiler_loaded, blob = done.stdout.decode().split()
    assert (kind, compiler_loaded) == ("InstallableFilter", "False")
    assert bytes.fromhex(blob) == compiled.blob
    # the ledger and the tests read the instructions back from the bytes
    from agentd.kernel.seccomp_install import InstallableFilter
    assert InstallableFilter(compiled.blob).program == compiled.program


def test_another_profile_or_traced_set_is_compiled_not_taken(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    profile = tmp_path / "profile.json"
    shutil.copy(supervise.DEFAULT_PROFILE, profile)
    traced = traced_syscalls()
    first = supervise.prepare_filter(str(profile), traced)
    monkeypatch.setattr(supervise, "_PREPARED", {})
    assert type(supervise.prepare_filter(str(profile), traced)).__name__ == "InstallableFilter"
    document = json.loads(profile.read_text())
    document["syscalls"].append({"names": ["sync"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1})
    profile.write_text(json.dumps(document))
    monkeypatch.setattr(supervise, "_PREPARED", {})
    changed = supervise.prepare_filter(str(profile), traced)
    assert type(changed).__name__ == "PreparedFilter" and changed.blob != first.blob
    monkeypatch.setattr(supervise, "_PREPARED", {})
    fewer = supervise.prepare_filter(str(profile), traced - {"mkdir"})
    assert type(fewer).__name__ == "PreparedFilter" and fewer.blob != changed.blob


def _entries(tmp_path):
    return sorted((tmp_path / "xdg" / "agentd" / "policies").glob("*.bpf"))


def test_an_entry_others_could_write_or_a_broken_one_is_not_taken(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    compiled = supervise.prepare_filter(None, traced_syscalls())
    [entry] = _entries(tmp_path)
    os.chmod(entry, 0o666)
    monkeypatch.setattr(supervise, "_PREPARED", {})
    assert type(supervise.prepare_filter(None, traced_syscalls())).__name__ == "PreparedFilter"
    [entry] = _entries(tmp_path)  # stored again, 0600
    assert os.stat(entry).st_mode & 0o777 == 0o600
    entry.write_bytes(entry.read_bytes()[:-3])  # not whole instructions
    monkeypatch.setattr(supervise, "_PREPARED", {})
    again = supervise.prepare_filter(None, traced_syscalls())
    assert type(again).__name__ == "PreparedFilter" and again.blob == compiled.blob
    os.chmod(entry.parent, 0o755)  # a directory others may read: not ours alone
    monkeypatch.setattr(supervise, "_PREPARED", {})
    assert type(supervise.prepare_filter(None, traced_syscalls())).__name__ == "PreparedFilter"


def test_the_cache_switch_turns_it_off(monkeypatch, tmp_path):
    _fresh(monkeypatch, tmp_path)
    monkeypatch.setenv("AGENTD_POLICY_CACHE", "0")
    supervise.prepare_filter(None, traced_syscalls())
    assert _entries(tmp_path) == []
