"""The errors of the policy layer and the one-line problem reports of the YAML validator.

``PolicyError`` is the base of every error a policy operation raises on bad input.
``PolicyValidationError`` carries *all* the problems found in a policy document at once, each a
``ValidationIssue`` that names the file, the line, the pattern id (when the problem is inside a
pattern) and a hint for the fix; ``str()`` of an issue is the one line users see, in the style
``policies/x.yaml:14: pattern 'block_ssh': invalid regex '(': ... (hint: ...)``.
"""

from __future__ import annotations

from dataclasses import dataclass


class PolicyError(Exception):
    """A policy could not be built, loaded or dumped; the message says what and where."""


class PolicyNotFoundError(PolicyError, FileNotFoundError):
    """A policy name is not on the search path, or a policy file does not exist."""


@dataclass(frozen=True)
class ValidationIssue:
    """One problem in a policy document. ``line`` is 1-based; None when no line applies."""

    file: str
    line: int | None
    pattern_id: str | None
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        parts = [f"{where}:"]
        if self.pattern_id is not None:
            parts.append(f"pattern {self.pattern_id!r}:")
        parts.append(self.message)
        text = " ".join(parts)
        if self.hint:
            text += f" (hint: {self.hint})"
        return " ".join(text.split("\n"))  # INVARIANT: one issue, one line


class PolicyValidationError(PolicyError, ValueError):
    """A policy document is invalid; ``issues`` lists every problem found, in file order."""

    def __init__(self, issues: list[ValidationIssue] | tuple[ValidationIssue, ...]) -> None:
        self.issues: tuple[ValidationIssue, ...] = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))
