"""Fuzz target: policy case files (``agentd policy test --policy P CASES.yaml``, read by
``agent_os.policy_cases.load_cases`` and run with ``run_case``).

Feeds: the case files in tests/policy_cases mutated (characters inserted, NUL and other control
characters among them, spans deleted or duplicated), random bytes as a case file, lists of cases
whose fields have values of any type, documents nested deeper than the parser recurses.

Asserts: ``load_cases`` returns cases or raises ``PolicyValidationError`` whose issues print as
one line each naming the file (``PolicyNotFoundError`` only for a missing file); every case it
returns runs against the strict policy without raising. Through the CLI: exit 2 with the
problems on stderr, no ``Traceback``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from fuzz_settings import fuzz
from hypothesis import example, given
from hypothesis import strategies as st

from agent_os.errors import PolicyValidationError
from agent_os.loader import load_policy
from agent_os.policy_cases import CASE_KEYS, cases_from_yaml_string, load_cases, run_case
from helpers.agentd_run import AGENTD

REPO = Path(__file__).resolve().parents[2]
SEEDS = [path.read_text() for path in sorted((REPO / "tests" / "policy_cases").glob("*.yaml"))]
SEEDS = SEEDS or ["- {action_type: file_read, target: /etc/shadow, expect: deny}\n"]
LABEL = "cases.yaml"


@pytest.fixture(scope="module")
def strict():
    return load_policy("strict", {"WORKSPACE": "/work/space", "HOME": "/home/u", "TMPDIR": "/tmp"})


def check_cases_text(text: str, policy) -> None:
    try:
        cases = cases_from_yaml_string(text, LABEL)
    except PolicyValidationError as exc:
        assert exc.issues
        for issue in exc.issues:
            line = str(issue)
            assert "\n" not in line and line.startswith(LABEL), line
        return
    for case in cases:
        run_case(policy, case)


@st.composite
def mutated_cases(draw) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["insert", "delete", "duplicate"]))
        if edit == "insert":
            piece = draw(st.one_of(st.sampled_from(["\x00", "\x1b", "\ud800", ":", "- ", "[", "{",
                                                    "&a ", "*a", "!!binary ", "\t", "\n  "]),
                                   st.text(max_size=5)))
            text = text[:at] + piece + text[at:]
        elif edit == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 30)):]
        else:
            text = text[:at] + text[at:at + draw(st.integers(1, 100))] + text[at:]
    return text


VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=15),
              st.sampled_from(["file_read", "deny", "allow", "/etc/shadow", "network_connect"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6)
CASES = st.lists(st.one_of(
    st.fixed_dictionaries({}, optional={key: VALUES for key in CASE_KEYS}), VALUES), max_size=4)

NUL_CASES = '- {action_type: file_read, target: "x\x00", expect: deny}\n'


@pytest.mark.parametrize("text", [
    NUL_CASES,
    "- " + "[" * 3000,
    "- {a: " + "[" * 900 + "]" * 900 + "}",
    "- {action_type: file_read, target: /x, expect: deny}\n\ud800",
])
def test_case_files_that_crashed_the_reader_are_problems_with_their_line(strict, text):
    with pytest.raises(PolicyValidationError) as caught:
        cases_from_yaml_string(text, LABEL)
    for issue in caught.value.issues:
        assert str(issue).startswith(f"{LABEL}:") and "\n" not in str(issue), issue
        assert issue.line is not None, issue


def test_a_case_file_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "cases.yaml"
    path.write_bytes(b"- {action_type: file_read, target: /etc/shadow, expect: deny}\n- caf\xe9\n")
    with pytest.raises(PolicyValidationError) as caught:
        load_cases(path)
    assert [issue.line for issue in caught.value.issues] == [2]
    assert "UTF-8" in caught.value.issues[0].message


@pytest.mark.parametrize("text", [NUL_CASES, "- " + "[" * 3000])
def test_cli_policy_test_reports_a_broken_case_file_without_traceback(tmp_path, text):
    path = tmp_path / "cases.yaml"
    path.write_text(text)
    result = subprocess.run([AGENTD, "policy", "test", "--policy", "strict", str(path)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.splitlines()[0].startswith(f"{path}:1: "), result.stderr


@fuzz(200)
@given(mutated_cases())
@example(NUL_CASES)
def test_fuzz_mutated_case_files(strict, text):
    check_cases_text(text, strict)


@fuzz(150)
@given(CASES)
def test_fuzz_cases_of_any_type(strict, cases):
    check_cases_text(yaml.safe_dump(cases, allow_unicode=True), strict)


@fuzz(100)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes_as_a_case_file(tmp_path_factory, strict, data):
    path = tmp_path_factory.mktemp("cases") / "cases.yaml"
    path.write_bytes(data)
    try:
        cases = load_cases(path)
    except PolicyValidationError as exc:
        for issue in exc.issues:
            assert "\n" not in str(issue) and str(issue).startswith(str(path)), issue
        return
    for case in cases:
        run_case(strict, case)
