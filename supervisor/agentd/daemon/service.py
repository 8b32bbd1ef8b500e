"""``agentd daemon``: the root service that launches and supervises agents for local users.

Owns the daemon's event loop and the per-run supervisor processes. One single-threaded loop
(``selectors``; signals arrive through ``signal.set_wakeup_fd``, no polling) serves the control
socket (newline-delimited JSON; callers identified by SO_PEERCRED / SO_PEERGROUPS), the record
pipes of the supervisors and systemd's notify protocol (READY, STATUS, WATCHDOG: ``systemd``).
Each run is one forked supervisor process (``_supervisor_main``): new session,
PR_SET_PDEATHSIG(SIGKILL) so it dies with the daemon, the caller's stdin/stdout/stderr
(received with SCM_RIGHTS) as its own, and the standalone machinery of
``runner``/``session``/``control`` to trace the agent with EXITKILL — so if the daemon dies,
its supervisors die, and with them every agent. The agent's child joins its own cgroup
(``cgroups.RunCgroup``) and drops to the caller's uid, gid and groups before it installs the
seccomp filter and execs. The supervisor sends its audit records over a pipe; the daemon is the
single writer of the hash-chained FlightRecorder. Policies are snapshots (``policy_store``):
``reload``/SIGHUP validates every policy first and swaps all or nothing; running supervisors get
the new text by content hash (SIGUSR1) and record the switch.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import pwd
import selectors
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from . import protocol as wire
from .config import DaemonConfig
from .policy_store import PolicyEntry, PolicyStore, policy_version
from .protocol import PROTOCOL_LIMIT
from .systemd import sd_notify, setup_logging

__all__ = ["Run", "Daemon", "run_daemon", "PROTOCOL_LIMIT"]

log = logging.getLogger("agentd.daemon.service")

SO_PEERGROUPS = 59              # Linux 4.13; not in Python's socket module
PR_SET_PDEATHSIG = 1


# --- runs ------------------------------------------------------------------------------------

@dataclass
class Run:
    run_id: str
    uid: int
    gid: int
    groups: list[int]
    user: str
    policy: str
    version: str
    mode: str
    command: list[str]
    supervisor_pid: int
    record_fd: int                  # read end: audit records and events from the supervisor
    control_fd: int                 # write end: policy switches to the supervisor
    cgroup: Any = None              # cgroups.RunCgroup or None
    client: Any = None              # the requesting Connection while it stays
    agent_pid: int | None = None
    state: str = "running"          # running | held | frozen | exited
    started: float = field(default_factory=time.time)
    records: int = 0
    buffer: bytes = b""
    exit_code: int | None = None
    reported_records: int | None = None
    stats: dict = field(default_factory=dict)   # the supervisor's CPU, RSS, latencies


@dataclass
class Connection:
    sock: socket.socket
    uid: int
    gid: int
    pid: int
    groups: list[int]
    buffer: bytes = b""
    fds: list[int] = field(default_factory=list)
    run: Run | None = None
    confined: str | None = None     # why this peer is itself a supervised agent, if it is


def _peer(sock: socket.socket) -> tuple[int, int, int, list[int]]:
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                        struct.calcsize("3i")))
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * 1024)
        groups = list(struct.unpack(f"{len(raw) // 4}I", raw))
    except OSError:
        groups = []
    return pid, uid, gid, groups


def _send(sock: socket.socket, message: BaseModel) -> None:
    """One answer line (``protocol``), sent within 5 s or not at all."""
    try:
        sock.setblocking(True)
        sock.settimeout(5)
        sock.sendall(wire.encode(message, reply=True))
    except OSError:
        pass
    finally:
        try:
            sock.setblocking(False)
        except OSError:
            pass


# --- the daemon ------------------------------------------------------------------------------

class Daemon:
    """The loop. ``Daemon(config).serve()`` returns when SIGTERM/SIGINT arrive."""

    def __init__(self, config: DaemonConfig, *, environ=os.environ):
        self.config = config
        self.environ = environ
        self.store = PolicyStore(config.policy_dir)
        self.runs: dict[str, Run] = {}
        self.by_fd: dict[int, Any] = {}
        self.selector = selectors.DefaultSelector()
        self.recorder = None
        self.cgroups = None
        self.listener: socket.socket | None = None
        self.running = False
        self.counter = 0
        self.started = time.time()
        self.watchdog_interval: float | None = None
        self.last_watchdog = 0.0

    # -- start and stop ------------------------------------------------------------------
    def start(self) -> None:
        from agent_os.flight_recorder import FlightRecorder

        from agentd.kernel import cgroups

        self.store.load()
        log.info("policies loaded: %s", ", ".join(f"{e.name}@{e.version}" for e in
                                                   self.store.entries.values()))
        try:
            self.cgroups = cgroups.CgroupTree(self.config.cgroup_base)
            self.cgroups.settle_daemon()
            log.info("agent cgroups under %s", self.cgroups.base)
        except (cgroups.CgroupError, OSError) as exc:
            if self.config.require_cgroups:
                raise
            log.warning("running without per-agent cgroups: %s", exc)
            self.cgroups = None
        audit = self.config.audit
        os.makedirs(os.path.dirname(audit.path) or ".", mode=0o750, exist_ok=True)
        self.recorder = FlightRecorder(audit.path, fsync=audit.fsync,
                                       fsync_interval=audit.fsync_interval)
        os.makedirs(self.config.runs_dir, mode=0o700, exist_ok=True)
        os.chmod(self.config.runs_dir, 0o700)
        sock_dir = os.path.dirname(self.config.socket_path)
        os.makedirs(sock_dir, mode=0o755, exist_ok=True)
        try:
            os.unlink(self.config.socket_path)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        listener.bind(self.config.socket_path)
        os.chmod(self.config.socket_path, 0o666)  # anyone may ask; SO_PEERCRED says who asked
        listener.listen(64)
        listener.setblocking(False)
        self.listener = listener
        self.selector.register(listener, selectors.EVENT_READ, "listener")
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self._wake = (wake_r, wake_w)
        signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
        for sig in (signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)   # the number arrives on the wakeup fd
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.selector.register(wake_r, selectors.EVENT_READ, "signals")
        usec = self.environ.get("WATCHDOG_USEC")
        if usec and self.environ.get("WATCHDOG_PID", str(os.getpid())) == str(os.getpid()):
            self.watchdog_interval = int(usec) / 1e6 / 2
        self.running = True
        sd_notify("READY=1", self.environ)
        self._status()
        log.info("listening on %s", self.config.socket_path)

    def close(self) -> None:
        for run in list(self.runs.values()):
            self._kill_run(run, "the daemon is stopping")
        deadline = time.monotonic() + 5
        while self.runs and time.monotonic() < deadline:
            self._tick(0.2)
        sd_notify("STOPPING=1", self.environ)
        signal.set_wakeup_fd(-1)
        if self.listener is not None:
            try:
                os.unlink(self.config.socket_path)
            except OSError:
                pass
            self.listener.close()
        if self.recorder is not None:
            self.recorder.close()
        if self.cgroups is not None:
            self.cgroups.remove()

    def serve(self) -> None:
        self.start()
        try:
            while self.running:
                self._tick(None)
        finally:
            self.close()

    # -- the loop ------------------------------------------------------------------------
    def _tick(self, timeout: float | None) -> None:
        if self.watchdog_interval is not None:
            now = time.monotonic()
            if now - self.last_watchdog >= self.watchdog_interval:
                sd_notify("WATCHDOG=1", self.environ)
                self.last_watchdog = now
            left = self.watchdog_interval - (now - self.last_watchdog)
            timeout = left if timeout is None else min(timeout, left)
        for key, _ in self.selector.select(timeout):
            kind = key.data
            try:
                if kind == "listener":
                    self._accept()
                elif kind == "signals":
                    self._signals(key.fileobj)
                elif isinstance(kind, Connection):
                    self._client_readable(kind)
                elif isinstance(kind, Run):
                    self._supervisor_readable(kind)
            except Exception:  # INVARIANT: one bad client or run never takes the daemon down
                log.exception("error handling %r", kind if isinstance(kind, str) else type(kind))

    def _signals(self, wake: socket.socket) -> None:
        try:
            data = wake.recv(512)
        except BlockingIOError:
            return
        for signum in set(data):
            if signum == signal.SIGCHLD:
                self._reap()
            elif signum == signal.SIGHUP:
                self.reload(who="SIGHUP")
            elif signum in (signal.SIGTERM, signal.SIGINT):
                log.info("signal %d: stopping", signum)
                self.running = False

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for run in self.runs.values():
                if run.supervisor_pid == pid and run.exit_code is None and os.WIFSIGNALED(status):
                    log.error("run %s: supervisor died of signal %d", run.run_id,
                              os.WTERMSIG(status))

    def _status(self) -> None:
        held = sum(1 for r in self.runs.values() if r.state == "held")
        sd_notify(f"STATUS={len(self.runs)} agent(s) running, {held} held; "
                  f"{len(self.store.entries)} policies", self.environ)

    # -- clients -------------------------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            sock.setblocking(False)
            try:
                pid, uid, gid, groups = _peer(sock)
            except OSError:
                sock.close()
                continue
            conn = Connection(sock, uid, gid, pid, groups, confined=self._confined(pid))
            self.selector.register(sock, selectors.EVENT_READ, conn)

    def _confined(self, pid: int) -> str | None:
        """Is the peer an agent (ours, or traced by anyone)? An agent that could ask the daemon
        for a new run would start a process outside its own tree, under another policy."""
        from agentd.kernel import procfs

        tracer = procfs.tracer_of(pid)
        if tracer is None:
            return "the caller's process is gone"
        if tracer != 0:
            return f"the caller (pid {pid}) is traced by pid {tracer}"
        if self.cgroups is not None:
            from agentd.kernel.cgroups import own_cgroup
            try:
                where = own_cgroup(pid)
            except OSError:
                return "the caller's cgroup is unknown"
            mine = self.cgroups.base[len(self.cgroups.mount):]
            if where.startswith(mine.rstrip("/") + "/run-"):
                return f"the caller (pid {pid}) is an agent of this daemon"
        return None

    def _drop(self, conn: Connection) -> None:
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        for fd in conn.fds:
            os.close(fd)
        conn.fds = []
        conn.sock.close()
        if conn.run is not None and conn.run.client is conn:
            conn.run.client = None
            if conn.run.state != "exited":
                # The user's terminal is gone: nobody waits for this agent any more.
                self._kill_run(conn.run, "the client disconnected")

    def _client_readable(self, conn: Connection) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(conn.sock, 65536, 8)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        conn.fds.extend(fds)
        if len(conn.fds) > 3:   # a run needs three; more is someone trying to exhaust our fds
            self._refuse(conn, "too many file descriptors")
            return
        if not data:
            self._drop(conn)
            return
        conn.buffer += data
        while b"\n" in conn.buffer:
            line, conn.buffer = conn.buffer.split(b"\n", 1)
            self._request(conn, line)
            if conn.sock.fileno() < 0:
                return
        if len(conn.buffer) > PROTOCOL_LIMIT:
            self._refuse(conn, f"request too long (more than {PROTOCOL_LIMIT} bytes)")

    def _refuse(self, conn: Connection, why: str) -> None:
        """A malformed request: one error line to the client, one line in the log, and the
        connection is closed (what follows on it cannot be trusted to be framed)."""
        log.warning("malformed request from uid %d (pid %d): %s; connection closed", conn.uid,
                    conn.pid, why)
        _send(conn.sock, wire.Reply(ok=False, error=why))
        self._drop(conn)

    def _request(self, conn: Connection, line: bytes) -> None:
        try:
            request = wire.parse_request(line)
        except wire.MalformedRequest as exc:
            self._refuse(conn, str(exc))
            return
        op = request.op
        if conn.confined and op not in ("ps", "status"):
            log.warning("refused %s from uid %d: %s", op, conn.uid, conn.confined)
            for fd in conn.fds:
                os.close(fd)
            conn.fds = []
            _send(conn.sock, wire.Reply(ok=False, error=f"agents may not use the daemon: "
                                        f"{conn.confined}"))
            return
        handler = {"run": self._op_run, "ps": self._op_ps, "stop": self._op_stop,
                   "resume": self._op_resume, "kill": self._op_kill, "reload": self._op_reload,
                   "status": self._op_status, "signal": self._op_signal}[op]
        try:
            reply = handler(conn, request)
        except Exception as exc:  # noqa: BLE001 - the caller gets the error, the daemon lives
            log.exception("op %s from uid %d failed", op, conn.uid)
            reply = wire.Reply(ok=False, error=f"{op} failed: {exc}")
        if reply is not None:
            _send(conn.sock, reply)

    # -- operations ----------------------------------------------------------------------
    def _op_status(self, conn, request: wire.StatusRequest) -> wire.StatusReply:
        return wire.StatusReply(
            ok=True, pid=os.getpid(), uptime=time.time() - self.started, runs=len(self.runs),
            audit_log=self.config.audit.path,
            cgroups=self.cgroups.base if self.cgroups else None,
            policies={e.name: e.version for e in self.store.entries.values()})

    def _op_reload(self, conn, request: wire.ReloadRequest) -> wire.ReloadReply:
        if conn.uid != 0:
            return wire.ReloadReply(ok=False, error="only root may reload policies")
        return self.reload(who=f"uid {conn.uid}")

    def reload(self, who: str) -> wire.ReloadReply:
        try:
            changed = self.store.load()
        except ValueError as exc:
            log.error("reload by %s rejected; the previous policies stay:\n%s", who, exc)
            return wire.ReloadReply(
                ok=False, error=f"reload rejected, the previous policies stay:\n{exc}")
        log.info("reload by %s: %s", who, ", ".join(f"{n} {o}->{v}" for n, (o, v) in
                                                  changed.items()) or "nothing changed")
        switched = []
        for run in self.runs.values():
            if run.policy in changed and run.state != "exited":
                entry = self.store.entries.get(run.policy)
                if entry is None:
                    continue  # the policy was removed: the run keeps the version it has
                self._switch_policy(run, entry)
                switched.append(run.run_id)
        self._status()
        return wire.ReloadReply(ok=True, changed=changed, switched=switched)

    def _switch_policy(self, run: Run, entry: PolicyEntry) -> None:
        snapshot = os.path.join(self.config.runs_dir, f"policy-{entry.version}.yaml")
        if not os.path.exists(snapshot):
            tmp = snapshot + f".{os.getpid()}.tmp"
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(entry.text)
            os.replace(tmp, snapshot)
        message = json.dumps({"name": entry.name, "version": entry.version,
                              "path": snapshot}).encode() + b"\n"
        try:
            os.write(run.control_fd, message)
            os.kill(run.supervisor_pid, signal.SIGUSR1)
        except OSError as exc:
            log.warning("run %s: cannot switch policy: %s", run.run_id, exc)
            return
        run.version = entry.version

    def _find(self, conn, run_id: str) -> tuple[Run | None, wire.Reply | None]:
        run = self.runs.get(run_id)
        if run is None:
            return None, wire.Reply(ok=False, error=f"no daemon run {run_id!r}", unknown=True)
        if conn.uid not in (0, run.uid):
            return None, wire.Reply(ok=False, error=f"run {run.run_id} is not yours")
        return run, None

    def _held_info(self, run: Run) -> wire.HeldInfo | None:
        try:
            with open(os.path.join(self.config.runs_dir, f"{run.run_id}.json"),
                      encoding="utf-8") as handle:
                info = json.load(handle)
            if info.get("state") != "held" or not info.get("held"):
                return None
            return wire.HeldInfo.model_validate(info["held"])
        except (OSError, ValueError):   # ValueError: JSON, or pydantic's ValidationError
            return None

    def _op_ps(self, conn, request: wire.PsRequest) -> wire.PsReply:
        runs = []
        for run in self.runs.values():
            if conn.uid not in (0, run.uid):
                continue
            held = self._held_info(run)
            state = "held" if held else run.state
            if run.cgroup is not None and state == "running" and run.cgroup.frozen:
                state = "frozen"
            runs.append(wire.RunInfo(
                run_id=run.run_id, user=run.user, uid=run.uid, policy=run.policy,
                version=run.version, mode=run.mode, supervisor_pid=run.supervisor_pid,
                agent_pid=run.agent_pid,
                pids=run.cgroup.pids() if run.cgroup else ([run.agent_pid] if run.agent_pid
                                                           else []),
                state=state, held=held, command=run.command, started=run.started,
                records=run.records))
        return wire.PsReply(ok=True, runs=runs)

    def _op_stop(self, conn, request: wire.StopRequest) -> wire.StopReply:
        run, error = self._find(conn, request.run_id)
        if error:
            return error
        if run.cgroup is None:
            return wire.StopReply(ok=False, error="this daemon runs without cgroups: cannot "
                                  "freeze")
        frozen = run.cgroup.freeze(wait=2.0)
        run.state = "frozen"
        log.info("run %s frozen by uid %d", run.run_id, conn.uid)
        return wire.StopReply(ok=True, state="frozen" if frozen else "freezing")

    def _op_resume(self, conn, request: wire.ResumeRequest) -> wire.ResumeReply:
        from agentd.run import registry as control

        run, error = self._find(conn, request.run_id)
        if error:
            return error
        decision = request.decision
        if self._held_info(run) is not None:
            if decision is None:
                return wire.ResumeReply(ok=False, error=f"run {run.run_id} is held for review: "
                                        "say --allow or --deny")
            if decision == "allow" and conn.uid != 0:
                return wire.ResumeReply(ok=False, error="only root may allow a held action of "
                                        "a daemon run (the owner may --deny or kill)")
            answer = control.send_decision(run.run_id, decision, self.config.runs_dir)
            log.info("run %s: %s by uid %d", run.run_id, decision, conn.uid)
            return wire.ResumeReply.model_validate(answer)
        if run.cgroup is not None and run.state == "frozen":
            run.cgroup.thaw()
            run.state = "running"
            return wire.ResumeReply(ok=True, state="running")
        return wire.ResumeReply(ok=False, error=f"run {run.run_id} is neither held nor frozen")

    def _op_kill(self, conn, request: wire.KillRequest) -> wire.KillReply:
        run, error = self._find(conn, request.run_id)
        if error:
            return error
        self._kill_run(run, f"agentd kill by uid {conn.uid}")
        return wire.KillReply(ok=True)

    def _op_signal(self, conn, request: wire.SignalRequest) -> None:
        """The client's ^C and friends, forwarded to the agent's first process; no answer."""
        run = conn.run
        sig = request.signal
        if run is None or run.agent_pid is None or sig not in (1, 2, 3, 15):
            return None
        try:
            os.kill(run.agent_pid, sig)
        except ProcessLookupError:
            pass
        return None

    def _kill_run(self, run: Run, why: str) -> None:
        log.info("run %s: killing: %s", run.run_id, why, extra={"RUN_ID": run.run_id})
        if self._held_info(run) is not None:
            from agentd.run import registry as control
            try:
                control.send_decision(run.run_id, "kill", self.config.runs_dir)
            except (OSError, LookupError, RuntimeError, ValueError):
                pass
        if run.cgroup is not None:
            run.cgroup.kill()
        try:
            os.kill(run.supervisor_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    # -- launching -----------------------------------------------------------------------
    def _op_run(self, conn, request: wire.RunRequest) -> wire.RunReply:
        fds, conn.fds = conn.fds, []
        try:
            entry, refusal = self._grant(conn, request, fds)
            if entry is None:
                return wire.RunReply(ok=False, error=refusal)
            return self._launch(conn, request, entry, fds)
        finally:
            for fd in fds:
                os.close(fd)

    def _grant(self, conn: Connection, request: wire.RunRequest,
               fds: list[int]) -> tuple[PolicyEntry | None, str]:
        """The policy a run request is granted, or (None, why it is refused)."""
        if conn.run is not None:
            return None, "one run per connection"
        if len(fds) != 3:
            return None, "send stdin, stdout and stderr (SCM_RIGHTS) with run"
        policy_name = request.policy or "strict"
        for option in ("audit_log", "seccomp_profile"):
            if getattr(request, option):
                return None, (f"--{option.replace('_', '-')} is not available under the daemon "
                              "(its configuration decides); use --embedded")
        if len(self.runs) >= self.config.max_runs:
            return None, f"the daemon runs {len(self.runs)} agents already"
        entry = self.store.entries.get(policy_name)
        if entry is None:
            if conn.uid == 0 and "/" in policy_name and os.path.isfile(policy_name):
                entry = PolicyEntry.from_file(policy_name)
            else:
                return None, (f"unknown policy {policy_name!r}; the daemon knows: "
                              f"{', '.join(sorted(self.store.entries))}")
        refusal = self.config.may_launch(conn.uid, {conn.gid, *conn.groups}, policy_name,
                                         request.mode)
        if refusal:
            log.warning("refused run for uid %d: %s", conn.uid, refusal)
            return None, refusal
        return entry, ""

    def _launch(self, conn: Connection, request: wire.RunRequest, entry: PolicyEntry,
                fds: list[int]) -> wire.RunReply:
        """Fork the run's supervisor with the caller's three fds; the run joins the table."""
        argv, mode = list(request.argv), request.mode
        try:
            user = pwd.getpwuid(conn.uid)
            user_name, home = user.pw_name, user.pw_dir
        except KeyError:
            user_name, home = str(conn.uid), "/"
        cwd = request.cwd or "/"
        workspace = request.workspace or cwd
        self.counter += 1
        run_id = f"d{self.counter:x}{os.urandom(3).hex()}"
        agent_id = request.agent_id or f"{os.path.basename(argv[0])}-{run_id}"
        cgroup = self.cgroups.create_run(run_id) if self.cgroups is not None else None
        record_r, record_w = os.pipe2(os.O_CLOEXEC)
        control_r, control_w = os.pipe2(os.O_CLOEXEC)
        plan = SupervisorPlan(
            run_id=run_id, agent_id=agent_id, argv=argv, env=dict(request.env), cwd=cwd,
            workspace=workspace,
            uid=conn.uid, gid=conn.gid, groups=sorted(set(conn.groups)), home=home,
            user=user_name, policy=entry, mode=mode, policy_dir=self.config.policy_dir,
            runs_dir=self.config.runs_dir, audit_path=self.config.audit.path,
            seccomp_profile=self.config.seccomp_profile,
            cgroup_procs=cgroup.join_path() if cgroup else None,
            network=self.config.network, dns_upstream=",".join(self.config.dns_upstream))
        daemon_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _supervisor_main(plan, daemon_pid, fds, record_w, control_r)
            except BaseException:  # noqa: BLE001 - the child never returns into the daemon
                try:
                    import traceback
                    os.write(record_w, (json.dumps({"t": "log", "msg": traceback.format_exc()})
                                        + "\n").encode())
                except BaseException:  # noqa: BLE001
                    pass
            os._exit(code)
        os.close(record_w)
        os.close(control_r)
        os.set_blocking(record_r, False)
        run = Run(run_id, conn.uid, conn.gid, plan.groups, user_name, entry.name, entry.version,
                  mode, argv, pid, record_r, control_w, cgroup=cgroup, client=conn)
        conn.run = run
        self.runs[run_id] = run
        self.selector.register(record_r, selectors.EVENT_READ, run)
        log.info("run %s: uid %d (%s) launched %s under %s@%s", run_id, conn.uid, user_name,
                 argv[0], entry.name, entry.version,
                 extra={"RUN_ID": run_id, "AGENT_UID": conn.uid, "POLICY": entry.name})
        self._status()
        return wire.RunReply(ok=True, run_id=run_id, policy=entry.name, version=entry.version)

    # -- supervisors ---------------------------------------------------------------------
    def _supervisor_readable(self, run: Run) -> None:
        try:
            data = os.read(run.record_fd, 1 << 16)
        except BlockingIOError:
            return
        if not data:
            self._finish(run)
            return
        run.buffer += data
        *lines, run.buffer = run.buffer.split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                log.error("run %s: unreadable message from its supervisor", run.run_id)
                continue
            kind = message.get("t")
            if kind == "rec":
                self._write_record(run, message["f"])
            elif kind == "started":
                run.agent_pid = message.get("agent_pid")
            elif kind == "exit":
                run.exit_code = message.get("code")
                run.reported_records = message.get("records")
                run.stats = message.get("stats") or {}
            elif kind == "log":
                log.warning("run %s supervisor: %s", run.run_id, message.get("msg"),
                            extra={"RUN_ID": run.run_id})

    def _write_record(self, run: Run, fields: dict) -> None:
        try:
            self.recorder.record(**fields)
        except Exception as exc:  # INVARIANT: an agent that cannot be recorded does not run
            log.error("run %s: audit record failed (%s): killing the agent", run.run_id, exc)
            self._kill_run(run, "the audit log cannot be written")
            return
        run.records += 1
        rotate = self.config.audit.rotate_bytes
        if rotate and self.recorder._size >= rotate:  # noqa: SLF001 - size is tracked there
            try:
                rotated = self.recorder.rotate()
                log.info("audit log rotated to %s", rotated)
            except Exception:  # noqa: BLE001
                log.exception("audit log rotation failed")

    def _finish(self, run: Run) -> None:
        self.selector.unregister(run.record_fd)
        os.close(run.record_fd)
        os.close(run.control_fd)
        run.state = "exited"
        if run.cgroup is not None:
            run.cgroup.kill()   # INVARIANT: nothing of an agent outlives its supervisor
            run.cgroup.remove()
        code = run.exit_code if run.exit_code is not None else 128 + signal.SIGKILL
        if run.reported_records is not None and run.reported_records != run.records:
            log.error("run %s: %d records sent, %d written", run.run_id, run.reported_records,
                      run.records)
        log.info("run %s: ended with status %d (%d records)", run.run_id, code, run.records,
                 extra={"RUN_ID": run.run_id})
        self.runs.pop(run.run_id, None)
        if run.client is not None:
            _send(run.client.sock, wire.RunExit(exit=code, records=run.records,
                                                supervisor=run.stats))
            client, run.client = run.client, None
            client.run = None
            self._drop(client)
        self._status()


# --- the per-run supervisor (a forked child of the daemon) ------------------------------------

@dataclass
class SupervisorPlan:
    run_id: str
    agent_id: str
    argv: list[str]
    env: dict[str, str]
    cwd: str
    workspace: str
    uid: int
    gid: int
    groups: list[int]
    home: str
    user: str
    policy: PolicyEntry
    mode: str
    policy_dir: str
    runs_dir: str
    audit_path: str
    seccomp_profile: str | None
    cgroup_procs: str | None
    network: str = "plane"                           # DaemonConfig.network
    dns_upstream: str = ""                           # comma separated, "" = resolv.conf's
    latencies: list = field(default_factory=list)   # (wall ns, cpu ns) per stop, for stats


class PipeRecorder:
    """The FlightRecorder's ``record`` as the Session calls it, sent to the daemon (the single
    writer of the chain). A record is handed over before the call returns; a failed write raises
    (and the Session refuses, fail closed)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.count = 0
        self.sending = False
        # The network plane's threads (DNS stub, proxy) record too. Re-entrant: a signal
        # handler in the thread that holds it queues its message (``pending``) instead.
        self.lock = threading.RLock()
        self.pending: list[dict] = []   # messages from a signal handler that hit a send

    def send(self, message: dict) -> None:
        with self.lock:
            self._send(message)

    def _send(self, message: dict) -> None:
        if self.sending:
            # INVARIANT: lines never interleave; a signal handler's message waits its turn.
            self.pending.append(message)
            return
        self.sending = True
        try:
            while True:
                data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
                view = memoryview(data)
                while view:
                    written = os.write(self.fd, view)
                    view = view[written:]
                if not self.pending:
                    break
                message = self.pending.pop(0)
        finally:
            self.sending = False

    def record(self, **fields: Any) -> None:
        from agent_os.flight_recorder import json_safe

        with self.lock:
            self._send({"t": "rec", "f": {k: json_safe(v) for k, v in fields.items()}})
            self.count += 1

    def close(self) -> None:
        pass


class _PipeLogHandler(logging.Handler):
    def __init__(self, recorder: PipeRecorder):
        super().__init__(logging.WARNING)
        self.recorder = recorder

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.recorder.send({"t": "log", "msg": self.format(record)})
        except OSError:
            pass


class _DropPrivileges:
    """A child step (``runner.spawn_traced``): in the agent's child, before the filter is
    installed, join the run's cgroup (still root), take the caller's groups, gid and uid, and
    enter its cwd."""

    def __init__(self, plan: SupervisorPlan):
        self.plan = plan

    def __call__(self) -> None:
        plan = self.plan
        if plan.cgroup_procs:
            fd = os.open(plan.cgroup_procs, os.O_WRONLY)
            try:
                os.write(fd, b"0")   # "0" = the writing process
            finally:
                os.close(fd)
        if plan.uid != 0 or plan.gid != 0:
            os.setgroups(plan.groups)
            os.setresgid(plan.gid, plan.gid, plan.gid)
            os.setresuid(plan.uid, plan.uid, plan.uid)
        elif plan.groups:
            os.setgroups(plan.groups)
        os.chdir(plan.cwd)


def _supervisor_main(plan: SupervisorPlan, daemon_pid: int, stdio: list[int], record_w: int,
                     control_r: int) -> int:
    """The body of a per-run supervisor process; returns its exit code (the daemon gets the
    agent's status as a message)."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_DFL)
    os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return 1
    if os.getppid() != daemon_pid:   # the daemon died before the prctl: so do we
        return 1
    # Our fds: 0-2 are the caller's, 3 the record pipe, 4 the control pipe; nothing else.
    # Lift every one above the low numbers first, so no dup2 overwrites a later source.
    import fcntl
    lifted = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 1000) for fd in (*stdio, record_w, control_r)]
    for target, fd in enumerate(lifted):
        os.dup2(fd, target, inheritable=target < 3)
    os.closerange(5, 1 << 20)   # close_range(2): the daemon's sockets, pipes and journal
    recorder = PipeRecorder(3)
    root = logging.getLogger()
    root.handlers[:] = [_PipeLogHandler(recorder)]
    sys.stdin = open(0, closefd=False)   # noqa: SIM115 - the caller's terminal
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    from agent_os.errors import PolicyError

    from agentd.run import supervise as runner
    try:
        code = _supervise_run(plan, recorder, 4)
    except _Terminated:
        code = 128 + signal.SIGKILL
    except runner.HostError as exc:
        os.write(2, f"agentd run: {exc}\n".encode())
        code = 125
    except (runner.FilterError, PolicyError) as exc:
        os.write(2, f"agentd run: {exc}\n".encode())
        code = 2
    import resource
    usage = resource.getrusage(resource.RUSAGE_SELF)
    recorder.send({"t": "exit", "code": code, "records": recorder.count, "stats": {
        "cpu_s": usage.ru_utime + usage.ru_stime, "maxrss_kb": usage.ru_maxrss,
        **_latency_summary(plan.latencies)}})
    return 0


def _latency_summary(latencies: list[tuple[int, int]]) -> dict:
    """Decision latency (one seccomp stop handled: decode, decide, record, resume), wall clock
    and the supervisor's own CPU time, in microseconds."""
    if not latencies:
        return {"samples": 0}
    wall = sorted(w for w, _ in latencies)
    cpu = sorted(c for _, c in latencies)

    def pick(values, q):
        return round(values[min(len(values) - 1, int(q * len(values)))] / 1000, 1)

    return {"samples": len(wall), "wall_p50_us": pick(wall, 0.5), "wall_p99_us": pick(wall, 0.99),
            "cpu_p50_us": pick(cpu, 0.5), "cpu_p99_us": pick(cpu, 0.99)}


class _Terminated(BaseException):
    """SIGTERM from the daemon (agentd kill, shutdown): the tree is killed on the way out."""


def _variables(plan: SupervisorPlan) -> dict[str, str]:
    return {"WORKSPACE": os.path.realpath(plan.workspace),
            "HOME": os.path.realpath(plan.home),
            "TMPDIR": os.path.realpath(plan.env.get("TMPDIR") or "/tmp")}


def _supervise_run(plan: SupervisorPlan, recorder: PipeRecorder, control_fd: int) -> int:
    from agent_os.loader import policy_from_yaml_string

    from agentd.run import registry as control
    from agentd.run import supervise as runner
    from agentd.trace.session import Session

    variables = _variables(plan)
    policy = policy_from_yaml_string(plan.policy.text, variables, [plan.policy_dir],
                                     name=plan.policy.path)
    registration = _DaemonRegistration(plan.run_id, {
        "run_id": plan.run_id, "supervisor_pid": os.getpid(), "agent_pid": None,
        "agent_id": plan.agent_id, "command": plan.argv, "policy": plan.policy.name,
        "uid": plan.uid, "user": plan.user, "mode": plan.mode, "workspace": plan.workspace,
        "audit_log": plan.audit_path, "started": time.time()}, directory=plan.runs_dir)
    registration.may_prompt = plan.uid == 0
    session = Session(policy, plan.run_id, plan.agent_id, recorder=recorder,
                      audit_only=plan.mode == "audit",
                      protected_paths=(plan.audit_path, plan.runs_dir + "/"),
                      review=_FreezingReview(registration, plan.cgroup_procs))

    def switch_policy(signum, frame) -> None:
        try:
            message = json.loads(os.read(control_fd, 1 << 16).split(b"\n")[0])
            with open(message["path"], encoding="utf-8") as handle:
                text = handle.read()
            if policy_version(text) != message["version"]:
                raise ValueError("the policy snapshot does not match its version")
            new = policy_from_yaml_string(text, variables, [plan.policy_dir], name=message["path"])
        except Exception as exc:  # noqa: BLE001 - keep the old policy, say so
            logging.getLogger("agentd.daemon.service").error("policy switch failed: %s", exc)
            return
        session.policy = new
        from agentd.trace.decide import Evaluation
        session.record(None, "reload", Evaluation(
            "policy_reload", f"{message['name']}@{message['version']}", "allow", "allow",
            f"the daemon reloaded policy {message['name']}: now version {message['version']}"),
            enforced="reload")

    def terminate(signum, frame):
        raise _Terminated()

    signal.signal(signal.SIGUSR1, switch_policy)
    signal.signal(signal.SIGTERM, terminate)
    registration.create()
    try:
        status, killed = _trace(plan, policy, session, recorder, registration)
    finally:
        registration.remove()
        from agentd.trace.enforce import notice_line
        for line in session.warning_summary():
            notice_line(f"warnings repeated: {line}")
    if killed:
        return 128 + signal.SIGKILL
    return runner.exit_code(status)


def _trace(plan, policy, session, recorder, registration) -> tuple[int, bool]:
    """``runner.supervise`` for another user: the agent's child joins its cgroup and drops to
    the caller before the filter is installed, and every decision is timed."""
    from agentd.run import supervise as runner

    latencies = plan.latencies
    seen = [0]
    import random

    def timed(tracer, task) -> None:
        wall, cpu = time.perf_counter_ns(), time.thread_time_ns()
        try:
            session.on_syscall(tracer, task)
        finally:
            sample = (time.perf_counter_ns() - wall, time.thread_time_ns() - cpu)
            seen[0] += 1
            # A bounded reservoir: a long run keeps 50,000 uniformly chosen samples.
            if len(latencies) < 50_000:
                latencies.append(sample)
            else:
                slot = random.randrange(seen[0])
                if slot < 50_000:
                    latencies[slot] = sample

    from agentd.netplane.dns import parse_upstream

    plane = None
    env = dict(plan.env)
    steps: list = [_DropPrivileges(plan)]
    if plan.network == "plane":
        from agentd.netplane.plane import NetworkPlane
        try:
            plane = NetworkPlane.start(session, plan.run_id,
                                       upstream=parse_upstream(plan.dns_upstream))
        except Exception as exc:  # noqa: BLE001 - PlaneUnavailable, a bad dns_upstream, ...
            # The administrator asked for the plane: no run without it (fail closed).
            raise runner.HostError(f"cannot build the network plane: {exc}") from None
        env.update(plane.environment())
        session.network = plane.view()
        # setns needs the privileges the last step drops; then no agent, root or not, keeps
        # what the plane needed (CAP_NET_ADMIN could flush the namespace's nftables table).
        steps[:0] = [plane.enter]
    from agentd.kernel.capabilities import BoundingDrop
    # Without the plane a root agent shares the host's network namespace: without
    # CAP_NET_ADMIN its netlink messages can read the network state, never change it.
    steps.insert(1 if plane is not None else 0, BoundingDrop())

    def started(pid: int, tracer) -> None:
        recorder.send({"t": "started", "agent_pid": pid})
        registration.update(agent_pid=pid)
        if plane is not None:
            plane.attach(tracer)

    try:
        status = runner.supervise(plan.argv, policy, session, profile=plan.seccomp_profile,
                                  env=env, on_started=started, child_steps=steps,
                                  on_syscall=timed)
    except FileNotFoundError as exc:
        os.write(2, f"agentd run: {exc}\n".encode())
        return 127 << 8, False
    finally:
        if plane is not None:
            plane.close()
    return status, session.killed


def _registration_base():
    from agentd.run.registry import RunRegistration
    return RunRegistration


class _DaemonRegistration(_registration_base()):  # type: ignore[misc]
    """A daemon run's registration: the terminal prompt is offered only to root's runs (an
    ordinary user must not approve their own agent's held action; an administrator does)."""

    may_prompt = False

    def wait_for_decision(self, prompt):
        if prompt is not None and not self.may_prompt:
            os.write(2, f"\nagentd: run {self.run_id} is HELD for review by an administrator "
                     f"(agentd ps; agentd resume {self.run_id} --allow|--deny)\n".encode())
            prompt = None
        return super().wait_for_decision(prompt)


def _review_base():
    from agentd.run.registry import OperatorReview
    return OperatorReview


class _FreezingReview(_review_base()):  # type: ignore[misc]
    """The SIGSTOP verdict under the daemon: once the tracer has parked the agent, also freeze
    the run's cgroup, so nothing of the agent runs until the decision; thaw before resuming."""

    def __init__(self, registration, cgroup_procs: str | None):
        super().__init__(registration)
        self.freeze_path = (os.path.join(os.path.dirname(cgroup_procs), "cgroup.freeze")
                            if cgroup_procs else None)

    def _set_frozen(self, value: str) -> None:
        if self.freeze_path is None:
            return
        try:
            fd = os.open(self.freeze_path, os.O_WRONLY)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            logging.getLogger("agentd.daemon").warning("cgroup freeze=%s: %s", value, exc)

    def __call__(self, hold) -> tuple[str, str]:
        self._set_frozen("1")
        try:
            return super().__call__(hold)
        finally:
            self._set_frozen("0")


def run_daemon(config: DaemonConfig) -> None:
    """``agentd daemon``: serve until SIGTERM."""
    setup_logging()
    if os.geteuid() != 0:
        log.warning("not running as root: agents can run only as uid %d", os.geteuid())
    if config.network == "plane":
        # Once here rather than in every forked supervisor: pyroute2, dnspython and asyncio
        # cost ~120 ms to import, more than building the plane itself (~55 ms).
        import agentd.netplane.plane  # noqa: F401
    Daemon(config).serve()
