"""Every door to a protected file is shut under `agentd run`: each probe is one real syscall
(tests/helpers/try_syscall.c) aimed at a victim directory the policy protects. The sandboxed run
must fail with EACCES and leave the victim intact; the same probe without the sandbox must
succeed on a fresh copy, so a probe that proves nothing fails loudly.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from helpers.agentd_run import PYTHON, deny, needs_tracing, run_agentd, write_policy
from helpers.cbuild import try_syscall  # noqa: F401  (a pytest fixture)
from agentd.kernel.syscall_numbers import syscall_number

pytestmark = [needs_tracing, pytest.mark.needs_ptrace]

AT_FDCWD = "-100"
EACCES = 13


@pytest.fixture
def setup(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    policy = write_policy(tmp_path, [
        deny("protect_w", "file_write", r".*/victim(/.*)?$"),
        deny("protect_d", "file_delete", r".*/victim(/.*)?$"),
        deny("protect_m", "file_move", r".*/victim/.*"),
        deny("protect_c", "file_chmod", r".*/victim/.*"),
        deny("protect_r", "file_read", r".*/victim/secret$"),
    ])
    return tmp_path, ws, policy


def make_victim(base):
    victim = base / "victim"
    victim.mkdir()
    (victim / "file").write_text("original\n")
    os.chmod(victim / "file", 0o644)
    os.utime(victim / "file", (1_000_000, 1_000_000))
    (victim / "secret").write_text("s3cret\n")
    return victim


def intact(victim) -> bool:
    f = victim / "file"
    return (sorted(os.listdir(victim)) == ["file", "secret"] and f.read_text() == "original\n"
            and (os.stat(f).st_mode & 0o7777) == 0o644 and os.stat(f).st_mtime == 1_000_000
            and not os.listxattr(f))


# name -> argv after the syscall number; {v} is the victim dir, {w} the workspace
PROBES = {
    "creat_new": ("openat", [AT_FDCWD, "str:{v}/new", str(os.O_CREAT | os.O_WRONLY), "0644"]),
    "open_write": ("open", ["str:{v}/file", str(os.O_WRONLY | os.O_TRUNC)]),
    "read_secret": ("openat", [AT_FDCWD, "str:{v}/secret", "0"]),
    "creat": ("creat", ["str:{v}/new2", "0644"]),
    "truncate": ("truncate", ["str:{v}/file", "0"]),
    "unlink": ("unlink", ["str:{v}/file"]),
    "unlinkat": ("unlinkat", [AT_FDCWD, "str:{v}/file", "0"]),
    "rename_out": ("rename", ["str:{v}/file", "str:{w}/stolen"]),
    "rename_in": ("renameat2", [AT_FDCWD, "str:{w}/mine", AT_FDCWD, "str:{v}/file", "0"]),
    "link": ("link", ["str:{v}/file", "str:{v}/hard"]),
    "symlink": ("symlink", ["str:/etc/passwd", "str:{v}/sym"]),
    "mkdir": ("mkdir", ["str:{v}/dir", "0755"]),
    "mknod": ("mknodat", [AT_FDCWD, "str:{v}/fifo", str(0o10644), "0"]),
    "chmod": ("chmod", ["str:{v}/file", "0777"]),
    "fchmodat2": ("fchmodat2", [AT_FDCWD, "str:{v}/file", "0777", "0"]),
    "chown": ("chown", ["str:{v}/file", "1", "1"]),
    "setxattr": ("setxattr", ["str:{v}/file", "str:user.x", "str:v", "1", "0"]),
    "utimensat": ("utimensat", [AT_FDCWD, "str:{v}/file", "0", "0"]),
    "rmdir_victim": ("rmdir", ["str:{v}"]),
    # path tricks: the same file through other names
    "via_proc_self_cwd": ("openat", [AT_FDCWD, "str:/proc/self/cwd/../victim/file",
                                     str(os.O_WRONLY | os.O_TRUNC)]),
    "via_dotdot": ("open", ["str:../ws/../victim/./file", str(os.O_WRONLY | os.O_TRUNC)]),
    "via_symlink_in_ws": ("open", ["str:{w}/innocent", str(os.O_WRONLY | os.O_TRUNC)]),
}


def _argv(helper, name, victim, ws):
    syscall, args = PROBES[name]
    return [str(helper), str(syscall_number(syscall))] + [
        a.format(v=victim, w=ws) for a in args]


@pytest.mark.parametrize("name", sorted(PROBES))
def test_door_is_shut(setup, try_syscall, name):
    base, ws, policy = setup
    (ws / "mine").write_text("mine\n")
    victim = make_victim(base)
    os.symlink(victim / "file", ws / "innocent")
    result = run_agentd(policy, _argv(try_syscall, name, victim, ws), cwd=ws)
    assert result.returncode == EACCES, (result.stdout, result.stderr)
    assert intact(victim)
    assert not (ws / "stolen").exists()
    assert any(r["decision"] == "deny" for r in result.records)

    # control: the same probe without the sandbox does the deed
    control = base / "control"
    control.mkdir()
    (control / "ws").mkdir()
    (control / "ws" / "mine").write_text("mine\n")
    control_victim = make_victim(control)
    os.symlink(control_victim / "file", control / "ws" / "innocent")
    done = subprocess.run(_argv(try_syscall, name, control_victim, control / "ws"),
                          cwd=control / "ws", capture_output=True, text=True)
    if name == "rmdir_victim":
        assert done.returncode == 39  # ENOTEMPTY: it reached the kernel
    else:
        assert done.returncode == 0, (name, done.stdout)


def test_allowed_writes_still_work(setup):
    base, ws, policy = setup
    result = run_agentd(policy, ["sh", "-c", "echo ok > out.txt && mv out.txt o2 && rm o2 && "
                                 "mkdir d && touch d/x && chmod 600 d/x && echo fine"], cwd=ws)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "fine"


def test_threads_and_processes_are_all_traced(setup):
    base, ws, policy = setup
    victim = make_victim(base)
    code = f"""
import os, threading, errno
def attempt(tag):
    try:
        open({str(victim)!r} + '/' + tag, 'w'); print(tag, 'WROTE')
    except PermissionError: print(tag, 'EACCES')
t = threading.Thread(target=attempt, args=('thread',)); t.start(); t.join()
pid = os.fork()
if pid == 0:
    attempt('forked'); os._exit(0)
os.waitpid(pid, 0)
pid = os.posix_spawn({PYTHON!r}, [{PYTHON!r}, '-c', "open({str(victim)!r} + '/spawned', 'w')"], os.environ)
os.waitpid(pid, 0)
"""
    result = run_agentd(policy, [PYTHON, "-c", code], cwd=ws)
    assert sorted(result.stdout.split("\n")[:2]) == ["forked EACCES", "thread EACCES"]
    assert intact(victim)


def test_daemonised_grandchild_is_still_traced(setup):
    base, ws, policy = setup
    victim = make_victim(base)
    report = ws / "report.txt"
    code = f"""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(0.5)            # outlive both parents
        try:
            open({str(victim)!r} + '/daemon', 'w'); r = 'WROTE'
        except PermissionError: r = 'EACCES'
        open({str(report)!r}, 'w').write(r)
        os._exit(0)
    os._exit(0)
os._exit(0)
"""
    result = run_agentd(policy, [PYTHON, "-c", code], cwd=ws)
    assert result.returncode == 0
    assert report.read_text() == "EACCES"
    assert intact(victim)


VFORK_C = r"""
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int status;
    pid_t pid = vfork();
    if (pid == 0) {
        int fd = open(argv[1], O_WRONLY | O_CREAT, 0644);
        _exit(fd < 0 ? errno : 0);
    }
    waitpid(pid, &status, 0);
    printf("%d\n", WEXITSTATUS(status));
    return 0;
}
"""


def test_vfork_child_is_traced(setup, tmp_path):
    import shutil
    if not shutil.which("gcc"):
        pytest.skip("no gcc on this host")
    base, ws, policy = setup
    victim = make_victim(base)
    source = tmp_path / "vf.c"
    source.write_text(VFORK_C)
    subprocess.run(["gcc", "-O2", "-o", str(tmp_path / "vf"), str(source)], check=True)
    result = run_agentd(policy, [str(tmp_path / "vf"), str(victim / "x")], cwd=ws)
    assert result.stdout.strip() == str(EACCES)
    assert intact(victim)
