"""The daemon's policies as validated snapshots: every policy a run may name, all or nothing.

Owns which policy text each name means. ``PolicyStore.build`` reads the built-ins, then
``<policy_dir>/<name>.yaml`` over them, and compiles each with placeholder variables, so an
invalid policy is found before any run needs it; ``load`` swaps in the complete new snapshot or
raises with every error and swaps nothing (``agentd reload``, SIGHUP, and the start). An entry
is the text itself with its version (the first 16 hex digits of its sha256): a run is compiled
from the text it was granted, and a reload tells running supervisors the new text by version.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

__all__ = ["PolicyEntry", "PolicyStore", "policy_version"]


def policy_version(text: str) -> str:
    """A policy text's version: the first 16 hex digits of its sha256."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PolicyEntry:
    name: str
    path: str
    text: str
    version: str  # policy_version(text)

    @classmethod
    def from_file(cls, path: str, name: str | None = None) -> PolicyEntry:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        return cls(name or path, path, text, policy_version(text))


class PolicyStore:
    """Every policy a run may name: the built-ins, overridden by ``<policy_dir>/<name>.yaml``.
    ``load()`` builds a complete new snapshot or raises with every error; the caller swaps."""

    def __init__(self, policy_dir: str):
        self.policy_dir = policy_dir
        self.entries: dict[str, PolicyEntry] = {}

    def search_path(self) -> list[str]:
        return [self.policy_dir]

    def build(self) -> tuple[dict[str, PolicyEntry], list[str]]:
        from agent_os.loader import BUILTIN_POLICY_DIR, policy_from_yaml_string

        sources: dict[str, str] = {}
        for directory in (str(BUILTIN_POLICY_DIR), self.policy_dir):
            try:
                names = sorted(os.listdir(directory))
            except FileNotFoundError:
                continue
            for file_name in names:
                if file_name.endswith(".yaml") and not file_name.startswith("."):
                    sources[file_name[:-5]] = os.path.join(directory, file_name)
        entries: dict[str, PolicyEntry] = {}
        errors: list[str] = []
        placeholder = {
            "WORKSPACE": "/nonexistent/workspace",
            "HOME": "/nonexistent/home",
            "TMPDIR": "/tmp",
        }
        for name, path in sources.items():
            try:
                entry = PolicyEntry.from_file(path, name)
                policy_from_yaml_string(entry.text, placeholder, self.search_path(), name=path)
            except Exception as exc:  # PolicyError, OSError, anything: the policy is invalid
                errors.append(_error_line(path, exc))
                continue
            entries[name] = entry
        return entries, errors

    def load(self) -> dict[str, tuple[str | None, str]]:
        """Swap in a new snapshot; returns {name: (old version, new version)} of what changed.
        Raises ValueError listing every error when any policy is invalid (nothing swapped)."""
        entries, errors = self.build()
        if errors:
            raise ValueError("\n".join(errors))
        changed = {}
        for name, entry in entries.items():
            old = self.entries.get(name)
            if old is None or old.version != entry.version:
                changed[name] = (old.version if old else None, entry.version)
        for name in set(self.entries) - set(entries):
            changed[name] = (self.entries[name].version, "removed")
        self.entries = entries
        return changed


def _error_line(path: str, exc: Exception) -> str:
    """An invalid policy's error, naming its file once (the loader's own messages may already
    start with it, or span several lines)."""
    text = str(exc)
    if "\n" in text:
        return f"{path}:\n{text}"
    return text if text.startswith(path) else f"{path}: {text}"
