"""Workload: N TCP connects to a loopback listener this same process runs (in a thread).

    python3 tcp_connect_self.py N

The connecting loop is tcp_connect.py's; the listener (bind, listen, accept and close every
connection) is a thread of this process rather than the bench's, so the workload needs nothing
outside its own network namespace and runs the same under every runner, including an agent in
a namespace of its own (agentd's network plane), whose 127.0.0.1 is not the host's.
"""
import socket
import sys
import threading

count = int(sys.argv[1])
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", 0))
listener.listen(1024)
port = listener.getsockname()[1]


def serve() -> None:
    for _ in range(count):
        conn, _ = listener.accept()
        conn.close()


server = threading.Thread(target=serve)
server.start()
for _ in range(count):
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.recv(1)   # the listener closes at once: wait for it, so no connect outlives its turn
server.join()
listener.close()
