"""Path tricks: reach a protected file by a path that does not look like it.

Usage: python3 paths.py MODE ROOT. ROOT is the arena (see escape_harness.py): ROOT/victim/secret
is read-protected, everything outside ROOT/ws is write-protected. A read probe prints what it
read (the harness looks for the victim's marker in the output); a write probe tries to create or
change something outside the workspace (the harness compares the arena before and after). The
links the probes use are made by the probe itself, inside the workspace, unless the test made
them beforehand (the deep tree). Exit status: 0 when the trick worked, 1 when it was refused.
"""

import ctypes
import os
import socket
import sys

MODE, ROOT = sys.argv[1], sys.argv[2]
WS = os.path.join(ROOT, "ws")
VICTIM = os.path.join(ROOT, "victim")
SECRET = os.path.join(VICTIM, "secret")
KEEP = os.path.join(ROOT, "keep")
libc = ctypes.CDLL(None, use_errno=True)


def show(fd: int) -> None:
    data = os.read(fd, 4096)
    os.close(fd)
    sys.stdout.write(data.decode(errors="replace"))


def read_path(path: str, dir_fd: int | None = None) -> None:
    show(os.open(path, os.O_RDONLY, dir_fd=dir_fd))


def dirfd(path: str, flags: int = os.O_RDONLY | os.O_DIRECTORY) -> int:
    return os.open(path, flags)


def symlink_file():            # ws/link -> victim/secret
    os.symlink(SECRET, os.path.join(WS, "link"))
    read_path(os.path.join(WS, "link"))


def symlink_relative():        # ws/link -> ../victim/secret (a relative target)
    os.symlink("../victim/secret", os.path.join(WS, "link"))
    read_path(os.path.join(WS, "link"))


def symlink_dir():             # ws/dlink -> victim; read ws/dlink/secret
    os.symlink(VICTIM, os.path.join(WS, "dlink"))
    read_path(os.path.join(WS, "dlink", "secret"))


def symlink_chain():           # ws/a -> ws/b -> ws/c -> victim/secret
    os.symlink(SECRET, os.path.join(WS, "c"))
    os.symlink("c", os.path.join(WS, "b"))
    os.symlink(os.path.join(WS, "b"), os.path.join(WS, "a"))
    read_path(os.path.join(WS, "a"))


def symlink_dotdot():          # ws/l -> victim/sub; ws/l/../secret is victim/secret to the
    os.symlink(os.path.join(VICTIM, "sub"), os.path.join(WS, "l"))  # kernel, ws/secret to a
    read_path(os.path.join(WS, "l", "..", "secret"))                # lexical normaliser


def dotdot():                  # ws/../victim/secret
    read_path(os.path.join(WS, "..", "victim", "secret"))


def dotdot_deep():             # ws/x/../../victim/./secret (x exists)
    os.mkdir(os.path.join(WS, "x"))
    read_path(os.path.join(WS, "x", "..", "..", "victim", ".", "secret"))


def slashes():                 # //ROOT///victim//secret
    read_path("/" + ROOT.replace("/", "//") + "///victim//secret")


def dirfd_root():              # openat(fd of "/", "ROOT/victim/secret" without the leading /)
    read_path(SECRET.lstrip("/"), dir_fd=dirfd("/"))


def dirfd_arena():             # openat(fd of ROOT opened with O_PATH, "victim/secret")
    read_path("victim/secret", dir_fd=dirfd(ROOT, os.O_PATH | os.O_DIRECTORY))


def dirfd_victim():            # openat(O_PATH fd of victim/, "secret")
    read_path("secret", dir_fd=dirfd(VICTIM, os.O_PATH | os.O_DIRECTORY))


def chdir_relative():          # chdir(ROOT); open("victim/secret")
    os.chdir(ROOT)
    read_path("victim/secret")


def fchdir_relative():         # fchdir(O_PATH fd of victim); open("secret")
    os.fchdir(dirfd(VICTIM, os.O_PATH | os.O_DIRECTORY))
    read_path("secret")


def proc_self_root():          # /proc/self/root/ROOT/victim/secret
    read_path("/proc/self/root" + SECRET)


def proc_pid_root():           # /proc/<pid>/root/... and /proc/thread-self/root/...
    read_path(f"/proc/{os.getpid()}/root" + SECRET)


def proc_thread_self_root():
    read_path("/proc/thread-self/root" + SECRET)


def proc_self_cwd():           # chdir(ROOT); /proc/self/cwd/victim/secret
    os.chdir(ROOT)
    read_path("/proc/self/cwd/victim/secret")


def proc_self_fd_dir():        # /proc/self/fd/N/secret, N an O_PATH fd of victim/
    fd = dirfd(VICTIM, os.O_PATH | os.O_DIRECTORY)
    read_path(f"/proc/self/fd/{fd}/secret")


def proc_self_fd_file():       # re-open an O_PATH fd of the secret itself through /proc
    fd = os.open(SECRET, os.O_PATH)
    read_path(f"/proc/self/fd/{fd}")


def dev_fd_dir():              # /dev/fd/N/secret
    fd = dirfd(VICTIM, os.O_PATH | os.O_DIRECTORY)
    read_path(f"/dev/fd/{fd}/secret")


def dev_fd_file():             # /dev/fd/N, N an O_PATH fd of the secret
    fd = os.open(SECRET, os.O_PATH)
    read_path(f"/dev/fd/{fd}")


def proc_root_of_parent():     # /proc/<ppid>/cwd: the parent's cwd is the arena's workspace...
    read_path(f"/proc/{os.getppid()}/root" + SECRET)   # ... its root is "/": same file


def openat2_beneath():         # openat2 with RESOLVE_IN_ROOT: "/" means the dirfd
    import struct
    fd = dirfd(ROOT, os.O_PATH | os.O_DIRECTORY)
    how = struct.pack("QQQ", os.O_RDONLY, 0, 0x10)      # RESOLVE_IN_ROOT
    buf = ctypes.create_string_buffer(how)
    path = ctypes.create_string_buffer(b"/victim/secret")
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(437, fd, path, buf, len(how))
    if ret < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    show(ret)


def newline_symlink():         # a workspace name with a newline pointing out
    name = os.path.join(WS, "ok.txt\n" + SECRET.replace("/", "_"))
    os.symlink(SECRET, name)
    read_path(name)


def newline_sibling():         # mkdir("<ws>\n"): a sibling of the workspace whose name ends in
    os.mkdir(WS + "\n")          # a newline; "<ws>(/.*)?$" matches it (Python's $ before "\n")


def newline_sibling_file():    # open("<ws>\n", O_CREAT): the same with a file
    os.close(os.open(WS + "\n", os.O_CREAT | os.O_WRONLY, 0o644))


def newline_inside_name():     # keep/"x\n<ws>/y": a newline, then text that looks like the ws
    os.close(os.open(os.path.join(KEEP, "x\n" + WS.replace("/", "_")), os.O_CREAT | os.O_WRONLY,
                     0o644))


def arrow_rename():            # rename("<ws>/a -> <ws>/b", keep/arrived.txt): the file_move
    src_dir = os.path.join(WS, "a -> ") + WS     # target "<ws>/a -> <ws>/b -> <keep>/..."
    os.makedirs(src_dir)                         # matches "<ws>/.* -> <ws>/.*"
    src = os.path.join(src_dir, "b")
    open(src, "w").write("x\n")
    os.rename(src, os.path.join(KEEP, "arrived.txt"))


def bind_unix_outside():       # bind() creates a socket file: ROOT/keep/agent.sock
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(os.path.join(KEEP, "agent.sock"))


def bind_unix_via_symlink():   # bind to ws/dlink/agent.sock where ws/dlink -> keep/
    os.symlink(KEEP, os.path.join(WS, "dlink"))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(os.path.join(WS, "dlink", "agent.sock"))


def bind_unix_relative():      # chdir(keep); bind("agent.sock")
    os.chdir(KEEP)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("agent.sock")


def bind_unix_short_addrlen():  # chdir(keep); sun_path "agent.sock/../../ws/x", addrlen covers
    os.chdir(KEEP)                # only "agent.sock": the kernel creates keep/agent.sock
    decoy = b"agent.sock/../../ws/x"
    raw = socket.AF_UNIX.to_bytes(2, "little") + decoy + b"\0" * (108 - len(decoy))
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    buf = ctypes.create_string_buffer(raw, len(raw))
    if libc.bind(s.fileno(), buf, 2 + len(b"agent.sock")) != 0:
        raise OSError(ctypes.get_errno(), "bind")


def write_via_symlink():       # ws/link -> keep/file.txt; open O_WRONLY|O_TRUNC
    os.symlink(os.path.join(KEEP, "file.txt"), os.path.join(WS, "link"))
    fd = os.open(os.path.join(WS, "link"), os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"pwned\n")


def create_via_dangling_symlink():  # ws/link -> keep/new.txt (missing); O_CREAT follows it
    os.symlink(os.path.join(KEEP, "new.txt"), os.path.join(WS, "link"))
    os.close(os.open(os.path.join(WS, "link"), os.O_CREAT | os.O_WRONLY, 0o644))


def create_dotdot_dirfd():     # mkdirat(fd of ws, "../keep/newdir")
    os.mkdir("../keep/newdir", dir_fd=dirfd(WS))


def deep_relative():           # the test made ws/d/d/.../d/s -> victim/secret, > PATH_MAX deep;
    depth = int(os.environ["DEEP_LEVELS"])                  # walk down by chdir, open "s"
    name = os.environ["DEEP_NAME"]
    os.chdir(WS)
    for _ in range(depth):
        os.chdir(name)
    read_path("s")


def deep_dirfd():              # the same through a chain of dirfds: openat(fd_deep, "s")
    depth = int(os.environ["DEEP_LEVELS"])
    name = os.environ["DEEP_NAME"]
    fd = dirfd(WS)
    for _ in range(depth):
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
    read_path("s", dir_fd=fd)


def deep_dotdot():             # from the bottom, a relative "../../..(xN)/victim/secret": short
    depth = int(os.environ["DEEP_LEVELS"])                  # text, but the cwd is > PATH_MAX
    name = os.environ["DEEP_NAME"]
    os.chdir(WS)
    for _ in range(depth):
        os.chdir(name)
    read_path("../" * (depth + 1) + "victim/secret")


def deep_write():              # from the bottom of the deep tree, O_CREAT "w" -> keep/deep.txt
    depth = int(os.environ["DEEP_LEVELS"])
    name = os.environ["DEEP_NAME"]
    os.chdir(WS)
    for _ in range(depth):
        os.chdir(name)
    os.close(os.open("w", os.O_CREAT | os.O_WRONLY, 0o644))


def long_dot_prefix():         # "/./././...(2,000 times)<secret>": near PATH_MAX, still valid
    path = "/" + "./" * ((4000 - len(SECRET)) // 2) + SECRET.lstrip("/")
    read_path(path)


def nonutf8_symlink():         # ws/<bytes not valid UTF-8> -> victim/secret
    name = os.path.join(WS.encode(), b"\xff\xfe-link")
    os.symlink(SECRET.encode(), name)
    show(os.open(name, os.O_RDONLY))


def nonutf8_dir_symlink():     # ws/<0xff> -> victim/; read ws/<0xff>/secret
    name = os.path.join(WS.encode(), b"\xff")
    os.symlink(VICTIM.encode(), name)
    show(os.open(name + b"/secret", os.O_RDONLY))


def symlink_to_proc_self():    # ws/p -> /proc/self; chdir(ROOT); read ws/p/cwd/victim/secret:
    os.symlink("/proc/self", os.path.join(WS, "p"))       # "self" must mean the agent, not
    os.chdir(ROOT)                                          # the supervisor reading the link
    read_path("ws/p/cwd/victim/secret")


def proc_pid_cwd():            # chdir(ROOT); /proc/<own pid>/cwd/victim/secret
    os.chdir(ROOT)
    read_path(f"/proc/{os.getpid()}/cwd/victim/secret")


def _in_thread(fn):
    import threading
    errors = []

    def run():
        try:
            fn()
        except OSError as exc:
            errors.append(exc)
    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def thread_own_cwd():          # a thread unshares CLONE_FS: its cwd is not the process's
    def run():                 # (/proc/TGID/cwd still shows the workspace)
        if libc.unshare(0x200) != 0:                        # CLONE_FS
            raise OSError(ctypes.get_errno(), "unshare(CLONE_FS)")
        os.chdir(ROOT)
        read_path("victim/secret")
    os.chdir(WS)
    _in_thread(run)


def thread_own_fd_table():     # a thread unshares CLONE_FILES: its fd N is not the process's
    ws_fd = dirfd(WS)                                       # fd N = the workspace, for all
    def run():
        if libc.unshare(0x400) != 0:                        # CLONE_FILES
            raise OSError(ctypes.get_errno(), "unshare(CLONE_FILES)")
        root_fd = dirfd(ROOT)
        os.dup2(root_fd, ws_fd)                             # in this thread only: N = ROOT
        read_path("victim/secret", dir_fd=ws_fd)
    _in_thread(run)


MODES = {name: fn for name, fn in globals().items()
         if callable(fn) and fn.__module__ == "__main__" and name not in
         ("show", "read_path", "dirfd", "main")}


def main() -> int:
    try:
        MODES[MODE]()
    except OSError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    return 0


sys.exit(main())
