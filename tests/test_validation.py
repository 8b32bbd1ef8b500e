"""Every class of problem in a policy document is reported with its file, line and pattern id,
all at once, by ``validate_yaml_string``/``validate_yaml_file`` and ``load_policy``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agent_os import Policy
from agent_os.errors import PolicyValidationError, ValidationIssue
from agent_os.loader import load_policy, policy_from_yaml_string, validate_yaml_file, validate_yaml_string


def issues_of(text: str, **kwargs) -> list[ValidationIssue]:
    return validate_yaml_string(textwrap.dedent(text).lstrip("\n"), name="p.yaml", **kwargs)


def only(issues: list[ValidationIssue]) -> ValidationIssue:
    assert len(issues) == 1, "\n".join(map(str, issues))
    return issues[0]


GOOD_PATTERN = """\
  - id: ok
    action_type: file_read
    pattern: "^/ok/.*"
    action: allow
"""


def test_valid_document_has_no_issues():
    assert issues_of("name: fine\npatterns:\n" + GOOD_PATTERN) == []


def test_issue_line_format_matches_the_house_style():
    issue = ValidationIssue("policies/x.yaml", 14, "block_ssh",
                            "invalid regex '(': missing ), unterminated subpattern at position 0",
                            "escape literal parentheses as \\(")
    assert str(issue) == ("policies/x.yaml:14: pattern 'block_ssh': invalid regex '(': missing ), "
                          "unterminated subpattern at position 0 (hint: escape literal parentheses as \\()")
    assert str(ValidationIssue("a.yaml", None, None, "boom")) == "a.yaml: boom"


def test_yaml_syntax_error_has_its_line():
    issue = only(issues_of("""
        name: x
        patterns:
          - id: a
            pattern: "unclosed
        """))
    assert issue.line is not None and issue.line >= 4
    assert "YAML syntax error" in issue.message


def test_backslash_in_double_quotes_gets_a_hint():
    issue = only(issues_of('name: x\npatterns:\n  - id: a\n    action_type: file_read\n    pattern: "\\.pem"\n'))
    assert issue.line == 5 and "unknown escape character" in issue.message
    assert "single quotes" in issue.hint


def test_unknown_top_level_key_suggests_the_right_one():
    issue = only(issues_of("name: x\ndefualts:\n  action: deny\n"))
    assert (issue.line, issue.pattern_id) == (2, None)
    assert "unknown key 'defualts'" in issue.message and issue.hint == "did you mean 'defaults'?"


def test_unknown_key_in_defaults_and_in_a_pattern_and_an_exception():
    issues = issues_of("""
        name: x
        defaults:
          acton: deny
        patterns:
          - id: p1
            action_type: file_read
            pattern: "^/a"
            sevrity: high
        exceptions:
          - agent_pattern: "a.*"
            patterns: [p1]
            reasn: because
        """)
    assert [(i.line, i.pattern_id) for i in issues] == [(3, None), (8, "p1"), (12, None)]
    assert [i.hint for i in issues] == ["did you mean 'action'?", "did you mean 'severity'?",
                                        "did you mean 'reason'?"]


def test_unknown_action_type_suggests():
    issue = only(issues_of("""
        patterns:
          - id: reads
            action_type: file_raed
            pattern: ".*"
        """))
    assert (issue.line, issue.pattern_id) == (3, "reads")
    assert issue.message == "unknown action type 'file_raed'" and issue.hint == "did you mean 'file_read'?"


def test_invalid_regex_line_pattern_and_hint():
    issue = only(issues_of("""
        name: x
        patterns:
          - id: block_ssh
            action_type: file_read
            pattern: "("
        """))
    assert str(issue) == ("p.yaml:5: pattern 'block_ssh': invalid regex '(': missing ), unterminated "
                          "subpattern at position 0 (hint: escape literal parentheses as \\()")


def test_regex_is_compiled_after_variable_expansion():
    # The value is escaped, so a workspace with regex metacharacters cannot break the regex.
    assert issues_of("""
        patterns:
          - id: ws
            action_type: file_read
            pattern: "^${WORKSPACE}/.*"
        """, variables={"WORKSPACE": "/home/u/we(ird"}) == []
    issue = only(issues_of("""
        patterns:
          - id: ws
            action_type: file_read
            pattern: "^${WORKSPACE}/(.*"
        """, variables={"WORKSPACE": "/w"}))
    assert issue.pattern_id == "ws" and "expanded '^/w/(.*'" in issue.message


def test_unbound_and_malformed_variables():
    issues = issues_of("""
        patterns:
          - id: a
            action_type: file_read
            pattern: "^${WORKSPCE}/.*"
          - id: b
            action_type: file_read
            pattern: "^${not a name}/.*"
        """)
    assert [(i.line, i.pattern_id) for i in issues] == [(4, "a"), (7, "b")]
    assert "unbound variable '${WORKSPCE}'" in issues[0].message
    assert issues[0].hint == "did you mean 'WORKSPACE'?"
    assert "malformed variable reference" in issues[1].message


@pytest.mark.parametrize("key,value,expected", [
    ("action", "block", "bad action 'block'"),
    ("severity", "severe", "bad severity 'severe'"),
    ("severity", "7", "bad severity 7"),
    ("violation_mode", "sigkil", "bad violation mode 'sigkil'"),
    ("enabled", "maybe", "enabled must be true or false"),
])
def test_bad_pattern_values(key, value, expected):
    issue = only(issues_of(f"""
        patterns:
          - id: p
            action_type: file_read
            pattern: ".*"
            {key}: {value}
        """))
    assert (issue.line, issue.pattern_id) == (5, "p")
    assert expected in issue.message


def test_action_synonym_hint():
    issue = only(issues_of("patterns:\n  - {id: p, action_type: file_read, pattern: x, action: block}\n"))
    assert issue.hint == "did you mean 'deny'?"


def test_bad_defaults_values():
    issues = issues_of("""
        defaults:
          action: maybe
          violation_mode: kill
          log_level: loud
        """)
    assert [i.line for i in issues] == [2, 3, 4]
    assert "bad default action 'maybe'" in issues[0].message
    assert "bad violation mode 'kill'" in issues[1].message
    assert "bad log level 'loud'" in issues[2].message


def test_both_spellings_of_the_default_action_must_agree():
    issue = only(issues_of("default_action: allow\ndefaults:\n  action: deny\n"))
    assert issue.line == 1 and "contradicts defaults.action 'deny' (line 3)" in issue.message
    assert issues_of("default_action: deny\ndefaults:\n  action: deny\n") == []


def test_duplicate_pattern_ids_name_the_first():
    issue = only(issues_of("""
        patterns:
          - id: dup
            action_type: file_read
            pattern: "^/a"
          - id: dup
            action_type: file_write
            pattern: "^/b"
        """))
    assert (issue.line, issue.pattern_id) == (5, "dup")
    assert issue.hint.startswith("first defined at line 2")


def test_identical_patterns_without_id_collide_on_the_generated_id():
    issue = only(issues_of("""
        patterns:
          - {action_type: file_read, pattern: "^/a", action: allow}
          - {action_type: file_read, pattern: "^/a", action: allow}
        """))
    assert issue.line == 3 and issue.pattern_id.startswith("file_read_")


def test_duplicate_mapping_key():
    issue = only(issues_of("name: a\nname: b\n"))
    assert issue.line == 2 and "duplicate key 'name'" in issue.message


def test_unknown_condition_and_bad_condition_value():
    issues = issues_of("""
        patterns:
          - id: big
            action_type: file_write
            pattern: ".*"
            conditions:
              max_size_byte: 10
              max_affected_rows: -1
              time_range: {start: "25:00", end: "17:00"}
        """)
    assert [(i.line, i.pattern_id) for i in issues] == [(6, "big"), (7, "big"), (8, "big")]
    assert "unknown condition 'max_size_byte'" in issues[0].message
    assert issues[0].hint == "did you mean 'max_size_bytes'?"
    assert "condition 'max_affected_rows': expected a non-negative integer" in issues[1].message
    assert "time_range.start" in issues[2].message


def test_wrong_types():
    issues = issues_of("""
        name: [not, a, string]
        settings: 5
        patterns:
          id: not-a-list
        """)
    assert [i.line for i in issues] == [1, 2, 4]
    assert issues[0].message == "name must be a string, got a list"
    assert issues[1].message == "settings must be a mapping, got an integer"
    assert issues[2].message == "patterns must be a list, got a mapping"


def test_yaml_booleans_where_a_string_belongs_get_a_quoting_hint():
    issue = only(issues_of("patterns:\n  - {id: off, action_type: file_read, pattern: x}\n"))
    assert issue.message == "patterns[0]: id must be a string, got a boolean"
    assert issue.hint == 'quote it: id: "off"'


def test_pattern_without_id_is_labelled_by_position_and_missing_keys_are_named():
    issue = only(issues_of("patterns:\n  - action_type: file_read\n"))
    assert issue.pattern_id is None and issue.line == 2
    assert issue.message == "patterns[0]: missing required key 'pattern'"


def test_empty_document():
    issue = only(issues_of(""))
    assert "empty" in issue.message


def test_every_problem_is_reported_at_once_in_line_order():
    issues = issues_of("""
        name: x
        colour: red
        patterns:
          - id: a
            action_type: file_raed
            pattern: "("
          - id: b
            action_type: shell_execute
            pattern: "*"
            severity: huge
        """)
    assert [(i.line, i.pattern_id) for i in issues] == [
        (2, None), (5, "a"), (6, "a"), (9, "b"), (10, "b")]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def test_unknown_extends_target(tmp_path):
    write(tmp_path, "base.yaml", "name: base\n")
    path = write(tmp_path, "child.yaml", """
        name: child
        extends:
          - bsae
        """)
    issue = only(validate_yaml_file(path))
    assert (issue.file, issue.line) == (str(path), 3)
    assert issue.message == "extends: no policy named 'bsae'"
    assert issue.hint.startswith("did you mean 'base'? searched: " + str(tmp_path))


def test_extends_must_be_a_list(tmp_path):
    path = write(tmp_path, "child.yaml", "extends: base\n")
    issue = only(validate_yaml_file(path))
    assert issue.message == "extends must be a list, got a string" and issue.hint == "write extends: [base]"


def test_extends_cycle_reports_the_chain(tmp_path):
    write(tmp_path, "a.yaml", "name: a\nextends: [b]\n")
    write(tmp_path, "b.yaml", "name: b\nextends:\n  - a\n")
    issue = only(validate_yaml_file(tmp_path / "a.yaml"))
    assert issue.file == str(tmp_path / "b.yaml") and issue.line == 3
    assert issue.message == "extends cycle: a -> b -> a"
    with pytest.raises(PolicyValidationError, match="extends cycle: a -> b -> a"):
        load_policy(tmp_path / "a.yaml")


def test_self_extension_is_a_cycle(tmp_path):
    write(tmp_path, "me.yaml", "extends: [me]\n")
    assert only(validate_yaml_file(tmp_path / "me.yaml")).message == "extends cycle: me -> me"


def test_problems_in_a_parent_are_reported_with_the_parent_file(tmp_path):
    write(tmp_path, "base.yaml", """
        patterns:
          - id: broken
            action_type: file_read
            pattern: "["
        """)
    child = write(tmp_path, "child.yaml", "extends: [base]\nfoo: 1\n")
    issues = validate_yaml_file(child)
    assert [(Path(i.file).name, i.line, i.pattern_id) for i in issues] == [
        ("child.yaml", 2, None), ("base.yaml", 4, "broken")]


def test_bad_exceptions(tmp_path):
    write(tmp_path, "base.yaml", "patterns:\n  - {id: inherited, action_type: file_read, pattern: x}\n")
    path = write(tmp_path, "p.yaml", """
        extends: [base]
        patterns:
          - {id: own, action_type: file_read, pattern: y}
        exceptions:
          - agent_pattern: "admin_("
            patterns: [own, inherited, ownn]
            expires: "31/12/2024"
          - patterns: own
        """)
    issues = validate_yaml_file(path)
    assert [(i.line, i.pattern_id) for i in issues] == [
        (5, None), (6, "ownn"), (7, None), (8, None), (8, None)]
    assert "invalid agent_pattern regex 'admin_('" in issues[0].message
    assert "exception names unknown pattern 'ownn'" in issues[1].message
    assert issues[1].hint == "did you mean 'own'?"
    assert "bad expires date '31/12/2024'" in issues[2].message
    assert {issues[3].message, issues[4].message} == {
        "exceptions[1]: missing required key 'agent_pattern'",
        "exceptions[1]: patterns must be a list, got a string"}


def test_merge_document_problems():
    issues = issues_of("""
        merge:
          strategy: strictest
          policies:
            - {name: only_one}
        defaults:
          action: deny
        """)
    messages = [i.message for i in issues]
    assert "bad merge strategy 'strictest': use strict, permissive" in messages[0]
    assert messages[1] == "merge.policies needs at least two policies"
    assert "key 'defaults' is not allowed beside 'merge'" in messages[2]


def test_load_policy_raises_with_every_issue(tmp_path):
    path = write(tmp_path, "bad.yaml", "colour: red\npatterns: {}\n")
    with pytest.raises(PolicyValidationError) as info:
        load_policy(path)
    assert len(info.value.issues) == 2
    assert str(info.value).splitlines() == [str(i) for i in info.value.issues]


def test_policy_validate_yaml_returns_printable_issues(tmp_path):
    path = write(tmp_path, "bad.yaml", "patterns:\n  - {id: x, action_type: file_read, pattern: '('}\n")
    errors = Policy.validate_yaml(str(path))
    assert [str(e) for e in errors] == [
        f"{path}:2: pattern 'x': invalid regex '(': missing ), unterminated subpattern at position 0"
        " (hint: escape literal parentheses as \\()"]
    assert Policy.validate_yaml(str(tmp_path / "missing.yaml"))[0].message == "no such file"


def test_from_yaml_string_raises_on_invalid_input():
    with pytest.raises(PolicyValidationError, match="<string>:1: unknown key"):
        policy_from_yaml_string("nmae: x\n")


def test_yaml_merge_keys_may_be_overridden_but_plain_duplicates_may_not():
    text = """
        patterns:
          - &deny_read {id: a, action_type: file_read, pattern: "^/a", action: deny}
          - <<: *deny_read
            id: b
            pattern: "^/b"
        """
    assert issues_of(text) == []
    policy = policy_from_yaml_string(textwrap.dedent(text))
    assert [(p.id, p.pattern, p.action) for p in policy.patterns] == [
        ("a", "^/a", "deny"), ("b", "^/b", "deny")]


def test_unsafe_tags_are_refused_on_one_line():
    issue = only(issues_of("name: !!python/object:os.system x\n"))
    assert issue.line == 1 and "could not determine a constructor" in issue.message
    assert "\n" not in str(issue)


def test_a_policy_file_is_one_mapping_document():
    assert only(issues_of("- a\n- b\n")).message == "policy must be a mapping, got a list"
    issue = only(issues_of("name: a\n---\nname: b\n"))
    assert issue.line == 2 and "expected a single document" in issue.message
