"""Load on the daemon: N agents at once under one `agentd daemon`, each a file-and-exec loop.

Starts a real daemon in a temporary directory (its own socket, audit log, policy dir and cgroup
subtree; no systemd needed), launches N clients at once over the control socket (each passes
/dev/null as stdio), and reports: total decisions per second (audit records / wall time), the
daemon's CPU seconds and peak RSS, each supervisor's CPU seconds and peak RSS (min / median /
max over the runs, from its own getrusage), the decision latency the supervisors measured (p50
and p99 per run, wall clock and CPU time, then the worst run), and the audit-log check: the
records every supervisor sent, the records the daemon wrote, the records `verify_file` counted
(all three must be equal, and the chain must verify). Root only.

    .venv/bin/python bench/daemon_load.py               # 50 agents x 40 iterations
    .venv/bin/python bench/daemon_load.py --agents 10 --iterations 10
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

AGENTD = str(Path(sys.executable).with_name("agentd"))

# Every iteration: two execs (shell_execute + process_spawn each), a write, reads and a delete.
LOOP = r'''
i=0
while [ $i -lt {n} ]; do
  cat /etc/hostname /etc/os-release > "$W/f$i"
  ls "$W" > /dev/null
  head -c 64 "$W/f$i" > /dev/null
  rm -f "$W/f$i"
  i=$((i+1))
done
'''


def proc_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds, peak RSS in KiB) of a live process."""
    ticks = os.sysconf("SC_CLK_TCK")
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(stat[11]) + int(stat[12])) / ticks
    hwm = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmHWM"))
    return cpu, hwm


def launch(sock_path: str, argv: list[str], cwd: str, env: dict, results: list, index: int) -> None:
    devnull = os.open("/dev/null", os.O_RDWR)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(sock_path)
            message = {"op": "run", "argv": argv, "env": env, "cwd": cwd, "workspace": cwd,
                       "policy": "bench", "mode": "enforce"}
            socket.send_fds(sock, [json.dumps(message).encode() + b"\n"], [devnull] * 3)
            reader = sock.makefile("r")
            first = json.loads(reader.readline())
            if not first.get("ok"):
                results[index] = {"error": first.get("error")}
                return
            while True:
                line = reader.readline()
                if not line:
                    results[index] = {"error": "connection closed"}
                    return
                reply = json.loads(line)
                if "exit" in reply:
                    results[index] = reply
                    return
    finally:
        os.close(devnull)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--fsync", default="interval", choices=["always", "interval", "never"])
    parser.add_argument("--json", default="bench/out/daemon_load.json")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("daemon_load: needs root (the daemon runs agents in cgroups)", file=sys.stderr)
        return 2
    from agent_os.flight_recorder import verify_file

    root = Path(tempfile.mkdtemp(prefix="agentd-daemon-load-"))
    (root / "policies").mkdir()
    # A policy of the strict kind's size: allow the loop's paths, deny secrets and network.
    (root / "policies" / "bench.yaml").write_text(yaml.safe_dump({
        "name": "bench", "default_action": "allow", "patterns": [
            {"id": "no_secrets", "action_type": "file_read", "action": "deny",
             "pattern": r"^/(etc/shadow|root/\.ssh/.*)$", "violation_mode": "block"},
            {"id": "no_etc_writes", "action_type": "file_write", "action": "deny",
             "pattern": r"^/etc/.*", "violation_mode": "block"},
            {"id": "no_sudo", "action_type": "shell_execute", "action": "deny",
             "pattern": r"^sudo\b.*", "violation_mode": "sigkill"},
            {"id": "no_net", "action_type": "network_connect", "action": "deny",
             "pattern": r".*", "violation_mode": "block"}]}))
    config = {"policy_dir": str(root / "policies"), "socket_path": str(root / "agentd.sock"),
              "runs_dir": str(root / "runs"), "cgroup_base": f"agentd-bench-{os.getpid()}",
              "audit": {"path": str(root / "flight.jsonl"), "fsync": args.fsync},
              "max_runs": max(256, args.agents)}
    (root / "agentd.yaml").write_text(yaml.safe_dump(config))
    daemon = subprocess.Popen([AGENTD, "daemon", "--config", str(root / "agentd.yaml")],
                              stdout=open(root / "daemon.log", "wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(config["socket_path"]):
            if time.monotonic() > deadline or daemon.poll() is not None:
                print((root / "daemon.log").read_text(), file=sys.stderr)
                return 1
            time.sleep(0.05)
        cpu0, _ = proc_usage(daemon.pid)
        work = root / "work"
        work.mkdir()
        results: list = [None] * args.agents
        threads = []
        started = time.perf_counter()
        for i in range(args.agents):
            wdir = work / f"a{i}"
            wdir.mkdir()
            env = {"PATH": "/usr/bin:/bin", "W": str(wdir), "HOME": str(root), "LANG": "C"}
            thread = threading.Thread(target=launch, args=(
                config["socket_path"], ["sh", "-c", LOOP.format(n=args.iterations)], str(wdir),
                env, results, i))
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        cpu1, daemon_hwm = proc_usage(daemon.pid)
    finally:
        daemon.terminate()
        daemon.wait(30)
    errors = [r for r in results if not r or "error" in r or r.get("exit") != 0]
    verified = verify_file(root / "flight.jsonl")
    written = sum(r.get("records", 0) for r in results if r)
    sent = sum(1 for _ in open(root / "flight.jsonl"))
    sups = [r.get("supervisor") or {} for r in results if r and "supervisor" in r]
    mismatch = "records sent" in (root / "daemon.log").read_text()
    cpu = sorted(s["cpu_s"] for s in sups)
    rss = sorted(s["maxrss_kb"] for s in sups)
    p99 = sorted(s.get("wall_p99_us", 0) for s in sups)
    p50 = sorted(s.get("wall_p50_us", 0) for s in sups)
    cp99 = sorted(s.get("cpu_p99_us", 0) for s in sups)
    cp50 = sorted(s.get("cpu_p50_us", 0) for s in sups)
    summary = {
        "agents": args.agents, "iterations": args.iterations, "fsync": args.fsync,
        "wall_s": round(wall, 2), "failed_runs": len(errors),
        "decisions": written, "decisions_per_s": round(written / wall, 1),
        "daemon_cpu_s": round(cpu1 - cpu0, 2), "daemon_peak_rss_mib": round(daemon_hwm / 1024, 1),
        "supervisor_cpu_s": [round(cpu[0], 2), round(statistics.median(cpu), 2), round(cpu[-1], 2)],
        "supervisor_peak_rss_mib": [round(rss[0] / 1024, 1), round(statistics.median(rss) / 1024, 1),
                                    round(rss[-1] / 1024, 1)],
        "latency_wall_us": {"p50_median": statistics.median(p50), "p99_median": statistics.median(p99),
                            "p99_worst": p99[-1]},
        "latency_cpu_us": {"p50_median": statistics.median(cp50), "p99_median": statistics.median(cp99),
                           "p99_worst": cp99[-1]},
        "audit": {"records_written_by_daemon": written, "lines_in_log": sent,
                  "verified": verified.ok, "verified_records": verified.records,
                  "supervisor_daemon_count_mismatch": mismatch},
    }
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    if errors:
        print(f"failed runs: {errors[:3]}", file=sys.stderr)
    subprocess.run(["rm", "-rf", str(root)], check=False)
    ok = not errors and verified.ok and verified.records == written == sent and not mismatch
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
