"""cgroups.py: finding cgroup v2 (unified and hybrid hosts), and a real per-run cgroup whose
processes are frozen (state seen by the kernel), thawed and killed whole."""

from __future__ import annotations

import os
import subprocess

import pytest

from agentd.kernel.cgroups import CgroupTree, find_unified_mount
from helpers.agentd_daemon import cgroup2_mount, wait_for

UNIFIED = ("24 1 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 "
           "cgroup2 rw,nsdelegate,memory_recursiveprot\n")
HYBRID = ("31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
          "37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer\n"
          "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")


@pytest.mark.parametrize("text, expected", [(UNIFIED, "/sys/fs/cgroup"),
                                            (HYBRID, "/sys/fs/cgroup/unified")])
def test_the_cgroup2_mount_is_found(tmp_path, text, expected):
    path = tmp_path / "mountinfo"
    path.write_text(text)
    assert find_unified_mount(str(path)) == expected


def test_no_cgroup2_says_how_to_get_it(tmp_path):
    path = tmp_path / "mountinfo"
    path.write_text(HYBRID.splitlines()[0] + "\n")
    with pytest.raises(OSError, match="no cgroup2 filesystem"):
        find_unified_mount(str(path))


@pytest.mark.skipif(cgroup2_mount() is None or os.geteuid() != 0,
                    reason="needs root and a cgroup v2 mount")
def test_freeze_thaw_and_kill_a_whole_run():
    tree = CgroupTree(f"agentd-cgtest-{os.getpid()}")
    run = tree.create_run("t1")
    children = []
    try:
        for _ in range(2):
            children.append(subprocess.Popen(
                ["sh", "-c", f"echo 0 > {run.join_path()}; exec sleep 300"]))
        wait_for(lambda: len(run.pids()) == 2, what="two processes in the cgroup")
        assert run.freeze(wait=5)
        assert run.frozen
        run.thaw()
        assert not run.frozen
        run.kill()
        for child in children:
            child.wait(10)
            assert child.returncode == -9
        assert run.remove()
        assert not os.path.exists(run.path)
    finally:
        for child in children:
            child.kill()
        tree.remove()
    assert not os.path.exists(tree.base)
