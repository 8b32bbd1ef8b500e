"""What the network plane costs an ``agentd run``: wall time of N runs of ``/bin/true`` under
``--network off`` and ``--network plane``, interleaved, in one run; plus the plane's own parts
(import, build, close) measured in-process.

    sudo .venv/bin/python bench/plane_startup.py [-n 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AGENTD = str(Path(sys.executable).with_name("agentd"))


def one_run(network: str, log: str) -> float:
    start = time.perf_counter()
    subprocess.run([AGENTD, "run", "--embedded", "--network", network, "--policy", "permissive",
                    "--audit-log", log, "--", "/bin/true"], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def parts() -> dict[str, float]:
    code = ("import time; t=time.perf_counter(); import agentd.netplane.plane as P; t1=time.perf_counter()\n"
            "class S:\n agent_id='b'; policy=None; audit_only=False\n def record(self,*a,**k): return True\n"
            "p=P.NetworkPlane.start(S(), 'bench'); t2=time.perf_counter(); p.close(); t3=time.perf_counter()\n"
            "print(t1-t, t2-t1, t3-t2)")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    imp, build, close = map(float, out.stdout.split())
    return {"import": imp, "build": build, "close": close}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="runs per variant")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("plane_startup: the plane needs root")
    times: dict[str, list[float]] = {"off": [], "plane": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.n):
            for network in ("off", "plane"):
                times[network].append(one_run(network, f"{tmp}/{network}.jsonl"))
    off, plane = statistics.median(times["off"]), statistics.median(times["plane"])
    print(f"agentd run -- /bin/true, median of {args.n}: --network off {off * 1000:.0f} ms, "
          f"--network plane {plane * 1000:.0f} ms ({plane / off:.2f}x, +{(plane - off) * 1000:.0f} ms)")
    samples = [parts() for _ in range(5)]
    for key in ("import", "build", "close"):
        print(f"  plane {key}: median {statistics.median(s[key] for s in samples) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
