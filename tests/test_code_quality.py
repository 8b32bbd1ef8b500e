"""The sources stay as the layout work left them: ruff's lint and format check, mypy, and no long
function without a reason. ``.ci/run`` runs these with every other test; the settings live in
pyproject.toml ([tool.ruff], [tool.mypy])."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "supervisor"
BIN = Path(sys.executable).parent
LONG = 80  # lines a function may have before it must say why it is one piece
REASONS = ("# Long because", "on purpose:")


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / argv[0]), *argv[1:]], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_ruff_lint_is_clean():
    done = _run("ruff", "check", "--no-cache", str(SOURCES))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_ruff_format_leaves_every_file_as_it_is():
    done = _run("ruff", "format", "--check", "--no-cache", str(SOURCES))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_mypy_finds_nothing(tmp_path):
    done = _run("mypy", "--cache-dir", str(tmp_path / "mypy-cache"))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def long_functions_without_reason(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            length = node.end_lineno - node.lineno + 1
            body = "\n".join(lines[node.lineno - 1:node.end_lineno])
            if length > LONG and not any(reason in body for reason in REASONS):
                found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_a_long_function_says_why_it_is_one_piece():
    assert long_functions_without_reason(SOURCES) == []


def test_the_long_function_check_is_not_vacuous(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(LONG + 1))
    (tmp_path / "m.py").write_text(f"def f():\n{body}\n")
    assert long_functions_without_reason(tmp_path) == [f"m.py:1 f ({LONG + 2} lines)"]
