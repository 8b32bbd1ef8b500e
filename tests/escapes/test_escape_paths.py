"""Path tricks: symlinks out of the workspace, `..`, dirfds, chdir, /proc/self/{root,cwd,fd},
/dev/fd, openat2 RESOLVE_IN_ROOT, bind() of a unix socket path, names with newlines and arrows,
names that are not UTF-8, a workspace symlink to /proc/self, a thread with its own cwd
(unshare(CLONE_FS)) or its own descriptor table (unshare(CLONE_FILES)), a path of ~4,000 bytes,
and paths longer than PATH_MAX reached through chdir and dirfd chains.

Each probe is one mode of probes/paths.py. The read probes print what they read: the outside
check is that the victim's marker never reaches the agent's output. The write probes aim outside
the workspace: the outside check is that the arena outside the workspace is unchanged.
"""

from __future__ import annotations

import os

import pytest

from escape_harness import PROBE_DIR, PYTHON, Probe, judge

pytestmark = pytest.mark.escape_probe

PATHS = str(PROBE_DIR / "paths.py")

READS = ["symlink_file", "symlink_relative", "symlink_dir", "symlink_chain", "symlink_dotdot",
         "dotdot", "dotdot_deep", "slashes", "dirfd_root", "dirfd_arena", "dirfd_victim",
         "chdir_relative", "fchdir_relative", "proc_self_root", "proc_pid_root",
         "proc_thread_self_root", "proc_self_cwd", "proc_self_fd_dir", "proc_self_fd_file",
         "dev_fd_dir", "dev_fd_file", "proc_root_of_parent", "openat2_beneath",
         "newline_symlink", "long_dot_prefix", "nonutf8_symlink", "nonutf8_dir_symlink",
         "symlink_to_proc_self", "proc_pid_cwd", "thread_own_cwd", "thread_own_fd_table"]
WRITES = ["newline_sibling", "newline_sibling_file", "newline_inside_name", "arrow_rename",
          "bind_unix_outside", "bind_unix_via_symlink", "bind_unix_relative",
          "bind_unix_short_addrlen",
          "write_via_symlink", "create_via_dangling_symlink", "create_dotdot_dirfd"]
DEEP = ["deep_relative", "deep_dirfd", "deep_dotdot", "deep_write"]

DEEP_NAME = "d" * 200
DEEP_LEVELS = 24          # 24 * 201 = 4824 bytes below the workspace: longer than PATH_MAX


def _probe(mode: str, **more) -> Probe:
    return Probe(f"path-{mode}", lambda lay: [PYTHON, PATHS, mode, str(lay.root)], **more)


@pytest.mark.parametrize("mode", READS + WRITES)
def test_path_trick(arena, mode):
    judge(arena, _probe(mode))


def _make_deep_tree(lay) -> None:
    """ws/d.../(x24)/s -> victim/secret and .../w -> keep/deep.txt (dangling), made with dirfds
    (no single path here exceeds PATH_MAX)."""
    fd = os.open(lay.ws, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(DEEP_LEVELS):
        os.mkdir(DEEP_NAME, dir_fd=fd)
        inner = os.open(DEEP_NAME, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.symlink(str(lay.secret), "s", dir_fd=fd)
    os.symlink(str(lay.keep / "deep.txt"), "w", dir_fd=fd)
    os.close(fd)


@pytest.mark.parametrize("mode", DEEP)
def test_path_longer_than_path_max(arena, mode):
    judge(arena, _probe(mode, setup=_make_deep_tree,
                        env={"DEEP_NAME": DEEP_NAME, "DEEP_LEVELS": str(DEEP_LEVELS)}))
