"""systemd for the daemon: the sd_notify datagram protocol and where the logs go.

Owns the two ways the daemon talks to systemd. ``sd_notify`` sends one datagram (``READY=1``,
``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1``) to ``$NOTIFY_SOCKET``; the protocol is a dozen
lines, so no dependency, and with the variable unset it does nothing (the daemon run by hand and
in the tests). ``setup_logging`` sends the logs to the journal through systemd-python's
``JournalHandler`` when it is installed (structured fields: ``RUN_ID``, ``AGENT_UID``,
``POLICY``), else to stderr, which systemd also journals, without the fields.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

__all__ = ["sd_notify", "setup_logging"]

log = logging.getLogger("agentd.daemon.systemd")


def sd_notify(message: str, environ=os.environ) -> bool:
    """Send one sd_notify datagram (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``) to
    ``$NOTIFY_SOCKET``; a no-op returning False when systemd did not ask for it."""
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            # Never wait: a status line is not worth freezing the daemon's loop for, and a
            # datagram queue whose reader lags is full after ten (net.unix.max_dgram_qlen).
            sock.sendto(message.encode(), socket.MSG_DONTWAIT, address)
        except BlockingIOError:
            log.debug("sd_notify %r dropped: the notify socket's queue is full", message)
            return False
        except OSError as exc:
            log.warning("sd_notify %r failed: %s", message, exc)
            return False
    return True


def setup_logging(level: int = logging.INFO) -> logging.Handler:
    """Journal with structured fields (systemd-python's JournalHandler) when importable, else
    stderr — which systemd also routes to the journal, without the fields."""
    try:
        from systemd.journal import JournalHandler

        handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER="agentd")
    except ImportError:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("agentd[%(process)d]: %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return handler
