"""Literal prefixes of a policy regex: what a pattern can match, bounded by literal strings.

Owns two questions about one regex, answered by reading it with ``re._parser`` (never by
running it): ``match_prefixes(regex)`` gives literal prefixes such that every target the
pattern can match starts with one of them (``Prefix(text, kind)``: a prefix, the exact string,
or the string with Python's optional final newline); anything the reader does not understand
ends the prefix, so the bound always contains every match. ``may_match_starting_with(regex,
start)`` says whether the pattern may accept some target beginning with ``start`` (False is a
proof, True may be a false alarm). agentd's sandbox plan uses them to prove that a policy's file
rules are directory hierarchies (Landlock), and its exec identity to find the programs a policy
names. Pure Python; no state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from re import _constants as sre_constants  # type: ignore[attr-defined]
from re import _parser as sre_parser  # type: ignore[attr-defined]
from typing import Any

from .matcher import REGEX_FLAGS

__all__ = [
    "PREFIX",
    "EXACT",
    "EXACT_OR_NEWLINE",
    "PREFIX_LIMIT",
    "Prefix",
    "match_prefixes",
    "may_match_starting_with",
]


PREFIX = "prefix"  # every match starts with ``text``
EXACT = "exact"  # the only match is ``text`` (``\Z``)
EXACT_OR_NEWLINE = "exact_or_newline"  # ``text`` or ``text + "\n"`` (Python's ``$``)

_OPEN, _STOP, _END, _END_NL = "open", "stop", "end", "end_nl"
_STATE_KIND = {_OPEN: PREFIX, _STOP: PREFIX, _END: EXACT, _END_NL: EXACT_OR_NEWLINE}
PREFIX_LIMIT = 64  # alternations beyond this many prefixes end the prefix (still a sound bound)


@dataclass(frozen=True, order=True)
class Prefix:
    text: str
    kind: str  # PREFIX | EXACT | EXACT_OR_NEWLINE


def _sequence(items: Iterable[tuple[Any, Any]], flags: int) -> list[tuple[str, str]]:
    results: dict[tuple[str, str], None] = {("", _OPEN): None}
    for op, av in items:
        if not any(state == _OPEN for _, state in results):
            break
        alternatives = _token(op, av, flags)
        grown: dict[tuple[str, str], None] = {}
        for text, state in results:
            if state != _OPEN:
                grown[(text, state)] = None
                continue
            for more, new_state in alternatives:
                grown[(text + more, new_state)] = None
        if len(grown) > PREFIX_LIMIT:  # stop here: the prefixes so far still bound the language
            return [(t, _STOP if s == _OPEN else s) for t, s in results]
        results = grown
    return list(results)


def _token(op: Any, av: Any, flags: int) -> list[tuple[str, str]]:
    """The literal continuations one parsed token allows; ``[("", _STOP)]`` when unknown."""
    c = sre_constants
    if op is c.LITERAL:
        return [(chr(av), _OPEN)]
    if op is c.IN:
        if av and all(item_op is c.LITERAL for item_op, _ in av):
            return [(chr(code), _OPEN) for _, code in av]
        return [("", _STOP)]
    if op is c.AT:
        if av is c.AT_END:  # '$': end, or before a final newline (anywhere before one: MULTILINE)
            return [("", _STOP if flags & c.SRE_FLAG_MULTILINE else _END_NL)]
        if av is c.AT_END_STRING:
            return [("", _END)]
        return [("", _OPEN)]  # other assertions consume nothing: ignoring them only widens
    if op is c.SUBPATTERN:
        _group, add_flags, del_flags, body = av
        inner_flags = (flags | add_flags) & ~del_flags
        if inner_flags & c.SRE_FLAG_IGNORECASE:
            return [("", _STOP)]
        return _sequence(body, inner_flags)
    if op is getattr(c, "ATOMIC_GROUP", None):
        return _sequence(av, flags)
    if op is c.BRANCH:
        out: dict[tuple[str, str], None] = {}
        for branch in av[1]:
            out.update(dict.fromkeys(_sequence(branch, flags)))
        if len(out) > PREFIX_LIMIT:
            return [("", _STOP)]
        return list(out)
    if op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
        low, high, body = av
        if high == 0:
            return [("", _OPEN)]
        once = _sequence(body, flags)
        if low == 0 and high == 1:
            return [("", _OPEN)] + once
        if low == 1 and high == 1:
            return once
        if low >= 1:  # at least one copy, then we know nothing more
            return [(text, _STOP) for text, _ in once]
        return [("", _STOP)]
    if op in (c.ASSERT, c.ASSERT_NOT):
        return [("", _OPEN)]
    return [("", _STOP)]  # ANY, NOT_LITERAL, CATEGORY, GROUPREF, ...: the prefix ends here


def match_prefixes(regex: str) -> tuple[Prefix, ...]:
    """Literal prefixes such that every ``s`` that ``re.match(regex, s, DOTALL)`` accepts starts
    with one of them.

    Raises ``ValueError`` when no such bound can be trusted (case-insensitive matching). A
    ``Prefix("", PREFIX)`` in the result means "anything".
    """
    parsed = sre_parser.parse(regex, REGEX_FLAGS)
    flags = parsed.state.flags
    if flags & sre_constants.SRE_FLAG_IGNORECASE:
        raise ValueError("it matches case-insensitively, so its letters are not literal")
    # re.match needs no full match: whatever is still open at the end may continue freely.
    return tuple(
        sorted({Prefix(text, _STATE_KIND[state]) for text, state in _sequence(list(parsed), flags)})
    )


def may_match_starting_with(regex: str, start: str) -> bool:
    """Whether ``re.match(regex, t, DOTALL)`` may accept some ``t`` that starts with ``start``.

    A small NFA walk over the parsed regex against ``start``; whatever it does not understand
    it assumes can match (so False is a proof, True may be a false alarm).
    """
    parsed = sre_parser.parse(regex, REGEX_FLAGS)
    flags = parsed.state.flags
    return bool(_walk(list(parsed), {0}, start, flags))


def _char_in(items: list[tuple[Any, Any]], char: str) -> bool:
    c = sre_constants
    code, hit, negate = ord(char), False, False
    for op, av in items:
        if op is c.NEGATE:
            negate = True
        elif op is c.LITERAL:
            hit |= code == av
        elif op is c.RANGE:
            hit |= av[0] <= code <= av[1]
        elif op is c.CATEGORY and av is c.CATEGORY_DIGIT:
            hit |= char.isdecimal()
        elif op is c.CATEGORY and av is c.CATEGORY_NOT_DIGIT:
            hit |= not char.isdecimal()
        else:
            return True  # unknown: assume it matches
    return hit != negate


def _walk(items: list[tuple[Any, Any]], positions: set[int], start: str, flags: int) -> set[int]:
    """Positions in ``start`` reachable after ``items``; ``len(start)`` absorbs anything."""
    c = sre_constants
    end = len(start)
    for op, av in items:
        if not positions:
            return positions
        if flags & c.SRE_FLAG_IGNORECASE:
            positions = set(range(min(positions), end + 1))
            continue
        if op in (c.LITERAL, c.NOT_LITERAL, c.ANY, c.IN):
            nxt = set()
            for pos in positions:
                if pos == end:
                    nxt.add(end)
                    continue
                char = start[pos]
                if (
                    op is c.ANY
                    or (op is c.LITERAL and ord(char) == av)
                    or (op is c.NOT_LITERAL and ord(char) != av)
                    or (op is c.IN and _char_in(av, char))
                ):
                    nxt.add(pos + 1)
            positions = nxt
        elif op is c.AT:
            if av in (c.AT_END, c.AT_END_STRING) and not flags & c.SRE_FLAG_MULTILINE:
                positions = {p for p in positions if p == end}  # the target ends here
        elif op is c.SUBPATTERN:
            _group, add_flags, del_flags, body = av
            positions = _walk(list(body), positions, start, (flags | add_flags) & ~del_flags)
        elif op is getattr(c, "ATOMIC_GROUP", None):
            positions = _walk(list(av), positions, start, flags)
        elif op is c.BRANCH:
            positions = set().union(*(_walk(list(b), set(positions), start, flags) for b in av[1]))
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT, getattr(c, "POSSESSIVE_REPEAT", None)):
            low, high, body = av
            current = set(positions)
            for _ in range(min(low, end + 1)):
                current = _walk(list(body), current, start, flags)
            reached = set(current)
            copies = low
            while current and copies < high and copies <= low + end + 1:
                current = _walk(list(body), current, start, flags) - reached
                reached |= current
                copies += 1
            positions = reached
        elif op in (c.ASSERT, c.ASSERT_NOT):
            continue  # consumes nothing; ignoring it only widens
        else:  # back-references, conditionals: assume they can consume anything
            positions = set(range(min(positions), end + 1))
    return positions
