"""``agentd run`` without root: the user namespace plane (issue 6), in a world the test builds.

The test makes a network namespace ``world`` (loopback only, no route anywhere) and runs
``agentd run`` in it as uid 65534 (``setpriv``), so the supervisor's "host" is that namespace:
a fake DNS upstream and an HTTP server listen on its 127.0.0.1 (random ports), and a listener
on 192.0.2.1:80 stands for "anywhere else". agentd's child makes the agent a user + network
namespace of its own (loopback only) where the DNS stub and the proxy have sockets; each verdict
is checked by what the servers saw, and by the audit log. Nothing can leave the machine even if
the sandbox failed: the world has no route out. Also unit tests of the detection of hosts that
refuse unprivileged user namespaces (injected /proc values) and of the fallback it leads to.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from agentd.run import standalone as run_main
from agentd.netplane import plane as plane_module
from agentd.netplane.userns import (FALLBACK_NAMESERVER, namespace_nameservers,
                                    userns_unavailable)
from helpers import networld
from helpers.agentd_run import AGENTD, PYTHON, deny, read_records, tracing_unavailable, write_policy

ELSEWHERE = "192.0.2.1"       # TEST-NET-1, on the world's loopback: "a host out there"
NAME = "www.example.test"     # the fake upstream answers 127.0.0.1 (the world's web server)
LAYERS = str(Path(__file__).parent / "data" / "landlock_layers.py")


# -- detection and fallback (no namespace needed) -----------------------------------------------

def _reader(values: dict[str, str]):
    return lambda path: values.get(path)


def test_a_host_without_the_switches_allows_user_namespaces():
    assert userns_unavailable(_reader({})) is None
    assert userns_unavailable(_reader({"/proc/sys/user/max_user_namespaces": "96365",
                                       "/proc/sys/kernel/unprivileged_userns_clone": "1",
                                       "/proc/sys/kernel/apparmor_restrict_unprivileged_userns": "0"})) is None


@pytest.mark.parametrize("path, value, named", [
    ("/proc/sys/kernel/unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone = 0"),
    ("/proc/sys/user/max_user_namespaces", "0", "user.max_user_namespaces = 0"),
    ("/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1",
     "kernel.apparmor_restrict_unprivileged_userns = 1"),
])
def test_each_refusing_switch_is_named(path, value, named):
    assert named in userns_unavailable(_reader({path: value}))


def test_the_namespace_listens_where_resolv_conf_points(tmp_path):
    conf = tmp_path / "resolv.conf"
    conf.write_text("search x\nnameserver 10.255.255.53\nnameserver ::1\nnameserver 127.0.0.53\n"
                    "nameserver 10.255.255.53\n")
    assert namespace_nameservers(str(conf)) == ["10.255.255.53", "127.0.0.53"]
    conf.write_text("nameserver 2001:db8::53\n")
    assert namespace_nameservers(str(conf)) == [FALLBACK_NAMESERVER]
    assert namespace_nameservers(str(tmp_path / "missing")) == [FALLBACK_NAMESERVER]


@pytest.mark.skipif(shutil.which("unshare") is None or userns_unavailable() is not None,
                    reason="needs unshare (util-linux) and user namespaces")
def test_the_probe_names_what_stops_the_namespace():
    """What /proc does not show is found by trying: here a user namespace whose own limit of
    nested user namespaces is 0 (set by its root, as a container might), where unshare fails."""
    code = ("from agentd.netplane.userns import NamespaceHandoff\n"
            "print(NamespaceHandoff(['192.0.2.53']).probe())")
    result = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c",
         f"echo 0 > /proc/sys/user/max_user_namespaces && exec {PYTHON} -c \"$0\"", code],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "unshare(CLONE_NEWUSER|CLONE_NEWNET): No space left on device" in result.stdout, \
        result.stdout
    here = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, timeout=60)
    assert here.stdout.strip() == "None", (here.stdout, here.stderr)


class _Session:
    agent_id = "unit"


def test_a_host_that_refuses_user_namespaces_falls_back_with_the_reason(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 65534)
    monkeypatch.setattr(plane_module, "userns_unavailable",
                        lambda: "user.max_user_namespaces = 0 (no user namespace may be created)")
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    assert run_main._start_plane("auto", None, _Session(), "r1") is None
    said = stderr.getvalue()
    assert "warning: no network plane" in said and "needs root" in said, said
    assert "user.max_user_namespaces = 0" in said, said
    with pytest.raises(SystemExit) as refused:
        run_main._start_plane("plane", None, _Session(), "r1")
    assert refused.value.code == 125
    assert "--network plane" in stderr.getvalue()


# -- the real thing ----------------------------------------------------------------------------

def _skip_reason() -> str | None:
    if tracing_unavailable():
        return tracing_unavailable()
    if os.geteuid() != 0:
        return "needs root to build the test's world namespace and to become uid 65534"
    if not (shutil.which("ip") and shutil.which("setpriv")):
        return "needs iproute2 and setpriv (util-linux)"
    if userns_unavailable():
        return f"this host refuses unprivileged user namespaces: {userns_unavailable()}"
    return None


needs_world = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


@pytest.fixture(scope="module")
def world():
    with networld.world("agentd-userns", (ELSEWHERE,), (
            ("web", "127.0.0.1", 0, socket.SOCK_STREAM, networld.serve_http),
            ("elsewhere", ELSEWHERE, 80, socket.SOCK_STREAM, networld.serve_http),
            ("dns", "127.0.0.1", 0, socket.SOCK_DGRAM,
             networld.dns_server({NAME: "127.0.0.1"})))) as built:
        yield built


AGENT = r'''
import ctypes, json, os, socket, sys, urllib.request, urllib.error
results = {}
def attempt(key, fn):
    try:
        results[key] = ["ok", fn()]
    except urllib.error.HTTPError as exc:
        results[key] = ["http", exc.code, exc.headers.get("X-Agentd-Pattern")]
    except OSError as exc:
        results[key] = ["error", type(exc).__name__, exc.errno, str(exc)[:200]]
def get(url):
    with urllib.request.urlopen(url, timeout=10) as response:
        return [response.status, response.read().decode()]
def resolve(name):
    return sorted({info[4][0] for info in socket.getaddrinfo(name, 80, socket.AF_INET)})
def raw(address, port):
    with socket.create_connection((address, port), timeout=5) as s:
        s.sendall(b"GET /raw HTTP/1.0\r\n\r\n")
        return s.recv(100).decode(errors="replace")
def write(path):
    with open(path, "w") as f:
        f.write("x")
    return "written"
def new_userns():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x10000000) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return "unshared"
def tracer():
    with open("/proc/self/status") as f:
        return {k: v.strip() for k, v in (l.split(":", 1) for l in f) if k in ("TracerPid", "Seccomp", "Uid")}
steps = {"get": get, "resolve": resolve, "raw": raw, "write": write, "new_userns": new_userns,
         "tracer": tracer}
for kind, key, *args in json.loads(sys.argv[1]):
    attempt(key, lambda: steps[kind](*args))
print("RESULTS " + json.dumps(results))
'''


@pytest.fixture
def shared():
    """A directory uid 65534 can use (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="agentd-userns-", dir="/tmp"))
    os.chmod(path, 0o777)
    (path / "agent.py").write_text(AGENT)
    shutil.copy(LAYERS, path / "layers.py")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_as_nobody(world, shared: Path, policy: str, command: list[str], *options):
    log = shared / f"audit-{os.urandom(3).hex()}.jsonl"
    env = {key: value for key, value in os.environ.items()
           if key.lower() not in ("no_proxy", "http_proxy", "https_proxy")}
    argv = ["ip", "netns", "exec", world["name"],
            "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "env",
            f"HOME={shared}", f"AGENTD_RUNS_DIR={shared}/runs",
            AGENTD, "run", "--embedded", "--policy", policy, "--workspace", str(shared),
            "--audit-log", str(log), "--dns-upstream", f"127.0.0.1:{world['ports']['dns']}",
            *options, "--", *command]
    result = subprocess.run(argv, cwd=shared, capture_output=True, text=True, timeout=120, env=env)
    result.records = read_records(log)
    lines = [l for l in result.stdout.splitlines() if l.startswith("RESULTS ")]
    result.results = json.loads(lines[0][len("RESULTS "):]) if lines else None
    return result


@needs_world
def test_names_urls_and_nothing_else_from_an_unprivileged_agent(world, shared):
    servers, port = world["servers"], world["ports"]["web"]
    before = {key: len(seen) for key, seen in servers.items()}
    policy = write_policy(shared, [
        deny("no_denied_paths", "network_request", r".*/denied.*"),
        deny("no_forbidden_file", "file_write", r".*/forbidden\.txt$"),
    ])
    steps = [
        ["tracer", "tracer"],
        ["resolve", "resolve", NAME],
        ["get", "allowed", f"http://{NAME}:{port}/allowed?x=1"],
        ["get", "denied", f"http://{NAME}:{port}/denied"],
        ["raw", "direct", "127.0.0.1", port],
        ["raw", "elsewhere", ELSEWHERE, 80],
        ["write", "forbidden", str(shared / "forbidden.txt")],
        ["new_userns", "new_userns"],
    ]
    result = run_as_nobody(world, shared, str(policy),
                           [PYTHON, str(shared / "agent.py"), json.dumps(steps)],
                           "--network", "plane")
    assert result.results is not None, (result.returncode, result.stdout, result.stderr)
    r = result.results
    assert "user namespace plane (no root)" in result.stderr and "warning" not in result.stderr, \
        result.stderr
    # still traced and seccomp-filtered after the child made its namespace
    assert r["tracer"][0] == "ok" and r["tracer"][1]["TracerPid"] != "0", r
    assert r["tracer"][1]["Seccomp"] == "2" and r["tracer"][1]["Uid"].split()[0] == "65534", r
    # the name went through the stub to the test's upstream
    assert r["resolve"] == ["ok", ["127.0.0.1"]], r
    assert f"{NAME} 1" in servers["dns"].since(before["dns"])
    # the allowed URL reached the server through the proxy; the denied one did not
    assert r["allowed"] == ["ok", [200, "hello from the world\n"]], r
    assert r["denied"][:3] == ["http", 403, "no_denied_paths"], r
    assert [hit.line for hit in servers["web"].since(before["web"])] == ["GET /allowed?x=1 HTTP/1.1"]
    # the supervisor's loopback and every other address are out of the agent's namespace
    assert r["direct"][0] == "error" and r["direct"][2] in (111, 101), r   # ECONNREFUSED/ENETUNREACH
    assert r["elsewhere"][0] == "error" and r["elsewhere"][2] == 101, r     # ENETUNREACH
    assert servers["elsewhere"].since(before["elsewhere"]) == []
    # the tracer still judges files, and the seccomp baseline still refuses namespaces
    assert r["forbidden"][0] == "error" and not (shared / "forbidden.txt").exists(), r
    assert r["new_userns"][:3] == ["error", "PermissionError", 1], r
    assert result.returncode == 0, result.stderr
    # the audit log has the query and the requests
    kinds = {(rec["action_type"], rec["target"], rec["decision"]) for rec in result.records}
    assert ("dns_query", f"{NAME} A", "allow") in kinds, kinds
    assert ("network_request", f"http://{NAME}:{port}/allowed?x=1", "allow") in kinds, kinds
    assert ("network_request", f"http://{NAME}:{port}/denied", "deny") in kinds, kinds
    assert any(a == "file_write" and t.endswith("/forbidden.txt") and d == "deny"
               for a, t, d in kinds), kinds


@needs_world
def test_strict_reaches_its_own_stub_and_proxy_and_keeps_landlock(world, shared):
    """strict blocks private and loopback addresses at connect(); the plane's endpoints inside
    the agent's namespace are exempt, so names resolve and the proxy answers (403 for plain
    http://, strict's rule) instead of the tracer refusing the connect. Landlock is applied
    after the namespace step (one layer used: 15 of 16 left)."""
    servers, port = world["servers"], world["ports"]["web"]
    before = len(servers["web"])
    steps = [["resolve", "resolve", NAME], ["get", "plain_http", f"http://{NAME}:{port}/"]]
    result = run_as_nobody(world, shared, "strict",
                           [PYTHON, str(shared / "agent.py"), json.dumps(steps)], "--network", "auto")
    assert result.results is not None, (result.returncode, result.stdout, result.stderr)
    r = result.results
    assert "user namespace plane" in result.stderr, result.stderr   # auto picks it
    assert r["resolve"] == ["ok", ["127.0.0.1"]], r
    assert r["plain_http"][:2] == ["http", 403] and r["plain_http"][2], r
    assert servers["web"].since(before) == []
    layers = run_as_nobody(world, shared, "strict", [PYTHON, str(shared / "layers.py")],
                           "--network", "plane")
    assert layers.returncode == 0, layers.stderr
    assert "layers added 15" in layers.stdout, (layers.stdout, layers.stderr)
    assert "user namespace plane" in layers.stderr, layers.stderr


@needs_world
def test_a_supervisor_that_cannot_serve_the_sockets_stops_the_child(monkeypatch, capfd):
    """Fail closed: the child goes on only after the acknowledgement. Here the stub cannot be
    built in the supervisor, so the child (forked by the test, as ``spawn_traced`` would) gets
    no acknowledgement and fails with the reason, and the supervisor says why."""
    def broken_stub(*args, **kwargs):
        for sock in kwargs.get("sockets", ()):
            sock.close()
        raise OSError("the test broke the DNS stub")

    monkeypatch.setattr(plane_module, "DnsStub", broken_stub)
    plane = plane_module.UsernsPlane.start(_Session(), "r1", upstream=[],
                                           nameservers=["192.0.2.53"])
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            plane.enter()
        except BaseException as exc:  # noqa: BLE001
            os.write(2, f"child: {exc}\n".encode())
            code = 126
        os._exit(code)
    plane.started(pid)
    _, status = os.waitpid(pid, 0)
    plane.close()
    assert os.waitstatus_to_exitcode(status) == 126
    err = capfd.readouterr().err
    assert "cannot start the user namespace plane: the test broke the DNS stub" in err, err
    assert "waiting for the supervisor's DNS stub and proxy" in err, err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a network namespace")
def test_the_stub_may_listen_at_its_upstream_address_in_another_namespace():
    """The agent's namespace holds the host's nameserver address (a /32 on its lo); the stub's
    socket there is no loop to the upstream of the same address, asked from the supervisor's
    namespace. The same address in the supervisor's own namespace still is one."""
    from agentd.netplane.dns import DnsStub, DnsStubError

    def make_inside():
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x40000000) != 0:      # this thread only: CLONE_NEWNET
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)   # runs in our netns
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 53))
        return sock

    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(sock=make_inside()))
    thread.start()
    thread.join()
    stub = DnsStub(sockets=[box["sock"]], upstream=[("127.0.0.1", 53)])
    stub.close()
    here = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    here.bind(("127.0.0.1", 0))
    with pytest.raises(DnsStubError, match="a loop"):
        DnsStub(sockets=[here], upstream=[("127.0.0.1", here.getsockname()[1])])
