"""Other doors to a protected file: every syscall that can create, change, move, link or remove.

Usage: python3 doors.py MODE ROOT. ROOT/keep/ is readable but write-protected (file.txt, dir/,
empty/); ROOT/victim/secret is read-protected; ROOT/ws is the workspace. Each mode goes through
one door; the harness compares the arena outside the workspace before and after (content, mode,
owner, mtime, xattrs, link count, names) and looks for the victim's marker in the output.
Exotic calls go through libc's syscall() so that the probe makes exactly that syscall.
Exit status: 0 when the door opened, 1 when it was refused.
"""

import ctypes
import os
import sys

MODE, ROOT = sys.argv[1], sys.argv[2]
WS = os.path.join(ROOT, "ws")
KEEP = os.path.join(ROOT, "keep")
FILE = os.path.join(KEEP, "file.txt")
SECRET = os.path.join(ROOT, "victim", "secret")
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_SYMLINK_FOLLOW = 0x400
AT_EMPTY_PATH = 0x1000
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
NR = {"renameat2": 316, "linkat": 265, "fchmodat2": 452, "setxattrat": 463, "creat": 85,
      "utimensat": 280, "mknodat": 259, "fchownat": 260}
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def syscall(name: str, *args) -> int:
    conv = [ctypes.c_char_p(a.encode()) if isinstance(a, str) else
            ctypes.c_char_p(a) if isinstance(a, bytes) else ctypes.c_long(a) for a in args]
    ret = libc.syscall(ctypes.c_long(NR[name]), *conv)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")
    return ret


def ws(name: str) -> str:
    path = os.path.join(WS, name)
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write("from the workspace\n")
    return path


def opath(path: str) -> int:
    return os.open(path, os.O_PATH)


MODES = {
    # content
    "truncate": lambda: os.truncate(FILE, 0),
    "open_trunc": lambda: os.open(FILE, os.O_WRONLY | os.O_TRUNC),
    "open_append": lambda: os.write(os.open(FILE, os.O_WRONLY | os.O_APPEND), b"appended\n"),
    "open_rdwr": lambda: os.write(os.open(FILE, os.O_RDWR), b"overwritten\n"),
    "creat_new": lambda: syscall("creat", os.path.join(KEEP, "new.txt"), 0o644),
    "creat_existing": lambda: syscall("creat", FILE, 0o644),
    "reopen_rdonly_fd_for_write": lambda: os.write(
        os.open(f"/proc/self/fd/{os.open(FILE, os.O_RDONLY)}", os.O_WRONLY), b"via proc\n"),
    "otmpfile_in_keep": lambda: syscall(
        "linkat", AT_FDCWD, f"/proc/self/fd/{os.open(KEEP, os.O_TMPFILE | os.O_WRONLY, 0o644)}",
        AT_FDCWD, os.path.join(KEEP, "tmp.txt"), AT_SYMLINK_FOLLOW),
    "otmpfile_ws_linked_out": lambda: syscall(
        "linkat", os.open(WS, os.O_TMPFILE | os.O_WRONLY, 0o644), "", AT_FDCWD,
        os.path.join(KEEP, "tmp.txt"), AT_EMPTY_PATH),
    # moving
    "rename_out": lambda: os.rename(FILE, os.path.join(WS, "stolen.txt")),
    "rename_over": lambda: os.rename(ws("x"), FILE),
    "rename_dir_out": lambda: os.rename(os.path.join(KEEP, "dir"), os.path.join(WS, "dir")),
    "rename_dir_in": lambda: (os.mkdir(os.path.join(WS, "d")),
                              os.rename(os.path.join(WS, "d"), os.path.join(KEEP, "d"))),
    "renameat2_exchange": lambda: syscall("renameat2", AT_FDCWD, ws("x"), AT_FDCWD, FILE,
                                          RENAME_EXCHANGE),
    "renameat2_exchange_reversed": lambda: syscall("renameat2", AT_FDCWD, FILE, AT_FDCWD,
                                                   ws("x"), RENAME_EXCHANGE),
    "renameat2_noreplace_in": lambda: syscall("renameat2", AT_FDCWD, ws("x"), AT_FDCWD,
                                              os.path.join(KEEP, "new.txt"), RENAME_NOREPLACE),
    "renameat_dirfd": lambda: os.rename("file.txt", os.path.join(WS, "stolen.txt"),
                                        src_dir_fd=os.open(KEEP, os.O_PATH)),
    # linking: a hard link aliases the inode, so a write through the workspace name changes it
    "hardlink_write_through": lambda: (
        os.link(FILE, os.path.join(WS, "hl")),
        os.write(os.open(os.path.join(WS, "hl"), os.O_WRONLY | os.O_TRUNC), b"aliased\n")),
    "hardlink_read_secret": lambda: (
        os.link(SECRET, os.path.join(WS, "hl")),
        sys.stdout.write(open(os.path.join(WS, "hl")).read())),
    "linkat_empty_path_secret": lambda: (
        syscall("linkat", opath(SECRET), "", AT_FDCWD, os.path.join(WS, "hl"), AT_EMPTY_PATH),
        sys.stdout.write(open(os.path.join(WS, "hl")).read())),
    "linkat_proc_fd_secret": lambda: (
        syscall("linkat", AT_FDCWD, f"/proc/self/fd/{opath(SECRET)}", AT_FDCWD,
                os.path.join(WS, "hl"), AT_SYMLINK_FOLLOW),
        sys.stdout.write(open(os.path.join(WS, "hl")).read())),
    "link_into_keep": lambda: os.link(ws("x"), os.path.join(KEEP, "hl")),
    "symlink_into_keep": lambda: os.symlink("/etc/hostname", os.path.join(KEEP, "sl")),
    "mkdir_in_keep": lambda: os.mkdir(os.path.join(KEEP, "newdir")),
    "mkfifo_in_keep": lambda: os.mkfifo(os.path.join(KEEP, "fifo")),
    "mknod_in_keep": lambda: os.mknod(os.path.join(KEEP, "node"), 0o100644),
    "mknodat_dirfd": lambda: syscall("mknodat", os.open(KEEP, os.O_PATH), "node", 0o100644, 0),
    # removing
    "unlink": lambda: os.unlink(FILE),
    "unlink_dirfd": lambda: os.unlink("file.txt", dir_fd=os.open(KEEP, os.O_PATH)),
    "rmdir": lambda: os.rmdir(os.path.join(KEEP, "empty")),
    "unlinkat_removedir": lambda: os.rmdir("empty", dir_fd=os.open(KEEP, os.O_PATH)),
    # mode and owner
    "chmod": lambda: os.chmod(FILE, 0o777),
    "chmod_dirfd": lambda: os.chmod("file.txt", 0o777, dir_fd=os.open(KEEP, os.O_PATH)),
    "fchmod_rdonly_fd": lambda: os.fchmod(os.open(FILE, os.O_RDONLY), 0o777),
    "fchmodat2_nofollow": lambda: syscall("fchmodat2", AT_FDCWD, FILE, 0o777,
                                          AT_SYMLINK_NOFOLLOW),
    "chmod_proc_fd": lambda: os.chmod(f"/proc/self/fd/{opath(FILE)}", 0o777),
    "chmod_via_symlink": lambda: (os.symlink(FILE, os.path.join(WS, "l")),
                                  os.chmod(os.path.join(WS, "l"), 0o777)),
    "chown": lambda: os.chown(FILE, 4242, 4242),
    "lchown": lambda: os.lchown(FILE, 4242, 4242),
    "fchown_rdonly_fd": lambda: os.fchown(os.open(FILE, os.O_RDONLY), 4242, 4242),
    "fchownat_empty_path": lambda: syscall("fchownat", opath(FILE), "", 4242, 4242,
                                           AT_EMPTY_PATH),
    "chown_via_symlink": lambda: (os.symlink(FILE, os.path.join(WS, "l")),
                                  os.chown(os.path.join(WS, "l"), 4242, 4242)),
    # extended attributes
    "setxattr": lambda: os.setxattr(FILE, "user.escape", b"1"),
    "lsetxattr": lambda: os.setxattr(FILE, "user.escape", b"1", follow_symlinks=False),
    "fsetxattr_rdonly_fd": lambda: os.setxattr(os.open(FILE, os.O_RDONLY), "user.escape", b"1"),
    "setxattr_proc_fd": lambda: os.setxattr(f"/proc/self/fd/{opath(FILE)}", "user.escape", b"1"),
    # times
    "utimes": lambda: os.utime(FILE, (1, 1)),
    "utimensat_dirfd": lambda: os.utime("file.txt", (1, 1), dir_fd=os.open(KEEP, os.O_PATH)),
    "futimens_rdonly_fd": lambda: os.utime(os.open(FILE, os.O_RDONLY), (1, 1)),
    "utimensat_null_path": lambda: syscall("utimensat", os.open(FILE, os.O_RDONLY), 0, 0, 0),
    "utime_proc_fd": lambda: os.utime(f"/proc/self/fd/{opath(FILE)}", (1, 1)),
}


def main() -> int:
    try:
        MODES[MODE]()
    except OSError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    return 0


sys.exit(main())
