"""Policies as YAML: finding, reading, validating and writing them.

This module owns the YAML form of a policy (docs/policy-yaml.md): the policy search path
(``search_path`` argument, ``$AGENT_OS_POLICY_PATH``, ``/etc/agentd/policies``, then the
repository's ``policies/``), ``${VAR}`` expansion in regexes (values are ``re.escape``d),
``extends:`` resolution with cycle detection, ``exceptions:``, ``merge:`` documents, and the
validator. The validator walks the composed YAML node tree so that every problem carries its file
and line, and it reports *every* problem of a document (and of the documents it extends) at once,
as ``ValidationIssue``s; ``load_policy`` raises them together in a ``PolicyValidationError``.
Nothing is built unless the whole document is valid, so a policy is never half-loaded. Each call
works on its own ``_LoadSession``; there is no module-level mutable state.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .action_types import ACTION_TYPES
from .conditions import CONDITIONS
from .errors import PolicyError, PolicyNotFoundError, PolicyValidationError, ValidationIssue
from .merge import MergedPolicy
from .policy import ACTIONS, Pattern, Policy, PolicyException, Severity, ViolationMode

BUILTIN_POLICY_DIR = Path(__file__).resolve().parents[2] / "policies"
SYSTEM_POLICY_DIR = Path("/etc/agentd/policies")
POLICY_PATH_ENV = "AGENT_OS_POLICY_PATH"

TOP_LEVEL_KEYS = (
    "name",
    "description",
    "version",
    "author",
    "created",
    "updated",
    "defaults",
    "default_action",
    "violation_mode",
    "settings",
    "metadata",
    "patterns",
    "extends",
    "exceptions",
    "merge",
)
DEFAULTS_KEYS = ("action", "violation_mode", "log_level")
PATTERN_KEYS = (
    "id",
    "action_type",
    "pattern",
    "action",
    "severity",
    "message",
    "description",
    "conditions",
    "metadata",
    "violation_mode",
    "enabled",
)
EXCEPTION_KEYS = ("agent_pattern", "patterns", "reason", "expires", "approved_by")
MERGE_KEYS = ("strategy", "policies")
# Keys a merge document may carry beside ``merge``: its parts decide defaults and modes.
MERGE_DOCUMENT_KEYS = (
    "name",
    "description",
    "version",
    "author",
    "created",
    "updated",
    "settings",
    "metadata",
    "patterns",
    "exceptions",
    "merge",
)
MERGE_STRATEGIES = ("strict", "permissive")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
# Top-level descriptive keys kept in ``Policy.metadata`` (the object model has no field for them)
# and lifted back to the top level by ``policy_to_yaml``.
DESCRIPTIVE_KEYS = ("author", "created", "updated")
DEFAULT_VARIABLES = ("WORKSPACE", "HOME", "TMPDIR")

_ACTION_SYNONYMS = {
    "block": "deny",
    "reject": "deny",
    "forbid": "deny",
    "refuse": "deny",
    "permit": "allow",
    "accept": "allow",
    "alert": "warn",
    "warning": "warn",
}
_VARIABLE_REF = re.compile(r"\$\{([^}]*)\}")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}\Z")
_TAG = "tag:yaml.org,2002:"
_KIND_BY_TAG = {
    "null": "null",
    "bool": "a boolean",
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "timestamp": "a date",
    "binary": "binary data",
}
# re.error message fragment -> how to fix it. First match wins.
_REGEX_HINTS = (
    ("missing ), unterminated subpattern", "escape literal parentheses as \\("),
    ("unbalanced parenthesis", "escape a literal ')' as \\)"),
    (
        "nothing to repeat",
        "* + ? and {n} must follow something: write .* for 'anything', \\* for a literal '*'",
    ),
    ("multiple repeat", "two quantifiers in a row: write .* rather than ** or escape the second"),
    ("unterminated character set", "escape a literal '[' as \\["),
    (
        "bad escape",
        "that backslash sequence is not a regex escape; inside double-quoted YAML "
        "write \\\\ for each regex backslash, or use single quotes",
    ),
    ("bad character range", "inside [...] put '-' first or last to match it literally"),
    ("look-behind requires fixed-width", "a look-behind must match a fixed number of characters"),
    ("unknown extension", "'(?' starts an extension; escape a literal '(?' as \\(\\?"),
    ("missing group name", "'(?P<' needs a name: (?P<name>...)"),
)
_YAML_HINTS = (
    (
        "unknown escape character",
        "inside double quotes YAML reads backslash escapes: write "
        "\"\\\\.\" for the regex \\. or use single quotes '\\.'",
    ),
    ("found character '\\t'", "YAML does not allow tabs for indentation: use spaces"),
    ("mapping values are not allowed here", "quote a value that contains ': '"),
    ("could not find expected ':'", "check the indentation of this key, or quote the value"),
    ("expected a single document", "a policy file holds one document: remove the extra '---'"),
)


# --- the search path and variables -------------------------------------------------------------


def policy_search_path(search_path: Sequence[str | os.PathLike] | str | None = None) -> list[Path]:
    """The directories searched for policy names, in order, without duplicates."""
    if isinstance(search_path, (str, os.PathLike)):
        search_path = [search_path]
    dirs = [Path(entry) for entry in (search_path or ()) if str(entry)]
    dirs += [Path(entry) for entry in os.environ.get(POLICY_PATH_ENV, "").split(":") if entry]
    dirs += [SYSTEM_POLICY_DIR, BUILTIN_POLICY_DIR]
    return list(dict.fromkeys(dirs))


def is_policy_name(name_or_path: str) -> bool:
    """A bare name (``strict``) rather than a path (``./strict.yaml``, ``policies/x``)."""
    return "/" not in name_or_path and not name_or_path.endswith((".yaml", ".yml"))


def find_policy(name: str, search_path: Iterable[Path]) -> Path | None:
    """The first ``<name>.yaml`` along ``search_path``, or None."""
    for directory in search_path:
        candidate = Path(directory) / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    return None


def available_policies(search_path: Iterable[Path]) -> dict[str, Path]:
    """Every policy name on the search path -> the file it resolves to (first one wins)."""
    found: dict[str, Path] = {}
    for directory in search_path:
        try:
            entries = sorted(Path(directory).glob("*.yaml"))
        except OSError:
            continue
        for entry in entries:
            if entry.is_file():
                found.setdefault(entry.stem, entry)
    return found


def resolve_policy(
    name_or_path: str, search_path: Sequence[str | os.PathLike] | None = None
) -> Path:
    """The file a name or path denotes; raises ``PolicyNotFoundError`` naming where it looked."""
    if not is_policy_name(name_or_path):
        path = Path(name_or_path)
        if not path.is_file():
            raise PolicyNotFoundError(f"policy file {name_or_path!r} does not exist")
        return path
    dirs = policy_search_path(search_path)
    found = find_policy(name_or_path, dirs)
    if found is None:
        close = difflib.get_close_matches(name_or_path, available_policies(dirs), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise PolicyNotFoundError(
            f"no policy named {name_or_path!r}{hint}; searched: {', '.join(map(str, dirs))}"
        )
    return found


def bind_variables(variables: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The values of ``${VAR}``: the defaults (WORKSPACE=cwd, HOME, TMPDIR) updated by the caller's.

    An absolute path is resolved (targets arrive with symlinks resolved, so the regex must name
    the same spelling) and loses its trailing slash, so that ``^${WORKSPACE}/.*`` works for any
    directory, ``/`` included.
    """
    bound: dict[str, Any] = {
        "WORKSPACE": os.getcwd(),
        "HOME": os.environ.get("HOME") or str(Path.home()),
        "TMPDIR": os.environ.get("TMPDIR") or "/tmp",
    }
    bound.update(variables or {})
    out: dict[str, str] = {}
    for name, value in bound.items():
        text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        if text.startswith("/"):
            text = os.path.realpath(text).rstrip("/")
        out[str(name)] = text
    return out


def expand_variables(regex: str, variables: Mapping[str, str]) -> tuple[str, list[str]]:
    """``regex`` with every ``${NAME}`` replaced by ``re.escape(value)``, and the unbound names."""
    unbound: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name in variables:
            return re.escape(variables[name])
        unbound.append(name)
        return match.group(0)

    return _VARIABLE_REF.sub(substitute, regex), unbound


# --- hints ---------------------------------------------------------------------------------------


def _did_you_mean(word: Any, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None


def _regex_hint(message: str) -> str:
    for fragment, hint in _REGEX_HINTS:
        if fragment in message:
            return hint
    return "see https://docs.python.org/3/library/re.html#regular-expression-syntax"


def _yaml_hint(message: str) -> str | None:
    for fragment, hint in _YAML_HINTS:
        if fragment in message:
            return hint
    return None


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return _KIND_BY_TAG.get(node.tag.removeprefix(_TAG), node.tag)


def _line(node: Node) -> int:
    return node.start_mark.line + 1


# --- reading documents -----------------------------------------------------------------------


class _LoadSession:
    """One load or validation: bound variables, search path, issues, loaded files, the extends
    chain being followed (for cycle detection)."""

    def __init__(
        self, variables: Mapping[str, Any] | None, search_path: Sequence[str | os.PathLike] | None
    ) -> None:
        self.variables = bind_variables(variables)
        self.search_path = policy_search_path(search_path)
        self.issues: list[ValidationIssue] = []
        self._loaded: dict[Path, Policy | None] = {}
        self._chain: list[tuple[Path, str]] = []

    def report(
        self,
        file: str,
        where: Node | int | None,
        pattern_id: str | None,
        message: str,
        hint: str | None = None,
    ) -> None:
        line = _line(where) if isinstance(where, Node) else where
        self.issues.append(ValidationIssue(file, line, pattern_id, message, hint))

    def sorted_issues(self) -> list[ValidationIssue]:
        """The issues by file (in the order files were first reported) and then by line."""
        file_rank: dict[str, int] = {}
        for issue in self.issues:
            file_rank.setdefault(issue.file, len(file_rank))
        return sorted(self.issues, key=lambda i: (file_rank[i.file], i.line or 0))

    def find(self, name: str, base_dir: Path | None) -> Path | None:
        """Resolve an ``extends`` / ``merge`` entry: a path, or a name (own directory first)."""
        if not is_policy_name(name):
            path = Path(name)
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            return path if path.is_file() else None
        dirs = ([base_dir] if base_dir is not None else []) + self.search_path
        return find_policy(name, dirs)

    def names_available(self, base_dir: Path | None) -> list[str]:
        dirs = ([base_dir] if base_dir is not None else []) + self.search_path
        return list(available_policies(dirs))

    def load_file(
        self, path: Path, label: str | None = None, referrer: tuple[str, Node] | None = None
    ) -> Policy | None:
        """Load the policy in ``path`` (once per session); None when it has problems."""
        label = label or str(path)
        real = path.resolve()
        on_chain = [p for p, _ in self._chain]
        if real in on_chain:
            names = [name for _, name in self._chain[on_chain.index(real) :]] + [path.stem]
            file, node = referrer if referrer else (label, None)
            self.report(
                file,
                node,
                None,
                f"extends cycle: {' -> '.join(names)}",
                "a policy cannot inherit from itself; remove one of these extends entries",
            )
            return None
        if real in self._loaded:
            return self._loaded[real]
        try:
            data = path.read_bytes()
        except OSError as exc:
            self.report(label, None, None, f"cannot read policy file: {exc.strerror or exc}")
            self._loaded[real] = None
            return None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            column = exc.start - data.rfind(b"\n", 0, exc.start)
            self.report(
                label,
                line,
                None,
                f"not UTF-8 text: byte {data[exc.start]:#04x} at column {column}",
                "a policy file is UTF-8: convert it (iconv -t UTF-8) or remove the byte",
            )
            self._loaded[real] = None
            return None
        self._chain.append((real, path.stem))
        try:
            policy = self.load_text(text, label, base_dir=path.parent, default_name=path.stem)
        finally:
            self._chain.pop()
        self._loaded[real] = policy
        return policy

    def load_text(
        self, text: str, label: str, base_dir: Path | None, default_name: str | None = None
    ) -> Policy | None:
        try:  # libyaml when available: composing is most of the cost of a large policy
            fast = _FastLoader(text)
            try:
                root = fast.get_single_node()
                loader = fast
            finally:
                fast.dispose()
        # UnicodeEncodeError: libyaml takes no lone surrogate (the reader below refuses it too)
        except (yaml.YAMLError, UnicodeEncodeError):  # the pure-Python parser says it clearer
            loader = None
        if loader is None:
            loader = self._compose_slowly(text, label)
            if loader is None:
                return None
            root = loader.root
        if root is None:
            self.report(
                label,
                1,
                None,
                "the document is empty",
                "a policy is a mapping with at least 'name' and 'patterns'",
            )
            return None
        return _DocumentReader(self, loader, label, base_dir).read_policy(root, default_name)

    def _compose_slowly(self, text: str, label: str) -> BoundedSafeLoader | None:
        """Compose ``text`` with the pure-Python parser (its messages are clearer); None when it
        cannot, with the problem reported at its line."""
        try:
            loader = BoundedSafeLoader(text)  # the reader checks every character here already
        except yaml.reader.ReaderError as exc:
            self.report(label, *reader_problem(text, exc))
            return None
        try:
            loader.root = loader.get_single_node()
        except yaml.reader.ReaderError as exc:
            self.report(label, *reader_problem(text, exc))
            return None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            message = " ".join(part for part in (exc.context, exc.problem) if part)
            self.report(
                label,
                mark.line + 1 if mark else None,
                None,
                f"YAML syntax error: {message}",
                _yaml_hint(message),
            )
            return None
        except yaml.YAMLError as exc:
            self.report(label, None, None, " ".join(f"YAML error: {exc}".split()))
            return None
        finally:
            loader.dispose()
        return loader


class _DocumentReader:
    """Reads one YAML document (node tree) into a Policy, reporting problems with their lines."""

    def __init__(
        self, session: _LoadSession, loader: yaml.SafeLoader, file: str, base_dir: Path | None
    ) -> None:
        self.session = session
        self.loader = loader
        self.file = file
        self.base_dir = base_dir
        self.problems = 0

    # helpers ----------------------------------------------------------------------------------

    def report(
        self,
        where: Node | int | None,
        pattern_id: str | None,
        message: str,
        hint: str | None = None,
    ) -> None:
        self.problems += 1
        self.session.report(self.file, where, pattern_id, message, hint)

    def value(self, node: Node, pattern_id: str | None = None, what: str = "value") -> Any:
        """The Python value of ``node``; reports and returns ``_INVALID`` if it cannot be built."""
        try:
            return self.loader.construct_object(node, deep=True)
        except RecursionError:  # libyaml composes up to 1000 levels; building them recurses
            self.report(
                node, pattern_id, f"{what}: nested deeper than Python can build", _NESTING_HINT
            )
            return _INVALID
        except (yaml.YAMLError, ValueError, TypeError) as exc:
            detail = (
                " ".join(p for p in (exc.context, exc.problem) if p)
                if isinstance(exc, yaml.MarkedYAMLError)
                else str(exc)
            )
            self.report(node, pattern_id, f"{what}: cannot read value: {detail}")
            return _INVALID

    def mapping(
        self,
        node: Node,
        what: str,
        allowed: Sequence[str] | None,
        pattern_id: str | None = None,
        prefix: str = "",
    ) -> dict[str, tuple[Node, Node]] | None:
        """``key -> (key node, value node)``; reports a non-mapping, odd keys and unknown keys."""
        if not isinstance(node, MappingNode):
            self.report(node, pattern_id, f"{prefix}{what} must be a mapping, got {_kind(node)}")
            return None
        own = sum(1 for key_node, _ in node.value if key_node.tag != _TAG + "merge")
        self.loader.flatten_mapping(
            node
        )  # YAML merge keys (<<: *anchor) go first, may be overridden
        merged = len(node.value) - own
        items: dict[str, tuple[Node, Node]] = {}
        from_merge: set[str] = set()
        for index, (key_node, value_node) in enumerate(node.value):
            key = self.value(key_node, pattern_id, f"{prefix}key")
            if key is _INVALID:
                continue
            if not isinstance(key, str):
                self.report(
                    key_node,
                    pattern_id,
                    f"{prefix}{what}: key {key!r} is {_kind(key_node)}, not a string",
                )
                continue
            if key in items and key not in from_merge:
                self.report(
                    key_node,
                    pattern_id,
                    f"{prefix}{what}: duplicate key {key!r}",
                    f"first given at line {_line(items[key][0])}",
                )
                continue
            if index < merged:
                from_merge.add(key)
            else:
                from_merge.discard(key)
            if allowed is not None and key not in allowed:
                hint = _did_you_mean(key, allowed) or f"allowed keys: {', '.join(allowed)}"
                self.report(key_node, pattern_id, f"{prefix}unknown key {key!r} in {what}", hint)
                continue
            items[key] = (key_node, value_node)
        return items

    def scalar(
        self,
        node: Node,
        types: tuple[type, ...],
        what: str,
        pattern_id: str | None = None,
        prefix: str = "",
        expected: str = "a string",
    ) -> Any:
        """The value if it is one of ``types`` (bools are never ints), else report -> _INVALID."""
        value = self.value(node, pattern_id, f"{prefix}{what}")
        if value is _INVALID:
            return _INVALID
        if isinstance(value, bool) and bool not in types:
            value = _WRONG
        if value is _WRONG or not isinstance(value, types):
            hint = None
            if isinstance(node, ScalarNode) and str in types and not node.style:
                hint = (
                    f'quote it: {what}: "{node.value}"'  # YAML 1.1 reads off/yes/1.0 as non-strings
                )
            self.report(
                node, pattern_id, f"{prefix}{what} must be {expected}, got {_kind(node)}", hint
            )
            return _INVALID
        return value

    def text(self, node: Node, what: str, pattern_id: str | None = None, prefix: str = "") -> Any:
        return self.scalar(node, (str,), what, pattern_id, prefix)

    def string_list(
        self, node: Node, what: str, pattern_id: str | None = None, prefix: str = ""
    ) -> list[tuple[str, Node]] | None:
        if not isinstance(node, SequenceNode):
            hint = f"write {what}: [{node.value}]" if isinstance(node, ScalarNode) else None
            self.report(node, pattern_id, f"{prefix}{what} must be a list, got {_kind(node)}", hint)
            return None
        out = []
        for item in node.value:
            value = self.text(item, f"{what} entry", pattern_id, prefix)
            if value is not _INVALID:
                out.append((value, item))
        return out

    def choice(
        self,
        node: Node,
        what: str,
        choices: Sequence[str],
        pattern_id: str | None = None,
        prefix: str = "",
        synonyms: Mapping[str, str] | None = None,
    ) -> Any:
        value = self.value(node, pattern_id, f"{prefix}{what}")
        if value is _INVALID:
            return _INVALID
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        hint = None
        if isinstance(value, str):
            synonym = (synonyms or {}).get(value.strip().lower())
            hint = (
                f"did you mean {synonym!r}?" if synonym else _did_you_mean(value.lower(), choices)
            )
        self.report(
            node, pattern_id, f"{prefix}bad {what} {value!r}: use {', '.join(choices)}", hint
        )
        return _INVALID

    # the document -----------------------------------------------------------------------------

    def read_policy(self, root: Node, default_name: str | None = None) -> Policy | None:
        """Build the policy in the mapping ``root``; None if this document has any problem."""
        problems_before = self.problems
        top = self.mapping(root, "policy", TOP_LEVEL_KEYS)
        if top is None:
            return None
        is_merge = "merge" in top
        if is_merge:
            for key in top:
                if key not in MERGE_DOCUMENT_KEYS:
                    self.report(
                        top[key][0],
                        None,
                        f"key {key!r} is not allowed beside 'merge'",
                        "the merged parts decide defaults and violation modes; put "
                        f"{key!r} into the parts under merge.policies",
                    )

        kwargs = self._policy_header(top, default_name)
        if not is_merge:
            self.read_defaults(top, kwargs)

        parents: list[Policy] = []
        parents_ok = True
        if "extends" in top and not _is_null(top["extends"][1]) and not is_merge:
            parents, parents_ok = self.read_extends(top["extends"][1])
        parts: list[Policy] = []
        strategy = None
        if is_merge:
            strategy, parts, parents_ok = self.read_merge(top["merge"][1])

        patterns: list[tuple[str, Pattern]] = []
        known_ids: set[str] = set()
        if "patterns" in top and not _is_null(top["patterns"][1]):
            patterns, known_ids = self.read_patterns(top["patterns"][1])
        known_ids.update(p.id for parent in parents + parts for p in parent.patterns)
        exceptions = []
        if "exceptions" in top and not _is_null(top["exceptions"][1]):
            exceptions = self.read_exceptions(
                top["exceptions"][1], known_ids if parents_ok else None
            )

        if self.problems != problems_before or not parents_ok:
            return None
        kwargs["patterns"] = [pattern for _, pattern in patterns]
        kwargs["exceptions"] = exceptions
        kwargs["source"] = self.file
        try:
            if is_merge:
                assert strategy is not None  # read_merge gives one whenever it gives parts
                return MergedPolicy(parts, strategy, **kwargs)
            return Policy(extends=parents or None, **kwargs)
        except (ValueError, TypeError) as exc:
            self.report(root, None, f"cannot build the policy: {exc}")
            return None

    def _policy_header(
        self, top: dict[str, tuple[Node, Node]], default_name: str | None
    ) -> dict[str, Any]:
        """A policy's name, description, version, settings and metadata (the descriptive keys
        such as author and dates included), as keyword arguments of ``Policy``."""
        kwargs: dict[str, Any] = {}
        metadata: dict[str, Any] = {}
        for key in ("name", "description"):
            if key in top and not _is_null(top[key][1]):
                value = self.text(top[key][1], key)
                if value is not _INVALID:
                    kwargs[key] = value
        if "version" in top and not _is_null(top["version"][1]):
            value = self.scalar(
                top["version"][1], (str, int, float), "version", expected='a string such as "1.0.0"'
            )
            if value is not _INVALID:
                kwargs["version"] = str(value)
        for key in DESCRIPTIVE_KEYS:
            if key in top and not _is_null(top[key][1]):
                value = self.scalar(top[key][1], (str, _dt.date), key)
                if value is not _INVALID:
                    metadata[key] = value.isoformat() if isinstance(value, _dt.date) else value
        if "name" not in kwargs and default_name:
            kwargs["name"] = default_name
        for key in ("settings", "metadata"):
            if key in top and not _is_null(top[key][1]):
                node = top[key][1]
                if not isinstance(node, MappingNode):
                    self.report(node, None, f"{key} must be a mapping, got {_kind(node)}")
                    continue
                value = self.value(node, None, key)
                if value is not _INVALID:
                    if key == "metadata":
                        metadata = {**metadata, **value}
                    else:
                        kwargs["settings"] = value
        if metadata:
            kwargs["metadata"] = metadata
        return kwargs

    def read_defaults(self, top: dict[str, tuple[Node, Node]], kwargs: dict[str, Any]) -> None:
        given: dict[str, tuple[Any, Node]] = {}
        if "defaults" in top and not _is_null(top["defaults"][1]):
            defaults = self.mapping(top["defaults"][1], "defaults", DEFAULTS_KEYS) or {}
            for key, (_, node) in defaults.items():
                if _is_null(node):
                    continue
                if key == "action":
                    value = self.choice(node, "default action", ACTIONS, synonyms=_ACTION_SYNONYMS)
                elif key == "violation_mode":
                    value = self.choice(node, "violation mode", _MODES)
                else:
                    value = self.choice(node, "log level", LOG_LEVELS)
                if value is not _INVALID:
                    given[key] = (value, node)
        for key, default_key, what in (
            ("default_action", "action", "default action"),
            ("violation_mode", "violation_mode", "violation mode"),
        ):
            if key not in top or _is_null(top[key][1]):
                continue
            node = top[key][1]
            choices = ACTIONS if key == "default_action" else _MODES
            value = self.choice(
                node, what, choices, synonyms=_ACTION_SYNONYMS if key == "default_action" else None
            )
            if value is _INVALID:
                continue
            if default_key in given and given[default_key][0] != value:
                other, other_node = given[default_key]
                self.report(
                    top[key][0],
                    None,
                    f"{key} {value!r} contradicts defaults.{default_key} {other!r} "
                    f"(line {_line(other_node)})",
                    "keep only one of the two",
                )
                continue
            given[default_key] = (value, node)
        if "action" in given:
            kwargs["default_action"] = given["action"][0]
        if "violation_mode" in given:
            kwargs["violation_mode"] = given["violation_mode"][0]
        if "log_level" in given:
            kwargs["log_level"] = given["log_level"][0]

    def load_reference(self, name: str, node: Node, what: str) -> Policy | None | bool:
        """Load the policy an ``extends``/``merge`` entry names; False if not found."""
        path = self.session.find(name, self.base_dir)
        if path is None:
            searched = ([str(self.base_dir)] if self.base_dir is not None else []) + [
                str(d) for d in self.session.search_path
            ]
            close = _did_you_mean(name, self.session.names_available(self.base_dir))
            hint = f"{close + ' ' if close else ''}searched: {', '.join(searched)}"
            self.report(node, None, f"{what}: no policy named {name!r}", hint)
            return False
        return self.session.load_file(path, referrer=(self.file, node))

    def read_extends(self, node: Node) -> tuple[list[Policy], bool]:
        names = self.string_list(node, "extends")
        if names is None:
            return [], False
        parents: list[Policy] = []
        ok = True
        for name, item in names:
            parent = self.load_reference(name, item, "extends")
            if isinstance(parent, Policy):
                parents.append(parent)
            else:
                ok = False
        return parents, ok and len(names) == len(node.value)

    def read_merge(self, node: Node) -> tuple[str | None, list[Policy], bool]:
        merge = self.mapping(node, "merge", MERGE_KEYS)
        if merge is None:
            return None, [], False
        strategy = None
        if "strategy" not in merge:
            self.report(node, None, "merge needs a 'strategy'", "strategy: strict or permissive")
        else:
            value = self.choice(merge["strategy"][1], "merge strategy", MERGE_STRATEGIES)
            if value is not _INVALID:
                strategy = value
        parts: list[Policy] = []
        ok = True
        if "policies" not in merge:
            self.report(node, None, "merge needs 'policies': a list of names or inline policies")
            return strategy, parts, False
        items = merge["policies"][1]
        if not isinstance(items, SequenceNode):
            self.report(items, None, f"merge.policies must be a list, got {_kind(items)}")
            return strategy, parts, False
        if len(items.value) < 2:
            self.report(items, None, "merge.policies needs at least two policies")
            ok = False
        for item in items.value:
            if isinstance(item, MappingNode):
                part = self.read_policy(item)
            else:
                name = self.text(item, "merge.policies entry")
                if name is _INVALID:
                    ok = False
                    continue
                reference = self.load_reference(name, item, "merge")
                part = reference if isinstance(reference, Policy) else None
            if isinstance(part, Policy):
                parts.append(part)
            else:
                ok = False
        return strategy, parts, ok and strategy is not None

    def read_patterns(self, node: Node) -> tuple[list[tuple[str, Pattern]], set[str]]:
        """The patterns built, and every id the document defines (also of invalid patterns,
        so that exceptions naming them are not reported twice)."""
        if not isinstance(node, SequenceNode):
            self.report(
                node,
                None,
                f"patterns must be a list, got {_kind(node)}",
                "each pattern is a list item starting with '- '",
            )
            return [], set()
        built: list[tuple[str, Pattern]] = []
        seen: dict[str, int] = {}
        for index, item in enumerate(node.value):
            pattern = self.read_pattern(item, index)
            if pattern is None:
                if isinstance(item, MappingNode):  # still register its id for duplicate checks
                    explicit = _explicit_id(item)
                    if explicit is not None:
                        if explicit in seen:
                            self.report(
                                item,
                                explicit,
                                f"duplicate pattern id {explicit!r}",
                                f"first defined at line {seen[explicit]}",
                            )
                        seen.setdefault(explicit, _line(item))
                continue
            if pattern.id in seen:
                self.report(
                    item,
                    pattern.id,
                    f"duplicate pattern id {pattern.id!r}",
                    f"first defined at line {seen[pattern.id]}; ids must be unique "
                    "(an identical pattern without id gets the same generated id)",
                )
                continue
            seen[pattern.id] = _line(item)
            built.append((pattern.id, pattern))
        return built, set(seen)

    def read_pattern(self, node: Node, index: int) -> Pattern | None:
        explicit = _explicit_id(node) if isinstance(node, MappingNode) else None
        pid = explicit
        prefix = "" if explicit is not None else f"patterns[{index}]: "
        before = self.problems
        fields = self.mapping(node, "pattern", PATTERN_KEYS, pid, prefix)
        if fields is None:
            return None
        kwargs: dict[str, Any] = {}
        self._pattern_target(node, fields, kwargs, pid, prefix)
        self._pattern_response(fields, kwargs, pid, prefix)
        self._pattern_extras(fields, kwargs, pid, prefix)
        if self.problems != before:
            return None
        try:
            return Pattern(**kwargs)
        except (ValueError, TypeError) as exc:  # the object model's own checks, as a backstop
            self.report(node, pid, f"{prefix}{exc}")
            return None

    def _pattern_target(
        self, node: Node, fields: dict, kwargs: dict[str, Any], pid: str | None, prefix: str
    ) -> None:
        """A pattern's id, action type and regex (both required) into ``kwargs``."""
        if "id" in fields:
            value = self.text(fields["id"][1], "id", pid, prefix)
            if value is not _INVALID:
                if not value.strip():
                    self.report(fields["id"][1], pid, f"{prefix}id must not be empty")
                else:
                    kwargs["id"] = value
        for key in ("action_type", "pattern"):
            if key not in fields or _is_null(fields[key][1]):
                self.report(node, pid, f"{prefix}missing required key {key!r}")
        if "action_type" in fields and not _is_null(fields["action_type"][1]):
            value = self.text(fields["action_type"][1], "action_type", pid, prefix)
            if value is not _INVALID:
                if value in ACTION_TYPES:
                    kwargs["action_type"] = value
                else:
                    self.report(
                        fields["action_type"][1],
                        pid,
                        f"{prefix}unknown action type {value!r}",
                        _did_you_mean(value, ACTION_TYPES) or f"known: {', '.join(ACTION_TYPES)}",
                    )
        if "pattern" in fields and not _is_null(fields["pattern"][1]):
            value_node = fields["pattern"][1]
            value = self.text(value_node, "pattern", pid, prefix)
            if value is not _INVALID:
                regex = self.expand_and_compile(value, value_node, pid, prefix)
                if regex is not None:
                    kwargs["pattern"] = regex

    def _pattern_response(
        self, fields: dict, kwargs: dict[str, Any], pid: str | None, prefix: str
    ) -> None:
        """A pattern's action, severity and violation mode into ``kwargs``."""
        if "action" in fields:
            value = self.choice(
                fields["action"][1], "action", ACTIONS, pid, prefix, _ACTION_SYNONYMS
            )
            if value is not _INVALID:
                kwargs["action"] = value
        if "severity" in fields:
            value = self.value(fields["severity"][1], pid, f"{prefix}severity")
            if value is not _INVALID:
                try:
                    kwargs["severity"] = Severity.parse(value)
                except ValueError:
                    self.report(
                        fields["severity"][1],
                        pid,
                        f"{prefix}bad severity {value!r}: use low, medium, high, critical (or 1-4)",
                        _did_you_mean(str(value).lower(), _SEVERITIES),
                    )
        if "violation_mode" in fields:
            value = self.choice(fields["violation_mode"][1], "violation mode", _MODES, pid, prefix)
            if value is not _INVALID:
                kwargs["violation_mode"] = value

    def _pattern_extras(
        self, fields: dict, kwargs: dict[str, Any], pid: str | None, prefix: str
    ) -> None:
        """A pattern's message, description, enabled flag, metadata and conditions."""
        for key in ("message", "description"):
            if key in fields and not _is_null(fields[key][1]):
                value = self.text(fields[key][1], key, pid, prefix)
                if value is not _INVALID:
                    kwargs[key] = value
        if "enabled" in fields:
            value = self.scalar(
                fields["enabled"][1], (bool,), "enabled", pid, prefix, expected="true or false"
            )
            if value is not _INVALID:
                kwargs["enabled"] = value
        if "metadata" in fields and not _is_null(fields["metadata"][1]):
            meta_node = fields["metadata"][1]
            if not isinstance(meta_node, MappingNode):
                self.report(
                    meta_node, pid, f"{prefix}metadata must be a mapping, got {_kind(meta_node)}"
                )
            else:
                value = self.value(meta_node, pid, f"{prefix}metadata")
                if value is not _INVALID:
                    kwargs["metadata"] = value
        if "conditions" in fields and not _is_null(fields["conditions"][1]):
            conditions = self.read_conditions(fields["conditions"][1], pid, prefix)
            if conditions is not None:
                kwargs["conditions"] = conditions

    def expand_and_compile(
        self, regex: str, node: Node, pid: str | None, prefix: str
    ) -> str | None:
        expanded, unbound = expand_variables(regex, self.session.variables)
        ok = True
        for name in unbound:
            bound = ", ".join(sorted(self.session.variables))
            if not _VARIABLE_NAME.match(name):
                self.report(
                    node,
                    pid,
                    f"{prefix}malformed variable reference '${{{name}}}'",
                    "a variable name is letters, digits and '_'; for a literal '${' write \\$\\{",
                )
            else:
                self.report(
                    node,
                    pid,
                    f"{prefix}unbound variable '${{{name}}}' in pattern",
                    _did_you_mean(name, self.session.variables)
                    or f"bound: {bound}; pass variables={{'{name}': ...}}",
                )
            ok = False
        if not ok:
            return None
        try:
            re.compile(expanded, re.DOTALL)
        except re.error as exc:
            shown = repr(regex) if expanded == regex else f"{regex!r} (expanded {expanded!r})"
            self.report(node, pid, f"{prefix}invalid regex {shown}: {exc}", _regex_hint(str(exc)))
            return None
        return expanded

    def read_conditions(self, node: Node, pid: str | None, prefix: str) -> dict[str, Any] | None:
        items = self.mapping(node, "conditions", None, pid, prefix)
        if items is None:
            return None
        conditions: dict[str, Any] = {}
        ok = True
        for name, (key_node, value_node) in items.items():
            spec = CONDITIONS.get(name)
            if spec is None:
                self.report(
                    key_node,
                    pid,
                    f"{prefix}unknown condition {name!r}",
                    _did_you_mean(name, CONDITIONS) or f"known: {', '.join(CONDITIONS)}",
                )
                ok = False
                continue
            value = self.value(value_node, pid, f"{prefix}condition {name!r}")
            if value is _INVALID:
                ok = False
                continue
            problem = spec.validate(value)
            if problem:
                self.report(
                    value_node,
                    pid,
                    f"{prefix}condition {name!r}: {problem}",
                    f"{name} means: {spec.description}",
                )
                ok = False
                continue
            conditions[name] = value
        return conditions if ok else None

    def read_exceptions(self, node: Node, known_ids: set[str] | None) -> list[PolicyException]:
        if not isinstance(node, SequenceNode):
            self.report(node, None, f"exceptions must be a list, got {_kind(node)}")
            return []
        out: list[PolicyException] = []
        for index, item in enumerate(node.value):
            prefix = f"exceptions[{index}]: "
            before = self.problems
            fields = self.mapping(item, "exception", EXCEPTION_KEYS, None, prefix)
            if fields is None:
                continue
            kwargs: dict[str, Any] = {}
            for key in ("agent_pattern", "patterns"):
                if key not in fields:
                    self.report(item, None, f"{prefix}missing required key {key!r}")
            if "agent_pattern" in fields:
                value = self.text(fields["agent_pattern"][1], "agent_pattern", None, prefix)
                if value is not _INVALID:
                    try:
                        re.compile(value, re.DOTALL)
                        kwargs["agent_pattern"] = value
                    except re.error as exc:
                        self.report(
                            fields["agent_pattern"][1],
                            None,
                            f"{prefix}invalid agent_pattern regex {value!r}: {exc}",
                            _regex_hint(str(exc)),
                        )
            if "patterns" in fields:
                ids = self.string_list(fields["patterns"][1], "patterns", None, prefix)
                if ids is not None:
                    for pattern_id, id_node in ids:
                        if known_ids is not None and pattern_id not in known_ids:
                            self.report(
                                id_node,
                                pattern_id,
                                f"{prefix}exception names unknown pattern {pattern_id!r}",
                                _did_you_mean(pattern_id, known_ids)
                                or "name a pattern id of this policy or one it extends",
                            )
                    kwargs["patterns"] = [pattern_id for pattern_id, _ in ids]
            for key in ("reason", "approved_by"):
                if key in fields and not _is_null(fields[key][1]):
                    value = self.text(fields[key][1], key, None, prefix)
                    if value is not _INVALID:
                        kwargs[key] = value
            if "expires" in fields and not _is_null(fields["expires"][1]):
                expires = self.read_date(fields["expires"][1], prefix)
                if expires is not _INVALID:
                    kwargs["expires"] = expires
            if self.problems != before:
                continue
            try:
                out.append(PolicyException(**kwargs))
            except (ValueError, TypeError) as exc:
                self.report(item, None, f"{prefix}{exc}")
        return out

    def read_date(self, node: Node, prefix: str) -> Any:
        value = self.value(node, None, f"{prefix}expires")
        if value is _INVALID:
            return _INVALID
        if isinstance(value, _dt.datetime):
            value = value.date()
        if isinstance(value, _dt.date):
            return value
        if isinstance(value, str) and _ISO_DATE.match(value.strip()):
            try:
                return _dt.date.fromisoformat(value.strip())
            except ValueError as exc:
                self.report(node, None, f"{prefix}bad expires date {value!r}: {exc}")
                return _INVALID
        self.report(
            node,
            None,
            f"{prefix}bad expires date {value!r}",
            "write the last day the exception applies as YYYY-MM-DD",
        )
        return _INVALID


class _Sentinel:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_FastLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Nesting the pure-Python composer takes (it recurses, a few frames a level); a policy needs
# about six levels, libyaml refuses more than 1000.
MAX_NESTING = 100
_NESTING_HINT = "a policy is a few levels deep: look for unclosed or repeated '[' or '{'"
_READER_HINT = (
    "YAML text cannot hold it: remove the control character, or write it as an escape inside "
    'double quotes, e.g. "\\x00"'
)


class BoundedSafeLoader(yaml.SafeLoader):
    """The pure-Python safe loader with a bound on nesting: deeper documents are a
    ``ComposerError`` at the line where the bound is crossed, not a ``RecursionError``."""

    root: Node | None = None
    _depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested deeper than {MAX_NESTING} levels ({_NESTING_HINT})",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def reader_problem(text: str, exc: yaml.reader.ReaderError) -> tuple[int, None, str, str]:
    """(line, pattern id, message, hint) of a character the YAML reader refuses (NUL, ...)."""
    line = text.count("\n", 0, exc.position) + 1
    message = f"YAML syntax error: unacceptable character #x{exc.character:04x}: {exc.reason}"
    return line, None, message, _READER_HINT


_INVALID = _Sentinel("<invalid>")  # a value that was reported as a problem
_WRONG = _Sentinel("<wrong type>")
_MODES = tuple(mode.value for mode in ViolationMode)
_SEVERITIES = tuple(level.name.lower() for level in Severity)


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _TAG + "null"


def _explicit_id(node: MappingNode) -> str | None:
    """The pattern's ``id`` if it is written as a plain string (used to label its problems).

    The last one counts: after YAML merge keys are flattened, an explicit key follows merged ones.
    """
    found = None
    for key_node, value_node in node.value:
        if (
            isinstance(key_node, ScalarNode)
            and key_node.value == "id"
            and isinstance(value_node, ScalarNode)
            and value_node.tag == _TAG + "str"
            and value_node.value.strip()
        ):
            found = value_node.value
    return found


# --- the public API ----------------------------------------------------------------------------


def load_policy(
    name_or_path: str | os.PathLike,
    variables: Mapping[str, Any] | None = None,
    search_path: Sequence[str | os.PathLike] | None = None,
) -> Policy:
    """Load a built-in or search-path policy by name (``strict``) or a policy file by path.

    Raises ``PolicyNotFoundError`` when there is no such policy and ``PolicyValidationError``
    (with every problem) when it, or a policy it extends or merges, is invalid.
    """
    name_or_path = os.fspath(name_or_path)
    path = resolve_policy(name_or_path, search_path)
    session = _LoadSession(variables, search_path)
    policy = session.load_file(path)
    if session.issues or policy is None:
        raise PolicyValidationError(
            session.sorted_issues()
            or [ValidationIssue(str(path), None, None, "policy could not be loaded")]
        )
    return policy


def policy_from_yaml_string(
    text: str,
    variables: Mapping[str, Any] | None = None,
    search_path: Sequence[str | os.PathLike] | None = None,
    name: str = "<string>",
) -> Policy:
    """Load a policy from YAML text; ``extends`` names are looked up on the search path.

    ``name`` labels problems in the error (it is not the policy's name).
    """
    session = _LoadSession(variables, search_path)
    policy = session.load_text(text, name, base_dir=None)
    if session.issues or policy is None:
        raise PolicyValidationError(
            session.sorted_issues()
            or [ValidationIssue(name, None, None, "policy could not be loaded")]
        )
    return policy


def validate_yaml_file(
    path: str | os.PathLike,
    variables: Mapping[str, Any] | None = None,
    search_path: Sequence[str | os.PathLike] | None = None,
) -> list[ValidationIssue]:
    """Every problem in the policy file ``path`` (and what it extends); empty when valid."""
    path = Path(os.fspath(path))
    session = _LoadSession(variables, search_path)
    if not path.is_file():
        return [
            ValidationIssue(
                str(path), None, None, "no such file" if not path.exists() else "not a regular file"
            )
        ]
    session.load_file(path)
    return session.sorted_issues()


def validate_yaml_string(
    text: str,
    name: str = "<string>",
    variables: Mapping[str, Any] | None = None,
    search_path: Sequence[str | os.PathLike] | None = None,
) -> list[ValidationIssue]:
    """Every problem in the policy YAML ``text``; empty when valid."""
    session = _LoadSession(variables, search_path)
    session.load_text(text, name, base_dir=None)
    return session.sorted_issues()


# Alias under the name in docs/dev/contracts.md.
validate_yaml = validate_yaml_file


def policy_to_dict(policy: Policy) -> dict[str, Any]:
    """The YAML form of ``policy`` as plain data: self-contained (inherited patterns flattened,
    ``${VAR}``s already expanded), with ``author``/``created``/``updated`` at the top level."""
    if not isinstance(policy, Policy):
        raise PolicyError(f"policy_to_yaml takes a Policy, got {type(policy).__name__}")
    return _plain(_lift_descriptive(policy.to_dict()), "policy")


def policy_to_yaml(policy: Policy) -> str:
    """YAML that loads back (``policy_from_yaml_string``) to a policy with the same decisions.

    Not kept: a ``violation_handler`` (code) and the ``${VAR}`` spelling of regexes.
    """
    document = policy_to_dict(policy)
    return yaml.safe_dump(
        document, sort_keys=False, allow_unicode=True, default_flow_style=False, width=4096
    )


def _lift_descriptive(document: dict[str, Any]) -> dict[str, Any]:
    """Move author/created/updated from metadata back to the top level (as the YAML had them),
    and make ``${`` in regexes literal, in this document and in the parts of a merge."""
    document = dict(document)
    merge = document.get("merge")
    if isinstance(merge, dict) and isinstance(merge.get("policies"), list):
        document["merge"] = {
            **merge,
            "policies": [
                _lift_descriptive(part) if isinstance(part, dict) else part
                for part in merge["policies"]
            ],
        }
    if isinstance(document.get("patterns"), list):
        document["patterns"] = [_literal_dollar_brace(p) for p in document["patterns"]]
    metadata = document.get("metadata")
    if not isinstance(metadata, dict):
        return document
    lifted = {
        k: metadata[k] for k in DESCRIPTIVE_KEYS if isinstance(metadata.get(k), (str, _dt.date))
    }
    if not lifted:
        return document
    rest = {k: v for k, v in metadata.items() if k not in lifted}
    out: dict[str, Any] = {}
    for key, value in document.items():
        if key == "metadata":
            if rest:
                out["metadata"] = rest
            continue
        out[key] = value
        if key == "version":
            out.update(lifted)
    for key, value in lifted.items():
        out.setdefault(key, value)
    return out


def _literal_dollar_brace(pattern: Any) -> Any:
    r"""A regex written from Python may contain ``${`` (end anchor, literal brace); written as is,
    loading would read it as a variable. ``$\{`` means the same to ``re`` (``${n}`` is never
    valid there) and is not a variable reference. Loaded regexes never contain ``${``: it was
    expanded, and ``re.escape`` writes ``\$\{``."""
    if (
        isinstance(pattern, dict)
        and isinstance(pattern.get("pattern"), str)
        and "${" in pattern["pattern"]
    ):
        return {**pattern, "pattern": pattern["pattern"].replace("${", "$\\{")}
    return pattern


def _plain(value: Any, where: str) -> Any:
    """``value`` as YAML-safe plain data; raises ``PolicyError`` naming what cannot be dumped."""
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, Severity):
            return str(value)
        return value
    if isinstance(value, (Severity, ViolationMode)):
        return str(value)
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    if isinstance(value, _dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(items)]
    raise PolicyError(
        f"cannot write {where} to YAML: {type(value).__name__} {value!r} is not "
        "plain data (use strings, numbers, booleans, lists and mappings)"
    )
