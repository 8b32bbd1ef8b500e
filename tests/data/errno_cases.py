"""The errno fidelity agent: run each case (one syscall the kernel fails) and print a JSON map
case -> errno (0 when it succeeded). tests/test_errno_fidelity.py runs it natively and under
``agentd run`` and compares: where the kernel fails a call, the agent must see the kernel's own
errno, whether agentd let the call through or refused it.

Usage: errno_cases.py [CASE ...]   (run in a scratch directory: it creates its fixtures there)
"""

import ctypes
import json
import os
import sys

libc = ctypes.CDLL(None, use_errno=True)
NR_OPENAT = 257
AT_FDCWD = -100
CLOSED_FD = 917          # never opened by this program
BAD_ADDRESS = 1          # an unmapped pointer


def raw_syscall(nr, *args):
    if libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args]) < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def outcome(call):
    try:
        call()
    except OSError as exc:
        return exc.errno
    return 0


os.makedirs("d", exist_ok=True)
with open("file", "w"):
    pass
for name, target in (("loop", "loop"), ("link", "file"), ("dangling", "nowhere/x")):
    if not os.path.lexists(name):
        os.symlink(target, name)
opath_fd = os.open("file", os.O_PATH)
file_fd = os.open("file", os.O_RDONLY)

CASES = {
    # bad descriptors
    "fchmod_closed_fd": lambda: os.fchmod(CLOSED_FD, 0o644),
    "fchmod_negative_fd": lambda: os.fchmod(-1, 0o644),
    "fchmod_o_path_fd": lambda: os.fchmod(opath_fd, 0o644),
    "fchown_closed_fd": lambda: os.fchown(CLOSED_FD, 0, 0),
    "utime_closed_fd": lambda: os.utime(CLOSED_FD, None),
    "openat_closed_dirfd": lambda: os.open("x", os.O_RDONLY, dir_fd=CLOSED_FD),
    "unlinkat_closed_dirfd": lambda: os.unlink("x", dir_fd=CLOSED_FD),
    "openat_file_as_dirfd": lambda: os.open("x", os.O_RDONLY, dir_fd=file_fd),
    # paths the kernel cannot walk
    "open_empty_path": lambda: os.open("", os.O_RDONLY),
    "chmod_empty_path": lambda: os.chmod("", 0o644),
    "open_symlink_loop": lambda: os.open("loop", os.O_RDONLY),
    "open_path_too_long": lambda: os.open("a" * 5000, os.O_RDONLY),
    "open_name_too_long": lambda: os.open("b" * 300, os.O_RDONLY),
    "open_bad_address": lambda: raw_syscall(NR_OPENAT, AT_FDCWD, BAD_ADDRESS, 0, 0),
    "open_not_a_directory": lambda: os.open("file/x", os.O_RDONLY),
    "open_dangling_symlink": lambda: os.open("dangling", os.O_RDONLY),
    # what open itself checks
    "open_directory_for_writing": lambda: os.open("d", os.O_WRONLY),
    "open_o_directory_on_file": lambda: os.open("file", os.O_RDONLY | os.O_DIRECTORY),
    "open_o_nofollow_on_symlink": lambda: os.open("link", os.O_RDONLY | os.O_NOFOLLOW),
    # missing files and existing names
    "unlink_missing": lambda: os.unlink("missing"),
    "rmdir_missing": lambda: os.rmdir("missing-dir"),
    "mkdir_missing_parent": lambda: os.mkdir("nope/a/b"),
    "mkdir_existing": lambda: os.mkdir("d"),
    "rename_missing": lambda: os.rename("missing", "x"),
    "chmod_missing": lambda: os.chmod("missing", 0o644),
    "truncate_missing": lambda: os.truncate("missing", 0),
    "link_missing": lambda: os.link("missing", "new-link"),
    "exec_missing": lambda: os.execv("./missing", ["missing"]),
    "exec_directory": lambda: os.execv("./d", ["d"]),
    # refused by strict's policy, failed by the kernel anyway
    "read_missing_etc_file": lambda: os.open("/etc/agentd-no-such.conf", os.O_RDONLY),
    "read_missing_proc_file": lambda: os.open("/proc/agentd-no-such-entry", os.O_RDONLY),
    "mkdir_existing_etc": lambda: os.mkdir("/etc"),
    "create_under_missing_dir": lambda: os.open("/agentd-no-such-dir/sub/f",
                                                os.O_WRONLY | os.O_CREAT, 0o644),
    "unlink_missing_outside": lambda: os.unlink("/agentd-no-such-file"),
    "exec_missing_outside": lambda: os.execv("/agentd-no-such-dir/prog", ["prog"]),
}

if __name__ == "__main__":
    wanted = sys.argv[1:] or list(CASES)
    print(json.dumps({name: outcome(CASES[name]) for name in wanted}))
