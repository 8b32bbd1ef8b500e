"""Run a probe in a forked child that first applies a prepared Landlock ruleset.

``run_in_child(prepared, probe)`` forks; the child applies ``prepared`` (None: no ruleset), calls
``probe()`` and sends its JSON-able dict back through a pipe; the parent closes its copy of the
ruleset, waits, and returns the dict. ``attempt(fn)`` is 0 when ``fn()`` worked, else its errno.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def attempt(action) -> int:
    """0 if ``action()`` worked, else its errno."""
    try:
        action()
        return 0
    except OSError as error:
        return error.errno or -1


def run_in_child(prepared, probe) -> dict:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        status = 0
        try:
            os.close(read_end)
            if prepared is not None:
                prepared.apply()
            result = probe()
        except BaseException as error:  # report everything: the parent asserts
            result, status = {"error": repr(error)}, 1
        os.write(write_end, json.dumps(result).encode())
        os._exit(status)
    os.close(write_end)
    if prepared is not None:
        prepared.close()
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    result = json.loads(b"".join(chunks) or b"{}")
    assert "error" not in result, result["error"]
    return result


def write_file(path: Path, data: bytes = b"x") -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
