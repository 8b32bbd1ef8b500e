"""The action types of Agent OS and the target format of each.

One table, shared by the engine (typo protection when a pattern names an action type), the YAML
validator (did-you-mean hints) and the docs. The OS-level supervisor produces the file, shell,
process, network and memory types from syscalls; the SDK (``KernelSpace``) governs the rest.
"""

from __future__ import annotations

import difflib

# action type -> the target format, as in the policy reference's "Action Types Reference".
ACTION_TYPES: dict[str, str] = {
    "file_read": "absolute file path: /path/to/file.txt",
    "file_write": "absolute file path: /path/to/file.txt",
    "file_delete": "absolute file path: /path/to/file.txt",
    "file_move": "source and destination: /old/path -> /new/path",
    "file_chmod": "path with octal mode: /path:0755",
    "database_read": "SQL query: SELECT * FROM users",
    "database_write": "SQL query: INSERT INTO users ...",
    "database_delete": "SQL query: DELETE FROM users ...",
    "database_execute": "SQL command: CREATE TABLE ...",
    "shell_execute": "command line: ls -la /home",
    "network_request": "full URL: https://api.example.com/data",
    "network_connect": "host and port: 192.168.1.1:5432, [::1]:22, unix:/path",
    "process_spawn": "executable: /usr/bin/python3",
    "memory_access": "shared memory region: shm://shared_data",
    "env_read": "variable name: API_KEY",
    "env_write": "variable name: PATH",
}


def suggest_action_type(name: str) -> str | None:
    """The closest known action type to a misspelt ``name``, or None."""
    close = difflib.get_close_matches(name, ACTION_TYPES, n=1, cutoff=0.6)
    return close[0] if close else None


def check_action_type(name: object) -> str:
    """Return ``name`` if it is a known action type, else raise ValueError with a hint."""
    if not isinstance(name, str) or name not in ACTION_TYPES:
        hint = suggest_action_type(name) if isinstance(name, str) else None
        did_you_mean = f" (did you mean {hint!r}?)" if hint else ""
        raise ValueError(
            f"unknown action type {name!r}{did_you_mean}; known: {', '.join(ACTION_TYPES)}"
        )
    return name
