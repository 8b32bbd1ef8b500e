"""``agentd policy``: validate, show, explain, test and list policies from the command line.

Only presentation lives here: finding, reading and validating policies is ``agent_os.loader``,
deciding is ``Policy.evaluate``, policy test cases are ``agent_os.policy_cases``. Exit status:
``validate`` 0 valid, 1 invalid; ``test`` 0 all cases pass, 1 any fails; every command 2 on a
usage error (missing file, unknown policy name, bad option, a policy or case file that cannot
be loaded where one is needed to answer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import yaml

from agent_os.action_types import ACTION_TYPES, suggest_action_type
from agent_os.errors import PolicyNotFoundError, PolicyValidationError
from agent_os.loader import (
    available_policies,
    load_policy,
    policy_search_path,
    policy_to_yaml,
    resolve_policy,
    validate_yaml_file,
)
from agent_os.policy import Policy, Severity

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
TEMPLATE_NAMES = ("hipaa_standard", "soc2_compliant", "k12_safe")


def _usage_error(message: str) -> click.exceptions.Exit:
    click.echo(f"agentd policy: {message}", err=True)
    return click.exceptions.Exit(EXIT_USAGE)


def _pairs(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> list[tuple[str, str]]:
    out = []
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", ctx=ctx, param=param)
        out.append((key, value))
    return out


def _variables(variables: list[tuple[str, str]], workspace: str | None) -> dict[str, str]:
    bound = dict(variables)
    if workspace is not None:
        bound["WORKSPACE"] = workspace
    return bound


def _load(name_or_path: str, variables: dict[str, str], search_path: tuple[str, ...]) -> Policy:
    """Load the policy or exit 2, printing every problem one per line."""
    try:
        return load_policy(name_or_path, variables=variables, search_path=list(search_path))
    except PolicyNotFoundError as exc:
        raise _usage_error(str(exc)) from None
    except PolicyValidationError as exc:
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        raise _usage_error(
            f"policy {name_or_path!r} is invalid ({len(exc.issues)} problem(s))"
        ) from None


_var_option = click.option(
    "--var",
    "variables",
    metavar="NAME=VALUE",
    multiple=True,
    callback=_pairs,
    help="Bind ${NAME} in pattern regexes (repeatable; WORKSPACE, HOME, TMPDIR have defaults).",
)
_workspace_option = click.option(
    "--workspace",
    metavar="DIR",
    type=click.Path(file_okay=False),
    help="Bind ${WORKSPACE} (default: the current directory).",
)
_policy_dir_option = click.option(
    "--policy-dir",
    "search_path",
    metavar="DIR",
    multiple=True,
    help="Search DIR for policy names before $AGENT_OS_POLICY_PATH and the built-ins (repeatable).",
)


@click.group("policy")
def policy() -> None:
    """Validate, show, explain, test and list policies.

    \b
    Policy names (strict, permissive, read_only, ...) are looked up as NAME.yaml in:
    --policy-dir DIRs, $AGENT_OS_POLICY_PATH (colon separated), /etc/agentd/policies,
    then the built-in policies/ directory. Anything with a '/' or ending in .yaml is a path.
    """


# --- validate ----------------------------------------------------------------------------------


@policy.command()
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@_var_option
@_workspace_option
@_policy_dir_option
@click.option("--quiet", "-q", is_flag=True, help="Print only problems, not 'ok' lines.")
def validate(
    files: tuple[str, ...],
    variables: list[tuple[str, str]],
    workspace: str | None,
    search_path: tuple[str, ...],
    quiet: bool,
) -> None:
    """Check policy files; print every problem, one line each (file:line: pattern 'id': ...).

    Exit status 0 when all files are valid, 1 when any is invalid, 2 on a usage error
    such as a missing file.
    """
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise _usage_error(
            "; ".join(
                f"{f}: no such file" if not Path(f).exists() else f"{f}: not a regular file"
                for f in missing
            )
        )
    bound = _variables(variables, workspace)
    invalid = 0
    for file in files:
        issues = validate_yaml_file(file, variables=bound, search_path=list(search_path))
        for issue in issues:
            click.echo(str(issue))
        if issues:
            invalid += 1
        elif not quiet:
            click.echo(f"{file}: ok")
    if invalid and len(files) > 1:
        click.echo(f"{invalid} of {len(files)} files invalid", err=True)
    raise click.exceptions.Exit(EXIT_FAILED if invalid else EXIT_OK)


# --- show --------------------------------------------------------------------------------------


@policy.command()
@click.argument("name")
@click.option(
    "--resolved",
    is_flag=True,
    help="Print the loaded policy instead (extends flattened, ${VARS} expanded).",
)
@_var_option
@_workspace_option
@_policy_dir_option
def show(
    name: str,
    resolved: bool,
    variables: list[tuple[str, str]],
    workspace: str | None,
    search_path: tuple[str, ...],
) -> None:
    """Print a policy's YAML file as written (NAME on the search path, or a path)."""
    try:
        path = resolve_policy(name, list(search_path))
    except PolicyNotFoundError as exc:
        raise _usage_error(str(exc)) from None
    if resolved:
        loaded = _load(str(path), _variables(variables, workspace), search_path)
        click.echo(f"# {path} as loaded: inherited patterns flattened, variables expanded")
        click.echo(policy_to_yaml(loaded), nl=False)
        return
    try:
        click.echo(path.read_text(encoding="utf-8"), nl=False)
    except OSError as exc:
        raise _usage_error(f"{path}: {exc.strerror or exc}") from None


# --- list --------------------------------------------------------------------------------------


@policy.command("list")
@_policy_dir_option
def list_policies(search_path: tuple[str, ...]) -> None:
    """List the policies on the search path and the Python templates."""
    dirs = policy_search_path(list(search_path))
    found = available_policies(dirs)
    if found:
        width = max(len(n) for n in found)
        for policy_name, path in sorted(found.items()):
            click.echo(f"{policy_name:<{width}}  {_description(path)}  [{path}]")
    else:
        click.echo("no policy files on the search path", err=True)
    shadowed = [
        (d / f"{n}.yaml")
        for d in dirs
        for n in found
        if (d / f"{n}.yaml").is_file() and (d / f"{n}.yaml") != found[n]
    ]
    for path in shadowed:
        click.echo(f"(shadowed: {path})")
    templates = _templates()
    if templates:
        click.echo("templates (Python, from agent_os.templates import ...):")
        width = max(len(n) for n in templates)
        for template_name, doc in templates.items():
            click.echo(f"  {template_name:<{width}}  {doc}")
    click.echo(f"search path: {':'.join(map(str, dirs))}", err=True)


def _description(path: Path) -> str:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return "(unreadable or invalid YAML: run `agentd policy validate`)"
    if isinstance(data, dict) and isinstance(data.get("description"), str):
        return data["description"].strip().splitlines()[0] if data["description"].strip() else ""
    return ""


def _templates() -> dict[str, str]:
    try:
        from agent_os import templates
    except ImportError:
        return {}
    out = {}
    for template_name in TEMPLATE_NAMES:
        factory = getattr(templates, template_name, None)
        if callable(factory):
            doc = (factory.__doc__ or "").strip().splitlines()
            out[template_name] = doc[0] if doc else ""
    return out


# --- explain -----------------------------------------------------------------------------------


def _context(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in _pairs(ctx, param, values):
        try:
            out[key] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            out[key] = raw  # not YAML: keep the string as typed
    return out


def _check_action_type(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if value not in ACTION_TYPES:
        close = suggest_action_type(value)
        hint = f" (did you mean {close!r}?)" if close else f"; known: {', '.join(ACTION_TYPES)}"
        raise click.BadParameter(f"unknown action type {value!r}{hint}", ctx=ctx, param=param)
    return value


@policy.command()
@click.option(
    "--policy",
    "policy_name",
    metavar="P",
    default="strict",
    show_default=True,
    help="Policy name or YAML file.",
)
@click.argument("action_type", callback=_check_action_type)
@click.argument("target")
@click.option(
    "--context",
    "context",
    metavar="KEY=VALUE",
    multiple=True,
    callback=_context,
    help="Evaluation context entry; VALUE is read as YAML (size_bytes=100 is a number).",
)
@click.option("--agent", "agent_id", metavar="ID", help="The agent id (context agent_id).")
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as one JSON object.")
@_var_option
@_workspace_option
@_policy_dir_option
def explain(
    policy_name: str,
    action_type: str,
    target: str,
    context: dict[str, Any],
    agent_id: str | None,
    as_json: bool,
    variables: list[tuple[str, str]],
    workspace: str | None,
    search_path: tuple[str, ...],
) -> None:
    """Show how a policy decides ACTION_TYPE on TARGET, and why."""
    loaded = _load(policy_name, _variables(variables, workspace), search_path)
    if agent_id is not None:
        context["agent_id"] = agent_id
    result = loaded.evaluate(action_type, target, context)
    matches = _regex_matches(loaded, action_type, target, result)
    mode_why = _mode_reason(loaded, result)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "policy": loaded.name,
                    "source": loaded.source,
                    "action_type": action_type,
                    "target": target,
                    "context": context,
                    "decision": result.action,
                    "allowed": result.allowed,
                    "pattern_id": result.pattern_id,
                    "matched": list(result.matched),
                    "reason": result.reason,
                    "severity": str(result.severity) if result.severity is not None else None,
                    "violation_mode": str(result.violation_mode) if result.violation_mode else None,
                    "violation_mode_reason": mode_why,
                    "signal": result.signal.name if result.signal is not None else None,
                    "patterns": [
                        {
                            "id": p.id,
                            "action": p.action,
                            "severity": str(p.severity),
                            "regex": p.pattern,
                            "status": status,
                        }
                        for p, status in matches
                    ],
                },
                default=str,
                ensure_ascii=False,
            )
        )
        return
    verdict = "allowed" if result.allowed else "refused"
    click.echo(f"decision: {result.action} ({verdict})")
    click.echo(f"policy:   {loaded.name}" + (f" ({loaded.source})" if loaded.source else ""))
    click.echo(f"action:   {action_type} {target}")
    if context:
        click.echo(f"context:  {json.dumps(context, default=str, ensure_ascii=False)}")
    if result.pattern_id is not None:
        click.echo(f"winner:   {result.pattern_id} ({_pattern_summary(loaded, result.pattern_id)})")
    else:
        click.echo(f"winner:   none: the policy's default action ({loaded.default_action}) applies")
    click.echo(f"reason:   {result.reason}")
    click.echo(f"mode:     {result.violation_mode or 'none'}: {mode_why}")
    click.echo(f"signal:   {result.signal.name if result.signal is not None else 'none'}")
    if matches:
        click.echo("patterns whose regex matches the target:")
        width = max(len(p.id) for p, _ in matches)
        for pattern, status in matches:
            click.echo(
                f"  {pattern.id:<{width}}  {pattern.action:<5}  {str(pattern.severity):<8}  "
                f"{status}"
            )
    else:
        click.echo(f"no {action_type} pattern's regex matches the target")


def _pattern_summary(policy_obj: Policy, pattern_id: str) -> str:
    try:
        pattern = policy_obj.get_pattern(pattern_id)
    except KeyError:
        return "pattern not found"
    return f"{pattern.action}, severity {pattern.severity}, regex {pattern.pattern!r}"


def _regex_matches(
    policy_obj: Policy, action_type: str, target: str, result: Any
) -> list[tuple[Any, str]]:
    """Every enabled pattern of the type whose regex matches, with what became of it."""
    out = []
    for pattern in policy_obj.patterns:
        if pattern.action_type != action_type or not pattern.enabled:
            continue
        if not pattern.regex.match(target):
            continue
        if pattern.id == result.pattern_id:
            status = "decided"
        elif pattern.id in result.matched:
            status = "matched (a more restrictive or earlier pattern won)"
        elif pattern.catch_all and result.matched:
            status = "catch-all: fallback only, a specific pattern applied"
        else:
            status = "did not apply (conditions or an exception; see reason)"
        out.append((pattern, status))
    return out


def _mode_reason(policy_obj: Policy, result: Any) -> str:
    if result.action == "allow" and result.violation_mode is None:
        return "the action is allowed"
    pattern = None
    if result.pattern_id is not None:
        try:
            pattern = policy_obj.get_pattern(result.pattern_id)
        except KeyError:
            pattern = None
    mode = result.violation_mode
    if "violation_handler" in result.reason:
        return "chosen by the policy's violation_handler"
    if "elevated privileges" in result.reason:
        return "elevated privileges turn a non-critical denial into a warning"
    if pattern is None:
        if result.action == "warn":
            return "the default action is warn"
        if policy_obj.violation_mode is not None and mode == policy_obj.violation_mode:
            return "the policy's violation_mode, applied to its default deny"
        return "no violation_mode set: a default deny blocks"
    if pattern.violation_mode is not None and pattern.violation_mode == mode:
        return f"set on pattern {pattern.id!r}"
    if result.action == "warn":
        if mode is not None and str(mode) == "log_only":
            return "a LOW severity warn only logs"
        return "a warn match allows and signals SIGWARN"
    if policy_obj.violation_mode is not None and mode == policy_obj.violation_mode:
        return "the policy's violation_mode (no mode on the pattern)"
    if pattern.severity == Severity.CRITICAL:
        return "no mode set: severity critical blocks and kills"
    return f"no mode set: severity {pattern.severity} blocks (a deny is never let through silently)"


# --- test --------------------------------------------------------------------------------------


@policy.command("test")
@click.option(
    "--policy", "policy_name", metavar="P", required=True, help="Policy name or YAML file."
)
@click.argument("cases_file", metavar="CASES.yaml")
@_var_option
@_workspace_option
@_policy_dir_option
@click.option("--quiet", "-q", is_flag=True, help="Print only failing cases and the summary.")
def test_cases(
    policy_name: str,
    cases_file: str,
    variables: list[tuple[str, str]],
    workspace: str | None,
    search_path: tuple[str, ...],
    quiet: bool,
) -> None:
    """Run policy unit tests: a YAML list of {name?, action_type, target, context?, agent_id?,
    expect: allow|deny|warn, pattern_id?}.

    Prints PASS or FAIL per case, with a diff of expected and actual for a failure.
    Exit status 0 when all pass, 1 when any fails, 2 on a usage error.
    """
    from agent_os.policy_cases import load_cases, run_case

    try:
        cases = load_cases(cases_file)
    except PolicyNotFoundError as exc:
        raise _usage_error(str(exc)) from None
    except PolicyValidationError as exc:
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        raise _usage_error(f"{cases_file}: invalid case file") from None
    loaded = _load(policy_name, _variables(variables, workspace), search_path)
    failed = 0
    for case in cases:
        outcome = run_case(loaded, case)
        if outcome.passed:
            if not quiet:
                click.echo(f"PASS  {case.name}")
            continue
        failed += 1
        click.echo(f"FAIL  {case.name}  ({case.file}:{case.line})")
        click.echo(f"      - expected  {outcome.expected_line()}")
        click.echo(f"      + actual    {outcome.actual_line()}")
        click.echo(f"        reason: {outcome.result.reason}")
    click.echo(
        f"{len(cases) - failed} passed, {failed} failed ({len(cases)} cases, policy {loaded.name})"
    )
    raise click.exceptions.Exit(EXIT_FAILED if failed else EXIT_OK)
