"""What ``agentd run`` costs a real agent: wall time against native, a C floor tracer and strace.

Runs four workloads (``bench/workloads/``: a Python program importing the standard library and
reading 2,000 files; a shell loop forking 400 short commands; 300 loopback TCP connects to a
listener thread of the same process (``tcp_connect_self``; ``--workloads tcp_connect`` is the
older variant whose listener is this script's, on the host's 127.0.0.1); a git
init/commit/edit/diff loop over 300 files) under six runners, interleaved round robin in one run
(each repetition runs every workload under every runner, in a rotating order): native;
``floor_tracer`` (bench/floor_tracer.c, built here with gcc: ptrace + seccomp with agentd's traced
syscall set, continuing every stop — the floor of the design); ``strace -f --seccomp-bpf`` tracing
the same syscalls into /dev/null; ``agentd run --policy permissive --network off`` with its audit
log in the run's temporary directory; ``agentd-plane``, the same with the default network (as
root: the network plane, the agent in a network namespace of its own); ``agentd-daemon``, the same
workloads through a private ``agentd daemon`` this script starts (its own socket, runs dir, audit
log, policy dir and cgroup subtree under the temporary directory; ``network: off`` in its
configuration) and stops at the end — skipped with one line when it cannot start (it needs cgroup
v2). Reports medians and their ratio to native, the start-up of ``agentd run -- /bin/true``
(defaults, ``--network off``, through the daemon) against ``/bin/true`` and the supervisor's peak
RSS (VmHWM of the agentd process, sampled while it runs). Writes the table to ``bench/README.md``
(section ``## agentd run``) and the figures to ``bench/out/run.json``.

``--real [NAMES]`` runs the real-world workloads instead (``real_workloads``: the livability
suite's ``tests/livability/workloads.py``, run as ``tests/livability/livability_harness.py`` runs
them, offline): git, make, cargo, compileall and cpython by default, ``all`` adds pip and npm, or
a comma list; a workload whose tools are missing is skipped with one line. Runners native,
floor, strace, agentd (``--network off``), agentd-plane (the default network), agentd-daemon (and
baseline with ``--baseline``), around the workload's ``bash -c`` script; each run gets a fresh
workspace and an untimed ``prepare``, and the workload's check must pass after it, else the cell
is FAIL (the reason printed), never a time. Three repetitions by default (``--reps``); a full
``--real`` run takes about 9 minutes on the 2-core VM (11 with ``--baseline``; one repetition of
the five under four runners took 1.9 min), most of it
cpython's regression tests (the livability suite's selection, kept as it is). It writes
``bench/out/real.json`` and its own README section (``## agentd run: real-world workloads``),
leaving the synthetic one as it is, and the other way round.

    .venv/bin/python bench/run_bench.py [--quick] [--reps N] [--workloads a,b] [--runners a,b]
                                        [--json FILE] [--no-readme] [--from-json FILE]
    .venv/bin/python bench/run_bench.py --real [NAMES] [--reps N] [--runners a,b]
                                        [--baseline AGENTD] [--json FILE] [--no-readme]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import real_workloads

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKLOADS_DIR = HERE / "workloads"
README = HERE / "README.md"
SECTION = "## agentd run"
RUNNERS = ("native", "floor", "strace", "agentd", "agentd-plane", "agentd-daemon", "baseline")
AGENTD = REPO / ".venv" / "bin" / "agentd"
BASELINE: Path | None = None   # --baseline: the agentd of another checkout, same options
WORKLOADS = ("py_files", "fork_loop", "tcp_connect_self", "git_loop")   # the default set
ALL_WORKLOADS = WORKLOADS + ("tcp_connect",)
SIZES = {"py_files": 2000, "fork_loop": 400, "tcp_connect_self": 300, "tcp_connect": 300,
         "git_loop": 300}
QUICK_SIZES = {"py_files": 200, "fork_loop": 40, "tcp_connect_self": 30, "tcp_connect": 30,
               "git_loop": 30}
# (workload, runner) pairs that cannot measure anything honest, and why (their cell is "-")
UNSUPPORTED = {("tcp_connect", "agentd-plane"):
               "the listener is on the host's 127.0.0.1, which an agent in its own network "
               "namespace cannot reach (tcp_connect_self runs its listener inside the agent)"}


def traced_syscalls() -> list[tuple[str, int]]:
    """agentd's traced set (what its seccomp filter returns TRACE for), as (name, number)."""
    from agentd.kernel.syscall_numbers import SYSCALL_NUMBERS
    from agentd.trace.syscall_table import traced_syscalls as names

    return sorted((name, SYSCALL_NUMBERS[name]) for name in names())


def build_floor(out_dir: Path) -> Path:
    binary = out_dir / "floor_tracer"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(binary), str(HERE / "floor_tracer.c")],
                   check=True)
    return binary


def strace_names(names: list[str]) -> tuple[list[str], list[str]]:
    """The names this strace knows (an older strace lacks the newest syscalls), and the rest."""
    known, unknown = [], []
    for name in names:
        probe = subprocess.run(["strace", "-o", "/dev/null", "-e", f"trace={name}", "/bin/true"],
                               capture_output=True)
        (known if probe.returncode == 0 else unknown).append(name)
    return known, unknown


class Listener:
    """A loopback TCP listener that accepts and closes every connection (for tcp_connect)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()
            self.accepted += 1

    def close(self) -> None:
        self.sock.close()


class BenchDaemon:
    """A private ``agentd daemon`` for the agentd-daemon runner (the approach of
    tests/helpers/agentd_daemon.py's DaemonUnderTest, reduced to what the bench needs): its
    configuration, socket, runs dir, audit log, policy dir (empty: the built-ins, ``permissive``
    among them) under ``root`` and a cgroup subtree of its own; started with a NOTIFY_SOCKET of
    ours, ready at READY=1, stopped with SIGTERM. ``network: off``, because the client's
    ``--network`` does not reach the daemon (its configuration decides), so that the runner
    differs from ``agentd`` by the daemon alone; the audit log fsyncs at the same "interval" as
    ``agentd run``'s."""

    def __init__(self, root: Path, network: str = "off") -> None:
        from agentd.kernel.cgroups import find_unified_mount

        self.mount = find_unified_mount()   # CgroupError (an OSError) without cgroup v2
        self.root = root
        (root / "policies").mkdir(parents=True)
        self.socket_path = root / "agentd.sock"
        self.cgroup_base = f"agentd-bench-{os.getpid()}-{os.urandom(3).hex()}"
        config = {"policy_dir": str(root / "policies"), "socket_path": str(self.socket_path),
                  "runs_dir": str(root / "runs"), "cgroup_base": self.cgroup_base,
                  "require_cgroups": True, "network": network,
                  "audit": {"path": str(root / "audit" / "flight.jsonl"), "fsync": "interval"}}
        self.config_path = root / "agentd.yaml"
        self.config_path.write_text(json.dumps(config, indent=2) + "\n")   # JSON is YAML
        self.process: subprocess.Popen | None = None
        self.log = None
        self.notify = None
        self.shares: list[float] = []   # the daemon's CPU seconds of each measured run

    def log_tail(self) -> str:
        try:
            lines = (self.root / "daemon.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def start(self, timeout: float = 30.0) -> BenchDaemon:
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify_path = str(self.root / "notify.sock")
        self.notify.bind(notify_path)
        env = dict(os.environ, NOTIFY_SOCKET=notify_path)
        env.pop("AGENTD_SOCKET", None)
        self.log = open(self.root / "daemon.log", "ab")
        self.process = subprocess.Popen([str(AGENTD), "daemon", "--config", str(self.config_path)],
                                        stdin=subprocess.DEVNULL, stdout=self.log,
                                        stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        self.notify.settimeout(0.2)
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"agentd daemon exited {self.process.returncode}: "
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"agentd daemon not ready after {timeout:.0f} s: "
                                   f"{self.log_tail()}")
            try:
                if self.notify.recv(4096).decode().startswith("READY=1"):
                    return self
            except TimeoutError:
                continue

    def env(self, base: dict) -> dict:
        return dict(base, AGENTD_SOCKET=str(self.socket_path))

    def cpu_ticks(self) -> int:
        """The daemon's utime + stime + cutime + cstime, in clock ticks: its own work (the audit
        log, the client) and that of the children it reaped (each run's supervisor and, reaped
        by that supervisor, the agent)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15])

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until the daemon has reaped every child (so cpu_ticks counts the last run)."""
        from agentd.kernel import procfs

        pid = self.process.pid
        deadline = time.monotonic() + timeout
        while True:
            children = [p for p in procfs.pids() if (info := procfs.stat(p)) and info.ppid == pid]
            if not children:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the daemon's children {children} did not end")
            time.sleep(0.002)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.notify is not None:
            self.notify.close()
        if self.log is not None:
            self.log.close()
        base = Path(self.mount) / self.cgroup_base
        if base.exists():   # the daemon removes it when it stops; this is for a daemon killed
            for child in base.iterdir():
                if child.is_dir():
                    try:
                        (child / "cgroup.kill").write_text("1")
                        child.rmdir()
                    except OSError:
                        pass
            try:
                base.rmdir()
            except OSError:
                pass


def start_daemon(root: Path, network: str = "off",
                 what: str = "the agentd-daemon runner") -> BenchDaemon | None:
    """The private daemon, or None (and one line on stderr) when it cannot start."""
    daemon = None
    try:
        daemon = BenchDaemon(root, network)
        return daemon.start()
    except (OSError, RuntimeError) as exc:
        if daemon is not None:
            daemon.stop()
        print(f"run_bench: skipping {what}: {exc}", file=sys.stderr)
        return None


def workload_argv(name: str, tmp: Path, size: int, port: int) -> list[str]:
    python = [sys.executable, "-I"]
    if name == "py_files":
        return python + [str(WORKLOADS_DIR / "py_files.py"), str(tmp / "files")]
    if name == "fork_loop":
        return ["/bin/sh", str(WORKLOADS_DIR / "fork_loop.sh"), str(size)]
    if name == "tcp_connect":
        return python + [str(WORKLOADS_DIR / "tcp_connect.py"), str(port), str(size)]
    if name == "tcp_connect_self":
        return python + [str(WORKLOADS_DIR / "tcp_connect_self.py"), str(size)]
    if name == "git_loop":
        return ["/bin/sh", str(WORKLOADS_DIR / "git_loop.sh"), str(tmp / "git"), str(size)]
    raise ValueError(name)


def runner_prefix(runner: str, tmp: Path, floor: Path, traced: list[tuple[str, int]],
                  strace_set: list[str], audit_log: Path, policy: str = "permissive"
                  ) -> list[str]:
    if runner == "native":
        return []
    if runner == "floor":
        return [str(floor), ",".join(str(nr) for _, nr in traced), "--"]
    if runner == "strace":
        return ["strace", "-f", "--seccomp-bpf", "-e", "trace=" + ",".join(strace_set),
                "-o", "/dev/null"]
    if runner in ("agentd", "baseline"):
        binary = AGENTD if runner == "agentd" else BASELINE
        if binary is None:
            raise ValueError("the baseline runner needs --baseline")
        # --network off: connect() judged by address only, no namespace (agentd-plane has it)
        return [str(binary), "run", "--policy", policy, "--network", "off",
                "--workspace", str(tmp), "--audit-log", str(audit_log), "--"]
    if runner == "agentd-plane":
        # the default network: as root, the plane (a network namespace of the agent's own)
        return [str(AGENTD), "run", "--policy", policy,
                "--workspace", str(tmp), "--audit-log", str(audit_log), "--"]
    if runner == "agentd-daemon":
        # through the daemon (AGENTD_SOCKET in its env): no --audit-log (refused: the daemon's
        # log), no --network (the daemon's configuration decides: network: off, see BenchDaemon)
        return [str(AGENTD), "run", "--policy", policy, "--workspace", str(tmp), "--"]
    raise ValueError(runner)


def peak_rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass(frozen=True)
class Timed:
    """One timed command: wall seconds, CPU seconds of the whole process tree (user + sys,
    supervisor included), the process's own peak RSS in KiB when sampled, how it ended (its
    stdout when kept, else "", and its stderr) and whether the timeout ended it."""

    wall_s: float
    cpu_s: float
    peak_kib: int | None
    completed: subprocess.CompletedProcess
    timed_out: bool = False

    def checked(self) -> Timed:
        """Itself when the command exited 0; else RuntimeError with the tail of its stderr."""
        if self.completed.returncode != 0:
            raise RuntimeError(f"{' '.join(self.completed.args[:8])} ... exited "
                               f"{self.completed.returncode}: {self.completed.stderr[-800:]}")
        return self


def _kill_group(pgid: int, fired: threading.Event) -> None:
    fired.set()
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def timed_process(argv: list[str], env: dict, cwd: Path, sample_rss: bool = False,
                  keep_output: bool = False, timeout: float | None = None) -> Timed:
    """Run ``argv`` to its end and time it (wall clock around the process, CPU from its
    rusage); with ``timeout``, the process runs in a session of its own whose group is killed
    when the time is up."""
    # stdout and stderr go to files, not pipes: a pipe nobody drains while we sample would
    # fill up and stall the workload (git and agentd's warnings write there).
    with tempfile.TemporaryFile() as output, tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=output if keep_output else subprocess.DEVNULL,
                                stderr=errors, start_new_session=timeout is not None)
        fired = threading.Event()
        timer = threading.Timer(timeout, _kill_group, (proc.pid, fired)) if timeout else None
        if timer is not None:
            timer.start()
        peak = None
        try:
            while True:
                # wait4 (not poll, which would reap the child and lose its rusage)
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG if sample_rss else 0)
                if pid:
                    break
                # VmHWM only grows: the last reading before the end is its peak (or just under)
                value = peak_rss_kib(proc.pid)
                if value is not None:
                    peak = max(peak or 0, value)
                time.sleep(0.005)
        finally:
            if timer is not None:
                timer.cancel()
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        output.seek(0)
        errors.seek(0)
        completed = subprocess.CompletedProcess(argv, proc.returncode,
                                                output.read().decode(errors="replace"),
                                                errors.read().decode(errors="replace"))
    return Timed(elapsed, usage.ru_utime + usage.ru_stime, peak, completed, fired.is_set())


def measure(argv: list[str], env: dict, cwd: Path, daemon: BenchDaemon | None = None,
            sample_rss: bool = False, keep_output: bool = False,
            timeout: float | None = None) -> Timed:
    """timed_process; through ``daemon`` (None: standalone), with the client's environment
    pointing at it and, in the CPU time, the daemon's share (the client's tree holds only the
    client)."""
    if daemon is None:
        return timed_process(argv, env, cwd, sample_rss, keep_output, timeout)
    daemon.settle()
    before = daemon.cpu_ticks()
    timed = timed_process(argv, daemon.env(env), cwd, keep_output=keep_output, timeout=timeout)
    daemon.settle()
    share = (daemon.cpu_ticks() - before) / os.sysconf("SC_CLK_TCK")
    daemon.shares.append(share)
    return replace(timed, cpu_s=timed.cpu_s + share)


def prepare_tmp(tmp: Path, sizes: dict[str, int]) -> None:
    files = tmp / "files"
    files.mkdir()
    for i in range(sizes["py_files"]):
        (files / f"f{i:05d}.txt").write_bytes(b"x" * (64 + i % 512))
    (tmp / "git").mkdir()


def bench_env(tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "GIT_"))}
    env.pop("AGENTD_NETWORK", None)   # the runners choose the network themselves
    env.update(HOME=str(tmp), GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.invalid",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.invalid",
               GIT_CONFIG_NOSYSTEM="1", LC_ALL="C",
               # no socket there: a system daemon would otherwise take over the standalone
               # runners (the agentd-daemon runner's env names the bench's own daemon)
               AGENTD_SOCKET=str(tmp / "no-daemon.sock"))
    return env


STARTUP_VARIANTS = {   # key in the JSON -> what it is
    "agentd": "agentd run -- /bin/true: the default policy (strict) and network (root: the plane)",
    "agentd_off": "agentd run --network off -- /bin/true (strict)",
    "daemon": "agentd run -- /bin/true through the bench's daemon (strict; network: off)",
    "daemon_plane": "agentd run -- /bin/true through a second daemon of the bench's with "
                    "network: plane (strict; the daemon's default)",
    "baseline": "--baseline's agentd run -- /bin/true, defaults",
    "baseline_daemon": "--baseline's agentd run -- /bin/true through the bench's daemon",
}


def startup(tmp: Path, env: dict, runs: int, daemon: BenchDaemon | None = None,
            plane_daemon: BenchDaemon | None = None) -> dict:
    """Median wall (and CPU) time of /bin/true and of each STARTUP_VARIANTS' `agentd run --
    /bin/true` available, interleaved (the order rotating with each run)."""
    def argv(binary: Path, key: str, *options: str) -> list[str]:
        log = tmp / f"startup-audit-{key}.jsonl"   # one chain per variant
        return [str(binary), "run", *options, "--workspace", str(tmp), "--audit-log", str(log),
                "--", "/bin/true"]

    variants: dict[str, tuple[list[str], BenchDaemon | None]] = {
        "true": (["/bin/true"], None),
        "agentd": (argv(AGENTD, "agentd"), None),
        "agentd_off": (argv(AGENTD, "agentd_off", "--network", "off"), None)}
    if daemon is not None:
        variants["daemon"] = ([str(AGENTD), "run", "--workspace", str(tmp), "--", "/bin/true"],
                              daemon)
    if plane_daemon is not None:
        variants["daemon_plane"] = (
            [str(AGENTD), "run", "--workspace", str(tmp), "--", "/bin/true"], plane_daemon)
    if BASELINE is not None:
        variants["baseline"] = (argv(BASELINE, "baseline"), None)
        if daemon is not None:  # the baseline's client, talking to this checkout's daemon
            variants["baseline_daemon"] = (
                [str(BASELINE), "run", "--workspace", str(tmp), "--", "/bin/true"], daemon)
    wall: dict[str, list[float]] = {key: [] for key in variants}
    cpu: dict[str, list[float]] = {key: [] for key in variants}
    keys = list(variants)
    shares: list[float] = []
    for i in range(runs):
        for key in keys[i % len(keys):] + keys[:i % len(keys)]:
            command, through = variants[key]
            timed = measure(command, env, tmp, through).checked()
            wall[key].append(timed.wall_s)
            cpu[key].append(timed.cpu_s)
            if through is not None:
                shares.append(through.shares[-1])
    native = statistics.median(wall["true"])
    result = {"runs": runs, "true_ms": native * 1e3,
              "agentd_true_min_ms": min(wall["agentd"]) * 1e3,
              "overhead_ms": (statistics.median(wall["agentd"]) - native) * 1e3,
              "variants": {key: STARTUP_VARIANTS[key] for key in variants if key != "true"}}
    for key in variants:
        if key != "true":
            result[f"{key}_true_ms"] = statistics.median(wall[key]) * 1e3
            result[f"{key}_true_cpu_ms"] = statistics.median(cpu[key]) * 1e3
    if shares:   # of daemon_true_cpu_ms: the daemon's own and its reaped children's
        result["daemon_true_daemon_share_cpu_ms"] = statistics.median(shares) * 1e3
    return result


def chosen_runners(args, known: tuple[str, ...]) -> list[str]:
    """--runners among ``known`` (default: all of them, baseline only with --baseline); sets
    BASELINE from --baseline."""
    global BASELINE
    BASELINE = Path(args.baseline).resolve() if args.baseline else None
    runners = args.runners.split(",") if args.runners else [
        r for r in known if r != "baseline" or BASELINE is not None]
    unknown = [n for n in runners if n not in known]
    if unknown:
        raise SystemExit(f"run_bench: unknown runner {', '.join(unknown)} "
                         f"(known: {', '.join(known)})")
    if "baseline" in runners and BASELINE is None:
        raise SystemExit("run_bench: the baseline runner needs --baseline AGENTD")
    return runners


def run(args) -> dict:
    sizes = QUICK_SIZES if args.quick else SIZES
    workloads = args.workloads.split(",") if args.workloads else list(WORKLOADS)
    unknown = [n for n in workloads if n not in ALL_WORKLOADS]
    if unknown:
        raise SystemExit(f"run_bench: unknown workload {', '.join(unknown)} "
                         f"(known: {', '.join(ALL_WORKLOADS)})")
    runners = chosen_runners(args, RUNNERS)
    reps = args.reps or (1 if args.quick else 5)
    traced = traced_syscalls()
    with tempfile.TemporaryDirectory(prefix="agentd-bench-", dir="/var/tmp") as tmp_name:
        tmp = Path(tmp_name)
        prepare_tmp(tmp, sizes)
        env = bench_env(tmp)
        floor = build_floor(tmp) if "floor" in runners else None
        strace_set, strace_missing = strace_names([n for n, _ in traced]) if "strace" in runners \
            else ([], [])
        listener = Listener() if "tcp_connect" in workloads else None
        daemon = None
        if "agentd-daemon" in runners:
            daemon = start_daemon(tmp / "daemon")
            if daemon is None:
                runners.remove("agentd-daemon")
                if not runners:
                    raise SystemExit("run_bench: no runner left to measure")
        times: dict[str, dict[str, list[float]]] = {w: {r: [] for r in runners} for w in workloads}
        cpu: dict[str, dict[str, list[float]]] = {w: {r: [] for r in runners} for w in workloads}
        rss: list[int] = []
        daemon_share: dict[str, list[float]] = {w: [] for w in workloads}
        try:
            for rep in range(reps):
                for w_index, workload in enumerate(workloads):
                    order = runners[(rep + w_index) % len(runners):] + \
                        runners[:(rep + w_index) % len(runners)]
                    for runner in order:
                        if (workload, runner) in UNSUPPORTED:
                            continue
                        audit_log = tmp / f"audit-{workload}-{rep}-{runner}.jsonl"
                        argv = runner_prefix(runner, tmp, floor, traced, strace_set, audit_log) + \
                            workload_argv(workload, tmp, sizes[workload],
                                          listener.port if listener else 0)
                        timed = measure(
                            argv, env, tmp, daemon if runner == "agentd-daemon" else None,
                            sample_rss=(runner == "agentd")).checked()
                        times[workload][runner].append(timed.wall_s)
                        cpu[workload][runner].append(timed.cpu_s)
                        if runner == "agentd-daemon":
                            daemon_share[workload].append(daemon.shares[-1])
                        if timed.peak_kib is not None:
                            rss.append(timed.peak_kib)
                        for written in tmp.glob(audit_log.name + "*"):  # and its .head
                            written.unlink()
            # the daemon's default network, for the start-up only: a second daemon
            plane_daemon = (start_daemon(tmp / "daemon-plane", "plane",
                                         "the start-up through a daemon with the plane")
                            if daemon is not None else None)
            try:
                start = startup(tmp, env, args.startup_runs or (5 if args.quick else 30), daemon,
                                plane_daemon)
            finally:
                if plane_daemon is not None:
                    plane_daemon.stop()
        finally:
            if listener is not None:
                listener.close()
            if daemon is not None:
                daemon.stop()
    results = {}
    for workload in workloads:
        medians = {r: statistics.median(v) for r, v in times[workload].items() if v}
        base = medians.get("native")
        cpu_medians = {r: statistics.median(v) for r, v in cpu[workload].items() if v}
        cpu_base = cpu_medians.get("native")
        results[workload] = {
            "size": sizes[workload],
            "median_s": medians,
            "ratio_to_native": {r: (m / base if base else None) for r, m in medians.items()},
            "samples_s": {r: v for r, v in times[workload].items() if v},
            "cpu_median_s": cpu_medians,
            "cpu_ratio_to_native": {r: (m / cpu_base if cpu_base else None)
                                    for r, m in cpu_medians.items()},
            "not_measured": {r: UNSUPPORTED[workload, r] for r in runners
                             if (workload, r) in UNSUPPORTED},
        }
        if daemon_share[workload]:   # of agentd-daemon's CPU: the daemon and what it reaped
            results[workload]["daemon_cpu_share_median_s"] = statistics.median(
                daemon_share[workload])
    return {
        "host": {"machine": platform.machine(), "kernel": platform.release(),
                 "python": platform.python_version(), "cpus": os.cpu_count(),
                 "loadavg_at_end": os.getloadavg()},
        "quick": bool(args.quick), "repetitions": reps,
        "runners": runners,
        "traced_syscalls": [n for n, _ in traced],
        "strace_untraceable": strace_missing,
        "workloads": results,
        "startup": start,
        "supervisor_peak_rss_kib": max(rss) if rss else None,
    }


def run_real(args) -> dict:
    """The real-world workloads (``real_workloads``) under this bench's runners, its daemon
    and ``measure``: each script's output kept for the workload's check, its timeout kept."""
    workloads, skipped = real_workloads.choose(args.real)
    for name, why in skipped.items():
        print(f"run_bench: skipping the real-world workload {name}: {why}", file=sys.stderr)
    if not workloads:
        raise SystemExit("run_bench: no real-world workload left to run")
    runners = chosen_runners(args, real_workloads.RUNNERS)
    reps = args.reps or (1 if args.quick else real_workloads.QUOTABLE_REPS)
    traced = traced_syscalls()
    with tempfile.TemporaryDirectory(prefix="agentd-bench-real-", dir="/var/tmp") as tmp_name:
        tmp = Path(tmp_name)
        strace_set, strace_missing = strace_names([n for n, _ in traced]) if "strace" in runners \
            else ([], [])
        floor = build_floor(tmp) if "floor" in runners else None
        daemon = start_daemon(tmp / "daemon") if "agentd-daemon" in runners else None
        if daemon is None and "agentd-daemon" in runners:
            runners.remove("agentd-daemon")
        if not runners:
            raise SystemExit("run_bench: no runner left to measure")

        def run_one(runner: str, workspace: Path, scratch: Path, command: list[str],
                    env: dict[str, str], timeout: float) -> Timed:
            env = {k: v for k, v in env.items() if k != "AGENTD_NETWORK"}  # the runner's choice
            # no socket there: a system daemon would otherwise take over the standalone
            # runners (the agentd-daemon runner's env names the bench's own daemon)
            env["AGENTD_SOCKET"] = str(tmp / "no-daemon.sock")
            argv = runner_prefix(runner, workspace, floor, traced, strace_set,
                                 scratch / "audit.jsonl") + command
            return measure(argv, env, workspace, daemon if runner == "agentd-daemon" else None,
                           keep_output=True, timeout=timeout)

        try:
            report = real_workloads.run(workloads, runners, reps, run_one, tmp / "runs")
        finally:
            if daemon is not None:
                daemon.stop()
    report.update(host=real_workloads.host_facts(), quick=bool(args.quick),
                  traced_syscalls=[n for n, _ in traced], strace_untraceable=strace_missing,
                  skipped=skipped)
    return report


def _grid(report: dict, runners: list[str], median_key: str, ratio_key: str) -> list[str]:
    lines = ["| workload | " + " | ".join(runners) + " |", "|---|" + "---:|" * len(runners)]
    for name, data in report["workloads"].items():
        cells = []
        for runner in runners:
            median = data.get(median_key, {}).get(runner)
            ratio = data.get(ratio_key, {}).get(runner)
            cells.append("-" if median is None else f"{median * 1e3:.0f} ms"
                         + ("" if runner == "native" or ratio is None else f" ({ratio:.2f}x)"))
        lines.append(f"| {name} ({data['size']}) | " + " | ".join(cells) + " |")
    return lines


def table(report: dict) -> str:
    runners = [r for r in RUNNERS if any(r in w["median_s"] for w in report["workloads"].values())]
    lines = ["Wall time, median (ratio to native):", ""]
    lines += _grid(report, runners, "median_s", "ratio_to_native")
    if any("cpu_median_s" in w for w in report["workloads"].values()):
        lines += ["", "CPU time of the whole process tree (user + sys, tracer included), median "
                  "(ratio to native):", ""]
        lines += _grid(report, runners, "cpu_median_s", "cpu_ratio_to_native")
    missing = sorted({f"{runner} on {name}: {why}" for name, data in report["workloads"].items()
                      for runner, why in data.get("not_measured", {}).items()})
    if missing:
        lines += [""] + [f"\"-\": {line}." for line in missing]
    start = report["startup"]

    def variant(key: str, label: str) -> str:
        if f"{key}_true_ms" not in start:
            return ""
        cpu_ms = start.get(f"{key}_true_cpu_ms")
        return (f", {label} {start[f'{key}_true_ms']:.1f} ms"
                + (f" (CPU {cpu_ms:.1f})" if cpu_ms is not None else ""))

    lines += ["", f"Start-up (median of {start['runs']}, wall ms; CPU of the process tree, the "
              f"daemon's share included): `/bin/true` {start['true_ms']:.1f} ms; "
              f"`agentd run -- /bin/true` (strict):"
              + variant("agentd", "default network (root: the plane)").lstrip(",")
              + f" (+{start['overhead_ms']:.1f} ms)"
              + variant("agentd_off", "`--network off`")
              + variant("daemon", "through the daemon (network: off)")
              + variant("daemon_plane", "through a daemon with the plane")
              + variant("baseline", "baseline (defaults)")
              + variant("baseline_daemon", "baseline through the daemon") + ".",
              f"Supervisor peak RSS (VmHWM): "
              f"{(report['supervisor_peak_rss_kib'] or 0) / 1024:.1f} MiB.",
              f"Load average at the end: "
              f"{', '.join(f'{x:.2f}' for x in report['host']['loadavg_at_end'])}."]
    return "\n".join(lines)


def write_readme_section(text: str, heading: str = SECTION, after: str | None = None) -> None:
    """Replace the section whose heading line is exactly ``heading`` (it runs to the next "## "
    line) with ``text``; a new section goes at the end of the section ``after`` when there is
    one, else at the end of the file. Each kind of run owns its section and no other."""
    lines = (README.read_text() if README.exists() else "# Benchmarks\n").split("\n")

    def span(title: str) -> tuple[int, int] | None:
        if title not in lines:
            return None
        start = lines.index(title)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
                   len(lines))
        return start, end

    new = text.rstrip().split("\n") + [""]
    own, neighbour = span(heading), span(after) if after else None
    if own is not None:
        lines[own[0]:own[1]] = new
    elif neighbour is not None:
        lines[neighbour[1]:neighbour[1]] = new
    else:
        while lines and not lines[-1]:
            lines.pop()
        lines += [""] + new
    README.write_text("\n".join(lines))


README_INTRO = """{section}

```
.venv/bin/python bench/run_bench.py            # ~8 min, writes bench/out/run.json and this section
.venv/bin/python bench/run_bench.py --quick    # small sizes, one repetition
.venv/bin/python bench/run_bench.py --real     # the real-world workloads: the next section
```

**Workloads** (`bench/workloads/`): `py_files` imports 49 standard-library modules and reads 2,000
files; `fork_loop` is a shell loop running `/bin/true` 400 times; `tcp_connect_self` makes 300
TCP connections to 127.0.0.1, to a listener thread of the same Python process (bind, listen,
accept and close each); `git_loop` runs git init, commit of 300 files, an edit of all of them,
diff, commit, log. **Runners**, interleaved round robin in one run ({reps} repetitions, medians):
native; `floor` — `bench/floor_tracer.c`, ptrace + seccomp with agentd's traced syscall set
({ntraced} syscalls, from `agentd.trace.syscall_table`), continuing every stop (the floor of this
design); `strace -f --seccomp-bpf -e trace=<the same set> -o /dev/null` (strace 6.1 lacks
{missing}); `agentd` — `agentd run --policy permissive --network off` with its audit log (fsync
"interval") on the same ext4 disk; `agentd-plane` — the same with the default network (as root:
the network plane, the agent in a network namespace of its own, `docs/network.md`);
`agentd-daemon` — the same workloads through a private `agentd daemon` the bench starts (its own
socket, runs dir, audit log with fsync "interval", an empty policy dir so `permissive` is the
built-in, a cgroup v2 subtree; skipped with one line when it cannot start) and stops at the end;
the client's `--network` does not reach a daemon (its configuration decides), so the daemon has
`network: off` and the runner differs from `agentd` by the daemon alone; `baseline` (with
`--baseline AGENTD`): another checkout's agentd with `agentd`'s options. Cells: median wall time
(ratio to native). The CPU of `agentd-daemon` is the client's process tree plus the daemon's
share (its own CPU and that of the supervisor and agent it reaped, from `/proc/PID/stat`, in
clock ticks of 10 ms).

**Why `tcp_connect_self`.** An agent in its own network namespace has a 127.0.0.1 of its own:
the older `tcp_connect` (`--workloads tcp_connect`; 300 connects to a listener the bench runs on
the host's loopback) cannot reach its listener under the plane, and its `agentd-plane` cell
stays "-". Moving the listener into the workload's own process makes one program that every
runner runs unchanged, so the row stays comparable across all of them (the runners that trace
now also pay for the listener's bind; accept and close are not traced syscalls), and under the
plane it measures the loopback inside the agent's namespace, which is what an agent talking to
a local server it started itself gets. It is not the same figure as the old `tcp_connect` row:
compare it within a run, not with older tables.

### Measured
"""


README_NOTES = """
**Reading it.** The machine is shared (other jobs, VMs under TCG at times): compare ratios within
one run, not across runs. Start-up is wall time of `agentd run -- /bin/true` with the default
policy (strict) and a warm policy cache (`agentd.run.policy_cache`; the first run after a policy
change pays ~30 ms more to compile its regexes), three ways, interleaved: the default network
(as root: the network plane, about 230 ms of it, `bench/plane_startup.py`), `--network off`, and
through the bench's daemon (`network: off`). RSS is the supervisor process alone of the `agentd`
runner (the agent's memory is not in it).

**Where agentd's time goes** (`bench/stop_profile.py`, step by step in docs/performance.md;
cProfile of `py_files`, per seccomp stop): the ptrace requests
(GETREGS, CONT, and the memory pinning of the TOCTOU defence: about six requests per stop),
path resolution (`paths.resolve_tracee_path`: several `lstat`s per path), the policy decision
(cached per target), and one FlightRecorder record (~15 µs of CPU: JSON twice and SHA-256,
written after the agent is resumed). Start-up is mostly imports (~45 ms of CPU: `logging`,
`dataclasses`/`inspect`, `re`, the seccomp/BPF and decode modules); click and YAML are no longer
imported by `agentd run`, and the policy comes pickled with its compiled regex programs.
Every agentd cell includes agentd's own start-up (with `--network off` ~90-100 ms; `agentd-plane`
adds the plane's build and teardown), which is most of the `tcp_connect_self` figure.

**Against issue 3's targets** (2026-11-27, a quiet moment, load ~2.5): supervisor RSS < 64 MiB —
met (~28 MiB). Start-up < 60 ms — not met: ~80 ms wall and CPU (100-140 ms before click, YAML
and python-ptrace's find_library were taken off the path and the policy cache added; bare
`python -c pass` is ~10 ms of it). Overhead no larger than strace's — not met on any workload.
Per seccomp stop, from `py_files` (CPU, start-up subtracted): floor ~35 µs, strace ~75 µs,
agentd ~110 µs. Within agentd's stop, the Python work (registers, decode and path resolution,
the TOCTOU pinning, the decision, the record) is the remainder above the floor; only a
compiled stop loop would bring it to strace's level.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, one repetition (with --real: one repetition)")
    parser.add_argument("--reps", type=int, default=None,
                        help="repetitions (default: 5; with --real: 3)")
    parser.add_argument("--workloads", default=None,
                        help="comma list of " + ",".join(ALL_WORKLOADS) + " (default: "
                        + ",".join(WORKLOADS) + ")")
    parser.add_argument("--real", nargs="?", const="default", default=None, metavar="NAMES",
                        help="run the real-world workloads instead of the synthetic ones: the "
                        "livability suite's, a comma list of " + ",".join(real_workloads.NAMES)
                        + " or 'all' (default: " + ",".join(real_workloads.DEFAULT) + "), under "
                        + ",".join(real_workloads.RUNNERS) + "; writes bench/out/real.json and "
                        "its own README section")
    parser.add_argument("--runners", default=None,
                        help="comma list of " + ",".join(RUNNERS) + " (with --real: of "
                        + ",".join(real_workloads.RUNNERS) + ")")
    parser.add_argument("--startup-runs", type=int, default=None,
                        help="start-up runs of the synthetic part (default 30; --quick 5)")
    parser.add_argument("--baseline", default=None, metavar="AGENTD",
                        help="also run this agentd executable (e.g. a checkout of an earlier "
                             "commit) as runner 'baseline', interleaved with the others, for "
                             "same-run ratios")
    parser.add_argument("--json", default=None,
                        help="where to write the figures (default: bench/out/run.json; with "
                        "--real: bench/out/real.json)")
    parser.add_argument("--no-readme", action="store_true", help="do not touch bench/README.md")
    parser.add_argument("--from-json", default=None,
                        help="do not measure: print and write the table of an earlier run's JSON "
                        "(synthetic or --real, as the file says)")
    args = parser.parse_args()
    if args.real is not None and (args.workloads or args.startup_runs or args.from_json):
        parser.error("--real names its own workloads (--real NAMES) and has no start-up runs; "
                     "not with --workloads, --startup-runs or --from-json")
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        args.json = args.from_json
    elif args.real is not None:
        report = run_real(args)
    else:
        report = run(args)
    real = report.get("kind") == "real"
    text = real_workloads.table(report) if real else table(report)
    print(text)
    out = Path(args.json or HERE / "out" / ("real.json" if real else "run.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if args.no_readme:
        return
    if real:
        write_readme_section(real_workloads.readme_section(report, text),
                             heading=real_workloads.SECTION, after=SECTION)
    else:
        intro = README_INTRO.format(section=SECTION, reps=report["repetitions"],
                                    ntraced=len(report["traced_syscalls"]),
                                    missing=", ".join(report["strace_untraceable"]) or "none")
        write_readme_section(intro + "\n" + text + "\n" + README_NOTES)


if __name__ == "__main__":
    main()
