"""The client side of the daemon's control socket, for ``agentd run`` and the run commands.

Owns the conversation as clients hold it: one request line, answers read back, over the unix
socket (``$AGENTD_SOCKET``, else ``/run/agentd/agentd.sock``). Every request is built with the
models of ``protocol`` and every answer is read with them, the same models the daemon validates
with; only ``run``, the path of every ``agentd run``, writes and reads its lines with
``run_wire`` instead (no pydantic to import; a test holds those lines to the models). ``run``
sends the request with this process's stdin, stdout and stderr attached (SCM_RIGHTS), so the
agent the daemon starts reads and writes the user's terminal directly; then it waits for the
run's exit line and returns its status. Meanwhile SIGINT, SIGQUIT, SIGTERM and SIGHUP aimed at
the client are forwarded to the agent. ``available`` is a stat and imports nothing: it decides
the fast path of ``agentd run``; the protocol (pydantic) is imported by the other calls that
talk.
"""

from __future__ import annotations

import os

# Not typing's: importing typing costs ~3 ms of every `agentd run` through the daemon
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from .protocol import Reply

__all__ = ["DEFAULT_SOCKET", "socket_path", "available", "DaemonError", "ask", "request", "run"]

DEFAULT_SOCKET = "/run/agentd/agentd.sock"


class DaemonError(RuntimeError):
    """The daemon refused or could not be reached; the message is the daemon's."""


def socket_path() -> str:
    return os.environ.get("AGENTD_SOCKET") or DEFAULT_SOCKET


def available(path: str | None = None) -> bool:
    """Is a daemon socket there? (A stat, nothing more: the fast path of ``agentd run``.)"""
    import stat

    try:
        return stat.S_ISSOCK(os.stat(path or socket_path()).st_mode)
    except OSError:
        return False


def _connect(path: str | None):
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path or socket_path())
    except OSError as exc:
        sock.close()
        raise DaemonError(
            f"cannot reach the agentd daemon at {path or socket_path()}: {exc.strerror or exc}"
        ) from None
    return sock


def _answer_line(reader) -> bytes:
    line = reader.readline()
    if not line:
        raise DaemonError("the daemon closed the connection")
    return line


def _read(reader, model):
    """The next answer line, read with its ``protocol`` model."""
    from pydantic import ValidationError

    line = _answer_line(reader)
    try:
        return model.model_validate_json(line)
    except ValidationError as exc:
        raise DaemonError(
            f"the daemon's answer is not a {model.__name__}: "
            f"{exc.errors(include_url=False)[0]['msg']}"
        ) from None


def ask(message, path: str | None = None, timeout: float = 30.0) -> Reply:
    """One request (a ``protocol`` request model), its answer (the op's reply model)."""
    from . import protocol

    with _connect(path) as sock:
        sock.settimeout(timeout)
        sock.sendall(protocol.encode(message))
        with sock.makefile("rb") as reader:
            return _read(reader, protocol.REPLIES[message.op])


def request(op: str, path: str | None = None, timeout: float = 30.0, **fields: Any) -> dict:
    """``ask`` by name: the request ``op`` with ``fields``; the answer as a dict of the fields the
    daemon sent (``{"ok": bool, ...}``), read with the op's reply model."""
    from . import protocol

    answer = ask(protocol.request_for(op, **fields), path, timeout)
    return answer.model_dump(exclude_unset=True)


def run(
    argv: list[str],
    *,
    policy: str,
    workspace: str | None,
    agent_id: str | None,
    mode: str,
    audit_log: str | None = None,
    seccomp_profile: str | None = None,
    path: str | None = None,
    on_error=None,
) -> int:
    """Run ``argv`` under the daemon, attached to our stdio; return the agent's exit status
    (125 when the daemon refused, with its reason on stderr)."""
    import signal
    import socket

    from . import run_wire

    if mode not in run_wire.MODES:  # refused before connecting: no request to build
        raise ValueError(f"unknown mode {mode!r} (enforce or audit)")
    say = on_error or (lambda text: os.write(2, f"agentd run: {text}\n".encode()))
    try:
        sock = _connect(path)
    except DaemonError as exc:
        say(str(exc))
        return 125
    cwd = os.getcwd()
    message = run_wire.run_request(
        argv=list(argv),
        env=dict(os.environ),
        cwd=cwd,
        workspace=os.path.realpath(workspace or cwd),
        policy=policy,
        agent_id=agent_id,
        mode=mode,
        audit_log=audit_log,
        seccomp_profile=seccomp_profile,
    )
    forwarded = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP)
    signals = {sig: run_wire.signal_request(sig) for sig in forwarded}

    def forward(signum, frame):
        try:
            sock.sendall(signals[signum])
        except OSError:
            pass

    previous = {}
    with sock:
        try:
            socket.send_fds(sock, [message], [0, 1, 2])
            reader = sock.makefile("rb")
            ok, error = run_wire.read_run_reply(_answer_line(reader))
            if not ok:
                say(error or "the daemon refused the run")
                return 125
            previous = {sig: signal.signal(sig, forward) for sig in forwarded}
            return run_wire.read_run_exit(_answer_line(reader))
        except (OSError, DaemonError, run_wire.AnswerError) as exc:
            say(f"lost the daemon: {exc}")
            return 125
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
