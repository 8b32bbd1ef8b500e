"""resolve_tracee_path resolves like the kernel, from the point of view of another process.

A helper process (``sleep``) with its own cwd and descriptors plays the tracee; the supervisor's
own cwd differs, so a path resolved against the wrong process is caught.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from agentd.trace.paths import AT_FDCWD, PathResolutionError, resolve_tracee_path


@pytest.fixture
def tree(tmp_path):
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (real / "file.txt").write_text("x")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_text("s")
    os.symlink(real / "sub", tmp_path / "link_to_sub")               # absolute link
    os.symlink("real/file.txt", tmp_path / "rel_link")               # relative link
    os.symlink("../outside/secret", real / "escape")                 # points out of real/
    os.symlink(tmp_path / "nowhere" / "new.txt", tmp_path / "dangling")
    os.symlink("loop_b", tmp_path / "loop_a")
    os.symlink("loop_a", tmp_path / "loop_b")
    return tmp_path


@pytest.fixture
def tracee(tree):
    """A process whose cwd is tree/real and whose fd 3 is tree/outside (a directory)."""
    dir_fd = os.open(tree / "outside", os.O_RDONLY | os.O_DIRECTORY)
    read_fd, write_fd = os.pipe()
    os.dup2(dir_fd, 200)
    os.dup2(read_fd, 201)
    proc = subprocess.Popen(["sleep", "60"], cwd=tree / "real", pass_fds=(200, 201))
    os.close(dir_fd)
    os.close(read_fd)
    os.close(write_fd)
    os.close(200)
    os.close(201)
    yield proc.pid
    proc.kill()
    proc.wait()


def test_absolute_path_is_normalised(tracee, tree):
    assert resolve_tracee_path(tracee, AT_FDCWD, f"{tree}//real/./sub/../file.txt") == \
        f"{tree}/real/file.txt"


def test_relative_path_starts_at_the_tracees_cwd(tracee, tree):
    assert os.getcwd() != f"{tree}/real"
    assert resolve_tracee_path(tracee, AT_FDCWD, "file.txt") == f"{tree}/real/file.txt"
    assert resolve_tracee_path(tracee, AT_FDCWD, "../outside/secret") == f"{tree}/outside/secret"


def test_relative_path_starts_at_the_dirfd(tracee, tree):
    assert resolve_tracee_path(tracee, 200, "secret") == f"{tree}/outside/secret"


def test_dotdot_cannot_climb_above_root(tracee):
    assert resolve_tracee_path(tracee, AT_FDCWD, "/../../etc/../etc/passwd") == "/etc/passwd"


def test_symlinks_are_followed(tracee, tree):
    assert resolve_tracee_path(tracee, AT_FDCWD, f"{tree}/rel_link") == f"{tree}/real/file.txt"
    assert resolve_tracee_path(tracee, AT_FDCWD, "escape") == f"{tree}/outside/secret"


def test_last_component_not_followed_when_asked(tracee, tree):
    assert resolve_tracee_path(tracee, AT_FDCWD, "escape", follow_last=False) == \
        f"{tree}/real/escape"
    # ... but links in the middle always are
    assert resolve_tracee_path(tracee, AT_FDCWD, f"{tree}/link_to_sub/x", follow_last=False) == \
        f"{tree}/real/sub/x"


def test_dotdot_after_a_symlink_is_taken_from_the_target(tracee, tree):
    # the kernel resolves link_to_sub first; its parent is real/, not tree/
    assert resolve_tracee_path(tracee, AT_FDCWD, f"{tree}/link_to_sub/../file.txt") == \
        f"{tree}/real/file.txt"


def test_dangling_symlink_names_its_target(tracee, tree):
    # open(O_CREAT) through a dangling link creates the target
    assert resolve_tracee_path(tracee, AT_FDCWD, f"{tree}/dangling") == f"{tree}/nowhere/new.txt"


def test_proc_self_means_the_tracee(tracee, tree):
    assert resolve_tracee_path(tracee, AT_FDCWD, "/proc/self/cwd/file.txt") == \
        f"{tree}/real/file.txt"
    assert resolve_tracee_path(tracee, AT_FDCWD, "/proc/self/fd/200/secret") == \
        f"{tree}/outside/secret"
    assert resolve_tracee_path(tracee, AT_FDCWD, f"/proc/{tracee}/root/etc/passwd") == "/etc/passwd"
    assert resolve_tracee_path(tracee, AT_FDCWD, "/proc/thread-self/cwd") == f"{tree}/real"


def test_dev_fd_and_dev_stdin_reach_the_real_target(tracee, tree):
    assert resolve_tracee_path(tracee, AT_FDCWD, "/dev/fd/200/secret") == f"{tree}/outside/secret"
    assert resolve_tracee_path(tracee, AT_FDCWD, "/dev/fd/201").startswith("pipe:[")
    stdin = resolve_tracee_path(tracee, AT_FDCWD, "/dev/stdin")
    assert stdin == os.readlink(f"/proc/{tracee}/fd/0")


def test_symlink_loop_is_an_error(tracee, tree):
    with pytest.raises(PathResolutionError) as info:
        resolve_tracee_path(tracee, AT_FDCWD, f"{tree}/loop_a")
    assert "too many levels" in str(info.value)


def test_bad_dirfd_and_bad_paths_are_errors(tracee):
    with pytest.raises(PathResolutionError):
        resolve_tracee_path(tracee, 150, "x")
    with pytest.raises(PathResolutionError):
        resolve_tracee_path(tracee, AT_FDCWD, "")
    with pytest.raises(PathResolutionError):
        resolve_tracee_path(tracee, AT_FDCWD, "a" * 5000)


def test_empty_path_with_at_empty_path_is_the_descriptor(tracee, tree):
    assert resolve_tracee_path(tracee, 200, "", empty_ok=True) == f"{tree}/outside"


def test_names_with_newlines_survive(tracee, tree):
    weird = tree / "real" / "a\nb"
    weird.write_text("")
    assert resolve_tracee_path(tracee, AT_FDCWD, "a\nb") == f"{tree}/real/a\nb"


def test_resolve_in_root_scopes_the_walk_to_the_dirfd(tracee, tree):
    # openat2(RESOLVE_IN_ROOT): "/" and ".." stay inside the directory behind the dirfd
    assert resolve_tracee_path(tracee, 200, "/secret", in_root=True) == f"{tree}/outside/secret"
    assert resolve_tracee_path(tracee, 200, "../../../secret", in_root=True) == \
        f"{tree}/outside/secret"
