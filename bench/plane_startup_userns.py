"""What the user namespace plane (no root) costs an ``agentd run``: wall time of N runs of
``/bin/true`` as uid 65534 under ``--network off`` and ``--network plane``, interleaved, in one
run; plus the plane's imports measured in-process as that user.

    sudo .venv/bin/python bench/plane_startup_userns.py [-n 20]

Root is needed only to become uid 65534 (``setpriv``). The runs happen inside a network
namespace made for the bench (loopback only), and the stub's upstream is 127.0.0.1:9 there, so
nothing is sent anywhere (``/bin/true`` makes no query anyway).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AGENTD = str(Path(sys.executable).with_name("agentd"))
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def one_run(netns: str, network: str, shared: str) -> float:
    env = {key: value for key, value in os.environ.items() if key != "AGENTD_NETWORK"}
    env.update(HOME=shared, AGENTD_RUNS_DIR=f"{shared}/runs")
    argv = ["ip", "netns", "exec", netns, *NOBODY, AGENTD, "run", "--embedded", "--network",
            network, "--policy", "permissive", "--workspace", shared, "--audit-log",
            f"{shared}/{network}.jsonl", "--dns-upstream", "127.0.0.1:9", "--", "/bin/true"]
    # `ip netns exec` and setpriv are in both variants: their cost cancels out in the difference
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=env, cwd=shared)
    return time.perf_counter() - start


def imports() -> float:
    code = ("import time; t=time.perf_counter(); import agentd.netplane.plane; "
            "print(time.perf_counter()-t)")
    out = subprocess.run([*NOBODY, sys.executable, "-c", code], check=True, capture_output=True,
                         text=True)
    return float(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="runs per variant")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        sys.exit("plane_startup_userns: needs root and setpriv (to run the agent as uid 65534)")
    netns = f"agentd-bench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    shared = tempfile.mkdtemp(prefix="agentd-bench-", dir="/tmp")
    os.chmod(shared, 0o777)
    try:
        subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True)
        times: dict[str, list[float]] = {"off": [], "plane": []}
        one_run(netns, "plane", shared)   # warm the page cache and the policy cache
        for _ in range(args.n):
            for network in ("off", "plane"):
                times[network].append(one_run(netns, network, shared))
    finally:
        shutil.rmtree(shared, ignore_errors=True)
        subprocess.run(["ip", "netns", "delete", netns], check=False)
    off, plane = statistics.median(times["off"]), statistics.median(times["plane"])
    print(f"agentd run -- /bin/true as uid 65534, median of {args.n}: --network off "
          f"{off * 1000:.0f} ms, --network plane (user namespace) {plane * 1000:.0f} ms "
          f"({plane / off:.2f}x, +{(plane - off) * 1000:.0f} ms)")
    print(f"  plane import: median {statistics.median(imports() for _ in range(5)) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
