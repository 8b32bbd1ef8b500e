"""Workload: N TCP connects to a loopback listener (started by bench/run_bench.py).

    python3 tcp_connect.py PORT N
"""
import socket
import sys

port, count = int(sys.argv[1]), int(sys.argv[2])
for _ in range(count):
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.recv(1)   # the listener closes at once: wait for it, so no connect outlives its turn
