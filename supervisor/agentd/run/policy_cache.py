"""A per-user cache of loaded policies, so that ``agentd run`` compiles a policy once.

Owns ``load_policy_cached(name_or_path, variables)``: the same ``Policy`` as
``agent_os.loader.load_policy``, taken from a pickle in ``$XDG_CACHE_HOME/agentd/policies/``
(default ``~/.cache/agentd/policies/``) when one matches, else loaded, then stored. Loading a
policy is mostly compiling its regexes in pure Python (``re._parser``/``_compiler``, ~0.3 ms
each); the pickle keeps each regex's compiled program and rebuilds it with ``_sre.compile``, so
a hit costs a few milliseconds and never imports YAML. A cache entry is used only when its key
matches: the SHA-256 of the policy file and of the YAML files of its own directory and of the
search path, the variables, the search path, the Python version and the size and mtime of every
``agent_os`` source file; and the SHA-256 of every file the loaded policy came from (``extends:``
and ``merge:`` may name files elsewhere), listed in the entry and checked before unpickling. Pickle
runs code, so an entry is read
only from a directory owned by us and closed to others (0700), from a file owned by us that no
one else may write, and its key is checked again after loading; ``agentd run`` also puts the
cache directory among the paths the agent may not write (``Session.protected_paths``). Any
problem with the cache (unreadable, stale, foreign, a regex that cannot be rebuilt) falls back
to a normal load: the cache can make start-up fast, never change a decision. Set
``AGENTD_POLICY_CACHE=0`` to disable it.
"""

from __future__ import annotations

import copyreg
import hashlib
import io
import os
import pickle
import re
import stat
import sys
import threading
from collections.abc import Mapping
from typing import Any

__all__ = [
    "MAX_ENTRIES",
    "cache_dir",
    "cache_enabled",
    "evict",
    "load_policy_cached",
    "policy_key",
    "private_dir",
    "read_private",
    "write_private",
]

_FORMAT = 1
MAX_ENTRIES = 64
_POLICY_SUFFIXES = (".yaml", ".yml")


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "agentd", "policies")


def _search_dirs() -> list[str]:
    """The loader's search path, spelled out here: importing the loader imports YAML."""
    import agent_os

    builtin = os.path.join(
        os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(agent_os.__file__)))),
        "policies",
    )  # agent_os.loader.BUILTIN_POLICY_DIR
    dirs = [d for d in os.environ.get("AGENT_OS_POLICY_PATH", "").split(os.pathsep) if d]
    return dirs + ["/etc/agentd/policies", builtin]


def _hash_policy_files(directory: str, digest) -> None:
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        digest.update(f"no dir {directory}\0".encode())
        return
    for name in names:
        if name.endswith(_POLICY_SUFFIXES):
            path = os.path.join(directory, name)
            try:
                with open(path, "rb") as handle:
                    digest.update(f"{path}\0".encode() + hashlib.sha256(handle.read()).digest())
            except OSError as exc:
                digest.update(f"{path}\0{exc.errno}\0".encode())


def _engine_fingerprint(digest) -> None:
    import agent_os

    root = os.path.dirname(os.path.abspath(agent_os.__file__))
    for name in sorted(os.listdir(root)):
        if name.endswith(".py"):
            info = os.stat(os.path.join(root, name))
            digest.update(f"{name}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())


def policy_key(name_or_path: str, variables: Mapping[str, str] | None) -> str:
    """The cache key: everything a loaded policy depends on (see the module docstring)."""
    digest = hashlib.sha256()
    digest.update(f"agentd-policy-cache {_FORMAT} {sys.hexversion}\0{name_or_path}\0".encode())
    digest.update(repr(sorted((variables or {}).items())).encode() + b"\0")
    dirs = _search_dirs()
    digest.update(repr(dirs).encode() + b"\0")
    if os.sep in name_or_path or name_or_path.endswith(_POLICY_SUFFIXES):
        path = os.path.abspath(name_or_path)
        dirs = [os.path.dirname(path)] + dirs
        try:
            with open(path, "rb") as handle:
                digest.update(hashlib.sha256(handle.read()).digest())
        except OSError as exc:
            digest.update(f"unreadable {exc.errno}".encode())
    for directory in dirs:
        _hash_policy_files(directory, digest)
    _engine_fingerprint(digest)
    return digest.hexdigest()


# --- pickling compiled regexes --------------------------------------------------------------------


def _rebuild_regex(pattern, flags, code, groups, groupindex, indexgroup):
    import _sre

    return _sre.compile(pattern, flags, code, groups, groupindex, indexgroup)


def _regex_parts(regex: re.Pattern) -> tuple | None:
    """The arguments of ``_sre.compile`` that rebuild ``regex`` exactly, or None."""
    try:
        import _sre
        from re import _compiler, _parser  # type: ignore[attr-defined]  # private, no stubs

        parsed = _parser.parse(regex.pattern, regex.flags)
        code = [int(op) for op in _compiler._code(parsed, regex.flags)]  # plain ints pickle
        groupindex = dict(parsed.state.groupdict)
        indexgroup = [None] * parsed.state.groups
        for key, index in groupindex.items():
            indexgroup[index] = key
        parts = (
            regex.pattern,
            regex.flags | parsed.state.flags,
            code,
            parsed.state.groups - 1,
            groupindex,
            tuple(indexgroup),
        )
        # INVARIANT: a Pattern compares equal only with the same pattern, flags and program.
        if _sre.compile(*parts) != regex:
            return None
        return parts
    except Exception:  # noqa: BLE001 - an internal we do not understand: recompile on load
        return None


def _reduce_regex(regex: re.Pattern):
    parts = _regex_parts(regex)
    if parts is None:
        return re.compile, (regex.pattern, regex.flags)
    return _rebuild_regex, parts


class _PolicyPickler(pickle.Pickler):
    dispatch_table = copyreg.dispatch_table.copy()
    dispatch_table[re.Pattern] = _reduce_regex
    # Locks guard caches inside the engine; a loaded policy gets fresh ones.
    dispatch_table[type(threading.Lock())] = lambda lock: (threading.Lock, ())
    dispatch_table[type(threading.RLock())] = lambda lock: (threading.RLock, ())


# --- the cache ------------------------------------------------------------------------------------


def private_dir(directory: str, create: bool) -> bool:
    """True when ``directory`` is ours and closed to everyone else (made so when ``create``)."""
    if create:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    try:
        info = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o077


def cache_enabled() -> bool:
    """``AGENTD_POLICY_CACHE=0`` turns off both caches of the directory (policies, filters)."""
    return os.environ.get("AGENTD_POLICY_CACHE", "1") != "0"


def read_private(path: str) -> bytes | None:
    """The bytes of the cache entry ``path``, opened without following a symlink; None unless
    it is a regular file of ours that no one else may write. OSError when it cannot be read."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if info.st_uid != os.geteuid() or info.st_mode & 0o022 or not stat.S_ISREG(info.st_mode):
            return None
        return handle.read()


def write_private(path: str, data: bytes) -> None:
    """Replace the cache entry ``path`` with ``data`` at once (a 0600 temporary file beside it,
    renamed over it); OSError when it cannot be written, with nothing left behind."""
    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(
        temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
    )
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def evict(directory: str, suffix: str, keep: int) -> None:
    """Keep the newest ``keep`` entries named ``*suffix`` (runs over many temporary workspaces
    add one each)."""
    try:
        entries = [entry for entry in os.scandir(directory) if entry.name.endswith(suffix)]
        if len(entries) <= keep:
            return
        entries.sort(key=lambda entry: entry.stat(follow_symlinks=False).st_mtime_ns)
        for entry in entries[: len(entries) - keep]:
            os.unlink(entry.path)
    except OSError:
        pass


def _source_files(policy, seen: set | None = None) -> list[str] | None:
    """Every file the loaded policy came from (its own, what it extends, what it merges), or
    None when some part has no recorded source (then it is not cached)."""
    seen = set() if seen is None else seen
    if id(policy) in seen:
        return []
    seen.add(id(policy))
    files: list[str] = []
    parts = getattr(policy, "parts", None)
    if parts:  # a merge: document; its parts carry the sources
        for part in parts:
            sub = _source_files(part, seen)
            if sub is None:
                return None
            files += sub
    else:
        source = getattr(policy, "source", None)
        if not source:
            return None
        files.append(os.path.abspath(os.fspath(source)))
    for parent in getattr(policy, "extends", None) or ():
        sub = _source_files(parent, seen)
        if sub is None:
            return None
        files += sub
    return sorted(set(files))


def _digest_files(files: list[str]) -> str:
    digest = hashlib.sha256()
    for path in files:
        try:
            with open(path, "rb") as handle:
                digest.update(f"{path}\0".encode() + hashlib.sha256(handle.read()).digest())
        except OSError as exc:
            digest.update(f"{path}\0unreadable {exc.errno}\0".encode())
    return digest.hexdigest()


def _read_entry(path: str, key: str):
    """The cached policy, or None. Layout: the key, the JSON list of source files and the
    SHA-256 over their contents (one line each), then the pickle; the pickle is loaded only
    when all three still match."""
    data = read_private(path)
    if data is None:
        return None
    header_key, files_line, files_digest, body = data.split(b"\n", 3)
    if header_key != key.encode():
        return None
    import json

    files = json.loads(files_line)
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    if _digest_files(files).encode() != files_digest:
        return None  # a policy it extends (perhaps outside the hashed directories) changed
    entry = pickle.loads(body)
    if not isinstance(entry, dict) or entry.get("key") != key:
        return None
    return entry.get("policy")


def _dumps(key: str, policy, files: list[str]) -> bytes:
    import json

    buffer = io.BytesIO()
    buffer.write(
        key.encode()
        + b"\n"
        + json.dumps(files).encode()
        + b"\n"
        + _digest_files(files).encode()
        + b"\n"
    )
    _PolicyPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump({"key": key, "policy": policy})
    return buffer.getvalue()


def _write_entry(directory: str, path: str, key: str, policy) -> None:
    """Store ``policy`` with its matchers built (``Policy.compile()``: that is most of the cost
    a hit saves); a policy whose matchers cannot be pickled (an RE2 set) is stored unbuilt."""
    files = _source_files(policy)
    if files is None:
        return
    data = _dumps(key, policy, files)
    compile_now = getattr(policy, "compile", None)
    if callable(compile_now):
        compile_now()
        try:
            data = _dumps(key, policy, files)
        except Exception:  # noqa: BLE001 - keep the unbuilt form
            pass
    write_private(path, data)


def _slot(name_or_path: str, variables: Mapping[str, str] | None) -> str:
    """One file per (policy, variables): a changed policy replaces its entry, never adds one."""
    where = os.path.abspath(name_or_path) if os.sep in name_or_path else name_or_path
    text = f"{where}\0{sorted((variables or {}).items())!r}"
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def load_policy_cached(name_or_path: str, variables: Mapping[str, str] | None = None) -> Any:
    """``agent_os.loader.load_policy(name_or_path, variables)``, through the cache.

    Errors of the policy itself (``PolicyError``, ``OSError``) are raised as ``load_policy``
    raises them; errors of the cache are never raised.
    """
    if not cache_enabled():
        from agent_os.loader import load_policy

        return load_policy(name_or_path, variables=dict(variables or {}))
    directory = cache_dir()
    key = path = None
    try:
        key = policy_key(name_or_path, variables)
        path = os.path.join(directory, _slot(name_or_path, variables) + ".pickle")
        if private_dir(directory, create=False) and os.path.exists(path):
            policy = _read_entry(path, key)
            if policy is not None:
                return policy
    except Exception:  # noqa: BLE001 - a broken cache entry is a miss
        pass
    from agent_os.loader import load_policy

    policy = load_policy(name_or_path, variables=dict(variables or {}))
    if key is not None and path is not None:
        try:
            if private_dir(directory, create=True):
                _write_entry(directory, path, key, policy)
                evict(directory, ".pickle", MAX_ENTRIES)
        except Exception:  # noqa: BLE001 - a cache we cannot write is only slower
            pass
    return policy
