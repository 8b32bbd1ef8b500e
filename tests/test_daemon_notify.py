"""sd_notify without systemd: a fake NOTIFY_SOCKET receives READY=1, STATUS= and WATCHDOG=1
from a real daemon; without NOTIFY_SOCKET nothing is sent."""

from __future__ import annotations

import socket

import pytest

from agentd.daemon.systemd import sd_notify
from helpers.agentd_daemon import DaemonUnderTest


def test_no_notify_socket_is_a_no_op():
    assert sd_notify("READY=1", environ={}) is False


def test_a_full_notify_queue_never_blocks_the_sender(tmp_path):
    """Nobody reads the notify socket: the queue fills up (net.unix.max_dgram_qlen) and the
    daemon's status lines are dropped instead of freezing its loop."""
    address = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(address)
        results = [sd_notify(f"STATUS=run {i}", environ={"NOTIFY_SOCKET": address})
                   for i in range(200)]
    assert results[0] is True and results[-1] is False


@pytest.mark.parametrize("abstract", [False, True])
def test_datagram_reaches_the_notify_socket(tmp_path, abstract):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        if abstract:
            name = f"agentd-test-{id(receiver)}"
            receiver.bind("\0" + name)
            address = "@" + name
        else:
            address = str(tmp_path / "notify")
            receiver.bind(address)
        receiver.settimeout(5)
        assert sd_notify("STATUS=hello", environ={"NOTIFY_SOCKET": address})
        assert receiver.recv(100) == b"STATUS=hello"


def test_daemon_says_ready_status_and_feeds_the_watchdog(tmp_path):
    daemon = DaemonUnderTest(tmp_path)
    try:
        daemon.start(extra_env={"WATCHDOG_USEC": "200000"})
        assert daemon.wait_notification("READY=1")
        status = daemon.wait_notification("STATUS=")
        assert "agent(s) running" in status
        # WATCHDOG_USEC=0.2 s: the loop must ping at least every 0.1 s even when idle.
        daemon.notifications.clear()
        daemon.wait_notification("WATCHDOG=1", timeout=2)
        daemon.notifications.clear()
        daemon.wait_notification("WATCHDOG=1", timeout=2)
        daemon.stop()
        assert daemon.process.returncode == 0, daemon.log_text()
    finally:
        daemon.stop()
