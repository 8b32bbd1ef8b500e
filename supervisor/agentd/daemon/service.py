"""``agentd daemon``: the root service's event loop, which launches and tracks agents for users.

Owns the loop and the table of runs. One single-threaded loop (``selectors``; signals arrive
through ``signal.set_wakeup_fd``, no polling) serves the control socket (one request a line,
read with ``protocol``; callers identified by SO_PEERCRED / SO_PEERGROUPS, never by what they
say), the record pipes of the per-run supervisors (audit records: the daemon is the single writer
of the hash-chained FlightRecorder) and systemd's notify protocol (``systemd``: READY, STATUS,
WATCHDOG). A run request is checked against the grants and the policies (``policy_store``); the
run gets its cgroup (``cgroups.RunCgroup``) and a forked supervisor (``supervisor``) that traces
the agent as the caller. ``reload``/SIGHUP validates every policy first and swaps all or nothing;
each running supervisor whose policy changed is told the new snapshot (control pipe + SIGUSR1).
When a supervisor's pipe closes, what is left in the run's cgroup is killed and the client gets
the exit status. An exception while serving one client or one run is logged and the loop goes
on.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import select
import selectors
import signal
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, assert_never

from pydantic import BaseModel

from . import protocol as wire
from .config import DaemonConfig
from .policy_store import PolicyEntry, PolicyStore
from .protocol import PROTOCOL_LIMIT
from .supervisor import SupervisorPlan, fork_supervisor, switch_message
from .systemd import sd_notify, setup_logging

if TYPE_CHECKING:  # imported where used: the client's side of this package never needs them
    from agent_os.flight_recorder import FlightRecorder
    from agentd.kernel.cgroups import CgroupTree, RunCgroup

__all__ = ["Run", "Daemon", "run_daemon", "PROTOCOL_LIMIT"]

log = logging.getLogger("agentd.daemon.service")

SO_PEERGROUPS = 59  # Linux 4.13; not in Python's socket module
COMPILED_POLICIES = 32  # kept compiled for later runs (a few workspaces of a few users)

_Reply = TypeVar("_Reply", bound=wire.Reply)


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
    record_fd: int  # read end: audit records and events from the supervisor
    control_fd: int  # write end: policy switches to the supervisor
    cgroup: RunCgroup | None = None  # None: the daemon runs without cgroups
    client: Connection | None = None  # the requesting Connection while it stays
    agent_pid: int | None = None
    state: str = "running"  # running | held | frozen | exited
    started: float = field(default_factory=time.time)
    records: int = 0
    buffer: bytes = b""
    exit_code: int | None = None
    supervisor_status: int | None = None  # its wait status, once reaped before the run ended
    reported_records: int | None = None
    stats: dict = field(default_factory=dict)  # the supervisor's CPU, RSS, latencies


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
    confined: str | None = None  # why this peer is itself a supervised agent, if it is


def _peer(sock: socket.socket) -> tuple[int, int, int, list[int]]:
    pid, uid, gid = struct.unpack(
        "3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    )
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
        self.selector = selectors.DefaultSelector()
        self.recorder: FlightRecorder | None = None  # opened by start()
        self.cgroups: CgroupTree | None = None  # None: without per-agent cgroups
        self.listener: socket.socket | None = None
        self._wake: tuple[socket.socket, ...] = ()  # the signal wake-up pair, from start()
        self.running = False
        self.counter = 0
        # policies compiled with a run's variables, by (path, version, policy dir, variables)
        self.compiled_policies: dict[tuple, Any] = {}
        self.started = time.time()
        self.watchdog_interval: float | None = None
        self.last_watchdog = 0.0

    # -- start and stop ------------------------------------------------------------------
    def start(self) -> None:
        from agent_os.flight_recorder import FlightRecorder
        from agentd.kernel import cgroups

        self.store.load()
        log.info(
            "policies loaded: %s",
            ", ".join(f"{e.name}@{e.version}" for e in self.store.entries.values()),
        )
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
        self.recorder = FlightRecorder(
            audit.path, fsync=audit.fsync, fsync_interval=audit.fsync_interval
        )
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
            signal.signal(sig, lambda *_: None)  # the number arrives on the wakeup fd
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
        for end in self._wake:
            end.close()
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
                    self._signals(self._wake[0])  # key.fileobj, as the socket it is
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
                if run.supervisor_pid == pid:
                    run.supervisor_status = status  # _finish says how it ended, if it matters

    def _status(self) -> None:
        held = sum(1 for r in self.runs.values() if r.state == "held")
        sd_notify(
            f"STATUS={len(self.runs)} agent(s) running, {held} held; "
            f"{len(self.store.entries)} policies",
            self.environ,
        )

    # -- clients -------------------------------------------------------------------------
    def _accept(self) -> None:
        listener = self.listener
        assert listener is not None  # the selector has it only once start() bound it
        while True:
            try:
                sock, _ = listener.accept()
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
            mine = self.cgroups.base[len(self.cgroups.mount) :]
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
        if len(conn.fds) > 3:  # a run needs three; more is someone trying to exhaust our fds
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
        log.warning(
            "malformed request from uid %d (pid %d): %s; connection closed", conn.uid, conn.pid, why
        )
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
            _send(
                conn.sock,
                wire.Reply(ok=False, error=f"agents may not use the daemon: {conn.confined}"),
            )
            return
        try:
            reply = self._dispatch(conn, request)
        except Exception as exc:  # noqa: BLE001 - the caller gets the error, the daemon lives
            log.exception("op %s from uid %d failed", op, conn.uid)
            reply = wire.Reply(ok=False, error=f"{op} failed: {exc}")
        if reply is not None:
            _send(conn.sock, reply)

    def _dispatch(self, conn: Connection, request: wire.Request) -> wire.Reply | None:
        """The operation's answer; None for ``signal``, which has none."""
        match request:
            case wire.RunRequest():
                return self._op_run(conn, request)
            case wire.PsRequest():
                return self._op_ps(conn, request)
            case wire.StopRequest():
                return self._op_stop(conn, request)
            case wire.ResumeRequest():
                return self._op_resume(conn, request)
            case wire.KillRequest():
                return self._op_kill(conn, request)
            case wire.ReloadRequest():
                return self._op_reload(conn, request)
            case wire.StatusRequest():
                return self._op_status(conn, request)
            case wire.SignalRequest():
                self._op_signal(conn, request)
                return None
        assert_never(request)  # mypy: every request model of ``wire.Request`` has its case

    # -- operations ----------------------------------------------------------------------
    def _op_status(self, conn: Connection, request: wire.StatusRequest) -> wire.StatusReply:
        return wire.StatusReply(
            ok=True,
            pid=os.getpid(),
            uptime=time.time() - self.started,
            runs=len(self.runs),
            audit_log=self.config.audit.path,
            cgroups=self.cgroups.base if self.cgroups else None,
            policies={e.name: e.version for e in self.store.entries.values()},
        )

    def _op_reload(self, conn: Connection, request: wire.ReloadRequest) -> wire.ReloadReply:
        if conn.uid != 0:
            return wire.ReloadReply(ok=False, error="only root may reload policies")
        return self.reload(who=f"uid {conn.uid}")

    def reload(self, who: str) -> wire.ReloadReply:
        try:
            changed = self.store.load()
        except ValueError as exc:
            log.error("reload by %s rejected; the previous policies stay:\n%s", who, exc)
            return wire.ReloadReply(
                ok=False, error=f"reload rejected, the previous policies stay:\n{exc}"
            )
        log.info(
            "reload by %s: %s",
            who,
            ", ".join(f"{n} {o}->{v}" for n, (o, v) in changed.items()) or "nothing changed",
        )
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
        try:
            os.write(run.control_fd, switch_message(entry, snapshot))
            os.kill(run.supervisor_pid, signal.SIGUSR1)
        except BlockingIOError:
            log.warning(
                "run %s: cannot switch policy: its supervisor has not read the last "
                "switches (its agent made no syscall the tracer stops at since)",
                run.run_id,
            )
            return
        except OSError as exc:
            log.warning("run %s: cannot switch policy: %s", run.run_id, exc)
            return
        run.version = entry.version

    def _find(self, conn: Connection, run_id: str, refusal: type[_Reply]) -> Run | _Reply:
        """The caller's run ``run_id``, or the op's reply (``refusal``) saying why not. The
        error fields are all it sets, so on the wire it is the same line whatever the op."""
        run = self.runs.get(run_id)
        if run is None:
            return refusal(ok=False, error=f"no daemon run {run_id!r}", unknown=True)
        if conn.uid not in (0, run.uid):
            return refusal(ok=False, error=f"run {run.run_id} is not yours")
        return run

    def _held_info(self, run: Run) -> wire.HeldInfo | None:
        try:
            with open(
                os.path.join(self.config.runs_dir, f"{run.run_id}.json"), encoding="utf-8"
            ) as handle:
                info = json.load(handle)
            if info.get("state") != "held" or not info.get("held"):
                return None
            return wire.HeldInfo.model_validate(info["held"])
        except (OSError, ValueError):  # ValueError: JSON, or pydantic's ValidationError
            return None

    def _op_ps(self, conn: Connection, request: wire.PsRequest) -> wire.PsReply:
        runs = []
        for run in self.runs.values():
            if conn.uid not in (0, run.uid):
                continue
            held = self._held_info(run)
            state = "held" if held else run.state
            if run.cgroup is not None and state == "running" and run.cgroup.frozen:
                state = "frozen"
            runs.append(
                wire.RunInfo(
                    run_id=run.run_id,
                    user=run.user,
                    uid=run.uid,
                    policy=run.policy,
                    version=run.version,
                    mode=run.mode,
                    supervisor_pid=run.supervisor_pid,
                    agent_pid=run.agent_pid,
                    pids=run.cgroup.pids()
                    if run.cgroup
                    else ([run.agent_pid] if run.agent_pid else []),
                    state=state,
                    held=held,
                    command=run.command,
                    started=run.started,
                    records=run.records,
                )
            )
        return wire.PsReply(ok=True, runs=runs)

    def _op_stop(self, conn: Connection, request: wire.StopRequest) -> wire.StopReply:
        run = self._find(conn, request.run_id, wire.StopReply)
        if isinstance(run, wire.Reply):
            return run
        if run.cgroup is None:
            return wire.StopReply(ok=False, error="this daemon runs without cgroups: cannot freeze")
        frozen = run.cgroup.freeze(wait=2.0)
        run.state = "frozen"
        log.info("run %s frozen by uid %d", run.run_id, conn.uid)
        return wire.StopReply(ok=True, state="frozen" if frozen else "freezing")

    def _op_resume(self, conn: Connection, request: wire.ResumeRequest) -> wire.ResumeReply:
        from agentd.run import registry as control

        run = self._find(conn, request.run_id, wire.ResumeReply)
        if isinstance(run, wire.Reply):
            return run
        decision = request.decision
        if self._held_info(run) is not None:
            if decision is None:
                return wire.ResumeReply(
                    ok=False, error=f"run {run.run_id} is held for review: say --allow or --deny"
                )
            if decision == "allow" and conn.uid != 0:
                return wire.ResumeReply(
                    ok=False,
                    error="only root may allow a held action of "
                    "a daemon run (the owner may --deny or kill)",
                )
            answer = control.send_decision(run.run_id, decision, self.config.runs_dir)
            log.info("run %s: %s by uid %d", run.run_id, decision, conn.uid)
            return wire.ResumeReply.model_validate(answer)
        if run.cgroup is not None and run.state == "frozen":
            run.cgroup.thaw()
            run.state = "running"
            return wire.ResumeReply(ok=True, state="running")
        return wire.ResumeReply(ok=False, error=f"run {run.run_id} is neither held nor frozen")

    def _op_kill(self, conn: Connection, request: wire.KillRequest) -> wire.KillReply:
        run = self._find(conn, request.run_id, wire.KillReply)
        if isinstance(run, wire.Reply):
            return run
        self._kill_run(run, f"agentd kill by uid {conn.uid}")
        return wire.KillReply(ok=True)

    def _op_signal(self, conn: Connection, request: wire.SignalRequest) -> None:
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
    def _op_run(self, conn: Connection, request: wire.RunRequest) -> wire.RunReply:
        fds, conn.fds = conn.fds, []
        try:
            entry, refusal = self._grant(conn, request, fds)
            if entry is None:
                return wire.RunReply(ok=False, error=refusal)
            return self._launch(conn, request, entry, fds)
        finally:
            for fd in fds:
                os.close(fd)

    def _grant(
        self, conn: Connection, request: wire.RunRequest, fds: list[int]
    ) -> tuple[PolicyEntry | None, str]:
        """The policy a run request is granted, or (None, why it is refused)."""
        if conn.run is not None:
            return None, "one run per connection"
        if len(fds) != 3:
            return None, "send stdin, stdout and stderr (SCM_RIGHTS) with run"
        policy_name = request.policy or "strict"
        for option in ("audit_log", "seccomp_profile"):
            if getattr(request, option):
                return None, (
                    f"--{option.replace('_', '-')} is not available under the daemon "
                    "(its configuration decides); use --embedded"
                )
        if len(self.runs) >= self.config.max_runs:
            return None, f"the daemon runs {len(self.runs)} agents already"
        entry = self.store.entries.get(policy_name)
        if entry is None:
            if conn.uid == 0 and "/" in policy_name and os.path.isfile(policy_name):
                entry = PolicyEntry.from_file(policy_name)
            else:
                return None, (
                    f"unknown policy {policy_name!r}; the daemon knows: "
                    f"{', '.join(sorted(self.store.entries))}"
                )
        refusal = self.config.may_launch(
            conn.uid, {conn.gid, *conn.groups}, policy_name, request.mode
        )
        if refusal:
            log.warning("refused run for uid %d: %s", conn.uid, refusal)
            return None, refusal
        return entry, ""

    def _launch(
        self, conn: Connection, request: wire.RunRequest, entry: PolicyEntry, fds: list[int]
    ) -> wire.RunReply:
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
        plan = SupervisorPlan(
            run_id=run_id,
            agent_id=agent_id,
            argv=argv,
            env=dict(request.env),
            cwd=cwd,
            workspace=workspace,
            uid=conn.uid,
            gid=conn.gid,
            groups=sorted(set(conn.groups)),
            home=home,
            user=user_name,
            policy=entry,
            mode=mode,
            policy_dir=self.config.policy_dir,
            runs_dir=self.config.runs_dir,
            audit_path=self.config.audit.path,
            seccomp_profile=self.config.seccomp_profile,
            cgroup_procs=cgroup.join_path() if cgroup else None,
            network=self.config.network,
            dns_upstream=",".join(self.config.dns_upstream),
        )
        plan.compiled = self._compiled(plan)
        pid, record_r, control_w = fork_supervisor(plan, fds)
        run = Run(
            run_id,
            conn.uid,
            conn.gid,
            plan.groups,
            user_name,
            entry.name,
            entry.version,
            mode,
            argv,
            pid,
            record_r,
            control_w,
            cgroup=cgroup,
            client=conn,
        )
        conn.run = run
        self.runs[run_id] = run
        self.selector.register(record_r, selectors.EVENT_READ, run)
        log.info(
            "run %s: uid %d (%s) launched %s under %s@%s",
            run_id,
            conn.uid,
            user_name,
            argv[0],
            entry.name,
            entry.version,
            extra={"RUN_ID": run_id, "AGENT_UID": conn.uid, "POLICY": entry.name},
        )
        self._status()
        return wire.RunReply(ok=True, run_id=run_id, policy=entry.name, version=entry.version)

    def _compiled(self, plan: SupervisorPlan) -> Any:
        """The run's policy compiled with its variables, kept for the next run with the same
        policy version and variables (an agent's commands in one workspace): each forked
        supervisor inherits it instead of parsing the YAML again (~5 ms a run). None when it
        does not compile: the supervisor compiles it itself and tells the caller why."""
        from .supervisor import compile_policy, policy_variables_of

        key = (
            plan.policy.path,
            plan.policy.version,
            plan.policy_dir,
            tuple(sorted(policy_variables_of(plan).items())),
        )
        policy = self.compiled_policies.pop(key, None)
        if policy is None:
            try:
                policy = compile_policy(plan)
            except Exception:  # noqa: BLE001 - the supervisor compiles again and says why
                return None
        self.compiled_policies[key] = policy  # the newest last: evicted last
        while len(self.compiled_policies) > COMPILED_POLICIES:
            del self.compiled_policies[next(iter(self.compiled_policies))]
        return policy

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
                log.warning(
                    "run %s supervisor: %s",
                    run.run_id,
                    message.get("msg"),
                    extra={"RUN_ID": run.run_id},
                )

    def _write_record(self, run: Run, fields: dict) -> None:
        recorder = self.recorder
        try:
            # Runs exist only once start() opened the log. Checked inside the try so that, were
            # it ever missing, the run is killed like any other run that cannot be recorded.
            if recorder is None:
                raise RuntimeError("no audit log is open")
            recorder.record(**fields)
        except Exception as exc:  # INVARIANT: an agent that cannot be recorded does not run
            log.error("run %s: audit record failed (%s): killing the agent", run.run_id, exc)
            self._kill_run(run, "the audit log cannot be written")
            return
        run.records += 1
        rotate = self.config.audit.rotate_bytes
        if rotate and recorder._size >= rotate:  # noqa: SLF001 - size is tracked there
            try:
                rotated = recorder.rotate()
                log.info("audit log rotated to %s", rotated)
            except Exception:  # noqa: BLE001
                log.exception("audit log rotation failed")

    def _finish(self, run: Run) -> None:
        self.selector.unregister(run.record_fd)
        os.close(run.record_fd)
        os.close(run.control_fd)
        run.state = "exited"
        if run.cgroup is not None:
            run.cgroup.kill()  # INVARIANT: nothing of an agent outlives its supervisor
            run.cgroup.remove()
        if run.exit_code is None:
            self._log_lost_supervisor(run)
        code = run.exit_code if run.exit_code is not None else 128 + signal.SIGKILL
        if run.reported_records is not None and run.reported_records != run.records:
            log.error(
                "run %s: %d records sent, %d written", run.run_id, run.reported_records, run.records
            )
        log.info(
            "run %s: ended with status %d (%d records)",
            run.run_id,
            code,
            run.records,
            extra={"RUN_ID": run.run_id},
        )
        self.runs.pop(run.run_id, None)
        if run.client is not None:
            _send(
                run.client.sock, wire.RunExit(exit=code, records=run.records, supervisor=run.stats)
            )
            client, run.client = run.client, None
            client.run = None
            self._drop(client)
        self._status()

    def _log_lost_supervisor(self, run: Run) -> None:
        """A supervisor that never sent its exit line (killed, crashed): say how it ended, before
        the client gets 137, so that this is told apart from a SIGKILL verdict. Its record pipe is
        closed, so it has exited or is exiting: its status is waited for, but at most
        ``LOST_SUPERVISOR_WAIT`` seconds, so the daemon's loop never hangs on a supervisor that
        closed the pipe and lingers (the SIGCHLD handler reaps that one later)."""
        status = run.supervisor_status
        if status is None:
            status = _wait_briefly(run.supervisor_pid, LOST_SUPERVISOR_WAIT)
        if status is None:
            how = "ended"
        elif os.WIFSIGNALED(status):
            how = f"died of signal {os.WTERMSIG(status)}"
        else:
            how = f"exited with status {os.waitstatus_to_exitcode(status)}"
        log.error(
            "run %s: supervisor %d %s before reporting the agent's status",
            run.run_id,
            run.supervisor_pid,
            how,
            extra={"RUN_ID": run.run_id},
        )


LOST_SUPERVISOR_WAIT = 1.0  # seconds


def _wait_briefly(pid: int, timeout: float) -> int | None:
    """``pid``'s wait status once it exits within ``timeout`` seconds (a pidfd polled, no
    sleeps), else None; None too when it was reaped elsewhere."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:  # gone and reaped already
        return None
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(int(timeout * 1000)):
            return None
        reaped, status = os.waitpid(pid, os.WNOHANG)
        return status if reaped == pid else None
    except ChildProcessError:
        return None
    finally:
        os.close(pidfd)


def run_daemon(config: DaemonConfig) -> None:
    """``agentd daemon``: serve until SIGTERM."""
    setup_logging()
    if os.geteuid() != 0:
        log.warning("not running as root: agents can run only as uid %d", os.geteuid())
    if config.network == "plane":
        # Once here rather than in every forked supervisor: pyroute2, dnspython and asyncio
        # cost ~120 ms to import, more than building the plane itself (~55 ms). dnspython is
        # imported by the stub at its first query (netplane/dns.py): here, ahead of it.
        import agentd.netplane.plane  # noqa: F401
        from agentd.netplane.dns import warm_up

        warm_up()
    # The seccomp filter of every run, compiled once here, and the modules a run imports late:
    # each forked supervisor finds them ready.
    from agentd.run.assembly import warm_imports
    from agentd.run.supervise import warm_filter

    warm_filter(config.seccomp_profile)
    warm_imports()
    Daemon(config).serve()
