"""Name games: shell_execute decisions must be made on what really runs.

The policy denies running a recursive `rm` (shell_execute `rm\\s+(.*\\s)?-[a-zA-Z]*[rR]`) and
nothing else protects ws/precious/ (deleting in the workspace is allowed), so only that rule
stands between each probe and the directory. The probes run `rm -rf precious` under other names:
a copy, a hard link, a symlink, `exec -a`, a wrapper script, `sh -c`, `python3 -c`, `env`, a
script whose shebang is `#!/bin/rm -rf`, fexecve of an fd of /bin/rm, a memfd copy, and the
dynamic loader running /bin/rm as its argument. The outside check: ws/precious/ is intact.
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
