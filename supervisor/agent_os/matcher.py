"""Finding every pattern of one action type that matches a target, fast.

Semantics are Python's ``re.match(pattern, target, re.DOTALL)`` for every pattern: nothing here may
change which patterns match, only how quickly we find them. For small pattern lists a loop over
compiled ``re`` objects is fastest. For larger ones, an RE2 ``Set`` (google-re2, linear time, all
patterns in one pass) proposes candidates and each candidate is confirmed with ``re``.

RE2 is only a *pre-filter*, so it must never miss a pattern that ``re`` would match. A pattern goes
into the set only when RE2 reads it with the same meaning on the targets we feed it:
- targets fed to RE2 are restricted to printable ASCII plus tab, CR, LF and FF, where ``\\d \\w \\s
  \\b`` and case folding agree between the two engines (others take the exact path);
- patterns RE2 rejects (lookarounds, backreferences, possessive quantifiers, ``\\Z``) and patterns
  it would read differently (``{,n}``, ``[[:alpha:]]``, ``$`` followed by more pattern) stay out of
  the set and are always checked with ``re``;
- ``$`` means the end of the target in both (``engine_regex_source`` rewrites it to ``\\Z`` for
  Python's ``re``; RE2's ``$`` already means that).
The set gets each pattern in a relaxed ``set_form`` that matches at least what the pattern does:
lookarounds are dropped (an assertion only ever removes matches; ``re`` confirms them), and so is a
trailing ``.*`` (under ``re.match`` semantics ``R.*`` matches exactly when ``R`` does, and the tail
would keep every matched pattern alive in RE2's many-match DFA, multiplying its states until the
state cache thrashes: bench/README.md).
"""

from __future__ import annotations

import re
from typing import Sequence

try:  # optional accelerator; the engine is correct without it
    import re2 as _re2
except ImportError:  # pragma: no cover - exercised where google-re2 is absent
    _re2 = None

# Below this many patterns the plain loop beats the RE2 set's fixed cost: they break even at 8-10
# patterns on the 2-core dev VM (bench/engine_bench.py, crossover in bench/README.md).
RE2_SET_THRESHOLD = 12
REGEX_FLAGS = re.DOTALL
_RE2_SAFE_TARGET = re.compile(r"[\x20-\x7e\t\n\r\f]*\Z")


def engine_regex_source(pattern: str) -> str:
    r"""The regex the engine really compiles: ``pattern`` with ``$`` meaning *end of target*.

    Python's ``$`` also matches just before a final newline, so an allow pattern
    ``^/dev/null$`` would also allow a file named ``"/dev/null\n"``: an escape, since file names
    may end in a newline. Every unescaped ``$`` outside a character class becomes ``\Z`` (RE2's
    ``$`` already means that). A pattern that sets the multi-line flag keeps Python's meaning.
    """
    if "$" not in pattern or re.search(r"\(\?[a-zA-Z]*m", pattern):
        return pattern
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            if ch == "]":
                in_class = False
        elif ch == "[":
            in_class = True
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1  # a leading ']' is a literal
            out.append(pattern[i:j])
            i = j
            continue
        elif ch == "$":
            out.append("\\Z")
            i += 1
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def compile_regex(pattern: str) -> re.Pattern[str]:
    """Compile a policy regex with the engine's flags and ``$`` semantics; raises ``re.error``."""
    return re.compile(engine_regex_source(pattern), REGEX_FLAGS)


def is_catch_all(pattern: str) -> bool:
    """True for the catch-all forms ``.*``, ``^.*``, ``.*$``, ``^.*$`` (and with ``(?s)``)."""
    body = pattern.removeprefix("(?s)").strip()
    body = body.removeprefix("^").removesuffix("$")
    return body in (".*", "(.*)", "(?:.*)")


def drop_lookarounds(pattern: str) -> str:
    """``pattern`` without its lookahead and lookbehind groups: it matches a superset."""
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            if ch == "]":
                in_class = False
        elif ch == "[":
            in_class = True
            j = i + 1
            if pattern.startswith("^", j):
                j += 1
            if pattern.startswith("]", j):
                j += 1  # a leading ']' is a literal
            out.append(pattern[i:j])
            i = j
            continue
        elif pattern.startswith(("(?=", "(?!", "(?<=", "(?<!"), i):
            end = _group_end(pattern, i)
            if end < 0:
                return pattern  # unbalanced: leave it to RE2 to refuse
            i = end
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _group_end(pattern: str, start: int) -> int:
    """Index just past the group opening at ``start``, or -1."""
    depth, i, n, in_class = 0, start, len(pattern), False
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            if ch == "]":
                in_class = False
        elif ch == "[":
            in_class = True
            if pattern.startswith("^", i + 1):
                i += 1
            if pattern.startswith("]", i + 1):
                i += 1
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def set_form(pattern: str) -> str:
    """What the RE2 set is given for ``pattern``: lookarounds and a trailing ``.*`` dropped.

    It matches (from the start) every target ``pattern`` matches. Only an unescaped trailing
    ``.*`` is removed (``\\.*`` is a repeated literal dot and stays).
    """
    pattern = drop_lookarounds(pattern)
    while True:
        for tail in (".*$", ".*"):
            if pattern.endswith(tail):
                head = pattern[:-len(tail)]
                if (len(head) - len(head.rstrip("\\"))) % 2 == 0:
                    pattern = head
                    break
        else:
            return pattern


def re2_compatible(pattern: str) -> bool:
    """Whether RE2 reads ``pattern`` exactly as Python's ``re`` does on RE2-safe targets.

    Conservative: a pattern we are unsure about returns False and is checked with ``re``.
    """
    if "{," in pattern or "(?#" in pattern or "\\Z" in pattern or not pattern.isascii():
        return False
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            nxt = pattern[i + 1] if i + 1 < n else ""
            if nxt.isdigit() or nxt in "uUNgpPCQEz":  # backrefs, unicode escapes, RE2-only escapes
                return False
            i += 2
            continue
        if in_class:
            if ch == "[" and i + 1 < n and pattern[i + 1] in ":.=":
                return False  # POSIX classes mean something else to RE2
            if ch == "]":
                in_class = False
        elif ch == "[":
            in_class = True
            if i + 1 < n and pattern[i + 1] == "^":
                i += 1
            if i + 1 < n and pattern[i + 1] == "]":
                i += 1  # a leading ']' is a literal
        elif ch == "$":
            rest = pattern[i + 1:]
            if rest and rest[0] not in ")|":
                return False
        elif ch == "(" and pattern.startswith("(?", i):
            if not (pattern.startswith("(?:", i) or pattern.startswith("(?P<", i)
                    or re.match(r"\(\?[imsx-]+[:)]", pattern[i:])):
                return False  # lookarounds, atomic groups, conditionals, (?P=...)
        i += 1
    return True


class ActionTypeMatcher:
    """All enabled patterns of one action type, compiled once; ``matching`` finds every match."""

    __slots__ = ("regexes", "_set", "_set_index", "_exact_only")

    def __init__(self, patterns: Sequence[str]) -> None:
        self.regexes = tuple(compile_regex(p) for p in patterns)
        self._set = None
        self._set_index: tuple[int, ...] = ()
        self._exact_only: tuple[int, ...] = tuple(range(len(patterns)))
        if _re2 is not None and len(patterns) >= RE2_SET_THRESHOLD:
            self._build_set(patterns)

    def _build_set(self, patterns: Sequence[str]) -> None:
        options = _re2.Options()
        options.dot_nl = True
        options.log_errors = False
        options.max_mem = 64 << 20
        candidate_set = _re2.Set.MatchSet(options)
        in_set: list[int] = []
        exact: list[int] = []
        for index, pattern in enumerate(patterns):
            form = set_form(pattern)
            if not re2_compatible(form):  # the set must read form as re does (see above)
                exact.append(index)
                continue
            try:
                candidate_set.Add(form)
            except Exception:  # RE2 refused it: keep it on the exact path
                exact.append(index)
                continue
            in_set.append(index)
        if not in_set:
            return
        try:
            candidate_set.Compile()
        except Exception:
            return  # everything stays exact
        self._set = candidate_set
        self._set_index = tuple(in_set)
        self._exact_only = tuple(exact)

    def matching(self, target: str) -> list[int]:
        """Indices (in pattern order) of every pattern that ``re.match``es ``target``."""
        regexes = self.regexes
        if self._set is None or not _RE2_SAFE_TARGET.match(target):
            return [i for i, rx in enumerate(regexes) if rx.match(target) is not None]
        hits = self._set.Match(target) or []
        found = [self._set_index[h] for h in hits]
        found.extend(self._exact_only)
        found.sort()
        return [i for i in found if regexes[i].match(target) is not None]
