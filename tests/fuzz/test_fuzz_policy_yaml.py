"""Fuzz target: policy YAML, through the loader API and ``agentd policy validate`` / ``agentd run``.

Feeds: mutations of the built-in policies (``policies/*.yaml``, the Python templates dumped as
YAML, the enterprise examples in tests/data): characters inserted (control characters and NUL
among them), spans deleted, duplicated or re-indented, lines swapped; random bytes written as a
policy file; random documents of the right keys with values of the wrong types; documents nested
deeper than any parser recursion allows; aliases (recursive ones included).

Asserts: the loader either builds a ``Policy`` or reports ``ValidationIssue``s, never anything
else (``policy_from_yaml_string`` raises only ``PolicyValidationError``); every issue prints as
one line that starts with the file it is about; a problem the parser found names its line. The
CLI cases: a non-zero exit, one problem line, no ``Traceback``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from fuzz_settings import fuzz
from hypothesis import example, given
from hypothesis import strategies as st

from agent_os import Policy
from agent_os.errors import PolicyValidationError, ValidationIssue
from agent_os.loader import (
    PATTERN_KEYS,
    TOP_LEVEL_KEYS,
    policy_from_yaml_string,
    policy_to_yaml,
    validate_yaml_file,
    validate_yaml_string,
)
from agent_os.templates import hipaa_standard, soc2_compliant
from helpers.agentd_run import AGENTD

REPO = Path(__file__).resolve().parents[2]
LABEL = "fuzzed.yaml"


def _seeds() -> list[str]:
    texts = [path.read_text() for path in sorted((REPO / "policies").glob("*.yaml"))]
    texts += [path.read_text() for path in sorted((REPO / "tests" / "data").glob("*.yaml"))
              if "cases" not in path.name]
    texts += [policy_to_yaml(hipaa_standard()), policy_to_yaml(soc2_compliant())]
    return texts


SEEDS = _seeds()
CONTROL = st.sampled_from(["\x00", "\x01", "\x07", "\x08", "\x0b", "\x0c", "\x1b", "\x7f",
                           "\x85", "\ufeff", "\ud800", "\uffff", "\t", "\r", "\n", "\u2028"])
YAML_BITS = st.sampled_from([":", "- ", "  ", "\n  ", "'", '"', "{", "}", "[", "]", "&a ", "*a",
                             "!!binary ", "!!python/object ", "<<: ", "---\n", "...\n", "#", "|",
                             ">", "%YAML 1.1\n", "? ", "${", "}", "\\", "~", "null", "1e999"])


@st.composite
def mutated_seed(draw) -> str:
    """A built-in policy with a few random edits."""
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["insert", "delete", "duplicate", "indent", "swap"]))
        if edit == "insert":
            piece = draw(st.one_of(CONTROL, YAML_BITS, st.text(max_size=8)))
            text = text[:at] + piece + text[at:]
        elif edit == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 40)):]
        elif edit == "duplicate":
            text = text[:at] + text[at:at + draw(st.integers(1, 200))] + text[at:]
        elif edit == "indent":
            line_start = text.rfind("\n", 0, at) + 1
            text = text[:line_start] + " " * draw(st.integers(1, 5)) + text[line_start:]
        else:
            lines = text.split("\n")
            i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
            text = "\n".join(lines)
    return text


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["allow", "deny", "file_read", ".*",
                                                           "(", "sigkill", "2026-13-45"]))
KEYS = st.sampled_from(PATTERN_KEYS + TOP_LEVEL_KEYS + ("x", "", "ID"))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(KEYS, inner, max_size=3)), max_leaves=8)
# the right keys, each with a value of any type (fixed_dictionaries: cheap to draw)
PATTERN = st.fixed_dictionaries({}, optional={key: VALUES for key in PATTERN_KEYS})
DOCUMENT = st.fixed_dictionaries(
    {}, optional={key: st.one_of(VALUES, st.lists(PATTERN, max_size=3)) for key in TOP_LEVEL_KEYS}
)


def assert_one_clear_line_each(issues: list[ValidationIssue], label: str = LABEL) -> None:
    for issue in issues:
        assert isinstance(issue, ValidationIssue)
        text = str(issue)
        assert "\n" not in text and "\r" not in text, text
        assert text.startswith(label), text
        assert issue.message.strip(), issue


def check_text(text: str) -> None:
    """The two loader entry points agree: issues, or a Policy; nothing else escapes."""
    issues = validate_yaml_string(text, name=LABEL)
    assert_one_clear_line_each(issues)
    try:
        policy = policy_from_yaml_string(text, name=LABEL)
    except PolicyValidationError as exc:
        assert exc.issues, "a refusal names at least one problem"
        assert_one_clear_line_each(list(exc.issues))
    else:
        assert isinstance(policy, Policy)
        assert not issues, issues


# --- the bugs this target was written for ------------------------------------------------------

NUL_POLICY = "name: x\npatterns: []\nde\x00sc: y\n"


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x1b", "\x7f", "\ufffe", "\ud800"])
def test_a_control_character_is_one_problem_naming_its_line(char):
    issues = validate_yaml_string(NUL_POLICY.replace("\x00", char), name=LABEL)
    assert len(issues) == 1, issues
    assert issues[0].line == 3, issues
    assert "unacceptable character" in issues[0].message
    assert_one_clear_line_each(issues)


def test_a_policy_file_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: x\npatterns: []\ndescription: caf\xe9\n")
    issues = validate_yaml_file(path)
    assert len(issues) == 1 and issues[0].line == 3, issues
    assert "UTF-8" in issues[0].message
    assert_one_clear_line_each(issues, str(path))


@pytest.mark.parametrize("text", [
    "patterns: " + "[" * 5000,                  # unclosed: the pure-Python parser's messages
    "patterns: " + "[" * 5000 + "]" * 5000,     # closed, deeper than libyaml allows
    "patterns: " + "[" * 900 + "]" * 900,       # closed, within libyaml's limit: construct
    "metadata: " + "[" * 900 + "]" * 900,
    "".join("  " * i + "k:\n" for i in range(3000)),
    "a: " + "{a: " * 3000 + "}" * 3000,
])
def test_a_document_nested_too_deep_is_a_problem_not_a_recursion_error(text):
    issues = validate_yaml_string(text, name=LABEL)
    assert issues
    assert_one_clear_line_each(issues)
    with pytest.raises(PolicyValidationError):
        policy_from_yaml_string(text, name=LABEL)


def _agentd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([AGENTD, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_cli_validate_reports_a_nul_byte_as_one_line(tmp_path):
    path = tmp_path / "nul.yaml"
    path.write_text(NUL_POLICY)
    result = _agentd("policy", "validate", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert result.stdout.splitlines() == [
        f"{path}:3: YAML syntax error: unacceptable character #x0000: special characters are "
        "not allowed (hint: YAML text cannot hold it: remove the control character, or write it as an "
        "escape inside double quotes, e.g. \"\\x00\")"
    ]
    assert result.stderr == ""


def test_cli_run_refuses_a_nul_byte_policy_with_its_line(tmp_path):
    path = tmp_path / "nul.yaml"
    path.write_text(NUL_POLICY)
    result = _agentd("run", "--embedded", "--policy", str(path), "--", "true", cwd=tmp_path)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    problems = [line for line in result.stderr.splitlines() if line.startswith(str(path))]
    assert len(problems) == 1 and problems[0].startswith(f"{path}:3: "), result.stderr


@pytest.mark.parametrize("text", [
    "\x00",
    "patterns:\n\t- id: x\n",
    "name: [unclosed\n",
    "patterns: " + "[" * 3000,
])
def test_cli_validate_one_line_no_traceback(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = _agentd("policy", "validate", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}:"), result.stdout


# --- fuzz targets --------------------------------------------------------------------------------

@fuzz(300)
@given(mutated_seed())
@example(NUL_POLICY)
@example("\ud800# a lone surrogate: libyaml raised UnicodeEncodeError\nname: x\npatterns: []\n")
@example("patterns:\n- &p {id: a, action_type: file_read, pattern: x, extra: *p}\n")
@example("&a [*a]")
@example("a: &a\n  b: *a\n")
def test_fuzz_mutated_builtin_policies(text):
    check_text(text)


@fuzz(150)
@given(st.binary(max_size=300))
@example(b"name: x\n\xff\xfe")
@example(b"\xef\xbb\xbfname: x\npatterns: []\n")
def test_fuzz_random_bytes_as_a_policy_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("bytes") / "fuzzed.yaml"
    path.write_bytes(data)
    issues = validate_yaml_file(path)
    assert_one_clear_line_each(issues, str(path))


@fuzz(150)
@given(DOCUMENT)
def test_fuzz_documents_with_wrong_types(document):
    check_text(yaml.safe_dump(document, allow_unicode=True))


@fuzz(25)
@given(st.integers(1, 4000), st.sampled_from(["[", "{a: ", "- ", "\n  k:", "&x [", "!!seq ["]),
       st.booleans())
def test_fuzz_deep_documents(depth, opener, closed):
    closer = {"[": "]", "{a: ": "}", "&x [": "]", "!!seq [": "]"}.get(opener, "")
    text = "patterns: " + opener * depth + ("x" + closer * depth if closed else "")
    check_text(text)


@fuzz(20)
@given(st.integers(1, 3000), st.integers(0, 2))
def test_fuzz_huge_documents(count, shape):
    if shape == 0:
        body = "".join(f"  - {{id: p{i}, action_type: file_read, pattern: '^/x{i}$', "
                       f"action: deny}}\n" for i in range(count))
        text = "name: huge\npatterns:\n" + body
    elif shape == 1:
        text = "name: huge\ndescription: " + "x" * (count * 300) + "\npatterns: []\n"
    else:
        text = "name: huge\nmetadata:\n" + "".join(f"  k{i}: [{i}, {i}]\n" for i in range(count))
    check_text(text)
