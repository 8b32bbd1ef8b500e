"""Other doors to the same file: truncate, open flags, creat, O_TMPFILE + linkat, the rename
family (with RENAME_EXCHANGE), the link family (a hard link aliases the inode; AT_EMPTY_PATH and
/proc/self/fd re-link a descriptor), mknod, mkdir, symlink, unlink, rmdir, chmod/chown (through
dirfds, descriptors, /proc/self/fd and symlinks), xattrs and utimes.

Each probe is one mode of probes/doors.py aimed at the write-protected ROOT/keep/ or the
read-protected ROOT/victim/secret. The outside check: nothing about the arena outside the
workspace changed (names, content, mode, owner, mtime, xattrs, link count) and the victim's
marker never reached the agent's output.
"""

from __future__ import annotations

import pytest

from escape_harness import PROBE_DIR, PYTHON, Probe, judge

pytestmark = pytest.mark.escape_probe

DOORS = str(PROBE_DIR / "doors.py")
MODES = [
    "truncate", "open_trunc", "open_append", "open_rdwr", "creat_new", "creat_existing",
    "reopen_rdonly_fd_for_write", "otmpfile_in_keep", "otmpfile_ws_linked_out",
    "rename_out", "rename_over", "rename_dir_out", "rename_dir_in", "renameat2_exchange",
    "renameat2_exchange_reversed", "renameat2_noreplace_in", "renameat_dirfd",
    "hardlink_write_through", "hardlink_read_secret", "linkat_empty_path_secret",
    "linkat_proc_fd_secret", "link_into_keep", "symlink_into_keep", "mkdir_in_keep",
    "mkfifo_in_keep", "mknod_in_keep", "mknodat_dirfd",
    "unlink", "unlink_dirfd", "rmdir", "unlinkat_removedir",
    "chmod", "chmod_dirfd", "fchmod_rdonly_fd", "fchmodat2_nofollow", "chmod_proc_fd",
    "chmod_via_symlink", "chown", "lchown", "fchown_rdonly_fd", "fchownat_empty_path",
    "chown_via_symlink",
    "setxattr", "lsetxattr", "fsetxattr_rdonly_fd", "setxattr_proc_fd",
    "utimes", "utimensat_dirfd", "futimens_rdonly_fd", "utimensat_null_path", "utime_proc_fd",
]


@pytest.mark.parametrize("mode", MODES)
def test_door(arena, mode):
    judge(arena, Probe(f"door-{mode}", lambda lay: [PYTHON, DOORS, mode, str(lay.root)]))
