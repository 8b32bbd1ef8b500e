"""Build the C helpers under tests/helpers/ with gcc, once per test session.

``build_c_helper(name, tmp_path_factory)`` compiles ``tests/helpers/<name>.c`` into a fresh
temporary directory and returns the executable's path; a host without gcc skips the test with
that reason. The ``try_syscall`` fixture is the build of ``try_syscall.c`` (call a syscall by
number, exit with its errno); import it into a test module to use it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

HELPERS_DIR = Path(__file__).resolve().parent


def build_c_helper(name: str, tmp_path_factory: pytest.TempPathFactory,
                   extra_flags: tuple[str, ...] = ()) -> Path:
    source = HELPERS_DIR / f"{name}.c"
    if not source.is_file():
        raise FileNotFoundError(f"no C helper {source}")
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip(f"no C compiler on this host: cannot build {source.name}")
    output = tmp_path_factory.mktemp(f"cbuild-{name}") / name
    result = subprocess.run([compiler, "-O2", "-Wall", "-Wextra", "-Werror", *extra_flags,
                             "-o", str(output), str(source)], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building {source} failed:\n{result.stderr}")
    return output


@pytest.fixture(scope="session")
def try_syscall(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_c_helper("try_syscall", tmp_path_factory)
