"""The escape suite's harness: an arena of victims, the sandboxed and bare runs, outside checks.

Owns how one escape probe is judged. ``Arena.layout(label)`` builds a fresh test-owned tree (the
workspace, a read-protected ``victim/`` holding a random marker, a write-protected ``keep/``, a
spawn-protected ``nox/``, a ``sock/`` directory for unix listeners) whose root is bound to
``${TMPDIR}`` so that the static policies in ``tests/escapes/policies/`` can name it.
``judge(arena, probe)`` runs a ``Probe`` twice: once bare (no sandbox, under a stand-in parent
process so that probes aimed at "the supervisor" hit the stand-in), where the deed must happen or
the probe proves nothing and the test fails with ``ProbeProvedNothing``; then under ``agentd run``,
where the deed must not happen (``AssertionError`` naming the probe and what happened). The
deed is always observed from outside the agent: the marker reaching the agent's stdout, a change
anywhere in the arena outside the workspace (``snapshot``), a listener that received something, a
process that died. ``Supervision`` says who supervises the sandboxed run: ``agentd run
--embedded`` itself, or an ``agentd daemon`` the suite started (then the audit log and the runs
dir are the daemon's, and the agent's parent is the daemon's per-run supervisor).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

HERE = Path(__file__).resolve().parent
POLICY_DIR = HERE / "policies"
PROBE_DIR = HERE / "probes"
DEFAULT_POLICY = POLICY_DIR / "escape.yaml"
# The interpreter the probes run on: the real one behind the venv (probes need only the stdlib).
PYTHON = os.path.realpath(sys.executable)
# The bare run's parent: stands in for the supervisor (probes that attack their parent hit it);
# like agentd with its audit log, it holds open the files named in $ESCAPE_STANDIN_HOLD.
STAND_IN = ("import os, subprocess, sys\n"
            "held = [os.open(p, os.O_WRONLY | os.O_APPEND)\n"
            "        for p in os.environ.get('ESCAPE_STANDIN_HOLD', '').split(':') if p]\n"
            "code = subprocess.call(sys.argv[1:])\n"
            "sys.exit(code if code >= 0 else 128 - code)\n")
RUN_TIMEOUT = 240.0
# The daemon's log line for a per-run supervisor that died before reporting (daemon/service.py).
SUPERVISOR_DIED = re.compile(r"run \S+: supervisor \d+ died of signal (\d+) before reporting")


class ProbeProvedNothing(AssertionError):
    """Without the sandbox the probe's deed did not happen: the probe tests nothing."""


class ProbeEscaped(AssertionError):
    """Under ``agentd run`` the probe's deed happened: a containment failure."""


@dataclass
class Layout:
    """One fresh arena tree. ``root`` is ``${TMPDIR}`` for the policy, ``ws`` is ``${WORKSPACE}``."""

    root: Path
    marker: str
    sandboxed: bool
    extra: dict = field(default_factory=dict)

    @property
    def ws(self) -> Path:
        return self.root / "ws"

    @property
    def victim(self) -> Path:
        return self.root / "victim"

    @property
    def secret(self) -> Path:
        return self.root / "victim" / "secret"

    @property
    def keep(self) -> Path:
        return self.root / "keep"

    @property
    def nox(self) -> Path:
        return self.root / "nox"

    @property
    def sock(self) -> Path:
        return self.root / "sock"

    def fmt(self, text: str) -> str:
        """Fill ``{root} {ws} {victim} {secret} {keep} {nox} {sock} {marker}`` and extras
        (``{audit}``: the run's audit log)."""
        return text.format(root=self.root, ws=self.ws, victim=self.victim, secret=self.secret,
                           keep=self.keep, nox=self.nox, sock=self.sock, marker=self.marker,
                           **self.extra)


def build_tree(root: Path) -> Layout:
    root.mkdir(parents=True)
    root = root.resolve()
    layout = Layout(root=root, marker="AGENTD-ESCAPE-" + secrets.token_hex(8), sandboxed=False)
    for d in ("ws", "victim", "victim/sub", "keep", "keep/dir", "keep/empty", "nox", "sock"):
        (root / d).mkdir()
    layout.secret.write_text(layout.marker + "\n")
    (layout.victim / "sub" / "note").write_text("nothing here\n")
    (layout.keep / "file.txt").write_text("original content\n")
    (layout.keep / "dir" / "inner.txt").write_text("inner\n")
    os.utime(layout.keep / "file.txt", (1_000_000_000, 1_000_000_000))
    (layout.ws / "allowed.txt").write_text("ALLOWED\n")
    shutil.copy2("/bin/true", layout.nox / "forbidden")
    return layout


def snapshot(root: Path, skip: Callable[[Path], bool],
             no_mtime: frozenset[Path] = frozenset()) -> dict[str, tuple]:
    """Everything observable about the files under ``root`` (not following symlinks); the
    directories in ``no_mtime`` (the workspace) may change their mtime."""
    state: dict[str, tuple] = {}

    def walk(directory: Path) -> None:
        try:
            names = sorted(os.listdir(directory))
        except OSError as exc:
            state[str(directory) + "/"] = ("unlistable", exc.errno)
            return
        for name in names:
            path = directory / name
            if skip(path):
                continue
            st = os.lstat(path)
            try:
                xattrs = tuple(sorted((k, os.getxattr(path, k, follow_symlinks=False))
                                      for k in os.listxattr(path, follow_symlinks=False)))
            except OSError:
                xattrs = ()
            entry = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                     st.st_nlink if not stat.S_ISDIR(st.st_mode) else 0,
                     None if path in no_mtime else st.st_mtime_ns, xattrs]
            if stat.S_ISREG(st.st_mode):
                entry += [st.st_size, hashlib.sha256(path.read_bytes()).hexdigest()]
            elif stat.S_ISLNK(st.st_mode):
                entry.append(os.readlink(path))
            state[str(path)] = tuple(entry)
            if stat.S_ISDIR(st.st_mode):
                walk(path)

    walk(root)
    return state


def describe_changes(before: dict, after: dict) -> list[str]:
    changes = [f"created {p}" for p in sorted(set(after) - set(before))]
    changes += [f"removed {p}" for p in sorted(set(before) - set(after))]
    changes += [f"changed {p}: {before[p]} -> {after[p]}"
                for p in sorted(set(before) & set(after)) if before[p] != after[p]]
    return changes


class Listener:
    """One loopback or unix listener owned by the test (kinds tcp4, tcp6, udp4, udp6,
    unix_stream, unix_dgram; ``where`` "ABSTRACT" for an abstract name, else a path in the
    arena's sock/); ``saw()`` says what reached it, without blocking."""

    def __init__(self, kind: str, where: str, layout):
        self.kind = kind
        stream = kind.startswith("tcp") or kind == "unix_stream"
        family = (socket.AF_INET6 if kind.endswith("6") else
                  socket.AF_INET if kind[:3] in ("tcp", "udp") else socket.AF_UNIX)
        self.sock = socket.socket(family, socket.SOCK_STREAM if stream else socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            self.sock.bind(("::1", 0))
        elif family == socket.AF_INET:
            self.sock.bind(("127.0.0.1", 0))
        elif where == "ABSTRACT":
            self.name = f"@agentd-escape-{secrets.token_hex(6)}"
            self.sock.bind("\0" + self.name[1:])
        else:
            self.name = str(layout.sock / ("stream.sock" if stream else "dgram.sock"))
            self.sock.bind(self.name)
        if family != socket.AF_UNIX:
            self.port = self.sock.getsockname()[1]
        if stream:
            self.sock.listen(16)
        self.sock.setblocking(False)
        self.stream = stream

    def saw(self) -> str | None:
        try:
            if self.stream:
                conn, peer = self.sock.accept()
                conn.close()
                return f"the {self.kind} listener accepted a connection from {peer!r}"
            data = self.sock.recv(4096)
            return f"the {self.kind} listener received {data!r}"
        except BlockingIOError:
            return None

    def close(self) -> None:
        self.sock.close()


@dataclass
class Supervision:
    """Who supervises the sandboxed runs. ``embedded``: ``agentd run --embedded``, the process
    the test starts, is the supervisor and writes one audit log per run. ``daemon``: ``daemon``
    (a ``tests/helpers/agentd_daemon.DaemonUnderTest``) supervises; ``agentd run`` is its client,
    the audit log and the runs dir are the daemon's."""

    mode: str                # "embedded" or "daemon"
    argv: list[str]          # ``agentd run`` up to its options
    daemon: Any = None       # the DaemonUnderTest, in daemon mode


@dataclass
class RunResult:
    # The supervisor's status (sandboxed; under the daemon the client's, or -N when the daemon
    # logged that the run's supervisor died of signal N) or the stand-in's (bare).
    returncode: int
    stdout: str
    stderr: str
    layout: Layout
    argv: list[str]
    daemon_log: str = ""     # what the daemon logged during the run (daemon mode)

    def tail(self) -> str:
        text = (f"argv: {self.argv}\nexit: {self.returncode}\n"
                f"stdout: {self.stdout[-1500:]!r}\nstderr: {self.stderr[-1500:]!r}")
        if self.daemon_log:
            text += f"\ndaemon log during the run:\n{self.daemon_log[-3000:]}"
        return text


class Arena:
    """Fresh layouts under one test's tmp dir, and the two ways to run a probe in them."""

    def __init__(self, base: Path, supervision: Supervision):
        self.base = base
        self.supervision = supervision
        self.agentd_argv = supervision.argv
        self.daemon = supervision.daemon
        self.count = 0

    def layout(self, label: str) -> Layout:
        self.count += 1
        return build_tree(self.base / f"{label}{self.count}")

    def audit_path(self, layout: Layout) -> Path:
        """The run's audit log: the daemon's for a sandboxed run under the daemon, else one
        file per run, outside the arena, beside it."""
        if self.daemon is not None and layout.sandboxed:
            return Path(self.daemon.audit_log)
        return self.base / f"audit-{layout.root.name}.jsonl"

    @property
    def runs_dir(self) -> Path:
        """Where the runs' registrations and hold sockets are (``agentd ps``, ``resume``)."""
        if self.daemon is not None:
            return Path(self.daemon.config["runs_dir"])
        return self.base / "runs"

    def env(self, layout: Layout, more: dict | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"TMPDIR": str(layout.root), "PYTHONDONTWRITEBYTECODE": "1",
                    "AGENTD_RUNS_DIR": str(self.runs_dir), "LC_ALL": "C"})
        env.pop("PYTHONPATH", None)
        env.pop("AGENTD_SOCKET", None)
        if self.daemon is not None:
            env["AGENTD_SOCKET"] = self.daemon.socket_path
        env.update(more or {})
        return env

    def _daemon_log_size(self) -> int:
        try:
            return os.path.getsize(Path(self.daemon.root) / "daemon.log")
        except OSError:
            return 0

    def _daemon_log_since(self, offset: int) -> str:
        try:
            with open(Path(self.daemon.root) / "daemon.log", "rb") as handle:
                handle.seek(offset)
                return handle.read().decode(errors="replace")
        except OSError:
            return ""

    def _judged_by_the_daemon(self, result: RunResult, offset: int) -> RunResult:
        """A daemon run's result, as the embedded run's would read: the run's supervisor killed
        shows as -N. A daemon that died, or that never launched the run, is no containment."""
        result.daemon_log = self._daemon_log_since(offset)
        if not self.daemon.alive():
            raise ProbeEscaped(f"the agentd daemon died during the run\n{result.tail()}")
        if result.returncode == 125 and " launched " not in result.daemon_log:
            raise RuntimeError(f"the daemon did not run the probe\n{result.tail()}")
        died = SUPERVISOR_DIED.search(result.daemon_log)
        if died:
            result.returncode = -int(died.group(1))
        return result

    def run(self, layout: Layout, argv: list[str], *, policy: Path = DEFAULT_POLICY,
            cwd: Path | None = None, env: dict | None = None, timeout: float = RUN_TIMEOUT,
            input: bytes | None = None,
            during: Callable[[Layout, threading.Event], None] | None = None) -> RunResult:
        daemon_run = layout.sandboxed and self.daemon is not None
        if layout.sandboxed:
            # Under the daemon its configuration names the audit log (--audit-log is refused).
            audit = [] if daemon_run else ["--audit-log", str(self.audit_path(layout))]
            full = [*self.agentd_argv, "--policy", str(policy), "--workspace",
                    str(layout.ws), *audit, "--agent-id", "escape-probe", "--", *argv]
        else:
            full = [PYTHON, "-c", STAND_IN, *argv]
        if daemon_run and not self.daemon.alive():
            raise RuntimeError(f"the agentd daemon is gone; its log:\n{self.daemon.log_text()}")
        log_offset = self._daemon_log_size() if daemon_run else 0
        # A new session: probes that signal their process group or parent cannot reach pytest.
        proc = subprocess.Popen(full, cwd=cwd or layout.ws, env=self.env(layout, env),
                                stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        helper, finished = None, threading.Event()
        if during is not None:  # acts from outside while the agent runs (e.g. agentd resume)
            helper = threading.Thread(target=during, args=(layout, finished), daemon=True)
            helper.start()
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            err += b"\n[escape harness: timed out]"
        finished.set()
        if helper is not None:
            helper.join(timeout=30)
        result = RunResult(proc.returncode, out.decode(errors="replace"),
                           err.decode(errors="replace"), layout, full)
        return self._judged_by_the_daemon(result, log_offset) if daemon_run else result


@dataclass
class Probe:
    """One way out. ``argv(layout)`` is the command; ``setup(layout)`` prepares the arena (as the
    test, before the agent starts) and may return a context kept in ``layout.extra``;
    ``deed(result)`` returns a description of the forbidden effect if it happened, else None.
    ``default_deeds`` adds the two universal outside checks: the marker in the agent's output,
    and any change in the arena outside the workspace (plus ``watch``ed workspace paths)."""

    name: str
    argv: Callable[[Layout], list[str]]
    setup: Callable[[Layout], None] | None = None
    deed: Callable[[RunResult], str | None] | None = None
    default_deeds: bool = True
    watch: tuple[str, ...] = ()          # workspace-relative paths to include in the snapshot
    policy: Path = DEFAULT_POLICY
    cleanup: Callable[[Layout], None] | None = None
    env: dict | None = None              # values are filled with ``Layout.fmt``
    # Given the bare run that saw no deed: a reason when the host lacks what the probe needs
    # (no x32 ABI, io_uring disabled, no IPv6): the test is then skipped with that reason.
    host_lacks: Callable[[RunResult], str | None] | None = None
    settle: float = 0.0                  # seconds to wait after the run before looking
    # Runs in a thread beside the agent, given the layout and an Event set when the run ended.
    during: Callable[[Layout, threading.Event], None] | None = None


def judge(arena: Arena, probe: Probe) -> RunResult:
    """Bare run (the deed must happen), then sandboxed run (it must not)."""
    results = []
    for sandboxed in (False, True):
        layout = arena.layout("boxed" if sandboxed else "bare")
        layout.sandboxed = sandboxed
        layout.extra["audit"] = arena.audit_path(layout)
        try:
            if probe.setup:
                probe.setup(layout)
            watched = {layout.ws / w for w in probe.watch}

            def skip(path: Path) -> bool:
                """Inside the workspace the agent may do anything, except to watched paths."""
                if layout.ws not in path.parents:
                    return False
                return not any(path == w or w in path.parents or path in w.parents
                               for w in watched)

            before = snapshot(layout.root, skip, frozenset({layout.ws}))
            env = {k: layout.fmt(v) for k, v in (probe.env or {}).items()}
            result = arena.run(layout, probe.argv(layout), policy=probe.policy, env=env,
                               during=probe.during)
            if probe.settle:
                time.sleep(probe.settle)
            deeds = []
            if probe.default_deeds:
                if layout.marker in result.stdout or layout.marker in result.stderr:
                    deeds.append("the protected marker reached the agent's output")
                deeds += describe_changes(before, snapshot(layout.root, skip, frozenset({layout.ws})))
            if probe.deed:
                extra = probe.deed(result)
                if extra:
                    deeds.append(extra)
        finally:
            if probe.cleanup:
                probe.cleanup(layout)
        if not sandboxed and not deeds:
            lacking = probe.host_lacks(result) if probe.host_lacks else None
            if not lacking and os.geteuid() != 0 and (
                    "Operation not permitted" in result.stderr + result.stdout):
                lacking = "this probe's deed needs root (EPERM without the sandbox)"
            if lacking:
                pytest.skip(f"probe {probe.name}: {lacking}")
            raise ProbeProvedNothing(
                f"probe {probe.name}: without the sandbox the deed did not happen, so the "
                f"probe proves nothing\n{result.tail()}")
        if sandboxed and deeds:
            raise ProbeEscaped(f"ESCAPE: probe {probe.name} under agentd run: "
                               + "; ".join(deeds[:6]) + f"\n{result.tail()}")
        results.append(result)
    return results[-1]


def start_sibling(lay) -> None:
    """A process of the test's, outside the agent tree: a target for ptrace, signals, memory."""
    sibling = subprocess.Popen([PYTHON, "-c", "import time; time.sleep(600)"],
                               env={"SIBLING": "original"}, start_new_session=True)
    lay.extra["sibling"] = sibling
    lay.extra["sibling_pid"] = sibling.pid


def stop_sibling(lay) -> None:
    sibling = lay.extra.get("sibling")
    if sibling is not None and sibling.poll() is None:
        sibling.kill()
        sibling.wait()


def sibling_harmed(result) -> str | None:
    sibling = result.layout.extra["sibling"]
    try:  # a SIGKILL is delivered asynchronously: give a dying sibling time to die
        sibling.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        pass
    if sibling.poll() is not None:
        return f"the sibling outside the agent tree died (status {sibling.returncode})"
    try:
        environ = open(f"/proc/{sibling.pid}/environ", "rb").read()
    except OSError as exc:
        return f"the sibling's memory is unreadable: {exc}"
    if b"PWNED" in environ:
        return "the sibling's memory was written"
    return None
