"""Foreign ABIs and kernel side doors: `int 0x80`, the x32 bit, io_uring, clone(CLONE_UNTRACED),
vfork, clone3 (plain and CLONE_UNTRACED), a daemonised grandchild that outlives the agent,
ptrace on the supervisor and on a sibling outside the agent tree, signals to them (kill, tgkill,
pidfd_send_signal, kill(0)), process_vm_writev into a sibling, and a seccomp filter of the
agent's own with a user-notification listener (USER_NOTIF outranks TRACE) answering CONTINUE.

Each probe is one mode of probes/sidedoors.c. The outside checks: no file appeared outside the
workspace, the victim's marker never reached the output, the supervisor was not killed (its exit
status is not "killed by SIGKILL"), the sibling (a process this test started, outside the agent
tree) is still alive and its memory unchanged. Without the sandbox the "supervisor" is a stand-in
parent process, so the bare run shows the attack works on a real parent.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from escape_harness import PYTHON, Probe, judge, sibling_harmed, start_sibling, stop_sibling
from helpers.agentd_run import AGENTD

pytestmark = pytest.mark.escape_probe

CREATES = ["int80-creat", "x32-creat", "iouring-creat", "clone-untraced", "vfork", "clone3",
           "clone3-untraced"]
READS = ["int80-read", "iouring-read", "usernotif-read"]


def _lacks(result) -> str | None:
    text = result.stdout + result.stderr
    if "x32 openat" in text and "Function not implemented" in text:
        return "this kernel has no x32 ABI (CONFIG_X86_X32_ABI off): nothing to escape through"
    if "int80" in text and ("Function not implemented" in text or result.returncode == -11):
        return "this kernel has no ia32 emulation: nothing to escape through"
    if "io_uring_setup" in text and ("Operation not permitted" in text
                                     or "Function not implemented" in text):
        return "io_uring is disabled on this host (kernel.io_uring_disabled): nothing to escape through"
    return None


def _sidedoors(probe_bin, mode, arg):
    return lambda lay: [str(probe_bin / "sidedoors"), mode, lay.fmt(arg)]


@pytest.mark.parametrize("mode", CREATES)
def test_create_through_side_door(arena, probe_bin, mode):
    judge(arena, Probe(f"sidedoor-{mode}", _sidedoors(probe_bin, mode, "{keep}/created.txt"),
                       host_lacks=_lacks))


@pytest.mark.parametrize("mode", READS)
def test_read_through_side_door(arena, probe_bin, mode):
    judge(arena, Probe(f"sidedoor-{mode}", _sidedoors(probe_bin, mode, "{secret}"),
                       host_lacks=_lacks))


def test_read_through_a_detached_mount(arena, probe_bin):
    """open_tree(OPEN_TREE_CLONE) (root): a descriptor of a mount copy that names no path."""
    judge(arena, Probe("sidedoor-open-tree-read", _sidedoors(probe_bin, "open-tree-read",
                                                             "{victim}")))


def test_daemonised_grandchild_outlives_the_agent(arena, probe_bin):
    """The grandchild acts 300 ms after the agent's main process has exited."""
    judge(arena, Probe("sidedoor-daemon", _sidedoors(probe_bin, "daemon", "{keep}/created.txt"),
                       settle=1.5))


def _supervisor_killed(result) -> str | None:
    if result.returncode == -9:
        return "the supervisor (the agent's parent) was killed by SIGKILL"
    return None


@pytest.mark.parametrize("mode", ["ptrace-attach", "ptrace-seize", "kill", "tgkill",
                                  "pidfd-kill"])
def test_attack_on_the_supervisor(arena, probe_bin, mode):
    judge(arena, Probe(f"sidedoor-{mode}-supervisor", _sidedoors(probe_bin, mode, "ppid"),
                       deed=_supervisor_killed))


def test_kill_supervisors_process_group(arena, probe_bin):
    """kill(-ppid): the process group the supervisor leads (each run is its own session)."""
    judge(arena, Probe("sidedoor-kill-group-of-supervisor", _sidedoors(probe_bin, "kill", "-ppid"),
                       deed=_supervisor_killed))


def test_kill_own_process_group(arena, probe_bin):
    """kill(0): the agent's process group holds the supervisor too (each run is its own
    session, so this cannot reach pytest)."""
    judge(arena, Probe("sidedoor-killpg", lambda lay: [str(probe_bin / "sidedoors"), "killpg"],
                       deed=_supervisor_killed))


@pytest.mark.parametrize("mode", ["ptrace-attach", "ptrace-seize", "kill", "tgkill",
                                  "pidfd-kill", "vm-writev"])
def test_attack_on_a_sibling(arena, probe_bin, mode):
    judge(arena, Probe(f"sidedoor-{mode}-sibling", _sidedoors(probe_bin, mode, "{sibling_pid}"),
                       setup=start_sibling, cleanup=stop_sibling, deed=sibling_harmed))



HOLD_PROBE = """
import os, sys, time
target = sys.argv[1]
pid = os.fork()
if pid == 0:
    end = time.time() + 4
    while time.time() < end:
        try:
            os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
            print("child: created", target)
            break
        except OSError:
            pass
    os._exit(0)
time.sleep(0.3)
try:
    open("review_me", "w").write("x")
except OSError as exc:
    print("parent:", exc)
os.waitpid(pid, 0)
"""


def _operator(arena, holds: int, deny_after: float = 1.0):
    """An operator at another terminal: deny each of the first ``holds`` holds of the run."""
    def act(lay, finished):
        if not lay.sandboxed:
            return
        runs = arena.runs_dir
        lay.extra["held"] = 0
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and lay.extra["held"] < holds \
                and not finished.is_set():
            for info_file in runs.glob("*.json") if runs.exists() else ():
                try:
                    info = json.loads(info_file.read_text())
                except (OSError, ValueError):
                    continue
                if info.get("state") == "held":
                    lay.extra["held"] += 1
                    since = (info.get("held") or {}).get("since")
                    time.sleep(deny_after)
                    subprocess.run([AGENTD, "resume", info["run_id"], "--deny"],
                                   env=arena.env(lay), capture_output=True, timeout=30)
                    while time.monotonic() < deadline:   # until the hold is over
                        try:
                            now = json.loads(info_file.read_text())
                            # (the next hold may follow before a poll sees "running")
                            if now.get("state") != "held" \
                                    or (now.get("held") or {}).get("since") != since:
                                break
                        except (OSError, ValueError):
                            break
                        time.sleep(0.05)
            time.sleep(0.05)
    return act


def test_hold_window_is_not_a_way_out(arena):
    """A SIGSTOP verdict parks (stops and detaches) every agent process until an operator
    decides. A second process keeps trying to create keep/during_hold.txt the whole time; the
    operator (this test) denies after a second. Nothing may get through while parked."""
    result = judge(arena, Probe("sidedoor-hold-window",
                                lambda lay: [PYTHON, "-c", HOLD_PROBE,
                                             str(lay.keep / "during_hold.txt")],
                                during=_operator(arena, 1)))
    assert result.layout.extra.get("held"), \
        f"the run was never held, so the hold window was not tested\n{result.tail()}"


SELF_APPROVAL_PROBE = """
import glob, json, os, socket, time
def hold():
    try:
        open("review_me", "w").write("x")
        print("review_me written")
    except OSError as exc:
        print("review_me:", exc)
hold()                                   # the first hold: the control socket appears
runs = os.environ.get("AGENTD_RUNS_DIR", "/run/agentd/runs")
queued = None
for info_file in glob.glob(os.path.join(runs, "*.json")):
    try:
        info = json.load(open(info_file))
    except (OSError, ValueError):
        continue
    if info.get("supervisor_pid") == os.getppid():
        path = os.path.join(runs, info["run_id"] + ".sock")
        try:
            queued = socket.socket(socket.AF_UNIX)
            queued.connect(path)
            queued.sendall(b'{"decision": "allow"}\\n')
            print("queued an allow on", path)
        except OSError as exc:
            print("control socket:", exc)
hold()                                   # the second hold: would it take our own answer?
"""


def test_agent_cannot_answer_its_own_hold(arena):
    """After a first hold the run's control socket exists; the agent queues an "allow" on it,
    then asks for the held action again. Only the operator may answer (here: deny both)."""
    result = judge(arena, Probe("sidedoor-self-approval",
                                lambda lay: [PYTHON, "-c", SELF_APPROVAL_PROBE],
                                during=_operator(arena, 2), watch=("review_me",)))
    assert result.layout.extra.get("held"), \
        f"the run was never held, so self-approval was not tested\n{result.tail()}"
