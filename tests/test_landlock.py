"""Landlock bindings against the real kernel: a forked child applies a ruleset and tries to get out.

Each kernel test forks a child that applies a ruleset prepared by the parent, then tries the deed
and reports the errno of every attempt through a pipe; the test then looks at the effect outside
(the file does not exist, the victim is intact, the listener saw nothing). The same probe also
runs without the ruleset, so a probe that proves nothing fails loudly.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from agentd.kernel import landlock as ll
from helpers.landlock_child import attempt, run_in_child, write_file

SUPPORT = ll.probe()
needs_landlock = pytest.mark.skipif(not SUPPORT.available, reason=SUPPORT.describe())


def needs_abi(abi: int):
    return pytest.mark.skipif(SUPPORT.abi < abi, reason=f"needs Landlock ABI {abi}, "
                                                        f"this kernel: {SUPPORT.describe()}")


WRITE_ALL = (ll.fs_rights(ll.LATEST_ABI) & ~(ll.LANDLOCK_ACCESS_FS_EXECUTE
                                             | ll.LANDLOCK_ACCESS_FS_READ_FILE
                                             | ll.LANDLOCK_ACCESS_FS_READ_DIR
                                             | ll.LANDLOCK_ACCESS_FS_IOCTL_DEV))


# --- pure: rights per ABI, fitting, probing errors ------------------------------------------------

def test_rights_per_abi() -> None:
    assert ll.fs_rights(0) == 0
    assert not ll.fs_rights(1) & ll.LANDLOCK_ACCESS_FS_REFER
    assert ll.fs_rights(2) & ll.LANDLOCK_ACCESS_FS_REFER
    assert not ll.fs_rights(2) & ll.LANDLOCK_ACCESS_FS_TRUNCATE
    assert ll.fs_rights(3) & ll.LANDLOCK_ACCESS_FS_TRUNCATE
    assert not ll.fs_rights(4) & ll.LANDLOCK_ACCESS_FS_IOCTL_DEV
    assert ll.fs_rights(5) & ll.LANDLOCK_ACCESS_FS_IOCTL_DEV
    assert ll.fs_rights(99) == ll.fs_rights(5) == (1 << 16) - 1
    assert ll.net_rights(3) == 0 and ll.net_rights(4) == ll.ALL_NET_RIGHTS
    assert ll.scopes(5) == 0 and ll.scopes(6) == ll.ALL_SCOPES
    assert ll.right_names(ll.LANDLOCK_ACCESS_FS_REFER | ll.LANDLOCK_ACCESS_FS_TRUNCATE) == [
        "refer", "truncate"]


def test_fit_to_abi_drops_what_the_kernel_does_not_know_and_says_so() -> None:
    spec = ll.RulesetSpec(
        handled_fs=ll.LANDLOCK_ACCESS_FS_WRITE_FILE | ll.LANDLOCK_ACCESS_FS_REFER
        | ll.LANDLOCK_ACCESS_FS_TRUNCATE,
        handled_net=ll.LANDLOCK_ACCESS_NET_CONNECT_TCP, scoped=ll.LANDLOCK_SCOPE_SIGNAL,
        path_rules=(ll.PathRule("/tmp", ll.LANDLOCK_ACCESS_FS_REFER),
                    ll.PathRule("/var", ll.LANDLOCK_ACCESS_FS_WRITE_FILE
                                | ll.LANDLOCK_ACCESS_FS_TRUNCATE)),
        port_rules=(ll.PortRule(443, ll.LANDLOCK_ACCESS_NET_CONNECT_TCP),))
    fitted, dropped = ll.fit_to_abi(spec, 1)
    assert fitted.handled_fs == ll.LANDLOCK_ACCESS_FS_WRITE_FILE
    assert fitted.handled_net == 0 and fitted.scoped == 0 and fitted.port_rules == ()
    assert fitted.path_rules == (ll.PathRule("/var", ll.LANDLOCK_ACCESS_FS_WRITE_FILE),)
    text = "\n".join(dropped)
    assert "refer, truncate" in text and "connect_tcp" in text and "signal" in text
    same, nothing = ll.fit_to_abi(spec, 7)
    assert same == spec and nothing == ()


class _FakeSyscalls:
    """Answers every syscall with -1 and a fixed errno (a kernel without Landlock)."""

    def __init__(self, code: int) -> None:
        self.code = code

    def call(self, *args: int) -> tuple[int, int]:
        return -1, self.code


@pytest.mark.parametrize("code, words", [
    (errno.ENOSYS, "CONFIG_SECURITY_LANDLOCK"),
    (errno.EOPNOTSUPP, "lsm="),
    (errno.EPERM, "seccomp"),
])
def test_probe_without_landlock_says_why(code: int, words: str) -> None:
    support = ll.probe(_FakeSyscalls(code))  # type: ignore[arg-type]
    assert not support.available and support.abi == 0
    assert words in support.problem
    prepared, warnings = ll.prepare(ll.RulesetSpec(handled_fs=ll.LANDLOCK_ACCESS_FS_WRITE_FILE),
                                    support)
    assert prepared is None
    assert len(warnings) == 1 and "Landlock is not available" in warnings[0]
    assert words in warnings[0]


# --- the real kernel ------------------------------------------------------------------------------

@needs_landlock
def test_probe_reports_the_running_abi() -> None:
    assert SUPPORT.abi >= 1 and SUPPORT.problem is None
    # the same question asked directly: landlock_create_ruleset(NULL, 0, VERSION)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    assert libc.syscall(ctypes.c_long(ll.SYS_LANDLOCK_CREATE_RULESET), ctypes.c_void_p(0),
                        ctypes.c_size_t(0), ctypes.c_uint32(1)) == SUPPORT.abi


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    ws = tmp_path / "ws"
    (ws / "a").mkdir(parents=True)
    (ws / "b").mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "doomed.txt").write_text("precious")
    (tmp_path / "outside_src.txt").write_text("precious")
    (ws / "a" / "leaver").write_text("l")
    (ws / "a" / "movable").write_text("m")
    (ws / "a" / "deletable").write_text("d")
    return {"root": tmp_path, "ws": ws, "victim": victim, "outside_new": tmp_path / "new.txt",
            "outside_dir": tmp_path / "newdir", "inside_new": ws / "in.txt"}


def _file_probe(paths: dict[str, Path]):
    def probe() -> dict:
        p = {k: str(v) for k, v in paths.items()}
        return {
            "create_outside": attempt(lambda: write_file(Path(p["outside_new"]))),
            "open_victim_for_write": attempt(lambda: os.close(os.open(p["victim"], os.O_WRONLY))),
            "truncate_victim": attempt(lambda: os.truncate(p["victim"], 0)),
            "unlink_outside": attempt(lambda: os.unlink(p["root"] + "/doomed.txt")),
            "mkdir_outside": attempt(lambda: os.mkdir(p["outside_dir"])),
            "move_out": attempt(lambda: os.rename(p["ws"] + "/a/leaver", p["root"] + "/moved")),
            "move_in": attempt(lambda: os.rename(p["root"] + "/outside_src.txt",
                                                 p["ws"] + "/stolen")),
            "symlink_outside": attempt(lambda: os.symlink("/etc/passwd", p["root"] + "/link")),
            "read_victim": attempt(lambda: open(p["victim"]).read()),
            "read_etc": attempt(lambda: open("/etc/hostname" if os.path.exists("/etc/hostname")
                                             else "/etc/passwd").read()),
            "create_inside": attempt(lambda: write_file(Path(p["inside_new"]), b"hello")),
            "mkdir_inside": attempt(lambda: os.mkdir(p["ws"] + "/c")),
            "move_across_inside": attempt(lambda: os.rename(p["ws"] + "/a/movable",
                                                            p["ws"] + "/b/movable")),
            "unlink_inside": attempt(lambda: os.unlink(p["ws"] + "/a/deletable")),
        }
    return probe


@needs_abi(3)
def test_writes_are_confined_to_the_allowed_hierarchy(layout: dict[str, Path]) -> None:
    spec = ll.RulesetSpec(handled_fs=WRITE_ALL,
                          path_rules=(ll.PathRule(str(layout["ws"]), WRITE_ALL),))
    prepared, warnings = ll.prepare(spec, SUPPORT)
    assert prepared is not None and warnings == ()
    result = run_in_child(prepared, _file_probe(layout))
    refused = ("create_outside", "open_victim_for_write", "truncate_victim", "unlink_outside",
               "mkdir_outside", "symlink_outside")
    assert {k: result[k] for k in refused} == dict.fromkeys(refused, errno.EACCES)
    # renames across the boundary: EACCES (no make/remove right) or EXDEV (refer), never success
    assert result["move_out"] in (errno.EACCES, errno.EXDEV)
    assert result["move_in"] in (errno.EACCES, errno.EXDEV)
    allowed = ("read_victim", "read_etc", "create_inside", "mkdir_inside", "move_across_inside",
               "unlink_inside")
    assert {k: result[k] for k in allowed} == dict.fromkeys(allowed, 0)
    # the effects, seen from outside
    assert layout["victim"].read_text() == "precious"
    assert (layout["root"] / "doomed.txt").read_text() == "precious"
    assert (layout["root"] / "outside_src.txt").read_text() == "precious"
    assert not layout["outside_new"].exists() and not layout["outside_dir"].exists()
    assert not (layout["root"] / "moved").exists() and not (layout["root"] / "link").exists()
    assert not (layout["ws"] / "stolen").exists()
    assert layout["inside_new"].read_bytes() == b"hello"
    assert (layout["ws"] / "b" / "movable").exists()
    assert not (layout["ws"] / "a" / "deletable").exists()


def test_the_file_probe_succeeds_without_landlock(layout: dict[str, Path]) -> None:
    """The same probe with no ruleset: every attempt works, so the test above proves something."""
    result = run_in_child(None, _file_probe(layout))
    assert result == dict.fromkeys(result, 0)
    assert layout["outside_new"].exists() and layout["victim"].read_text() == ""
    assert (layout["ws"] / "stolen").exists() and (layout["root"] / "moved").exists()


@needs_abi(3)
def test_the_ruleset_holds_across_exec(layout: dict[str, Path]) -> None:
    spec = ll.RulesetSpec(handled_fs=WRITE_ALL,
                          path_rules=(ll.PathRule(str(layout["ws"]), WRITE_ALL),))
    prepared, _ = ll.prepare(spec, SUPPORT)
    script = (f"echo out > {layout['outside_new']}; echo $? > {layout['ws']}/status1; "
              f"printf '' > {layout['victim']}; echo $? > {layout['ws']}/status2; "
              f"echo in > {layout['inside_new']}")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
            prepared.apply()
            os.execv("/bin/sh", ["sh", "-c", script])
        finally:
            os._exit(127)
    prepared.close()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not layout["outside_new"].exists()
    assert layout["victim"].read_text() == "precious"
    assert (layout["ws"] / "status1").read_text().strip() != "0"
    assert (layout["ws"] / "status2").read_text().strip() != "0"
    assert layout["inside_new"].read_text() == "in\n"


@needs_landlock
def test_a_rule_path_that_cannot_be_opened_is_left_out_with_a_warning(tmp_path: Path) -> None:
    spec = ll.RulesetSpec(handled_fs=ll.LANDLOCK_ACCESS_FS_MAKE_REG,
                          path_rules=(ll.PathRule(str(tmp_path / "missing"),
                                                  ll.LANDLOCK_ACCESS_FS_MAKE_REG),
                                      ll.PathRule(str(tmp_path), ll.LANDLOCK_ACCESS_FS_MAKE_REG)))
    prepared, warnings = ll.prepare(spec, SUPPORT)
    assert prepared is not None
    assert len(warnings) == 1 and "missing" in warnings[0] and "left out" in warnings[0]
    assert [r.path for r in prepared.spec.path_rules] == [str(tmp_path)]
    result = run_in_child(prepared, lambda: {"create": attempt(
        lambda: write_file(tmp_path / "ok.txt"))})
    assert result == {"create": 0}


@needs_landlock
def test_a_file_rule_carries_only_file_rights(tmp_path: Path) -> None:
    target = tmp_path / "allowed.txt"
    target.write_text("")
    rights = ll.LANDLOCK_ACCESS_FS_WRITE_FILE | ll.LANDLOCK_ACCESS_FS_MAKE_REG
    spec = ll.RulesetSpec(handled_fs=rights, path_rules=(ll.PathRule(str(target), rights),))
    prepared, _ = ll.prepare(spec, SUPPORT)
    assert prepared.spec.path_rules[0].access == ll.LANDLOCK_ACCESS_FS_WRITE_FILE
    result = run_in_child(prepared, lambda: {
        "write_allowed": attempt(lambda: Path(target).write_text("yes")),
        "create_sibling": attempt(lambda: write_file(tmp_path / "sibling"))})
    assert result == {"write_allowed": 0, "create_sibling": errno.EACCES}
    assert target.read_text() == "yes" and not (tmp_path / "sibling").exists()


@needs_abi(ll.NET_RIGHTS_ABI)
def test_tcp_connect_is_refused_unless_its_port_is_allowed() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.3)
    port = listener.getsockname()[1]

    def connect() -> dict:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            return {"connect": attempt(lambda: sock.connect(("127.0.0.1", port)))}

    try:
        refused = ll.RulesetSpec(handled_net=ll.LANDLOCK_ACCESS_NET_CONNECT_TCP)
        assert run_in_child(ll.prepare(refused, SUPPORT)[0], connect) == {"connect": errno.EACCES}
        with pytest.raises(socket.timeout):
            listener.accept()  # the listener saw nothing
        port_rule = ll.PortRule(port, ll.LANDLOCK_ACCESS_NET_CONNECT_TCP)
        allowed = ll.RulesetSpec(handled_net=ll.LANDLOCK_ACCESS_NET_CONNECT_TCP,
                                 port_rules=(port_rule,))
        assert run_in_child(ll.prepare(allowed, SUPPORT)[0], connect) == {"connect": 0}
        listener.accept()[0].close()
    finally:
        listener.close()


@needs_abi(ll.SCOPES_ABI)
def test_signals_and_abstract_sockets_stay_inside_the_domain() -> None:
    name = f"\0agentd-landlock-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(name)
    server.listen(4)
    parent = os.getpid()

    def probe() -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            abstract = attempt(lambda: sock.connect(name))
        own_child = subprocess.Popen(["sleep", "5"])
        result = {"signal_parent": attempt(lambda: os.kill(parent, 0)),
                  "abstract_connect": abstract,
                  "signal_own_child": attempt(lambda: os.kill(own_child.pid, signal.SIGKILL))}
        own_child.wait()
        return result

    try:
        spec = ll.RulesetSpec(scoped=ll.ALL_SCOPES)
        assert run_in_child(ll.prepare(spec, SUPPORT)[0], probe) == {
            "signal_parent": errno.EPERM, "abstract_connect": errno.EPERM, "signal_own_child": 0}
        assert run_in_child(None, probe) == {
            "signal_parent": 0, "abstract_connect": 0, "signal_own_child": 0}
    finally:
        server.close()


@needs_landlock
def test_the_ruleset_descriptor_does_not_reach_the_agent(tmp_path: Path) -> None:
    spec = ll.RulesetSpec(handled_fs=ll.LANDLOCK_ACCESS_FS_MAKE_REG,
                          path_rules=(ll.PathRule(str(tmp_path), ll.LANDLOCK_ACCESS_FS_MAKE_REG),))
    prepared, _ = ll.prepare(spec, SUPPORT)
    fd = prepared.ruleset_fd
    assert os.get_inheritable(fd) is False  # close-on-exec: gone once the agent execs
    prepared.close()
    assert prepared.ruleset_fd == -1
    with pytest.raises(OSError):
        os.fstat(fd)
