"""The matcher's readings of regex text: ``engine_regex_source``, ``drop_lookarounds``,
``set_form`` and ``re2_compatible`` against what their docstrings promise, on hand-picked cases,
on every pattern of the repository's policies and policy cases, and on generated regexes; the
promises are checked against ``re`` and RE2 themselves. Also the sandbox plan's use of the
engine's form (a ``$`` allow pattern names one exact file, with no trailing-newline caveat).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_os import matcher
from agent_os.matcher import (
    _regex_tokens,
    compile_regex,
    drop_lookarounds,
    engine_regex_source,
    re2_compatible,
    set_form,
)
from agent_os.policy import Pattern, Policy
from agentd.kernel import landlock as ll
from agent_os.prefixes import EXACT, Prefix
from agentd.run.sandbox_plan import analyse, plan_sandbox

ROOT = Path(__file__).resolve().parent.parent
CORPUS_FILES = sorted([*ROOT.glob("policies/*.yaml"), *ROOT.glob("tests/policy_cases/*.yaml"),
                       *ROOT.glob("tests/data/*.yaml"), *ROOT.glob("tests/escapes/policies/*.yaml")])


def _patterns_in(node, out: set[str]) -> set[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                out.add(value)
            _patterns_in(value, out)
    elif isinstance(node, list):
        for value in node:
            _patterns_in(value, out)
    return out


def _corpus() -> list[str]:
    found: set[str] = set()
    for path in CORPUS_FILES:
        for document in yaml.safe_load_all(path.read_text()):
            _patterns_in(document, found)
    return sorted(found)


CORPUS = _corpus()
TARGETS = ["", "/", "/dev/null", "/dev/null\n", "/ws/a", "/ws/a\n", "/ws/a\nb", "/etc/passwd",
           "/home/u/.ssh/id_rsa", "rm -rf /", "sudo ls\n", "a$", "ab", "ba\n", "abab", "/tmp/x.pem"]


# generated text such as "[[:a]" or "[a||b]" makes re warn of nested sets and set operations
pytestmark = pytest.mark.filterwarnings("ignore:Possible:FutureWarning")


def _re_matches(regex: str, target: str):
    return re.match(regex, target, re.DOTALL)


def _valid(regex: str) -> bool:
    try:
        _re_matches(regex, "")
    except re.error:
        return False
    return True


# --- generated regexes: valid by construction, built from the syntax the tokenizer cuts ---------

_ATOMS = st.sampled_from(["a", "b", "/", ".", r"\.", r"\$", r"\d", r"\w", r"\s", r"\b", r"\n",
                          "[ab]", "[^a]", "[]a]", "[$a]", "[a(]", "[)]", r"[\]a]", "[[:a]", "$",
                          "^", r"\A", r"\Z"])


def _compose(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.tuples(inner, inner).map("".join),
        st.tuples(inner, inner).map(lambda p: f"(?:{p[0]}|{p[1]})"),
        inner.map(lambda p: f"({p})"),
        inner.map(lambda p: f"(?P<g>{p})"),
        st.tuples(inner, st.sampled_from(["*", "+", "?", "{1,2}", "*?", "{,2}"])).map(
            lambda p: f"(?:{p[0]}){p[1]}"),
        st.tuples(st.sampled_from(["(?=", "(?!"]), inner).map(lambda p: f"{p[0]}{p[1]})"),
        st.tuples(st.sampled_from(["(?<=", "(?<!"]), st.sampled_from(["a", "/", "ab", "a$"])).map(
            lambda p: f"{p[0]}{p[1]})"),
        st.tuples(st.sampled_from(["(?i:", "(?s:", "(?m:", "(?-i:", "(?>"]), inner).map(
            lambda p: f"{p[0]}{p[1]})"),
    )


REGEXES = st.recursive(_ATOMS, _compose, max_leaves=8).filter(_valid)
REGEX_TEXT = st.text(alphabet="\\[]^$()?:=!<>P#im-a.*|{},/", max_size=16)
GENERATED_TARGETS = st.text(alphabet="ab/.$ \t\n", max_size=8)
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- the tokenizer -----------------------------------------------------------------------------

@SETTINGS
@given(st.one_of(REGEX_TEXT, REGEXES))
def test_tokens_give_the_text_back_and_parentheses_are_groups(source: str) -> None:
    tokens = list(_regex_tokens(source))
    assert "".join(t.text for t in tokens) == source
    assert all(source[t.start:t.end] == t.text for t in tokens)
    opens = sum(t.kind in matcher.GROUP_OPENS for t in tokens)
    closes = sum(t.kind == matcher.GROUP_CLOSE for t in tokens)
    if _valid(source):  # a valid regex's groups balance
        assert opens == closes


def test_token_kinds() -> None:
    kinds = [(t.kind, t.text) for t in _regex_tokens(r"^(?<!x)[^]$\][:a-z](?P<n>\$)(?i:a.*)(?s)$")]
    assert kinds == [
        ("anchor", "^"), ("neg_lookbehind", "(?<!"), ("char", "x"), ("group_close", ")"),
        ("class_open", "[^]"), ("class_char", "$"), ("escape", r"\]"), ("class_char", "["),
        ("class_char", ":a-z"), ("class_close", "]"), ("named", "(?P<"), ("char", "n>"),
        ("escape", r"\$"), ("group_close", ")"), ("flags", "(?i:"), ("char", "a.*"),
        ("group_close", ")"), ("flags", "(?s"), ("group_close", ")"), ("anchor", "$")]


# --- engine_regex_source: '$' means the end of the target ---------------------------------------

@pytest.mark.parametrize("pattern, expected", [
    (r"^/dev/null$", r"^/dev/null\Z"),
    (r"^/a$|^/b$", r"^/a\Z|^/b\Z"),
    (r"^(/a|/b)$", r"^(/a|/b)\Z"),
    (r"\$HOME", r"\$HOME"),  # escaped: a literal dollar
    (r"\\$", r"\\\Z"),  # an escaped backslash, then the anchor
    (r"[$]x$", r"[$]x\Z"),  # in a class: literal
    (r"[]$]$", r"[]$]\Z"),  # a leading ']' does not close the class
    (r"[^]$]$", r"[^]$]\Z"),
    (r"(?m)^a$", r"(?m)^a$"),  # multi-line: Python's meaning kept
    (r"(?i:a)(?m:b$)", r"(?i:a)(?m:b$)"),
    (r"(?s-m:a$)", r"(?s-m:a\Z)"),  # multi-line switched off
    (r"/no/anchor", r"/no/anchor"),
])
def test_engine_regex_source_cases(pattern: str, expected: str) -> None:
    assert engine_regex_source(pattern) == expected


def test_a_dollar_allow_pattern_does_not_match_a_trailing_newline() -> None:
    assert compile_regex(r"^/dev/null$").match("/dev/null")
    assert not compile_regex(r"^/dev/null$").match("/dev/null\n")
    assert compile_regex(r"(?m)^/dev/null$").match("/dev/null\n")


def _same_on_targets_without_final_newline(pattern: str, targets: list[str]) -> None:
    engine = compile_regex(pattern)
    for target in targets:
        if target.endswith("\n"):
            continue
        ours, theirs = engine.match(target), _re_matches(pattern, target)
        assert (ours and ours.span()) == (theirs and theirs.span()), (pattern, target)


@pytest.mark.parametrize("pattern", CORPUS)
def test_engine_form_of_policy_patterns(pattern: str) -> None:
    assert engine_regex_source(engine_regex_source(pattern)) == engine_regex_source(pattern)
    _same_on_targets_without_final_newline(pattern, TARGETS)


@SETTINGS
@given(REGEXES, st.lists(GENERATED_TARGETS, max_size=6))
def test_engine_form_differs_only_at_a_final_newline(pattern: str, targets: list[str]) -> None:
    assert engine_regex_source(engine_regex_source(pattern)) == engine_regex_source(pattern)
    _same_on_targets_without_final_newline(pattern, targets + TARGETS)


# --- drop_lookarounds and set_form: a superset for the RE2 pre-filter ---------------------------

@pytest.mark.parametrize("pattern, expected", [
    (r"^(?!/data/).*", r"^.*"),
    (r"a(?=b(c))d(?<!e)(?<=\))", r"ad"),
    (r"[(?=x)]a(?!y)", r"[(?=x)]a"),  # in a class: literal text
    (r"\(?=x)", r"\(?=x)"),  # an escaped parenthesis opens no group
    (r"a(?=b", r"a(?=b"),  # unbalanced: unchanged
    (r"(?:a)(b)", r"(?:a)(b)"),
])
def test_drop_lookarounds_cases(pattern: str, expected: str) -> None:
    assert drop_lookarounds(pattern) == expected


@pytest.mark.parametrize("pattern, expected", [
    (r"^/data/.*", r"^/data/"),
    (r"^/data/.*$", r"^/data/"),
    (r".*(rm\s+-rf|sudo).*", r".*(rm\s+-rf|sudo)"),
    (r"^/a\.*", r"^/a\.*"),  # a repeated literal dot stays
    (r"^/a\\.*", r"^/a\\"),  # an escaped backslash, then '.*'
    (r"^(?!/x).*", r"^"),
])
def test_set_form_cases(pattern: str, expected: str) -> None:
    assert set_form(pattern) == expected


def _superset(pattern: str, targets: list[str]) -> None:
    if re.search(r"\\\d|\(\?P=|\(\?\(", pattern):
        return  # removing a group renumbers the rest: back-references are out of scope
    form = set_form(pattern)
    assert not any(t.kind in matcher.LOOKAROUNDS for t in _regex_tokens(form))
    if not _valid(form):
        return  # e.g. '(?=a)*' leaves a bare quantifier; RE2 refuses it, re stays exact
    for target in targets:
        if _re_matches(engine_regex_source(pattern), target):
            assert _re_matches(form, target), (pattern, form, target)


@pytest.mark.parametrize("pattern", CORPUS)
def test_set_form_of_policy_patterns_matches_a_superset(pattern: str) -> None:
    _superset(pattern, TARGETS)


@SETTINGS
@given(REGEXES, st.lists(GENERATED_TARGETS, max_size=6))
def test_set_form_matches_a_superset(pattern: str, targets: list[str]) -> None:
    _superset(pattern, targets + TARGETS)


# --- re2_compatible: RE2 reads the pattern as re does -------------------------------------------

@pytest.mark.parametrize("pattern, expected", [
    (r"^/data/(in|out)/[a-z]+$", True),
    (r"(?P<x>a)(?:b)(?i)c(?s-i:d)", True),
    (r"a$|b$", True),
    (r"(a$)b", True),
    (r"a$b", False),  # '$' followed by more pattern
    (r"[[:alpha:]]", False),  # a POSIX class to RE2, literal text to re
    (r"[\[:]", True),  # an escaped '[' opens no POSIX class
    (r"a{,3}", False),
    (r"(a)\1", False),
    (r"\p{L}", False),
    (r"(?=a)", False),
    (r"(?<!a)b", False),
    (r"(?>a)", False),
    (r"(?P=x)", False),
    (r"(?a:x)", False),  # a flag RE2 does not know
    (r"(?i", False),  # a flags group that neither scopes nor ends
    (r"a\Z", False),
    (r"é", False),
    ("a\\", False),  # a lone trailing backslash
])
def test_re2_compatible_cases(pattern: str, expected: bool) -> None:
    assert re2_compatible(pattern) is expected


def _re2_agrees(pattern: str, targets: list[str]) -> None:
    re2 = pytest.importorskip("re2", reason="google-re2 is not installed")
    form = set_form(pattern)
    if not (re2_compatible(form) and _valid(form)):
        return
    options = re2.Options()
    options.dot_nl = True
    try:
        compiled = re2.compile(form, options)
    except Exception:
        return  # RE2 refuses it: the matcher keeps it on the exact path
    for target in targets:
        if matcher._RE2_SAFE_TARGET.match(target):
            exact = compile_regex(form).match(target)
            assert (compiled.match(target) is not None) == (exact is not None), \
                (pattern, form, target)


@pytest.mark.parametrize("pattern", CORPUS)
def test_re2_reads_policy_patterns_as_re_does(pattern: str) -> None:
    _re2_agrees(pattern, TARGETS)


@SETTINGS
@given(REGEXES, st.lists(GENERATED_TARGETS, max_size=6))
def test_re2_reads_compatible_patterns_as_re_does(pattern: str, targets: list[str]) -> None:
    _re2_agrees(pattern, targets + TARGETS)


# --- the sandbox plan bounds what the engine compiles ------------------------------------------

def test_sandbox_plan_bounds_the_engine_form() -> None:
    policy = Policy(name="t", default_action="deny", patterns=[
        Pattern(id="null", action_type="file_write", pattern=r"^/dev/null$", action="allow"),
        Pattern(id="deny_all", action_type="file_write", pattern=r".*", action="deny")])
    allow_list = analyse(policy, "file_write")
    assert allow_list.allowing[0][1] == (Prefix("/dev/null", EXACT),)
    plan = plan_sandbox(policy, support=ll.LandlockSupport(7), kind=lambda path: "file")
    assert not any("newline" in caveat for caveat in plan.caveats), plan.caveats
