"""Network probes: reach a loopback listener the test started, by one call.

Usage: python3 net.py MODE TARGET [PORT]. TARGET is an IP address (v4, v6, or v4-mapped v6) with
PORT, or a unix socket path ("@name" for the abstract namespace). Every address the tests pass
is a loopback listener of their own; nothing here ever aims elsewhere. The outside check is the
listener's: it must have accepted or received nothing.

Modes: tcp_connect, tcp_fastopen (sendto with MSG_FASTOPEN: connect and data in one call),
udp_sendto, udp_sendmsg, udp_connect_send, udp_sendmmsg, unix_connect, unix_dgram_sendto,
unix_dgram_sendmsg, unix_connect_via_symlink (a workspace symlink to the socket),
unix_connect_relative (chdir to the socket's directory, connect to its bare name),
unix_connect_proc_cwd (/proc/self/cwd/NAME after that chdir), unix_connect_short_addrlen
(after chdir to TARGET's directory, sun_path holds "NAME/../../ws/x" but addrlen covers only
NAME: the kernel connects to NAME),
raw_hdrincl_udp (a raw IPv4
socket with IP_HDRINCL: the sockaddr says 127.0.0.2, the header we wrote says TARGET; needs
root; stays on `lo`).
Exit status: 0 when the call went through, 1 when it was refused.
"""

import ctypes
import os
import socket
import sys

MODE, TARGET = sys.argv[1], sys.argv[2]
PORT = int(sys.argv[3]) if len(sys.argv) > 3 else 0
DATA = b"escape-probe"


def inet():
    family = socket.AF_INET6 if ":" in TARGET else socket.AF_INET
    address = (TARGET, PORT, 0, 0) if family == socket.AF_INET6 else (TARGET, PORT)
    return family, address


def unix_address():
    return "\0" + TARGET[1:] if TARGET.startswith("@") else TARGET


def sendmmsg(sock, address_bytes: bytes) -> None:
    """sendmmsg(2) of one datagram to a raw sockaddr (Python has no binding for it)."""
    class iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]

    class msghdr(ctypes.Structure):
        _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                    ("iov", ctypes.POINTER(iovec)), ("iovlen", ctypes.c_size_t),
                    ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                    ("flags", ctypes.c_int)]

    class mmsghdr(ctypes.Structure):
        _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]

    payload = ctypes.create_string_buffer(DATA)
    name = ctypes.create_string_buffer(address_bytes, len(address_bytes))
    vec = iovec(ctypes.cast(payload, ctypes.c_void_p), len(DATA))
    msg = mmsghdr(msghdr(ctypes.cast(name, ctypes.c_void_p), len(address_bytes),
                         ctypes.pointer(vec), 1, None, 0, 0), 0)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.sendmmsg(sock.fileno(), ctypes.byref(msg), 1, 0) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sendmmsg: {os.strerror(err)}")


def sockaddr_in(family, address) -> bytes:
    import struct
    if family == socket.AF_INET:
        return struct.pack("=H", socket.AF_INET) + struct.pack("!H", address[1]) + \
            socket.inet_pton(socket.AF_INET, address[0]) + b"\0" * 8
    return struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", address[1], 0) + \
        socket.inet_pton(socket.AF_INET6, address[0]) + struct.pack("=I", 0)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4_udp_packet(dst: str, port: int) -> bytes:
    """A complete IPv4 + UDP datagram from 127.0.0.1 to dst:port (UDP checksum 0 = none)."""
    import struct
    udp = struct.pack("!HHHH", 40000, port, 8 + len(DATA), 0) + DATA
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0x1234, 0, 64,
                         socket.IPPROTO_UDP, 0, socket.inet_aton("127.0.0.1"),
                         socket.inet_aton(dst))
    header = header[:10] + _checksum(header).to_bytes(2, "big") + header[12:]
    return header + udp


def run() -> None:
    if MODE == "raw_hdrincl_udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
        s.sendto(ipv4_udp_packet(TARGET, PORT), ("127.0.0.2", 0))
        return
    if MODE.startswith("tcp") or MODE.startswith("udp"):
        family, address = inet()
        kind = socket.SOCK_STREAM if MODE.startswith("tcp") else socket.SOCK_DGRAM
        s = socket.socket(family, kind)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if MODE == "tcp_connect":
            s.connect(address)
            s.sendall(DATA)
        elif MODE == "tcp_fastopen":
            s.sendto(DATA, socket.MSG_FASTOPEN, address)
        elif MODE == "udp_sendto":
            s.sendto(DATA, address)
        elif MODE == "udp_sendmsg":
            s.sendmsg([DATA], [], 0, address)
        elif MODE == "udp_connect_send":
            s.connect(address)
            s.send(DATA)
        elif MODE == "udp_sendmmsg":
            sendmmsg(s, sockaddr_in(family, address))
        else:
            raise SystemExit(f"unknown mode {MODE}")
        return
    address = unix_address()
    if MODE == "unix_connect":
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(address)
    elif MODE == "unix_dgram_sendto":
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(DATA, address)
    elif MODE == "unix_dgram_sendmsg":
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendmsg([DATA], [], 0, address)
    elif MODE == "unix_connect_via_symlink":
        link = os.path.join(os.getcwd(), "s.sock")
        os.symlink(address, link)
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(link)
    elif MODE == "unix_connect_relative":
        os.chdir(os.path.dirname(address))
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(os.path.basename(address))
    elif MODE == "unix_connect_short_addrlen":
        os.chdir(os.path.dirname(address))       # relative names keep the decoy short
        name = os.path.basename(address)
        decoy = (name + "/../../ws/x").encode()
        raw = socket.AF_UNIX.to_bytes(2, "little") + decoy + b"\0" * (108 - len(decoy))
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(raw, len(raw))
        if libc.connect(sock.fileno(), buf, 2 + len(name)) != 0:    # no NUL: length-bound
            err = ctypes.get_errno()
            raise OSError(err, f"connect: {os.strerror(err)}")
    elif MODE == "unix_connect_proc_cwd":
        os.chdir(os.path.dirname(address))
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(
            "/proc/self/cwd/" + os.path.basename(address))
    else:
        raise SystemExit(f"unknown mode {MODE}")


try:
    run()
except OSError as exc:
    print(f"refused: {exc}", file=sys.stderr)
    sys.exit(1)
print("went through")
