"""The harness sees what the probes aimed at "the supervisor" look for, in both modes.

A probe that kills its supervisor is judged on ``RunResult.returncode == -9``. Embedded, the
supervisor is the ``agentd run`` process the harness started, so its status says it. Under the
daemon ``agentd run`` is only a client (it exits 137 whether the supervisor was killed or a
SIGKILL verdict ended the run), and the harness reads the daemon's log line instead. Here the
test itself kills the run's supervisor (named in the run's registration) and the result must say
-9, or every daemon-mode probe against the supervisor would pass without testing anything.
"""

from __future__ import annotations

import json
import os
import signal
import time

from escape_harness import PYTHON, POLICY_DIR


def _kill_the_supervisor(arena, seen: dict):
    def act(lay, finished):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not finished.is_set():
            for info_file in arena.runs_dir.glob("*.json") if arena.runs_dir.exists() else ():
                try:
                    info = json.loads(info_file.read_text())
                except (OSError, ValueError):
                    continue
                if lay.marker in " ".join(info.get("command", [])) and info.get("agent_pid"):
                    seen["supervisor"] = info["supervisor_pid"]
                    os.kill(info["supervisor_pid"], signal.SIGKILL)
                    return
            time.sleep(0.05)
    return act


def test_a_killed_supervisor_shows_as_minus_9(arena):
    lay = arena.layout("boxed")
    lay.sandboxed = True
    seen: dict = {}
    result = arena.run(lay, [PYTHON, "-c", "import time; time.sleep(60)", lay.marker],
                       policy=POLICY_DIR / "allow_all.yaml", during=_kill_the_supervisor(arena, seen))
    assert seen, f"the run's registration never named its supervisor\n{result.tail()}"
    assert result.returncode == -9, result.tail()
