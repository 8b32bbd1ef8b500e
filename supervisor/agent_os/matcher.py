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
state cache thrashes: bench/README.md). The readings of regex text above (``engine_regex_source``,
``drop_lookarounds``, ``re2_compatible``) all walk it through one tokenizer, ``_regex_tokens``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import NamedTuple

try:  # optional accelerator; the engine is correct without it
    import re2 as _re2
except ImportError:  # pragma: no cover - exercised where google-re2 is absent
    _re2 = None

# Below this many patterns the plain loop beats the RE2 set's fixed cost: they break even at 8-10
# patterns on the 2-core dev VM (bench/engine_bench.py, crossover in bench/README.md).
RE2_SET_THRESHOLD = 12
REGEX_FLAGS = re.DOTALL
_RE2_SAFE_TARGET = re.compile(r"[\x20-\x7e\t\n\r\f]*\Z")


# --- regex text, token by token -------------------------------------------------------------------

ESCAPE = "escape"  # a backslash and the character after it (alone at the very end)
CLASS_OPEN = "class_open"  # ``[`` with a following ``^`` and a leading literal ``]``, if any
CLASS_CHAR = "class_char"  # inside a class: a ``[``, or a run of characters other than ``[ ] \``
CLASS_CLOSE = "class_close"
CAPTURE = "capture"  # ``(``
NON_CAPTURING = "non_capturing"  # ``(?:``
NAMED = "named"  # ``(?P<`` (the name follows as plain characters)
FLAGS = "flags"  # ``(?ims`` or ``(?i-s:``: scoped when it ends in ``:``, else its ``)`` follows
LOOKAHEAD, NEG_LOOKAHEAD = "lookahead", "neg_lookahead"  # ``(?=``, ``(?!``
LOOKBEHIND, NEG_LOOKBEHIND = "lookbehind", "neg_lookbehind"  # ``(?<=``, ``(?<!``
EXTENSION = "extension"  # any other ``(?`` (atomic, conditional, comment, ``(?P=``)
GROUP_CLOSE = "group_close"
ANCHOR = "anchor"  # ``^`` or ``$`` outside a class
CHAR = "char"  # outside a class, a run of anything else: literals and operators (``. * | {``)

LOOKAROUNDS = frozenset({LOOKAHEAD, NEG_LOOKAHEAD, LOOKBEHIND, NEG_LOOKBEHIND})
GROUP_OPENS = LOOKAROUNDS | {CAPTURE, NON_CAPTURING, NAMED, FLAGS, EXTENSION}
_GROUP_KINDS = {
    "(": CAPTURE,
    "(?": EXTENSION,
    "(?:": NON_CAPTURING,
    "(?P<": NAMED,
    "(?=": LOOKAHEAD,
    "(?!": NEG_LOOKAHEAD,
    "(?<=": LOOKBEHIND,
    "(?<!": NEG_LOOKBEHIND,
}
# One token at a position, outside and inside a class (the group names are the kinds).
_OUTSIDE_CLASS = re.compile(
    r"""(?P<escape>\\.?)
    | (?P<class_open>\[\^?\]?)               # a ']' right after '[' or '[^' is a literal
    | (?P<group>\((?:\?(?:<=|<!|=|!|:|P<|[aiLmsux-]+:?)?)?)
    | (?P<group_close>\))
    | (?P<anchor>[\^$])
    | (?P<char>[^\\\[()^$]+)""",
    re.VERBOSE | re.DOTALL,
)
_INSIDE_CLASS = re.compile(
    r"(?P<escape>\\.?)|(?P<class_close>\])|(?P<class_char>\[|[^\\\]\[]+)", re.DOTALL
)


class _RegexToken(NamedTuple):
    kind: str
    text: str
    start: int  # index of ``text`` in the source

    @property
    def end(self) -> int:
        return self.start + len(self.text)


def _regex_tokens(source: str) -> Iterator[_RegexToken]:
    """``source`` cut into tokens whose texts, joined, give ``source`` back.

    Only as much of Python's regex syntax as the rewrites below need: escapes, character classes
    (so that ``$``, ``(`` and ``)`` inside them stay literal), group openings by kind, group
    closings and anchors. Every unescaped ``(`` outside a class opens a group token and every
    such ``)`` closes one, so depth counting over tokens is parenthesis counting; an invalid
    pattern is cut all the same (``re`` rejects it later).
    """
    i, n, grammar = 0, len(source), _OUTSIDE_CLASS
    while i < n:
        found = grammar.match(source, i)
        # INVARIANT: each grammar ends in an alternative that takes any one character
        assert found is not None and found.lastgroup is not None
        kind, text = found.lastgroup, found.group()
        if kind == "group":
            kind = _GROUP_KINDS.get(text, FLAGS)
        elif kind in (CLASS_OPEN, CLASS_CLOSE):
            grammar = _INSIDE_CLASS if kind == CLASS_OPEN else _OUTSIDE_CLASS
        yield _RegexToken(kind, text, i)
        i = found.end()


def _sets_multiline(token: _RegexToken) -> bool:
    return token.kind == FLAGS and "m" in token.text.partition("-")[0]


def engine_regex_source(pattern: str) -> str:
    r"""The regex the engine really compiles: ``pattern`` with ``$`` meaning *end of target*.

    Python's ``$`` also matches just before a final newline, so an allow pattern
    ``^/dev/null$`` would also allow a file named ``"/dev/null\n"``: an escape, since file names
    may end in a newline. Every unescaped ``$`` outside a character class becomes ``\Z`` (RE2's
    ``$`` already means that). A pattern that sets the multi-line flag keeps Python's meaning.
    """
    if "$" not in pattern:
        return pattern
    tokens = list(_regex_tokens(pattern))
    if any(_sets_multiline(t) for t in tokens):
        return pattern
    return "".join("\\Z" if t.kind == ANCHOR and t.text == "$" else t.text for t in tokens)


def compile_regex(pattern: str) -> re.Pattern[str]:
    """Compile a policy regex with the engine's flags and ``$`` semantics; raises ``re.error``."""
    return re.compile(engine_regex_source(pattern), REGEX_FLAGS)


def is_catch_all(pattern: str) -> bool:
    """True for the catch-all forms ``.*``, ``^.*``, ``.*$``, ``^.*$`` (and with ``(?s)``)."""
    body = pattern.removeprefix("(?s)").strip()
    body = body.removeprefix("^").removesuffix("$")
    return body in (".*", "(.*)", "(?:.*)")


def drop_lookarounds(pattern: str) -> str:
    """``pattern`` without its lookahead and lookbehind groups: it matches a superset.

    An unbalanced lookaround leaves ``pattern`` as it is (RE2 refuses it).
    """
    if "(?" not in pattern:
        return pattern
    tokens = list(_regex_tokens(pattern))
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if tokens[i].kind in LOOKAROUNDS:
            end = _group_end(tokens, i)
            if end < 0:
                return pattern
            i = end
            continue
        out.append(tokens[i].text)
        i += 1
    return "".join(out)


def _group_end(tokens: Sequence[_RegexToken], start: int) -> int:
    """Index just past the close of the group opening at ``tokens[start]``, or -1."""
    depth = 0
    for i in range(start, len(tokens)):
        if tokens[i].kind in GROUP_OPENS:
            depth += 1
        elif tokens[i].kind == GROUP_CLOSE:
            depth -= 1
            if depth == 0:
                return i + 1
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
                head = pattern[: -len(tail)]
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
    return all(_re2_reads_alike(token, pattern) for token in _regex_tokens(pattern))


# Group openings RE2 reads as ``re`` does; the rest are lookarounds, atomic groups, conditionals,
# ``(?P=name)`` and the like.
_RE2_GROUPS = frozenset({CAPTURE, NON_CAPTURING, NAMED})


def _re2_reads_alike(token: _RegexToken, pattern: str) -> bool:
    kind, text = token.kind, token.text
    if kind == ESCAPE:  # backrefs, unicode escapes, RE2-only escapes (a lone '\' too)
        return not (text[1:].isdigit() or text[1:] in "uUNgpPCQEz")
    if kind == CLASS_CHAR:  # '[:', '[.' and '[=' are POSIX classes to RE2, literals to re
        return not (text == "[" and pattern.startswith((":", ".", "="), token.end))
    if kind == ANCHOR and text == "$":  # RE2's '$' followed by more pattern differs
        return pattern.startswith((")", "|"), token.end) or token.end == len(pattern)
    if kind == FLAGS:
        return set(text[2:].rstrip(":")) <= set("imsx-") and (
            text.endswith(":") or pattern.startswith(")", token.end)
        )
    return kind not in GROUP_OPENS or kind in _RE2_GROUPS


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
