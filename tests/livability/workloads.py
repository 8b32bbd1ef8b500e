"""The livability workloads: real developer tools nobody here wrote, each with a checked outcome.

Owns the data of the suite and nothing about how it is run. A ``Workload`` is a name, a
``prepare(W)`` that lays out inputs natively (outside any sandbox), a bash ``script`` that does the
real work with cwd ``W`` (under ``agentd run`` in the suite, or natively for comparison), an
``env(W)`` with the extra variables the tool needs, and a ``check(W, completed)`` that looks at
the outcome afterwards (the commits exist, the binary prints its value, the tests passed) and
raises ``AssertionError`` with a clear message. Every workload runs in a fresh workspace ``W``
with ``HOME=W/home`` and ``TMPDIR=W/tmp`` (``livability_harness`` creates both) and needs no
network: everything it installs comes from files made in ``prepare``.

Native costs on the 2-core Debian 12 development VM are in each workload's ``cost``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sysconfig
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

__all__ = ["Workload", "WORKLOADS", "by_name", "missing_tools", "tool_path"]

# Tools outside the default PATH that a workload may use; resolved once, read-only.
CARGO_BIN = Path.home() / ".cargo" / "bin"
RUSTUP_HOME = Path(os.environ.get("RUSTUP_HOME") or Path.home() / ".rustup")
PYENV_PYTHON = Path.home() / ".pyenv" / "versions" / "3.11.7" / "bin" / "python3"
SYSTEM_PYTHON = Path("/usr/bin/python3")


@dataclass(frozen=True)
class Workload:
    name: str
    prepare: Callable[[Path], None]
    script: str
    check: Callable[[Path, subprocess.CompletedProcess], None]
    timeout: float
    cost: str
    tools: tuple[str, ...] = ()
    env: Callable[[Path], dict[str, str]] = field(default=lambda workspace: {})


def tool_path() -> str:
    """PATH to look tools up in: the caller's, plus the rustup proxies' directory."""
    return os.pathsep.join([os.environ.get("PATH", os.defpath), str(CARGO_BIN)])


def missing_tools(workload: Workload) -> list[str]:
    """The tools of ``workload`` this host lacks (the suite skips the workload, naming them)."""
    return [tool for tool in workload.tools if shutil.which(tool, path=tool_path()) is None]


def by_name(name: str) -> Workload:
    for workload in WORKLOADS:
        if workload.name == name:
            return workload
    raise KeyError(f"no workload {name!r}; there are: {', '.join(w.name for w in WORKLOADS)}")


# ---------------------------------------------------------------------------------------------
# Shared pieces


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join((text or "").rstrip().splitlines()[-lines:])


def assert_exit_ok(completed: subprocess.CompletedProcess) -> None:
    """The script ran to its end; else the tool's own last words."""
    assert completed.returncode == 0, (
        f"the script exited {completed.returncode}\n--- stderr (tail) ---\n"
        f"{_tail(completed.stderr)}\n--- stdout (tail) ---\n{_tail(completed.stdout, 8)}")


def _read_result(workspace: Path, name: str = "result.txt") -> str:
    path = workspace / name
    assert path.exists(), f"{path} was not written"
    return path.read_text().strip()


def _stdlib_files(limit: int = 600) -> list[Path]:
    """About 600 ordinary .py files of the interpreter's standard library, in a stable order
    (test suites and site-packages left out: they hold deliberately broken files)."""
    root = Path(sysconfig.get_path("stdlib"))
    skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
    found = sorted(path for path in root.rglob("*.py")
                   if not skip.intersection(path.relative_to(root).parts[:-1])
                   and not path.relative_to(root).parts[0].startswith("config-"))
    return found[:limit]


def _copy_stdlib(destination: Path, limit: int = 600) -> int:
    root = Path(sysconfig.get_path("stdlib"))
    files = _stdlib_files(limit)
    for source in files:
        target = destination / source.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    return len(files)


def _py_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*.py") if "__pycache__" not in p.parts)


# ---------------------------------------------------------------------------------------------
# git: a stdlib-sized repository, two commits, gc, fsck, clone

GIT_SCRIPT = r"""
set -euo pipefail
export GIT_AUTHOR_NAME=Livability GIT_AUTHOR_EMAIL=livability@example.invalid
export GIT_COMMITTER_NAME=Livability GIT_COMMITTER_EMAIL=livability@example.invalid
cd repo
git init -q -b main .
git add -A
git commit -q -m "import the sources"
git ls-files > ../files.txt
head -n 50 ../files.txt | while read -r f; do
    echo "# edited under the livability suite" >> "$f"
done
git commit -q -a -m "edit 50 files"
git gc --quiet
git fsck --full > ../fsck.txt 2>&1
cd ..
git clone -q repo clone
git -C clone log --oneline > clone-log.txt
"""


def _git_prepare(workspace: Path) -> None:
    count = _copy_stdlib(workspace / "repo")
    (workspace / "expected-files.txt").write_text(f"{count}\n")


def _git_check(workspace: Path, completed: subprocess.CompletedProcess) -> None:
    assert_exit_ok(completed)
    fsck = (workspace / "fsck.txt").read_text()
    assert "error" not in fsck.lower(), f"git fsck reported errors:\n{_tail(fsck)}"
    for repo in ("repo", "clone"):
        log = subprocess.run(["git", "-C", str(workspace / repo), "log", "--oneline"],
                             capture_output=True, text=True)
        assert log.returncode == 0, f"git log in {repo} failed: {log.stderr.strip()}"
        commits = log.stdout.strip().splitlines()
        assert len(commits) == 2, f"{repo} has {len(commits)} commits, want 2: {commits}"
    expected = int((workspace / "expected-files.txt").read_text())
    cloned = _py_files(workspace / "clone")
    assert len(cloned) == expected, f"the clone has {len(cloned)} .py files, want {expected}"
    edited = subprocess.run(["git", "-C", str(workspace / "clone"), "grep", "-l",
                             "edited under the livability suite"], capture_output=True, text=True)
    assert len(edited.stdout.splitlines()) == 50, \
        f"the clone has {len(edited.stdout.splitlines())} edited files, want 50"


# ---------------------------------------------------------------------------------------------
# make: 40 C units + a Makefile, make -j2, the binary prints a value computed from all units

MAKE_UNITS = 40

MAKEFILE = """\
UNITS := $(wildcard unit_*.c)
OBJECTS := $(UNITS:.c=.o) main.o
CFLAGS ?= -O1 -Wall

prog: $(OBJECTS)
\t$(CC) -o $@ $^

%.o: %.c units.h
\t$(CC) $(CFLAGS) -c -o $@ $<

clean:
\trm -f prog *.o
"""


def _unit_value(index: int) -> int:
    return sum((index * k) % 97 for k in range(1, 1001))


def _make_prepare(workspace: Path) -> None:
    project = workspace / "project"
    project.mkdir()
    declarations = "".join(f"long unit_{i}(void);\n" for i in range(MAKE_UNITS))
    (project / "units.h").write_text(declarations)
    for i in range(MAKE_UNITS):
        (project / f"unit_{i:02d}.c").write_text(
            '#include "units.h"\n'
            f"long unit_{i}(void) {{\n    long total = 0;\n"
            f"    for (long k = 1; k <= 1000; k++) total += ({i} * k) % 97;\n"
            "    return total;\n}\n")
    calls = "".join(f"    total += unit_{i}();\n" for i in range(MAKE_UNITS))
    (project / "main.c").write_text(
        '#include <stdio.h>\n#include "units.h"\n'
        f"int main(void) {{\n    long total = 0;\n{calls}"
        '    printf("%ld\\n", total);\n    return 0;\n}\n')
    (project / "Makefile").write_text(MAKEFILE)


def _make_check(workspace: Path, completed: subprocess.CompletedProcess) -> None:
    assert_exit_ok(completed)
    expected = sum(_unit_value(i) for i in range(MAKE_UNITS))
    got = _read_result(workspace)
    assert got == str(expected), f"the program printed {got!r}, want {expected}"


MAKE_SCRIPT = r"""
set -euo pipefail
make -C project -j2
./project/prog > result.txt
"""


# ---------------------------------------------------------------------------------------------
# cargo: a crate without dependencies, build and test offline, CARGO_HOME in the workspace

CARGO_TOML = """\
[package]
name = "livability"
version = "0.1.0"
edition = "2021"

[dependencies]
"""

CARGO_LIB = """\
/// Sum of the squares of the first `n` odd numbers.
pub fn odd_square_sum(n: u64) -> u64 {
    (0..n).map(|k| (2 * k + 1) * (2 * k + 1)).sum()
}

#[cfg(test)]
mod tests {
    use super::odd_square_sum;

    #[test]
    fn empty() { assert_eq!(odd_square_sum(0), 0); }

    #[test]
    fn small() { assert_eq!(odd_square_sum(3), 1 + 9 + 25); }

    #[test]
    fn closed_form() {
        for n in 1..50u64 { assert_eq!(odd_square_sum(n), n * (2 * n - 1) * (2 * n + 1) / 3); }
    }
}
"""

CARGO_MAIN = """\
fn main() {
    println!("{}", livability::odd_square_sum(1000));
}
"""

CARGO_SCRIPT = r"""
set -euo pipefail
cd crate
cargo build --offline
./target/debug/livability > ../result.txt
cargo test --offline > ../cargo-test.txt 2>&1 || { cat ../cargo-test.txt >&2; exit 1; }
"""


def _cargo_prepare(workspace: Path) -> None:
    crate = workspace / "crate"
    (crate / "src").mkdir(parents=True)
    (crate / "Cargo.toml").write_text(CARGO_TOML)
    (crate / "src" / "lib.rs").write_text(CARGO_LIB)
    (crate / "src" / "main.rs").write_text(CARGO_MAIN)
    (workspace / "cargo-home").mkdir()


def _cargo_env(workspace: Path) -> dict[str, str]:
    return {"CARGO_HOME": str(workspace / "cargo-home"), "RUSTUP_HOME": str(RUSTUP_HOME),
            "PATH": f"{CARGO_BIN}{os.pathsep}{os.environ.get('PATH', os.defpath)}",
            "CARGO_TERM_COLOR": "never"}


def _cargo_check(workspace: Path, completed: subprocess.CompletedProcess) -> None:
    assert_exit_ok(completed)
    expected = sum((2 * k + 1) ** 2 for k in range(1000))
    got = _read_result(workspace)
    assert got == str(expected), f"the binary printed {got!r}, want {expected}"
    report = (workspace / "cargo-test.txt").read_text()
    assert "test result: ok. 3 passed" in report, \
        f"cargo test did not report 3 passed tests:\n{_tail(report)}"


# ---------------------------------------------------------------------------------------------
# pip: a venv from Debian's python3, pip install --no-index of a wheel made in prepare

PIP_VALUE = 271828
WHEEL_NAME = "livepkg-1.0-py3-none-any.whl"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel(path: Path) -> None:
    """A minimal pure-Python wheel: ``livepkg/__init__.py`` and its dist-info."""
    files = {
        "livepkg/__init__.py": f'"""Made by the livability suite."""\nVALUE = {PIP_VALUE}\n',
        "livepkg-1.0.dist-info/METADATA":
            "Metadata-Version: 2.1\nName: livepkg\nVersion: 1.0\n"
            "Summary: livability suite test package\n",
        "livepkg-1.0.dist-info/WHEEL":
            "Wheel-Version: 1.0\nGenerator: livability\nRoot-Is-Purelib: true\n"
            "Tag: py3-none-any\n",
    }
    record = [_record_line(name, text.encode()) for name, text in files.items()]
    record.append("livepkg-1.0.dist-info/RECORD,,")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
        wheel.writestr("livepkg-1.0.dist-info/RECORD", "\n".join(record) + "\n")


def _pip_prepare(workspace: Path) -> None:
    (workspace / "dist").mkdir()
    build_wheel(workspace / "dist" / WHEEL_NAME)


def _pip_env(workspace: Path) -> dict[str, str]:
    return {"PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


PIP_SCRIPT = rf"""
set -euo pipefail
{SYSTEM_PYTHON} -m venv venv
venv/bin/pip install --no-index dist/{WHEEL_NAME}
venv/bin/python -c 'import livepkg; print(livepkg.VALUE)' > result.txt
"""


def _pip_check(workspace: Path, completed: subprocess.CompletedProcess) -> None:
    assert_exit_ok(completed)
    got = _read_result(workspace)
    assert got == str(PIP_VALUE), f"import livepkg printed {got!r}, want {PIP_VALUE}"


# ---------------------------------------------------------------------------------------------
# compileall: byte-compile ~600 stdlib files copied into the workspace

COMPILEALL_SCRIPT = rf"""
set -euo pipefail
{SYSTEM_PYTHON} -m compileall -q src
"""


def _compileall_prepare(workspace: Path) -> None:
    _copy_stdlib(workspace / "src")


def _compileall_check(workspace: Path, completed: subprocess.CompletedProcess) -> None:
    assert_exit_ok(completed)
    sources = _py_files(workspace / "src")
    missing = [str(p.relative_to(workspace)) for p in sources
               if not list(p.parent.glob(f"__pycache__/{p.stem}.*.pyc"))]
    assert not missing, (f"{len(missing)} of {len(sources)} sources have no .pyc, e.g. "
                         f"{missing[:3]}")


# ---------------------------------------------------------------------------------------------
# npm: npm pack a local package, npm install --offline the tarball, require it from node

NPM_VALUE = 1618


def _npm_prepare(workspace: Path) -> None:
    package = workspace / "pkg"
    package.mkdir()
    (package / "package.json").write_text(
        '{\n  "name": "livepkg",\n  "version": "1.0.0",\n  "description": "livability suite",\n'
        '  "main": "index.js",\n  "license": "MIT"\n}\n')
    (package / "index.js").write_text(f"module.exports = {{ value: {NPM_VALUE} }};\n")
    app = workspace / "app"
    app.mkdir()
    (app / "package.json").write_text(
        '{\n  "name": "app",\n  "version": "1.0.0",\n  "private": true\n}\n')


def _npm_env(workspace: Path) -> dict[str, str]:
    return {"npm_config_cache": str(workspace / "npm-cache"), "npm_config_update_notifier":
            "false", "npm_config_fund": "false", "npm_config_audit": "false",
            "npm_config_offline": "true"}


NPM_SCRIPT = r"""
set -euo pipefail
(cd pkg && npm pack --pack-destination ..)
cd app
npm install --offline ../livepkg-1.0.0.tgz
node -e 'console.log(require("livepkg").value)' > ../result.txt
"""


def _npm_check(workspace: Path, completed: subprocess.CompletedProcess) -> None:
    assert_exit_ok(completed)
    got = _read_result(workspace)
    assert got == str(NPM_VALUE), f"require('livepkg').value printed {got!r}, want {NPM_VALUE}"


# ---------------------------------------------------------------------------------------------
# cpython: a selection of CPython's own regression tests (pyenv 3.11.7, its test suite installed)

# Each passes natively here (HOME and TMPDIR in the workspace, cwd the workspace). The last four
# start servers on loopback and talk to them (HTTP, XML-RPC, urllib over TLS, SMTP). Left out:
# test_socket (hangs in ThreadedVSOCKSocketStreamTest on this VM), test_threading and
# test_compileall (fail natively: test_import_from_another_thread, HardlinkDedup*.test_import),
# test_socketserver (fails natively here), test_subprocess, test_asyncio, test_ssl,
# test_logging, test_signal (15-80 s each: too slow).
CPYTHON_TESTS = ("test_os", "test_shutil", "test_tempfile", "test_glob", "test_fileinput",
                 "test_pathlib", "test_posixpath", "test_zipfile", "test_json", "test_sqlite3",
                 "test_argparse", "test_py_compile", "test_pty", "test_httpservers",
                 "test_xmlrpc", "test_urllib2_localnet", "test_smtplib")

CPYTHON_SCRIPT = rf"""
set -uo pipefail
{PYENV_PYTHON} -m test -j2 {' '.join(CPYTHON_TESTS)} > cpython-tests.txt 2>&1
status=$?
tail -n 25 cpython-tests.txt
exit $status
"""


def _cpython_prepare(workspace: Path) -> None:
    pass


def _cpython_check(workspace: Path, completed: subprocess.CompletedProcess) -> None:
    report = (workspace / "cpython-tests.txt").read_text(errors="replace")
    assert completed.returncode == 0 and "Result: SUCCESS" in report, (
        f"python -m test exited {completed.returncode}:\n{_tail(report, 25)}")
    wanted = f"run={len(CPYTHON_TESTS)}/{len(CPYTHON_TESTS)}"
    assert wanted in report, f"not all {len(CPYTHON_TESTS)} test files ran:\n{_tail(report)}"


WORKLOADS: tuple[Workload, ...] = (
    Workload("git", _git_prepare, GIT_SCRIPT, _git_check, timeout=300, tools=("git",),
             cost="native ~1 s, under agentd ~5 s: 600 files, 2 commits, gc, fsck, clone"),
    Workload("make", _make_prepare, MAKE_SCRIPT, _make_check, timeout=300, tools=("make", "cc"),
             cost="native ~0.5 s, under agentd ~2 s: 41 gcc -O1 compiles with -j2, one link"),
    Workload("cargo", _cargo_prepare, CARGO_SCRIPT, _cargo_check, timeout=300,
             cost="native ~1 s, under agentd ~2 s: cargo build + cargo test of a 3-test crate",
             tools=("cargo",), env=_cargo_env),
    Workload("pip", _pip_prepare, PIP_SCRIPT, _pip_check, timeout=300,
             cost="native ~3 s, under agentd ~7.5 s: venv with ensurepip's pip, one local wheel",
             tools=(str(SYSTEM_PYTHON),), env=_pip_env),
    Workload("compileall", _compileall_prepare, COMPILEALL_SCRIPT, _compileall_check,
             timeout=300, tools=(str(SYSTEM_PYTHON),),
             cost="native ~1 s, under agentd ~3 s: 600 files"),
    Workload("npm", _npm_prepare, NPM_SCRIPT, _npm_check, timeout=300,
             cost="native ~1-2.5 s, under agentd ~2 s: npm pack, npm install --offline",
             tools=("npm", "node"), env=_npm_env),
    Workload("cpython", _cpython_prepare, CPYTHON_SCRIPT, _cpython_check, timeout=600,
             cost=f"native ~8-11 s, under agentd ~27-40 s: {len(CPYTHON_TESTS)} modules, -j2",
             tools=(str(PYENV_PYTHON),)),
)
