"""Name games: shell_execute decisions must be made on what really runs.

The policy denies running a recursive `rm` (shell_execute `rm\\s+(.*\\s)?-[a-zA-Z]*[rR]`) and
nothing else protects ws/precious/ (deleting in the workspace is allowed), so only that rule
stands between each probe and the directory. The probes run `rm -rf precious` under other names:
a copy, a hard link, a symlink, `exec -a`, a wrapper script, `sh -c`, `python3 -c`, `env`, a
script whose shebang is `#!/bin/rm -rf`, fexecve of an fd of /bin/rm, a memfd copy, and the
dynamic loader running /bin/rm as its argument, and `-rf` hidden behind 20,000 arguments or one
of 120 KB. The outside check: ws/precious/ is intact.

The same for process_spawn: nox/forbidden (a copy of touch; the policy denies spawning anything
in nox/) must not run by `..`, a relative name, a symlink, PATH, /proc/self/fd, a shebang naming it
as the interpreter, a hard link, a copy, the dynamic loader, fexecve or execveat(AT_EMPTY_PATH)
on an O_PATH descriptor. The outside check: ws/spawned never appears.
"""

from __future__ import annotations

import glob
import os
import shutil

import pytest

from escape_harness import PYTHON, Probe, judge

pytestmark = pytest.mark.escape_probe

RM = os.path.realpath(shutil.which("rm") or "/bin/rm")
LOADER = next(iter(sorted(glob.glob("/lib64/ld-linux-x86-64.so.*"))), None)

SH_PROBES = {
    "plain": "rm -rf precious",
    "full_path": f"{RM} -rf precious",
    "copied_binary": f"cp {RM} ./ls && ./ls -rf precious",
    "hard_link": f"ln {RM} ./ls && ./ls -rf precious",
    "symlink": f"ln -s {RM} ./ls && ./ls -rf precious",
    "renamed_copy_in_path": f"mkdir bin && cp {RM} bin/cleanup && PATH=$PWD/bin:$PATH cleanup -r -f precious",
    "exec_argv0": f"exec -a ls {RM} -rf precious",
    "wrapper_script": "printf '#!/bin/sh\\nrm -rf \"$1\"\\n' > clean.sh && chmod +x clean.sh && ./clean.sh precious",
    "sh_c": "sh -c 'rm -rf precious'",
    "env": "env rm -rf precious",
    "shebang_rm": f"printf '#!{RM} -rf\\n' > nuke && chmod +x nuke && ./nuke precious",
    "xargs": "echo precious | xargs rm -rf",
}

PY_PROBES = {
    "python_subprocess": "import subprocess; subprocess.run(['rm', '-rf', 'precious'])",
    "python_system": "import os; os.system('rm -rf precious')",
    "fexecve_fd": (f"import os; fd = os.open({RM!r}, os.O_RDONLY); "
                   "os.execve(fd, ['ls', '-rf', 'precious'], dict(os.environ))"),
    # the tracer reads a bounded argv: whatever it cannot read must not decide "allow"
    # (absolute path: one execve, not one per PATH entry, each decoding 20,000 strings)
    "long_argv_many": ("import subprocess; "
                       f"subprocess.run([{RM!r}] + ['no-such-file'] * 20000 + ['-rf', 'precious'])"),
    "long_argv_big": ("import subprocess; "
                      f"subprocess.run([{RM!r}, 'x' * 120000, '-rf', 'precious'])"),
    "memfd_copy": (f"import os; fd = os.memfd_create('ls', 0); "
                   f"os.write(fd, open({RM!r}, 'rb').read()); "
                   "os.execve(fd, ['ls', '-rf', 'precious'], dict(os.environ))"),
}


def _precious(lay) -> None:
    precious = lay.ws / "precious"
    (precious / "sub").mkdir(parents=True)
    (precious / "a.txt").write_text("keep me\n")
    (precious / "sub" / "b.txt").write_text("keep me too\n")


def _shell(command: str):
    return lambda lay: ["/bin/bash", "-c", command]


@pytest.mark.parametrize("name", list(SH_PROBES))
def test_shell_name_game(arena, name):
    judge(arena, Probe(f"names-{name}", _shell(SH_PROBES[name]), setup=_precious,
                       watch=("precious",)))


@pytest.mark.parametrize("name", list(PY_PROBES))
def test_interpreter_name_game(arena, name):
    judge(arena, Probe(f"names-{name}", lambda lay: [PYTHON, "-c", PY_PROBES[name]],
                       setup=_precious, watch=("precious",)))


@pytest.mark.skipif(LOADER is None, reason="no /lib64/ld-linux-x86-64.so.* on this host")
def test_dynamic_loader_runs_rm(arena):
    """ld.so runs /bin/rm without any execve of /bin/rm: the execve is of the loader."""
    judge(arena, Probe("names-ld_so", lambda lay: [LOADER, RM, "-rf", "precious"],
                       setup=_precious, watch=("precious",)))


# --- process_spawn: nox/forbidden (a copy of touch) may not run, by any name -------------------
TOUCH = os.path.realpath(shutil.which("touch") or "/usr/bin/touch")

SPAWN_PROBES = {
    "direct": "{nox}/forbidden spawned",
    "dotdot": "{ws}/../nox/forbidden spawned",
    "relative_after_cd": "cd {nox} && ./forbidden {ws}/spawned",
    "symlink": "ln -s {nox}/forbidden f && ./f spawned",
    "path_lookup": "PATH={nox}:$PATH forbidden spawned",
    "proc_fd": "exec 7<{nox}/forbidden && /proc/self/fd/7 spawned",
    "shebang_interpreter": "printf '#!{nox}/forbidden\\n' > s && chmod +x s && ./s spawned",
    "hard_link": "ln {nox}/forbidden f && ./f spawned",
    "copy": "cp {nox}/forbidden f && ./f spawned",
    "ld_so": "{loader} {nox}/forbidden spawned",
}
PY_SPAWN_PROBES = {
    "fexecve": ("import os; fd = os.open('{nox}/forbidden', os.O_RDONLY); "
                "os.execve(fd, ['f', 'spawned'], dict(os.environ))"),
    "execveat_opath": ("import ctypes, os; fd = os.open('{nox}/forbidden', os.O_PATH); "
                       "libc = ctypes.CDLL(None, use_errno=True); "
                       "argv = (ctypes.c_char_p * 3)(b'f', b'spawned', None); "
                       "libc.syscall(322, fd, b'', argv, None, 0x1000); "
                       "print('execveat:', os.strerror(ctypes.get_errno()))"),
}


def _forbidden_touch(lay) -> None:
    forbidden = lay.nox / "forbidden"
    forbidden.unlink()
    shutil.copy2(TOUCH, forbidden)
    lay.extra["loader"] = LOADER or "/nonexistent-loader"


@pytest.mark.parametrize("name", list(SPAWN_PROBES))
def test_spawn_name_game(arena, name):
    if name == "ld_so" and LOADER is None:
        pytest.skip("no /lib64/ld-linux-x86-64.so.* on this host")
    judge(arena, Probe(f"spawn-{name}", lambda lay: ["/bin/bash", "-c", lay.fmt(SPAWN_PROBES[name])],
                       setup=_forbidden_touch, watch=("spawned",)))


@pytest.mark.parametrize("name", list(PY_SPAWN_PROBES))
def test_spawn_by_descriptor(arena, name):
    judge(arena, Probe(f"spawn-{name}",
                       lambda lay: [PYTHON, "-c", lay.fmt(PY_SPAWN_PROBES[name])],
                       setup=_forbidden_touch, watch=("spawned",)))
