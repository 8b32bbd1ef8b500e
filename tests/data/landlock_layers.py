"""Count the Landlock layers this process can still add (the kernel allows 16 per process):
under a Landlock domain one fewer succeeds. Prints "layers added N"."""
import ctypes, os, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
attr = ctypes.create_string_buffer(struct.pack("QQQ", 1 << 0, 0, 0), 24)  # handle FS_EXECUTE
n = 0
for _ in range(20):
    fd = libc.syscall(444, attr, 8, 0)
    if fd < 0:
        print("create failed", ctypes.get_errno()); break
    r = libc.syscall(446, fd, 0)
    os.close(fd)
    if r != 0:
        print("restrict stopped:", os.strerror(ctypes.get_errno())); break
    n += 1
print("layers added", n)
