"""Runs and their control: the runs directory, the control socket, and the operator's decision.

Owns what other terminals see of a run and how they act on it. Each run registers
``<runs>/<run_id>.json`` (supervisor pid, agent pid, command, policy, state) next to a unix
socket ``<runs>/<run_id>.sock`` (mode 0600); ``<runs>`` is ``$AGENTD_RUNS_DIR``, else
``/run/agentd/runs`` for root, else ``$XDG_RUNTIME_DIR/agentd/runs`` (``/tmp/agentd-UID/runs``).
A SIGSTOP verdict parks the agent (``agentd.trace.hold``: every process really stopped, in state
``T``); then ``OperatorReview`` waits, blocking in ``select`` on the socket and (on a terminal)
stdin, for allow / deny / kill. Only the operator may answer: connections queued before the
hold are dropped, a peer (SO_PEERCRED) in the agent's tree or of another user is refused, and
the socket is closed again after each decision. ``agentd kill`` signals the supervisor with
SIGTERM, which kills the tree whatever state it is in; a wait for the operator watches the
supervisor's termination descriptor (``RunRegistration.interrupt_fd``) and ends with
``RunTerminated``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentd.kernel import procfs
from agentd.trace.hold import DECISIONS

MAX_DECISION_LINE = 4096  # {"decision": "allow"} is 21 bytes

__all__ = [
    "runs_dir",
    "parse_decision",
    "MAX_DECISION_LINE",
    "RunRegistration",
    "RunTerminated",
    "list_runs",
    "send_decision",
    "kill_run",
    "find_run",
    "OperatorReview",
    "DECISIONS",
]


def runs_dir() -> str:
    explicit = os.environ.get("AGENTD_RUNS_DIR")
    if explicit:
        return explicit
    if os.geteuid() == 0:
        return "/run/agentd/runs"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "agentd", "runs")
    return f"/tmp/agentd-{os.geteuid()}/runs"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunTerminated(Exception):
    """SIGTERM ended the run while it waited for the operator (the tree is already killed)."""


@dataclass
class RunRegistration:
    """This run's entry in the runs directory, and its control socket."""

    run_id: str
    info: dict[str, Any]
    directory: str = field(default_factory=runs_dir)
    sock: Any = None  # the listening control socket, opened only while the run is held
    # Is this pid one of the agent's tasks? (set by the Holder from the tracer): its answers,
    # and its children's, are refused.
    agent: Callable[[int], bool] | None = None
    # Readable once SIGTERM asked the run to end (``assembly.Termination``): a wait for the
    # operator stops there. None: nothing ends the wait but an answer.
    interrupt_fd: int | None = None

    @property
    def info_path(self) -> str:
        return os.path.join(self.directory, f"{self.run_id}.json")

    @property
    def sock_path(self) -> str:
        return os.path.join(self.directory, f"{self.run_id}.sock")

    def create(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self.update(state="running")

    def open_socket(self) -> None:
        """Listen on ``<run_id>.sock`` (mode 0600). Only a held run needs it, so it is made
        then: ``agentd run`` without a SIGSTOP verdict never imports ``socket``."""
        import socket

        if self.sock is not None:
            return
        try:
            os.unlink(self.sock_path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(self.sock_path)
        finally:
            os.umask(old_umask)
        sock.listen(4)
        self.sock = sock

    def close_socket(self) -> None:
        """After a decision: nobody is to queue an answer for the next hold in advance."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        try:
            os.unlink(self.sock_path)
        except OSError:
            pass

    def drop_queued(self) -> int:
        """Drop connections queued before the hold began (the agent was running then)."""
        if self.sock is None:
            return 0
        dropped = 0
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    conn, _ = self.sock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                conn.close()
                dropped += 1
        finally:
            self.sock.setblocking(True)
        return dropped

    def peer_refusal(self, conn: Any) -> str | None:
        """Why this control connection may not decide, or None. SO_PEERCRED names the process
        that connected: not one of the agent's (nor a descendant of one), and for a non-root
        supervisor, the same user (or root)."""
        import socket
        import struct

        try:
            pid, uid, _gid = struct.unpack(
                "3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            )
        except OSError as exc:
            return f"cannot read the peer's credentials: {exc.strerror}"
        euid = os.geteuid()
        if euid != 0 and uid not in (euid, 0):
            return f"peer uid {uid} is not the supervisor's ({euid})"
        if pid <= 0:
            return "the peer's pid is not visible here (another pid namespace)"
        if self.agent is not None:
            current, steps = pid, 0
            while current > 1 and steps < 4096:
                if self.agent(current):
                    return f"peer pid {pid} is the agent's own process tree"
                current, steps = _parent_pid(current), steps + 1
        return None

    def update(self, **changes: Any) -> None:
        self.info.update(changes)
        tmp = self.info_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(self.info, handle)
        os.replace(tmp, self.info_path)

    def remove(self) -> None:
        for path in (self.info_path, self.sock_path):
            try:
                os.unlink(path)
            except OSError:
                pass
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def wait_for_decision(self, prompt: str | None) -> tuple[str, str]:
        """Block until an operator decides: ``(decision, who)``. No polling: one select().
        Raises ``RunTerminated`` when the run is terminated meanwhile (``interrupt_fd``)."""
        import select

        self.open_socket()
        self.drop_queued()
        watch: list[Any] = [self.sock]
        tty = prompt is not None and sys.stdin is not None and os.isatty(0)
        if tty and prompt is not None:
            os.write(2, prompt.encode("utf-8", "replace"))
            watch.append(0)
        if self.interrupt_fd is not None:
            watch.append(self.interrupt_fd)
        while True:
            ready, _, _ = select.select(watch, [], [])
            if self.interrupt_fd is not None and self.interrupt_fd in ready:
                raise RunTerminated(f"run {self.run_id} was terminated while held")
            if 0 in ready:
                line = os.read(0, 256).decode("utf-8", "replace").strip().lower()
                choice = {
                    "a": "allow",
                    "allow": "allow",
                    "d": "deny",
                    "deny": "deny",
                    "k": "kill",
                    "kill": "kill",
                }.get(line)
                if choice:
                    return choice, "terminal"
                os.write(2, b"agentd: answer a(llow), d(eny) or k(ill): ")
            if self.sock in ready:
                conn, _ = self.sock.accept()
                with conn:
                    conn.settimeout(5)
                    refusal = self.peer_refusal(conn)
                    if refusal is not None:
                        os.write(2, f"agentd: control connection refused: {refusal}\n".encode())
                        try:
                            conn.sendall(
                                json.dumps({"ok": False, "error": refusal}).encode() + b"\n"
                            )
                        except OSError:
                            pass
                        continue
                    try:
                        decision = parse_decision(_read_line(conn))
                    except ValueError as exc:
                        _answer(conn, {"ok": False, "error": str(exc)})
                        continue
                    # INVARIANT: the decision counts even if the peer hung up before the answer
                    _answer(conn, {"ok": True, "decision": decision})
                    return decision, "control socket"


def parse_decision(line: bytes) -> str:
    """The decision in one control-socket request line, ``{"decision": "allow"}`` (or deny,
    kill); ``ValueError`` with one line saying why not. Any local process of the supervisor's
    user may connect: the line is bounded, and JSON nested too deep is refused, not recursed."""
    if len(line) > MAX_DECISION_LINE:
        raise ValueError(f"request longer than {MAX_DECISION_LINE} bytes")
    try:
        request = json.loads(line)
    except RecursionError:
        raise ValueError("request is not JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"request is not JSON: {' '.join(str(exc).split())}") from None
    if not isinstance(request, dict):
        raise ValueError('request is not a JSON object: send {"decision": "allow"}')
    decision = request.get("decision")
    if not isinstance(decision, str) or decision not in DECISIONS:
        raise ValueError("decision must be one of " + ", ".join(DECISIONS))
    return decision


def _read_line(conn: Any) -> bytes:
    """One request line (bounded; a silent peer times out); ValueError when there is none."""
    try:
        line = conn.makefile("rb").readline(MAX_DECISION_LINE + 1)
    except OSError as exc:
        raise ValueError(f"cannot read the request: {exc.strerror or exc}") from None
    return line.rstrip(b"\r\n")


def _answer(conn: Any, reply: dict[str, Any]) -> None:
    """One answer line; a peer that hung up meanwhile misses it."""
    try:
        conn.sendall(json.dumps(reply).encode() + b"\n")
    except OSError:
        pass


def _parent_pid(pid: int) -> int:
    info = procfs.stat(pid)
    return info.ppid if info is not None else 0


def list_runs(directory: str | None = None) -> list[dict[str, Any]]:
    """Every live run in the runs directory (stale entries of dead supervisors are removed)."""
    directory = directory or runs_dir()
    runs = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    for name in names:
        if not name.endswith(".json"):
            continue
        path = os.path.join(directory, name)
        try:
            with open(path, encoding="utf-8") as handle:
                info = json.load(handle)
        except (OSError, ValueError):
            continue
        if not _alive(int(info.get("supervisor_pid", 0))):
            for stale in (path, path[:-5] + ".sock"):
                try:
                    os.unlink(stale)
                except OSError:
                    pass
            continue
        runs.append(info)
    return runs


def find_run(run_id: str, directory: str | None = None) -> dict[str, Any]:
    for info in list_runs(directory):
        if info.get("run_id") == run_id:
            return info
    raise LookupError(
        f"no running agentd run {run_id!r} in {directory or runs_dir()} (see `agentd ps`)"
    )


def send_decision(run_id: str, decision: str, directory: str | None = None) -> dict[str, Any]:
    """Tell a held run's supervisor to allow, deny or kill; returns its answer."""
    info = find_run(run_id, directory)
    if info.get("state") != "held":
        raise RuntimeError(f"run {run_id} is not held (state: {info.get('state')})")
    import socket

    path = os.path.join(directory or runs_dir(), f"{run_id}.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(path)
        conn.sendall(json.dumps({"decision": decision}).encode() + b"\n")
        return json.loads(conn.makefile("r").readline() or "{}")


def kill_run(run_id: str, directory: str | None = None) -> int:
    """SIGTERM the run's supervisor, which kills the whole agent tree; returns its pid."""
    info = find_run(run_id, directory)
    pid = int(info["supervisor_pid"])
    os.kill(pid, signal.SIGTERM)
    return pid


class OperatorReview:
    """The operator's side of a SIGSTOP verdict (``agentd.trace.hold``): once the tracer has
    parked and detached the agent, say so in the runs directory, prompt on the terminal, wait
    for allow / deny / kill on the control socket or stdin, and return ``(decision, who)``."""

    def __init__(self, registration: RunRegistration):
        self.registration = registration

    def __call__(self, hold) -> tuple[str, str]:
        verdict = hold.verdict
        deciding = verdict.deciding
        what = f"{deciding.action_type} {deciding.target}" if deciding else f"syscall {hold.nr}"
        batch = bool(getattr(verdict, "confirmation", False))
        self.registration.agent = hold.contains
        self.registration.open_socket()
        self.registration.update(
            state="held",
            held={
                "pid": hold.task.tgid,
                "what": what,
                "reason": verdict.reason,
                "pattern_ids": list(deciding.pattern_ids) if deciding else [],
                "since": time.time(),
                "batch": batch,
            },
        )
        if batch:
            choices = (
                "agentd: [a]llow this batch, [d]eny it, [k]ill the agent? (the answer "
                "holds until a minute passes without such an action) "
            )
        else:
            choices = "agentd: [a]llow once, [d]eny, [k]ill the agent? "
        prompt = (
            f"\nagentd: run {self.registration.run_id} HELD: pid {hold.task.tgid} wants "
            f"{what}\nagentd: {verdict.reason}\n{choices}"
        )
        try:
            return self.registration.wait_for_decision(prompt)
        finally:
            self.registration.close_socket()
            self.registration.update(state="running", held=None)
