"""Policy unit tests as data: cases that say which decision a policy must reach, and a runner.

A case file is a YAML list of ``{name?, action_type, target, context?, agent_id?,
expect: allow|deny|warn, pattern_id?}`` (Cedar's integration tests keep cases the same way).
``expect`` is compared with the decision's ``action``; ``pattern_id``, when present, with the
winning pattern's id (``null`` means "no pattern: the default action decided"). The same format
powers ``agentd policy test`` and can be used from pytest. Problems in a case file are reported as
``ValidationIssue``s with their lines, like problems in a policy file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, SequenceNode

from .action_types import ACTION_TYPES
from .errors import PolicyNotFoundError, PolicyValidationError, ValidationIssue
from .loader import BoundedSafeLoader, reader_problem
from .policy import ACTIONS, EvaluationResult

CASE_KEYS = ("name", "action_type", "target", "context", "agent_id", "expect", "pattern_id")
_UNSET = object()


@dataclass(frozen=True)
class PolicyCase:
    """One expected decision; ``checks_pattern`` is False when the case names no ``pattern_id``."""

    name: str
    action_type: str
    target: str
    expect: str
    context: Mapping[str, Any] = field(default_factory=dict)
    agent_id: str | None = None
    pattern_id: Any = _UNSET
    file: str = "<cases>"
    line: int | None = None

    @property
    def checks_pattern(self) -> bool:
        return self.pattern_id is not _UNSET

    def evaluation_context(self) -> dict[str, Any]:
        context = dict(self.context)
        if self.agent_id is not None:
            context["agent_id"] = self.agent_id
        return context


@dataclass(frozen=True)
class CaseOutcome:
    case: PolicyCase
    result: EvaluationResult
    passed: bool

    def expected_line(self) -> str:
        pattern = self.case.pattern_id if self.case.checks_pattern else "(not checked)"
        if pattern is None:
            pattern = "(default)"
        return f"decision: {self.case.expect:<5}  pattern: {pattern}"

    def actual_line(self) -> str:
        pattern = self.result.pattern_id if self.result.pattern_id is not None else "(default)"
        return f"decision: {self.result.action:<5}  pattern: {pattern}"


def run_case(policy: Any, case: PolicyCase) -> CaseOutcome:
    """Evaluate ``case`` against ``policy`` (anything with ``evaluate``)."""
    result = policy.evaluate(case.action_type, case.target, case.evaluation_context())
    passed = result.action == case.expect
    if case.checks_pattern and result.pattern_id != case.pattern_id:
        passed = False
    return CaseOutcome(case, result, passed)


def load_cases(path: str | os.PathLike) -> list[PolicyCase]:
    """Read a case file; raises ``PolicyValidationError`` listing every problem with its line."""
    path = Path(os.fspath(path))
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PolicyNotFoundError(f"case file {str(path)!r} does not exist") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PolicyValidationError(
            [ValidationIssue(str(path), line, None, f"not UTF-8 text: byte {data[exc.start]:#04x}")]
        ) from None
    return cases_from_yaml_string(text, str(path))


def cases_from_yaml_string(text: str, file: str = "<cases>") -> list[PolicyCase]:
    issues: list[ValidationIssue] = []
    try:
        loader = BoundedSafeLoader(text)  # the reader checks every character here already
    except yaml.reader.ReaderError as exc:
        raise PolicyValidationError([ValidationIssue(file, *reader_problem(text, exc))]) from None
    try:
        root = loader.get_single_node()
    except yaml.reader.ReaderError as exc:
        raise PolicyValidationError([ValidationIssue(file, *reader_problem(text, exc))]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise PolicyValidationError(
            [
                ValidationIssue(
                    file, mark.line + 1 if mark else None, None, f"YAML syntax error: {exc.problem}"
                )
            ]
        ) from None
    finally:
        loader.dispose()
    if not isinstance(root, SequenceNode):
        raise PolicyValidationError(
            [
                ValidationIssue(
                    file,
                    1,
                    None,
                    "a case file is a YAML list of cases",
                    "- {action_type: file_read, target: /etc/shadow, expect: deny}",
                )
            ]
        )
    cases: list[PolicyCase] = []
    for index, node in enumerate(root.value):
        line = node.start_mark.line + 1
        label = f"case {index}"
        if not isinstance(node, MappingNode):
            issues.append(ValidationIssue(file, line, None, f"{label} must be a mapping"))
            continue
        try:
            data = loader.construct_object(node, deep=True)
        except RecursionError:
            issues.append(ValidationIssue(file, line, None, f"{label}: nested too deeply"))
            continue
        except (yaml.YAMLError, ValueError, TypeError) as exc:
            issues.append(ValidationIssue(file, line, None, f"{label}: {exc}"))
            continue
        if isinstance(data.get("name"), str):
            label = f"case {data['name']!r}"
        problems = _case_problems(data)
        if problems:
            issues.extend(
                ValidationIssue(file, line, None, f"{label}: {message}", hint)
                for message, hint in problems
            )
            continue
        cases.append(
            PolicyCase(
                name=data.get("name") or f"{data['action_type']} {data['target']}",
                action_type=data["action_type"],
                target=data["target"],
                expect=data["expect"],
                context=dict(data.get("context") or {}),
                agent_id=data.get("agent_id"),
                pattern_id=data["pattern_id"] if "pattern_id" in data else _UNSET,
                file=file,
                line=line,
            )
        )
    if issues:
        raise PolicyValidationError(issues)
    return cases


def _case_problems(data: Mapping[Any, Any]) -> list[tuple[str, str | None]]:
    import difflib

    problems: list[tuple[str, str | None]] = []
    for key in data:
        if key not in CASE_KEYS:
            close = difflib.get_close_matches(str(key), CASE_KEYS, n=1)
            problems.append(
                (
                    f"unknown key {key!r}",
                    f"did you mean {close[0]!r}?"
                    if close
                    else f"allowed keys: {', '.join(CASE_KEYS)}",
                )
            )
    for key in ("action_type", "target", "expect"):
        if key not in data:
            problems.append((f"missing required key {key!r}", None))
    action_type = data.get("action_type")
    if action_type is not None and (
        not isinstance(action_type, str) or action_type not in ACTION_TYPES
    ):
        close = difflib.get_close_matches(str(action_type), ACTION_TYPES, n=1)
        problems.append(
            (
                f"unknown action type {action_type!r}",
                f"did you mean {close[0]!r}?" if close else None,
            )
        )
    if "target" in data and not isinstance(data["target"], str):
        problems.append((f"target must be a string, got {data['target']!r}", "quote it"))
    if "expect" in data and (not isinstance(data["expect"], str) or data["expect"] not in ACTIONS):
        problems.append((f"bad expect {data['expect']!r}: use allow, deny or warn", None))
    if data.get("context") is not None and not isinstance(data["context"], Mapping):
        problems.append(("context must be a mapping", None))
    for key in ("agent_id", "name"):
        if data.get(key) is not None and not isinstance(data[key], str):
            problems.append((f"{key} must be a string", None))
    if data.get("pattern_id") is not None and not isinstance(data["pattern_id"], str):
        problems.append(("pattern_id must be a string (or null for 'the default decided')", None))
    return problems
