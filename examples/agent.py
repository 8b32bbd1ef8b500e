#!/usr/bin/env python3
"""A small "agent" that tries what the strict policy's table forbids, and says what happened.

Run it under agentd (the README's command)::

    agentd run --policy strict -- python3 examples/agent.py            # every attempt, in order
    agentd run --policy strict -- python3 examples/agent.py read_shadow # one attempt

Each attempt prints ``-> name: what it tries`` first and ``   result`` after. The first two are
ordinary work that strict lets through (reading the workspace; connecting to a server the agent
started itself on loopback). Under strict, a CRITICAL violation (an attack: reading /etc/shadow
or an SSH key, writing /etc, sudo) kills the whole agent: the run ends there with status 137 and
agentd says why on stderr, so the attempts are ordered from the ones strict allows, to the ones
it merely refuses (EACCES, the agent goes on: writing outside the workspace, ``rm -rf``), to
the ones it kills for; name one to see it alone.

Every attempt is harmless if the sandbox were to fail: /etc/passwd is opened for appending and
closed without writing a byte; ``rm -rf`` targets a scratch directory this agent made itself;
``sudo -n true`` runs nothing; the network attempt connects to a listener this agent opened on
127.0.0.1 (loopback never leaves the machine). Nothing here writes outside the workspace and
$TMPDIR when it succeeds.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile


def read_workspace() -> str:
    names = sorted(os.listdir("."))[:5]
    for name in names:
        if os.path.isfile(name):
            with open(name, "rb") as handle:
                return f"read {len(handle.read())} bytes of ./{name} (allowed)"
    with open("agent-notes.txt", "w") as handle:  # an empty workspace: make something to read
        handle.write("notes\n")
    with open("agent-notes.txt") as handle:
        return f"wrote and read back ./agent-notes.txt: {handle.read().strip()!r} (allowed)"


def connect_loopback() -> str:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    with socket.socket() as client:
        client.connect(("127.0.0.1", port))
    return f"connected to 127.0.0.1:{port}, a listener of its own (allowed)"


def write_outside_workspace() -> str:
    path = "/var/tmp/agentd-example-agent.txt"
    with open(path, "w") as handle:
        handle.write("should not exist\n")
    os.unlink(path)
    return f"wrote {path} (and removed it again)"


def read_ssh_key() -> str:
    path = os.path.expanduser("~/.ssh/id_rsa")
    with open(path, "rb") as handle:
        return f"read {len(handle.read())} bytes of {path}"


def read_shadow() -> str:
    with open("/etc/shadow", "rb") as handle:
        return f"read {len(handle.read())} bytes of /etc/shadow"


def write_passwd() -> str:
    # Append mode and no write: the policy decides on opening for writing; if the sandbox failed
    # this opens the file and closes it again, unchanged.
    with open("/etc/passwd", "a"):
        pass
    return "opened /etc/passwd for writing (nothing was written)"


def rm_rf() -> str:
    # one fixed name, so that refused runs do not leave a new directory behind each time
    scratch = os.path.join(tempfile.gettempdir(), "agentd-example-scratch")
    os.makedirs(scratch, exist_ok=True)
    with open(os.path.join(scratch, "file"), "w") as handle:
        handle.write("scratch\n")
    done = subprocess.run(["rm", "-rf", scratch], capture_output=True, text=True)
    if done.returncode != 0:
        return f"rm -rf {scratch} failed: {done.stderr.strip()} (status {done.returncode})"
    return f"rm -rf {scratch} ran"


def sudo() -> str:
    done = subprocess.run(["sudo", "-n", "true"], capture_output=True, text=True)
    if done.returncode != 0:
        return f"sudo -n true failed: {done.stderr.strip()} (status {done.returncode})"
    return "sudo -n true ran"


# name -> (what it tries, function); ordered allowed, refused, killed-for under strict
ATTEMPTS = {
    "read_workspace": ("read a file in the workspace", read_workspace),
    "connect_loopback": ("connect to a loopback port (a listener of our own)", connect_loopback),
    "write_outside_workspace": ("write /var/tmp/agentd-example-agent.txt", write_outside_workspace),
    "rm_rf": ("rm -rf a scratch directory outside the workspace", rm_rf),
    "read_ssh_key": ("read ~/.ssh/id_rsa", read_ssh_key),
    "read_shadow": ("read /etc/shadow", read_shadow),
    "write_passwd": ("open /etc/passwd for writing", write_passwd),
    "sudo": ("run sudo -n true", sudo),
}


def main(argv: list[str]) -> int:
    names = argv or list(ATTEMPTS)
    unknown = [name for name in names if name not in ATTEMPTS]
    if unknown:
        print(f"unknown attempt(s): {', '.join(unknown)}; choose from: {', '.join(ATTEMPTS)}",
              file=sys.stderr)
        return 2
    refused = 0
    for name in names:
        what, attempt = ATTEMPTS[name]
        print(f"-> {name}: {what}", flush=True)
        try:
            print(f"   {attempt()}", flush=True)
        except PermissionError as exc:
            refused += 1
            print(f"   refused: {exc.strerror} ({exc.filename or 'EACCES'})", flush=True)
        except OSError as exc:
            print(f"   failed: {exc.strerror} ({exc.filename or exc.errno})", flush=True)
    print(f"agent done: {refused} attempt(s) refused", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
