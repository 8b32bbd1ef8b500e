"""exec_identity: what really runs (shebang chain, the loader's program, content identity), and the
other fixes of the same round: unspecified addresses, raw sockets in the baseline, the control
socket's peer checks.

The identifier is run on real files in this process's own view (tid = our pid): copies of the
system's rm and touch, scripts, a memfd, the real dynamic loader. The end-to-end effect (the
directory survives, the program never runs) is proven by tests/escapes/test_escape_names.py.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
from types import SimpleNamespace

import pytest

from agent_os.policy import Pattern
from agentd.kernel import bpf
from agentd.kernel import seccomp
from agentd.trace import exec_identity as X
from agentd.run.registry import RunRegistration
from agentd.trace.decide import Evaluation, containment_of_protected
from agentd.trace.decode import _connect_actions
from agentd.kernel.syscall_numbers import syscall_number

ME = os.getpid()
RM = os.path.realpath(shutil.which("rm") or "/bin/rm")
TOUCH = os.path.realpath(shutil.which("touch") or "/usr/bin/touch")
LOADER = next(iter(sorted(glob.glob("/lib64/ld-linux-x86-64.so.*"))), None)


def _copy(src: str, dst) -> str:
    shutil.copy2(src, dst)
    os.chmod(dst, 0o755)
    return str(dst)


def _script(path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


# --- content identity ---------------------------------------------------------------------------

def test_system_binary_by_its_own_name_is_not_hashed():
    ident = X.ExecIdentifier()
    what = ident.identify(ME, os.path.realpath("/usr/bin/ls"), ["whatever", "-l"])
    assert what.commands == ("ls -l",)
    assert what.spawn_paths == (os.path.realpath("/usr/bin/ls"),)
    assert ident.digests == {} and ident.index.by_size is None  # inode check only


@pytest.mark.parametrize("name", ["ls", "cleanup"])
def test_copy_of_rm_is_named_rm(tmp_path, name):
    copy = _copy(RM, tmp_path / name)
    what = X.ExecIdentifier().identify(ME, copy, [name, "-rf", "precious"])
    assert f"{name} -rf precious" in what.commands
    assert "rm -rf precious" in what.commands
    assert copy in what.spawn_paths and RM in what.spawn_paths


def test_a_different_program_is_not_named_rm(tmp_path):
    copy = _copy(TOUCH, tmp_path / "ls")
    what = X.ExecIdentifier().identify(ME, copy, ["ls", "x"])
    assert not any(line.startswith("rm ") for line in what.commands)
    assert "touch x" in what.commands


def test_copy_of_a_program_in_a_spawn_denied_dir_is_that_program(tmp_path):
    nox = tmp_path / "nox"
    nox.mkdir()
    forbidden = _copy(TOUCH, nox / "forbidden")
    copy = _copy(TOUCH, tmp_path / "f")
    what = X.ExecIdentifier(extra_dirs=[str(nox)]).identify(ME, copy, ["f", "spawned"])
    assert forbidden in what.spawn_paths


def test_spawn_denied_dirs_come_from_deny_patterns(tmp_path):
    (tmp_path / "nox").mkdir()
    layer = SimpleNamespace(patterns=[
        Pattern("process_spawn", f"{tmp_path}/nox/.*", "deny", id="no_nox"),
        Pattern("process_spawn", f"{tmp_path}/allowed/.*", "allow", id="ok"),
        Pattern("file_write", f"{tmp_path}/.*", "deny", id="w")])
    assert X.spawn_denied_dirs(layer) == (f"{tmp_path}/nox",)


def test_memfd_copy_is_read_through_proc(tmp_path):
    fd = os.memfd_create("ls", 0)
    try:
        with open(RM, "rb") as handle:
            os.write(fd, handle.read())
        target = os.readlink(f"/proc/{ME}/fd/{fd}")
        for given_fd in (fd, None):  # execveat(fd, "") or /proc/self/fd/N
            what = X.ExecIdentifier().identify(ME, target, ["ls", "-rf", "x"], fd=given_fd)
            assert "rm -rf x" in what.commands
    finally:
        os.close(fd)


def test_too_large_to_hash_is_said(tmp_path, monkeypatch):
    monkeypatch.setattr(X, "MAX_HASH_BYTES", 1000)
    copy = _copy(RM, tmp_path / "ls")
    what = X.ExecIdentifier().identify(ME, copy, ["ls", "-rf", "x"])
    assert what.commands == ("ls -rf x",)
    assert any("not identified by content" in note for note in what.notes)


def test_a_missing_file_is_left_to_the_kernel(tmp_path):
    what = X.ExecIdentifier().identify(ME, str(tmp_path / "nope"), ["nope", "a"])
    assert what.commands == ("nope a",)


def test_a_file_that_cannot_be_opened_fails_closed(tmp_path):
    with pytest.raises(X.IdentityError):
        X.ExecIdentifier().identify(ME, "/memfd:nothing (deleted)", ["x"])


# --- shebang -----------------------------------------------------------------------------------

def test_parse_shebang_like_the_kernel():
    assert X.parse_shebang(b"#!/bin/sh\n") == ("/bin/sh", None)
    assert X.parse_shebang(b"#!  /bin/rm   -rf  x \nrest") == ("/bin/rm", "-rf  x")
    assert X.parse_shebang(b"\x7fELF") is None
    with pytest.raises(X.IdentityError):
        X.parse_shebang(b"#!" + b"a" * 300)  # the interpreter's name is cut
    with pytest.raises(X.IdentityError):
        X.parse_shebang(b"#!   \n")


def test_shebang_rm_is_judged_as_rm(tmp_path):
    nuke = _script(tmp_path / "nuke", f"#!{RM} -rf\n")
    what = X.ExecIdentifier().identify(ME, nuke, ["./nuke", "precious"])
    assert f"rm -rf {nuke} precious" in what.commands
    assert what.spawn_paths == (nuke, RM)


def test_system_script_by_its_own_name_keeps_its_name():
    """/usr/bin/which-like scripts: judged as `which x` (what allow-lists name), not `sh ...`;
    the interpreter still counts as spawned."""
    script = next((p for p in (os.path.realpath(f"/usr/bin/{n}") for n in
                               ("which", "zgrep", "gunzip", "lesspipe", "ldd"))
                   if os.path.dirname(p) == "/usr/bin" and open(p, "rb").read(2) == b"#!"), None)
    if script is None:
        pytest.skip("no shebang script among which/zgrep/gunzip/lesspipe/ldd in /usr/bin")
    name = os.path.basename(script)
    what = X.ExecIdentifier().identify(ME, script, [name, "x"])
    assert what.commands == (f"{name} x",)
    assert len(what.spawn_paths) >= 2 and what.spawn_paths[0] == script


def test_shebang_interpreter_is_a_spawn_and_chains(tmp_path):
    nox = tmp_path / "nox"
    nox.mkdir()
    forbidden = _copy(TOUCH, nox / "forbidden")
    inner = _script(tmp_path / "inner", f"#!{forbidden}\n")
    outer = _script(tmp_path / "outer", f"#!{inner} arg\n")
    what = X.ExecIdentifier().identify(ME, outer, ["./outer", "spawned"])
    assert what.spawn_paths[:3] == (outer, inner, forbidden)


def test_shebang_loop_is_refused(tmp_path):
    loop = tmp_path / "loop"
    _script(loop, f"#!{loop}\n")
    with pytest.raises(X.IdentityError, match="deeper than"):
        X.ExecIdentifier().identify(ME, str(loop), ["./loop"])


# --- the dynamic loader ------------------------------------------------------------------------

def test_loader_program_options():
    assert X.loader_program(["/bin/rm", "-rf", "x"]) == ("/bin/rm", ["/bin/rm", "-rf", "x"])
    assert X.loader_program(["--library-path", "/l", "--preload", "p.so", "--inhibit-cache",
                             "/bin/rm", "-rf"]) == ("/bin/rm", ["/bin/rm", "-rf"])
    assert X.loader_program(["--argv0", "ls", "/bin/rm", "x"]) == ("/bin/rm", ["ls", "x"])
    assert X.loader_program(["--help"]) == (None, [])
    assert X.loader_program(["--audit"]) == (None, [])
    assert X.is_loader_name("ld-linux-x86-64.so.2") and X.is_loader_name("ld.so")
    assert not X.is_loader_name("old.sol") and not X.is_loader_name("ls")


@pytest.mark.skipif(LOADER is None, reason="no /lib64/ld-linux-x86-64.so.* on this host")
@pytest.mark.parametrize("copied", [False, True])
def test_loader_runs_rm(tmp_path, copied):
    loader = _copy(LOADER, tmp_path / "helper") if copied else os.path.realpath(LOADER)
    what = X.ExecIdentifier().identify(ME, loader, ["ld", "--library-path", "/x", RM, "-rf", "x"])
    assert "rm -rf x" in what.commands
    assert RM in what.spawn_paths


# --- network: the unspecified address ----------------------------------------------------------

def test_unspecified_destination_is_also_loopback():
    targets = lambda t: [a.target for a in _connect_actions(t)]  # noqa: E731
    assert targets("0.0.0.0:80") == ["0.0.0.0:80", "127.0.0.1:80"]
    assert targets("[::]:80") == ["[::]:80", "[::1]:80"]
    assert targets("10.0.0.1:80") == ["10.0.0.1:80"]
    assert targets(None) == []


# --- raw sockets in the baseline ---------------------------------------------------------------

def test_raw_and_packet_sockets_are_refused_in_the_filter():
    program = seccomp.build_filter(seccomp.FilterSpec())

    def socket_call(family: int, kind: int, proto: int = 0) -> int:
        data = bpf.SeccompData(syscall_number("socket"), seccomp.AUDIT_ARCH_X86_64,
                               (family, kind, proto, 0, 0, 0))
        return bpf.run(program, data)

    eperm = 0x00050000 | 1
    nonblock_cloexec = 0o4000 | 0o2000000
    assert socket_call(2, 3 | nonblock_cloexec, 255) == eperm      # raw IPv4
    assert socket_call(10, 3, 17) == eperm                         # raw IPv6
    assert socket_call(17, 3) == eperm and socket_call(17, 2) == eperm  # AF_PACKET
    assert socket_call(2, 10) == eperm                             # (AF_INET, SOCK_PACKET)
    assert socket_call(16, 3) != eperm                             # netlink is SOCK_RAW too
    assert socket_call(2, 2, 1) != eperm                           # ping socket
    assert socket_call(2, 1 | nonblock_cloexec) != eperm           # TCP


# --- the control socket ------------------------------------------------------------------------

def test_control_connection_of_the_agent_is_refused(tmp_path):
    registration = RunRegistration("r1", {}, directory=str(tmp_path))
    registration.open_socket()
    try:
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(registration.sock_path)
            conn, _ = registration.sock.accept()
            with conn:
                registration.agent = lambda pid: pid == ME          # we are "the agent"
                assert "agent's own process tree" in registration.peer_refusal(conn)
                registration.agent = lambda pid: pid == os.getppid()  # our parent is: so are we
                assert registration.peer_refusal(conn) is not None
                registration.agent = lambda pid: False
                assert registration.peer_refusal(conn) is None
    finally:
        registration.close_socket()
    assert not os.path.exists(registration.sock_path)


def test_connections_queued_before_the_hold_are_dropped(tmp_path):
    registration = RunRegistration("r2", {}, directory=str(tmp_path))
    registration.open_socket()
    clients = []
    try:
        for _ in range(3):
            client = socket.socket(socket.AF_UNIX)
            client.connect(registration.sock_path)
            client.sendall(b'{"decision": "allow"}\n')
            clients.append(client)
        assert registration.drop_queued() == 3  # unix connect() queues synchronously
        for client in clients:
            client.settimeout(2)
            try:
                answer = client.recv(100)
            except ConnectionResetError:  # closed with the request unread
                answer = b""
            assert answer == b""  # no decision was taken from it
    finally:
        for client in clients:
            client.close()
        registration.close_socket()


def test_the_agent_may_not_connect_to_the_runs_directory(tmp_path):
    runs = f"{tmp_path}/runs/"
    denied = containment_of_protected(
        Evaluation("network_connect", f"unix:{runs}r1.sock", "allow", "allow", ""), (runs,))
    assert denied is not None and denied.outcome == "block"
    assert denied.pattern_ids == ("agentd:containment",)
    assert containment_of_protected(
        Evaluation("network_connect", f"unix:{tmp_path}/other.sock", "allow", "allow", ""),
        (runs,)) is None
    assert containment_of_protected(
        Evaluation("file_write", f"{runs}x", "allow", "allow", ""), (runs,)) is not None
