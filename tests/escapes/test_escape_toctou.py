"""TOCTOU: the path the sandbox checked is not the path the kernel uses.

Each probe (probes/toctou.c) races one syscall's path argument: a thread, a second process made by
clone(CLONE_VM), or a forked process writing a MAP_SHARED buffer flips it between an allowed and a
denied path while the syscall runs; the symlink probe re-points a symlink in the workspace
instead (a race in the file system, not in memory). The outside checks: the marker of the
read-protected victim never reaches the agent's output; nothing appears outside the workspace;
the forbidden program never leaves its trace; the denied unix listener accepts nothing (a race on
the sockaddr of connect); ws/precious survives a race on execve's argv ("rm -f" checked, "rm -r"
run). The exchange probe swaps a directory on the checked path with a symlink (RENAME_EXCHANGE). Without the sandbox the same probe must see the
deed (there, the "denied" path is simply opened), so a probe that cannot detect a win fails.

The attempt budget (``--escape-attempts``, default 100,000) is shared by the probes by weight.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

from escape_harness import Listener, Probe, judge

pytestmark = pytest.mark.escape_probe

# Without the sandbox a win is near certain; these only show that a win is detected.
BARE_ATTEMPTS = 20_000
BARE_EXEC_ATTEMPTS = 300
RM = os.path.realpath(shutil.which("rm") or "/bin/rm")

# probe name -> (share of the budget, argv builder given (layout, probe_bin, attempts))
WEIGHTS = {"open-thread": 20, "open-clonevm": 10, "open-shared": 10, "symlink-swap": 10,
           "exchange-swap": 10, "exchange-creat": 5, "exchange-connect": 5, "exchange-exec": 3,
           "creat-thread": 10, "rename-thread": 10, "connect-thread": 10, "exec-shared": 5,
           "argv-shared": 5}


def attempts_for(name: str, budget: int) -> int:
    return max(1, budget * WEIGHTS[name] // sum(WEIGHTS.values()))


def _count(result) -> str | None:
    found = re.search(r"successes=(\d+) attempts=(\d+)", result.stdout)
    if found and int(found.group(1)) > 0:
        return f"the race was won {found.group(1)} times in {found.group(2)} attempts"
    return None


def _attempts(layout, budget, name):
    if layout.sandboxed:
        return str(attempts_for(name, budget))
    forks = name.startswith("exec") or name.startswith("argv") or name == "exchange-exec"
    return str(BARE_EXEC_ATTEMPTS if forks else BARE_ATTEMPTS)


def _forbidden_program(lay) -> None:
    """nox/forbidden (process_spawn denied) becomes a script that exits 42 and leaves
    ws/exec_escaped: the trace a won exec race leaves."""
    forbidden = lay.nox / "forbidden"
    forbidden.unlink()
    forbidden.write_text(f"#!/bin/sh\n: > {lay.ws}/exec_escaped\nexit 42\n")
    forbidden.chmod(0o755)


def _denied_listener():
    """(setup, deed, cleanup) for a probe racing connect() towards a denied unix listener: a
    won race is counted by the probe or seen by the listener."""
    def setup(lay):
        lay.extra["listener"] = Listener("unix_stream", "PATH", lay)

    def saw(result):
        return _count(result) or result.layout.extra["listener"].saw()

    def cleanup(lay):
        if "listener" in lay.extra:
            lay.extra["listener"].close()
    return setup, saw, cleanup


@pytest.mark.parametrize("flipper", ["open-thread", "open-clonevm", "open-shared"])
def test_read_race(arena, probe_bin, escape_attempts, flipper):
    judge(arena, Probe(
        f"toctou-{flipper}",
        lambda lay: [str(probe_bin / "toctou"), flipper, str(lay.ws / "allowed.txt"),
                     str(lay.secret), _attempts(lay, escape_attempts, flipper)],
        deed=_count))


def test_symlink_swap_race(arena, probe_bin, escape_attempts):
    judge(arena, Probe(
        "toctou-symlink-swap",
        lambda lay: [str(probe_bin / "toctou"), "symlink-swap", str(lay.ws / "link"),
                     str(lay.ws / "allowed.txt"), str(lay.secret),
                     _attempts(lay, escape_attempts, "symlink-swap")],
        deed=_count))


def test_directory_exchange_race(arena, probe_bin, escape_attempts):
    """ws/real (a directory holding an allowed "secret") and ws/alt (a symlink to victim/)
    swap places with renameat2(RENAME_EXCHANGE) while the agent opens ws/real/secret: checking
    a fully resolved path is not enough if a directory on it becomes a symlink before use."""
    def setup(lay):
        (lay.ws / "real").mkdir()
        (lay.ws / "real" / "secret").write_text("ALLOWED\n")
        (lay.ws / "alt").symlink_to(lay.victim)
    judge(arena, Probe(
        "toctou-exchange-swap",
        lambda lay: [str(probe_bin / "toctou"), "exchange-swap", str(lay.ws / "real"),
                     str(lay.ws / "alt"), _attempts(lay, escape_attempts, "exchange-swap")],
        setup=setup, deed=_count))


def test_directory_exchange_create_race(arena, probe_bin, escape_attempts):
    """The same swap with ws/alt -> keep/ (write-protected): creating ws/real/new.txt must never
    create keep/new.txt."""
    def setup(lay):
        (lay.ws / "real").mkdir()
        (lay.ws / "alt").symlink_to(lay.keep)
    judge(arena, Probe(
        "toctou-exchange-creat",
        lambda lay: [str(probe_bin / "toctou"), "exchange-creat", str(lay.ws / "real"),
                     str(lay.ws / "alt"), _attempts(lay, escape_attempts, "exchange-creat")],
        setup=setup, deed=_count))


def test_directory_exchange_connect_race(arena, probe_bin, escape_attempts):
    """The swap with ws/alt -> sock/ (a denied listener's directory): the probe listens on
    ws/real/stream.sock itself and connects to that name; sock/stream.sock must never answer."""
    listen, saw, cleanup = _denied_listener()

    def setup(lay):
        (lay.ws / "real").mkdir()
        (lay.ws / "alt").symlink_to(lay.sock)
        listen(lay)
    judge(arena, Probe(
        "toctou-exchange-connect",
        lambda lay: [str(probe_bin / "toctou"), "exchange-connect", str(lay.ws / "real"),
                     str(lay.ws / "alt"), "stream.sock",
                     _attempts(lay, escape_attempts, "exchange-connect")],
        setup=setup, deed=saw, cleanup=cleanup))


def test_directory_exchange_exec_race(arena, probe_bin, escape_attempts):
    """The swap with ws/alt -> nox/ (spawn-protected): exec ws/real/forbidden (a copy of true)
    must never run nox/forbidden (exits 42 and leaves ws/exec_escaped)."""
    def setup(lay):
        (lay.ws / "real").mkdir()
        shutil.copy2("/bin/true", lay.ws / "real" / "forbidden")
        _forbidden_program(lay)
        (lay.ws / "alt").symlink_to(lay.nox)
    judge(arena, Probe(
        "toctou-exchange-exec",
        lambda lay: [str(probe_bin / "toctou"), "exchange-exec", str(lay.ws / "real"),
                     str(lay.ws / "alt"), "forbidden",
                     _attempts(lay, escape_attempts, "exchange-exec")],
        setup=setup, deed=_count, watch=("exec_escaped",)))


def test_create_race(arena, probe_bin, escape_attempts):
    judge(arena, Probe(
        "toctou-creat-thread",
        lambda lay: [str(probe_bin / "toctou"), "creat-thread", str(lay.ws / "new.txt"),
                     str(lay.keep / "created.txt"),
                     _attempts(lay, escape_attempts, "creat-thread")],
        deed=_count))


def test_rename_race(arena, probe_bin, escape_attempts):
    def setup(lay):
        (lay.ws / "src.txt").write_text("moving\n")
    judge(arena, Probe(
        "toctou-rename-thread",
        lambda lay: [str(probe_bin / "toctou"), "rename-thread", str(lay.ws / "src.txt"),
                     str(lay.ws / "dst.txt"), str(lay.keep / "moved.txt"),
                     _attempts(lay, escape_attempts, "rename-thread")],
        setup=setup, deed=_count))


def test_exec_race(arena, probe_bin, escape_attempts):
    """The forbidden program (in nox/, process_spawn denied) exits 42 and leaves a trace."""
    def setup(lay):
        _forbidden_program(lay)
        allowed = lay.ws / "allowed_prog"
        allowed.write_bytes(open("/bin/true", "rb").read())
        allowed.chmod(0o755)
    judge(arena, Probe(
        "toctou-exec-shared",
        lambda lay: [str(probe_bin / "toctou"), "exec-shared", str(lay.ws / "allowed_prog"),
                     str(lay.nox / "forbidden"), _attempts(lay, escape_attempts, "exec-shared")],
        setup=setup, deed=_count, watch=("exec_escaped",)))


def test_connect_race(arena, probe_bin, escape_attempts):
    """The sockaddr flips between the probe's own socket in the workspace and a denied one."""
    setup, saw, cleanup = _denied_listener()
    judge(arena, Probe(
        "toctou-connect-thread",
        lambda lay: [str(probe_bin / "toctou"), "connect-thread", str(lay.ws / "ok.sock"),
                     lay.extra["listener"].name,
                     _attempts(lay, escape_attempts, "connect-thread")],
        setup=setup, deed=saw, cleanup=cleanup))


def test_argv_race(arena, probe_bin, escape_attempts):
    """execve("/bin/rm", {"rm", ARG, "precious"}) with ARG flipping between -f and -r: the
    policy denies a recursive rm; `rm -f dir` does nothing to a directory."""
    def setup(lay):
        (lay.ws / "precious" / "sub").mkdir(parents=True)
        (lay.ws / "precious" / "a.txt").write_text("keep me\n")
    judge(arena, Probe(
        "toctou-argv-shared",
        lambda lay: [str(probe_bin / "toctou"), "argv-shared", RM, "-f", "-r",
                     str(lay.ws / "precious"), _attempts(lay, escape_attempts, "argv-shared")],
        setup=setup, deed=_count, watch=("precious",)))
