"""The client side of the daemon's control socket, for ``agentd run`` and the run commands.

Owns the wire format as clients speak it: one JSON object per line each way over the unix
socket (``$AGENTD_SOCKET``, else ``/run/agentd/agentd.sock``). ``run`` sends the request with
this process's stdin, stdout and stderr attached (SCM_RIGHTS), so the agent the daemon starts
reads and writes the user's terminal directly; then it waits for ``{"exit": N}`` and returns N.
Meanwhile SIGINT, SIGQUIT, SIGTERM and SIGHUP aimed at the client are forwarded to the agent.
Imports only the standard library, and only what each call needs, to keep ``agentd run`` fast.
"""

from __future__ import annotations

import json
import os

__all__ = ["DEFAULT_SOCKET", "socket_path", "available", "DaemonError", "request", "run"]

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
        raise DaemonError(f"cannot reach the agentd daemon at {path or socket_path()}: "
                          f"{exc.strerror or exc}") from None
    return sock


def _read_line(reader) -> dict:
    line = reader.readline()
    if not line:
        raise DaemonError("the daemon closed the connection")
    return json.loads(line)


def request(op: str, path: str | None = None, timeout: float = 30.0, **fields) -> dict:
    """One request, one reply (``{"ok": bool, ...}``)."""
    with _connect(path) as sock:
        sock.settimeout(timeout)
        sock.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
        with sock.makefile("r", encoding="utf-8") as reader:
            return _read_line(reader)


def run(argv: list[str], *, policy: str, workspace: str | None, agent_id: str | None,
        mode: str, audit_log: str | None = None, seccomp_profile: str | None = None,
        path: str | None = None, on_error=None) -> int:
    """Run ``argv`` under the daemon, attached to our stdio; return the agent's exit status
    (125 when the daemon refused, with its reason on stderr)."""
    import signal
    import socket

    say = on_error or (lambda text: os.write(2, f"agentd run: {text}\n".encode()))
    try:
        sock = _connect(path)
    except DaemonError as exc:
        say(str(exc))
        return 125
    cwd = os.getcwd()
    message = {"op": "run", "argv": list(argv), "env": dict(os.environ), "cwd": cwd,
               "workspace": os.path.realpath(workspace or cwd), "policy": policy,
               "agent_id": agent_id, "mode": mode, "audit_log": audit_log,
               "seccomp_profile": seccomp_profile}
    forwarded = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP)

    def forward(signum, frame):
        try:
            sock.sendall(json.dumps({"op": "signal", "signal": signum}).encode() + b"\n")
        except OSError:
            pass

    previous = {}
    with sock:
        try:
            socket.send_fds(sock, [json.dumps(message).encode() + b"\n"], [0, 1, 2])
            reader = sock.makefile("r", encoding="utf-8")
            reply = _read_line(reader)
            if not reply.get("ok"):
                say(reply.get("error", "the daemon refused the run"))
                return 125
            previous = {sig: signal.signal(sig, forward) for sig in forwarded}
            while True:
                message = _read_line(reader)
                if "exit" in message:
                    return int(message["exit"])
        except (OSError, ValueError, DaemonError) as exc:
            say(f"lost the daemon: {exc}")
            return 125
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
