"""What really runs when a tracee execs a file: the program behind the name it was given.

Owns the identity of executables for the decoder (``decode._decode_exec``). A name is not an
identity: a copy of /bin/rm called ``ls``, a memfd holding rm, a script whose shebang is
``#!/bin/rm -rf`` and ``ld-linux.so /bin/rm`` all run rm. ``ExecIdentifier.identify(tid, path,
argv)`` follows what the kernel and the loader do and returns every command line and every
program path that the exec amounts to: (a) the shebang chain, as binfmt_script reads it (the
first 256 bytes; interpreter and one optional argument; bounded depth); (b) the dynamic loader
run directly, whose first non-option argument is the program; (c) content identity: a file that
is not the file of its name in a standard bin dir (checked by inode, no hashing) is hashed
(SHA-256, files up to ``MAX_HASH_BYTES``) and named after every system binary (and every file in
a directory the policy forbids spawning from) with the same content. Candidates are found by
size in an index built lazily per ``ExecIdentifier`` (one per run) and refreshed when a directory
changes; digests are cached by (dev, inode, size, mtime, ctime). Files are opened in the
tracee's view (``/proc/TID/root``, ``/proc/TID/fd``). Any error raises ``IdentityError`` (the
decoder denies). Knows nothing about policies beyond ``spawn_denied_dirs``; no module state.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from glob import glob
from typing import TYPE_CHECKING

from . import paths as _paths

if TYPE_CHECKING:  # decide imports decode, which imports this module
    from .decide import PolicyEngine

__all__ = [
    "ExecIdentity",
    "ExecIdentifier",
    "IdentityError",
    "STANDARD_BIN_DIRS",
    "parse_shebang",
    "loader_program",
    "is_loader_name",
    "spawn_denied_dirs",
]

STANDARD_BIN_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
LOADER_GLOBS = (
    "/lib64/ld-*.so*",
    "/lib/ld-*.so*",
    "/usr/lib64/ld-*.so*",
    "/usr/lib/ld-*.so*",
    "/lib/*-linux-gnu*/ld-*.so*",
    "/usr/lib/*-linux-gnu*/ld-*.so*",
)
BINPRM_BUF_SIZE = 256  # what binfmt_script sees of a file
MAX_CHAIN_DEPTH = 4  # shebang / loader levels followed; deeper is refused
MAX_HASH_BYTES = 64 * 1024 * 1024
MAX_EXTRA_ENTRIES = 20000  # files indexed per policy-named directory tree
MAX_EXTRA_DEPTH = 4
ELF_MAGIC = b"\x7fELF"
_LOADER_NAME = re.compile(r"ld(-[\w.+-]*)?\.so(\.\d+)*\Z")
# ld.so options (glibc rtld.c) that take a value; any other leading "--x" that rtld knows is a
# flag; the first argument that is neither is the program.
_LOADER_VALUE_OPTIONS = frozenset(
    {
        "--library-path",
        "--inhibit-rpath",
        "--audit",
        "--preload",
        "--argv0",
        "--glibc-hwcaps-prepend",
        "--glibc-hwcaps-mask",
    }
)
_LOADER_FLAG_OPTIONS = frozenset(
    {
        "--list",
        "--verify",
        "--inhibit-cache",
        "--list-tunables",
        "--list-diagnostics",
        "--help",
        "--version",
    }
)


class IdentityError(Exception):
    """What runs could not be established; the exec is to be denied."""


@dataclass(frozen=True)
class ExecIdentity:
    """Every command line (shell_execute targets) and every program path (process_spawn
    targets) one exec amounts to; the first command is argv with argv[0] replaced by the
    basename of the file the kernel opens."""

    commands: tuple[str, ...]
    spawn_paths: tuple[str, ...]
    notes: tuple[str, ...] = ()


@dataclass
class _Found:
    commands: list[str] = field(default_factory=list)
    spawn_paths: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def command(self, words: Iterable[str]) -> None:
        line = " ".join(words)
        if line not in self.commands:
            self.commands.append(line)

    def spawn(self, path: str) -> None:
        if path not in self.spawn_paths:
            self.spawn_paths.append(path)


def is_loader_name(name: str) -> bool:
    """``ld-linux-x86-64.so.2``, ``ld.so``, ``ld-musl-x86_64.so.1``, ``ld-2.31.so``."""
    return bool(_LOADER_NAME.match(name))


def parse_shebang(head: bytes) -> tuple[str, str | None] | None:
    """``(interpreter, argument or None)`` of a ``#!`` line as binfmt_script reads it, or None
    when ``head`` (the first ``BINPRM_BUF_SIZE`` bytes) does not start with ``#!``. Raises
    IdentityError where the kernel refuses (ENOEXEC) or where the line is cut before the end of
    the interpreter's name."""
    if not head.startswith(b"#!"):
        return None
    body = head[2:BINPRM_BUF_SIZE]
    end = body.find(b"\n")
    complete = end >= 0
    line = body[:end] if complete else body
    line = line.split(b"\0", 1)[0] if b"\0" in line else line
    line = line.lstrip(b" \t")
    match = re.match(rb"([^ \t]+)([ \t]+(.*))?\Z", line, re.DOTALL)
    if not match:
        raise IdentityError("#! line names no interpreter")
    interpreter, argument = match.group(1), (match.group(3) or b"").rstrip(b" \t")
    if not complete and match.group(2) is None:
        raise IdentityError("#! line: the interpreter's name is cut at 256 bytes")
    return os.fsdecode(interpreter), (os.fsdecode(argument) if argument else None)


def loader_program(args: list[str]) -> tuple[str | None, list[str]]:
    """What ``ld.so ARGS...`` runs: ``(program, its argv)``, or ``(None, [])`` when it runs
    none (``--help``, no argument). ``--argv0 X`` becomes the program's argv[0]."""
    argv0 = None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _LOADER_VALUE_OPTIONS:
            if i + 1 >= len(args):
                return None, []
            if arg == "--argv0":
                argv0 = args[i + 1]
            i += 2
        elif arg in _LOADER_FLAG_OPTIONS:
            i += 1
        else:
            program = arg
            return program, [argv0 if argv0 is not None else program] + args[i + 1 :]
    return None, []


def spawn_denied_dirs(policy: PolicyEngine) -> tuple[str, ...]:
    """Existing directories that a process_spawn deny pattern of ``policy`` names by a literal
    prefix (``/tmp/x/nox/.*`` -> ``/tmp/x/nox``): their files join the content index, so a copy
    of a program there is known as that program."""
    from agent_os.prefixes import match_prefixes
    from agent_os.stack import policy_layers

    found: list[str] = []
    for layer in policy_layers(policy):
        for pattern in getattr(layer, "patterns", ()):
            if pattern.action_type != "process_spawn" or pattern.action != "deny":
                continue
            try:
                prefixes = match_prefixes(pattern.pattern)
            except Exception:  # an unparsable regex names no directory
                continue
            for prefix in prefixes:
                directory = prefix.text.rsplit("/", 1)[0] if "/" in prefix.text else ""
                if (
                    len(directory) > 1
                    and directory.startswith("/")
                    and os.path.isdir(directory)
                    and directory not in found
                ):
                    found.append(directory)
    return tuple(found)


class _Index:
    """Regular executables by size: ``size -> [(path, (dev, ino))]``, rebuilt per directory
    when its mtime changes."""

    def __init__(self, bin_dirs: Iterable[str], extra_dirs: Iterable[str]):
        self.bin_dirs = tuple(dict.fromkeys(bin_dirs))
        self.extra_dirs = tuple(dict.fromkeys(extra_dirs))
        self.dir_stamp: dict[str, tuple[int, int] | None] = {}
        self.by_dir: dict[str, list[tuple[str, os.stat_result]]] = {}
        self.by_size: dict[int, list[tuple[str, os.stat_result]]] | None = None
        self.notes: list[str] = []

    def _stamp(self, directory: str) -> tuple[int, int] | None:
        try:
            st = os.stat(directory)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns)

    def _scan(self, directory: str, depth: int) -> list[tuple[str, os.stat_result]]:
        out: list[tuple[str, os.stat_result]] = []
        pending = [(directory, 0)]
        while pending:
            current, level = pending.pop()
            try:
                entries = list(os.scandir(current))
            except OSError:
                continue
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=True)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    if level + 1 < depth and not entry.is_symlink():
                        pending.append((entry.path, level + 1))
                elif stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
                    out.append((entry.path, st))
                if len(out) >= MAX_EXTRA_ENTRIES:
                    self.notes.append(
                        f"{directory}: more than {MAX_EXTRA_ENTRIES} files, the rest is not indexed"
                    )
                    return out
        return out

    def candidates(self, size: int) -> list[tuple[str, os.stat_result]]:
        changed = self.by_size is None
        for directory in self.bin_dirs + self.extra_dirs:
            stamp = self._stamp(directory)
            if directory not in self.dir_stamp or self.dir_stamp[directory] != stamp:
                self.dir_stamp[directory] = stamp
                depth = 1 if directory in self.bin_dirs else MAX_EXTRA_DEPTH
                self.by_dir[directory] = self._scan(directory, depth) if stamp else []
                changed = True
        if changed:
            by_size: dict[int, list[tuple[str, os.stat_result]]] = {}
            seen: set[tuple[str, int, int]] = set()
            loaders = [
                (p, os.stat(p)) for g in LOADER_GLOBS for p in sorted(glob(g)) if os.path.isfile(p)
            ]
            for directory in self.bin_dirs + self.extra_dirs + ("loaders",):
                for path, st in loaders if directory == "loaders" else self.by_dir[directory]:
                    key = (os.path.basename(path), st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                    by_size.setdefault(st.st_size, []).append((path, st))
            self.by_size = by_size
        assert self.by_size is not None
        return self.by_size.get(size, [])


class ExecIdentifier:
    """One per run: the content index and the digest cache live here (built on first need)."""

    def __init__(self, extra_dirs: Iterable[str] = (), bin_dirs: Iterable[str] = STANDARD_BIN_DIRS):
        self.bin_dirs = tuple(bin_dirs)
        self.index = _Index(self.bin_dirs, extra_dirs)
        self.digests: dict[tuple[int, ...], str] = {}
        self.loader_inodes: set[tuple[int, int]] | None = None

    @classmethod
    def for_policy(cls, policy: PolicyEngine) -> ExecIdentifier:
        try:
            extra = spawn_denied_dirs(policy)
        except Exception:  # no directories to add: the standard index still holds
            extra = ()
        return cls(extra)

    # --- public --------------------------------------------------------------------------------
    def identify(self, tid: int, path: str, argv: list[str], fd: int | None = None) -> ExecIdentity:
        """What ``execve(path, argv)`` (or ``execveat(fd, "", AT_EMPTY_PATH)``) in task ``tid``
        runs. ``path`` is resolved in the tracee's view (decode)."""
        found = _Found()
        try:
            self._walk(tid, path, argv, fd, found, 0)
        except IdentityError:
            raise
        except (OSError, _paths.PathResolutionError, ValueError) as exc:
            raise IdentityError(f"cannot identify {path!r}: {exc}") from None
        return ExecIdentity(tuple(found.commands), tuple(found.spawn_paths), tuple(found.notes))

    # --- the chain -----------------------------------------------------------------------------
    def _walk(
        self,
        tid: int,
        path: str,
        argv: list[str],
        fd: int | None,
        found: _Found,
        depth: int,
        commands: bool = True,
    ) -> None:
        found.spawn(path)
        args = argv[1:]
        if commands:
            found.command([os.path.basename(path)] + args)
        for handle in self._open(tid, path, fd, found):
            try:
                st = os.fstat(handle)
                head = os.pread(handle, BINPRM_BUF_SIZE, 0)
                canonical = self._canonical(path, st)
                names = [os.path.basename(path)]
                for other_path in [] if canonical else self._same_content(handle, path, st, found):
                    found.spawn(other_path)
                    names.append(os.path.basename(other_path))
                    if commands:
                        found.command([os.path.basename(other_path)] + args)
            finally:
                os.close(handle)
            shebang = parse_shebang(head)
            if shebang is not None:
                interpreter, argument = shebang
                self._deeper(depth, path)
                resolved = _paths.resolve_tracee_path(tid, _paths.AT_FDCWD, interpreter)
                script_argv = [interpreter] + ([argument] if argument else []) + [path] + args
                # A system script run by its own name (/usr/bin/which: #!/bin/sh) is judged by
                # that name, as a command allow-list expects; its interpreters still count as
                # spawned. Any other script is judged as its interpreter's command line too.
                self._walk(
                    tid, resolved, script_argv, None, found, depth + 1, commands and not canonical
                )
            elif head.startswith(ELF_MAGIC) and any(is_loader_name(n) for n in names):
                program, program_argv = loader_program(args)
                if program is None:
                    continue
                self._deeper(depth, path)
                resolved = _paths.resolve_tracee_path(tid, _paths.AT_FDCWD, program)
                self._walk(tid, resolved, program_argv, None, found, depth + 1, commands)

    @staticmethod
    def _deeper(depth: int, path: str) -> None:
        if depth + 1 > MAX_CHAIN_DEPTH:
            raise IdentityError(f"{path}: interpreter chain deeper than {MAX_CHAIN_DEPTH}")

    # --- opening the file the kernel will run ----------------------------------------------------
    def _open(self, tid: int, path: str, fd: int | None, found: _Found) -> list[int]:
        """Read-only descriptors of every regular file ``path`` may be (one, unless the path
        is an anonymous or deleted file only known by descriptor). [] when the kernel will
        refuse the exec anyway (missing file, not a regular file)."""
        sources: list[str]
        if fd is not None:
            sources = [f"/proc/{tid}/fd/{fd}"]
        elif path.startswith("/memfd:") or path.endswith(" (deleted)") or not path.startswith("/"):
            sources = self._fds_naming(tid, path)
            if not sources:
                raise IdentityError(f"{path!r}: no descriptor of the tracee names it")
        else:
            sources = [f"/proc/{tid}/root{path}"]
        handles: list[int] = []
        try:
            for source in sources:
                try:
                    pinned = os.open(source, os.O_PATH | os.O_CLOEXEC)
                except FileNotFoundError:
                    if fd is None and len(sources) == 1:
                        return []  # ENOENT for the kernel too (a PATH search tries many)
                    raise
                except NotADirectoryError:
                    return []
                try:
                    if not stat.S_ISREG(os.fstat(pinned).st_mode):
                        continue  # the kernel refuses to exec it (EACCES)
                    handles.append(os.open(f"/proc/self/fd/{pinned}", os.O_RDONLY | os.O_CLOEXEC))
                finally:
                    os.close(pinned)
        except BaseException:
            for handle in handles:
                os.close(handle)
            raise
        return handles

    @staticmethod
    def _fds_naming(tid: int, target: str) -> list[str]:
        out = []
        directory = f"/proc/{tid}/fd"
        for name in os.listdir(directory):
            try:
                if os.readlink(f"{directory}/{name}") == target:
                    out.append(f"{directory}/{name}")
            except OSError:
                continue
        return out

    # --- content identity ------------------------------------------------------------------------
    def _canonical(self, path: str, st: os.stat_result) -> bool:
        """Is this the file its basename names in a standard bin dir (or a system loader)?"""
        name = os.path.basename(path)
        if name and "/" not in name:
            own = os.path.dirname(path)
            for directory in ((own,) if own in self.bin_dirs else ()) + self.bin_dirs:
                try:
                    other = os.stat(f"{directory}/{name}")
                except OSError:
                    continue
                if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                    return True
        if is_loader_name(name):
            if self.loader_inodes is None:
                self.loader_inodes = set()
                for pattern in LOADER_GLOBS:
                    for loader in glob(pattern):
                        try:
                            other = os.stat(loader)
                        except OSError:
                            continue
                        self.loader_inodes.add((other.st_dev, other.st_ino))
            return (st.st_dev, st.st_ino) in self.loader_inodes
        return False

    def _same_content(self, handle: int, path: str, st: os.stat_result, found: _Found) -> list[str]:
        """Paths of indexed files (system binaries, loaders, policy-named directories) whose
        content equals this file's, other than the file itself. Hashes only a file that is
        not the file of its own name (the caller checks) and has the size of an indexed one."""
        candidates = [
            (p, s)
            for p, s in self.index.candidates(st.st_size)
            if (s.st_dev, s.st_ino) != (st.st_dev, st.st_ino)
        ]
        same_inode = [
            p
            for p, s in self.index.candidates(st.st_size)
            if (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino) and p != path
        ]
        if not candidates:
            return same_inode
        if st.st_size > MAX_HASH_BYTES:
            found.notes.append(
                f"{path}: {st.st_size} bytes, larger than {MAX_HASH_BYTES}: "
                "not identified by content"
            )
            return same_inode
        digest = self._digest(handle, st)
        matches = list(same_inode)
        for candidate, _candidate_st in candidates:
            try:
                with open(candidate, "rb", buffering=0) as other:
                    other_st = os.fstat(other.fileno())
                    if self._digest(other.fileno(), other_st) == digest:
                        matches.append(candidate)
            except OSError:
                continue  # a system file we cannot read cannot be what the agent copied
        return matches

    def _digest(self, handle: int, st: os.stat_result) -> str:
        # ctime cannot be set by the agent: a rewrite with forged mtime changes the key
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = self.digests.get(key)
        if cached is not None:
            return cached
        digest = hashlib.sha256()
        offset = 0
        while offset < st.st_size:
            chunk = os.pread(handle, 1 << 20, offset)
            if not chunk:
                break
            digest.update(chunk)
            offset += len(chunk)
        value = digest.hexdigest()
        self.digests[key] = value
        return value
