"""``agentd run --network plane`` end to end, in a world the test builds and nothing leaves.

The test creates a network namespace ``host`` and runs ``agentd run`` inside it, so the
supervisor's "host side" is that namespace: it has only loopback, which also holds the
addresses of a simulated world (a public-looking web server on 198.51.100.1, a DNS server on
198.51.100.53, a private service on 10.9.0.1, the cloud metadata address 169.254.169.254), and
no route anywhere else. The servers are sockets bound inside that namespace and served by
threads of this test, which record what they saw. The agent runs in its own namespace made by
agentd (a veth to ``host``), resolves names through agentd's DNS stub (upstream: the test's DNS
server) and reaches the web through agentd's proxy. Each verdict is checked by what the servers
saw, and by the audit log.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from agentd.netplane.userns import userns_unavailable
from helpers import networld
from helpers.agentd_run import AGENTD, PYTHON, needs_tracing, read_records

pytestmark = [needs_tracing, pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None or shutil.which("ip") is None,
    reason="the network plane needs root, nftables and iproute2")]

# PUBLIC is a real public address (GitHub's, as in the issue): it is assigned to the test's own
# namespace, which has no route out, so nothing addressed to it can leave the machine.
PUBLIC, DNS_SERVER, PRIVATE, METADATA = "140.82.112.5", "198.51.100.53", "10.9.0.1", "169.254.169.254"
ZONE = {"api.github.com": PUBLIC, "www.example.org": PUBLIC, "internal.example": PRIVATE,
        "metadata.example": METADATA}


@pytest.fixture(scope="module")
def world():
    with networld.world("agentd-test", (PUBLIC, DNS_SERVER, PRIVATE, METADATA), (
            ("public80", PUBLIC, 80, socket.SOCK_STREAM, networld.serve_http),
            ("public443", PUBLIC, 443, socket.SOCK_STREAM, networld.serve_raw),
            ("private80", PRIVATE, 80, socket.SOCK_STREAM, networld.serve_http),
            ("private22", PRIVATE, 22, socket.SOCK_STREAM, networld.serve_raw),
            ("metadata80", METADATA, 80, socket.SOCK_STREAM, networld.serve_http),
            ("dns", DNS_SERVER, 53, socket.SOCK_DGRAM, networld.dns_server(ZONE)))) as built:
        yield built


AGENT = r'''
import json, socket, sys, urllib.request, urllib.error
results = {}
def attempt(key, fn):
    try:
        results[key] = ["ok", fn()]
    except urllib.error.HTTPError as exc:
        results[key] = ["http", exc.code, exc.headers.get("X-Agentd-Pattern"), exc.read().decode(errors="replace")[:300]]
    except Exception as exc:
        results[key] = ["error", type(exc).__name__, str(exc)[:200], getattr(exc, "errno", None)]
def get(url, method="GET", data=None):
    request = urllib.request.Request(url, method=method, data=data)
    with urllib.request.urlopen(request, timeout=10) as response:
        return [response.status, response.read().decode()]
def resolve(name):
    return sorted({info[4][0] for info in socket.getaddrinfo(name, 443, socket.AF_INET)})
def raw(address, port, payload=b"x"):
    with socket.create_connection((address, port), timeout=5) as s:
        s.sendall(payload.encode() if isinstance(payload, str) else payload)
        s.settimeout(2)
        try:
            return s.recv(400).decode(errors="replace")
        except OSError as exc:
            return "recv: " + type(exc).__name__
for step in json.loads(sys.argv[1]):
    kind, key, *args = step
    attempt(key, lambda: {"get": get, "post": lambda u: get(u, "POST", b"a=1"),
                          "resolve": resolve, "raw": raw}[kind](*args))
print("RESULTS " + json.dumps(results))
'''


def run_plane(world, tmp_path, policy, steps, *extra):
    ws = tmp_path / "ws"
    ws.mkdir(exist_ok=True)
    agent = ws / "agent.py"
    agent.write_text(AGENT)
    log = tmp_path / f"audit-{os.urandom(3).hex()}.jsonl"
    env = dict(os.environ, AGENTD_NETWORK="plane", AGENTD_RUNS_DIR=str(tmp_path / "runs"))
    argv = ["ip", "netns", "exec", world["name"], AGENTD, "run", "--embedded", "--policy", policy,
            "--workspace", str(ws), "--audit-log", str(log), "--dns-upstream", DNS_SERVER, *extra,
            "--", PYTHON, str(agent), json.dumps(steps)]
    result = subprocess.run(argv, cwd=ws, capture_output=True, text=True, timeout=120, env=env)
    line = [l for l in result.stdout.splitlines() if l.startswith("RESULTS ")]
    result.records = read_records(log)
    refused = [f"{r.get('action_type')} {r.get('target')} {r.get('enforced')} {r.get('reason')}"
               for r in result.records if r.get("decision") != "allow"]
    assert line, (f"no results (exit {result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                  + "\n".join(refused[-10:]))
    result.results = json.loads(line[0][len("RESULTS "):])
    return result


def records_of(result, action_type):
    return [r for r in result.records if r.get("action_type") == action_type]


def test_strict_names_urls_and_internal_networks(world, tmp_path):
    servers = world["servers"]
    before = {key: len(seen) for key, seen in servers.items()}
    result = run_plane(world, tmp_path, "strict", [
        ["resolve", "resolve", "api.github.com"],
        ["get", "plain_http", "http://api.github.com/"],
        ["get", "internal", "http://internal.example/"],
        ["raw", "raw_private_ssh", PRIVATE, 22],
        ["raw", "mapped_private_ssh", f"::ffff:{PRIVATE}", 22],
        ["raw", "mapped_private_http", f"::ffff:{PRIVATE}", 80],
    ])
    r = result.results
    assert r["resolve"] == ["ok", [PUBLIC]], r
    # an IPv4-mapped IPv6 address is judged as the IPv4 address it reaches: refused at connect()
    for key in ("mapped_private_ssh", "mapped_private_http"):
        assert r[key][0] == "error" and "Permission denied" in r[key][2], r
    connects = {rec["target"]: rec["decision"] for rec in records_of(result, "network_connect")}
    assert connects.get(f"{PRIVATE}:80") == "deny", connects
    # plaintext HTTP and internal networks: the proxy answers 403 with the pattern id
    assert r["plain_http"][0] == "http" and r["plain_http"][1] == 403, r
    assert r["internal"][0] == "http" and r["internal"][1] == 403, r
    assert r["internal"][2], r   # X-Agentd-Pattern names the deciding pattern
    # a raw connect to a private address: refused at connect() by the tracer
    assert r["raw_private_ssh"][0] == "error", r
    assert servers["public80"].items[before["public80"]:] == []
    assert servers["private80"].items[before["private80"]:] == []
    assert servers["private22"].items[before["private22"]:] == []
    assert servers["metadata80"].items[before["metadata80"]:] == []
    # the DNS stub asked the test's server, and the audit log has the query and the requests
    assert "api.github.com 1" in servers["dns"].items
    assert any(rec["target"].startswith("api.github.com") for rec in records_of(result, "dns_query"))
    denied = {rec["target"] for rec in records_of(result, "network_request") if rec["decision"] == "deny"}
    assert "http://api.github.com/" in denied, denied


def test_strict_kills_an_agent_that_asks_for_cloud_metadata(world, tmp_path):
    servers = world["servers"]
    before = len(servers["metadata80"])
    with pytest.raises(AssertionError, match="exit 137"):
        run_plane(world, tmp_path, "strict", [
            ["get", "metadata", f"http://{METADATA}/latest/meta-data/"]])
    assert servers["metadata80"].items[before:] == []


def test_strict_https_to_a_whitelisted_name_goes_through(world, tmp_path):
    servers = world["servers"]
    before = len(servers["public443"])
    result = run_plane(world, tmp_path, "strict", [
        # urllib sends CONNECT api.github.com:443 to HTTPS_PROXY; the test's server is not TLS,
        # so the handshake fails after the tunnel is up: what matters is who was reached.
        ["get", "whitelisted", "https://api.github.com/"],
        ["get", "other", "https://www.example.org/"],
    ])
    seen = servers["public443"].items[before:]
    assert len(seen) == 1, (seen, result.results)
    assert seen[0].data.startswith(b"\x16\x03"), seen   # a TLS ClientHello came through the tunnel
    assert result.results["other"][0] == "error", result.results   # CONNECT refused: 403
    requests = {rec["target"]: rec["decision"] for rec in records_of(result, "network_request")}
    assert requests.get("https://api.github.com:443/") == "allow", requests
    assert requests.get("https://www.example.org:443/") == "deny", requests


def test_read_only_allows_get_and_refuses_post(world, tmp_path):
    servers = world["servers"]
    before = len(servers["public80"])
    result = run_plane(world, tmp_path, "read_only", [
        ["get", "get", "http://api.github.com/docs?page=1"],
        ["post", "post", "http://api.github.com/repos"],
    ])
    r = result.results
    assert r["get"] == ["ok", [200, "hello from the world\n"]], r
    assert r["post"][0] == "http" and r["post"][1] == 403, r
    seen = servers["public80"].items[before:]
    assert [hit.line for hit in seen] == ["GET /docs?page=1 HTTP/1.1"], seen


def test_transparent_redirect_of_plain_port_80(world, tmp_path):
    """Without the proxy variables, port 80 traffic is redirected to the proxy anyway."""
    servers = world["servers"]
    before = len(servers["public80"])
    request = b"POST /x HTTP/1.1\r\nHost: api.github.com\r\nContent-Length: 0\r\n\r\n"
    result = run_plane(world, tmp_path, "read_only", [
        ["raw", "post_raw", PUBLIC, 80, request.decode()]], )
    assert servers["public80"].items[before:] == [], result.results
    assert "403" in result.results["post_raw"][1], result.results


def test_permissive_records_every_connection(world, tmp_path):
    servers = world["servers"]
    before = len(servers["private22"])
    result = run_plane(world, tmp_path, "permissive", [
        ["get", "get", "http://api.github.com/"],
        ["raw", "other_port", PRIVATE, 22],
        ["raw", "ipv6", "2001:db8::1", 443],
    ])
    assert result.results["get"][0] == "ok", result.results
    # no IPv6 leaves the agent's namespace (docs/network.md: no IPv6 egress)
    assert result.results["ipv6"][0] == "error", result.results
    # a port other than 53/80/443 has no way out of the agent's namespace: refused at once
    assert result.results["other_port"][0] == "error", result.results
    assert servers["private22"].items[before:] == []
    connects = [rec["target"] for rec in records_of(result, "network_connect")]
    assert f"{PRIVATE}:22" in connects, connects
    assert any(t.startswith("api.github.com:") or t.startswith(f"{PUBLIC}:") for t in
               [rec["target"] for rec in records_of(result, "network_connect")]
               + [rec["target"] for rec in records_of(result, "network_request")]), result.records[-5:]


def _as_nobody(tmp_path, network):
    shared = Path(tempfile.mkdtemp(prefix="agentd-nobody-", dir="/tmp"))
    os.chmod(shared, 0o777)
    try:
        argv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "env",
                f"HOME={shared}", f"AGENTD_RUNS_DIR={shared}/runs", f"AGENTD_NETWORK={network}",
                AGENTD, "run", "--embedded", "--policy", "permissive", "--workspace", str(shared),
                "--audit-log", f"{shared}/audit.jsonl", "--", "/bin/echo", "ran"]
        return subprocess.run(argv, cwd=shared, capture_output=True, text=True, timeout=60)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_unprivileged_run_gets_the_user_namespace_plane_or_a_warning(tmp_path):
    """Without root, ``auto`` gives the user namespace plane (tests/test_run_netplane_userns.py);
    the connect()-level fallback with a warning is for hosts that refuse user namespaces."""
    result = _as_nobody(tmp_path, "auto")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ran\n"
    refused = userns_unavailable()
    if refused is None:
        assert "network: user namespace plane (no root)" in result.stderr, result.stderr
        assert "warning" not in result.stderr, result.stderr
    else:
        assert "warning: no network plane" in result.stderr and "needs root" in result.stderr
        assert refused in result.stderr, result.stderr


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_unprivileged_run_that_demands_the_plane(tmp_path):
    """``--network plane`` without root runs in the user namespace plane, and is refused
    (exit 125) only on a host that refuses user namespaces."""
    result = _as_nobody(tmp_path, "plane")
    if userns_unavailable() is None:
        assert result.returncode == 0, result.stderr
        assert result.stdout == "ran\n" and "user namespace plane" in result.stderr
    else:
        assert result.returncode == 125, result.stderr
        assert "--network plane" in result.stderr and result.stdout == ""


LOCAL_SERVER_AGENT = r'''
import http.server, os, threading, urllib.request
server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
threading.Thread(target=server.serve_forever, daemon=True).start()
for host in ("127.0.0.1", "localhost"):
    url = f"http://{host}:{server.server_address[1]}/"
    with urllib.request.urlopen(url, timeout=10) as response:  # honours http_proxy/no_proxy
        print(host, response.status)
print("NO_PROXY", os.environ["NO_PROXY"], os.environ["no_proxy"])
'''


def test_the_agents_own_loopback_servers_are_not_sent_to_the_proxy(world, tmp_path):
    """A test suite's local HTTP server (CPython's test_urllib2_localnet, found by the bench):
    the agent's loopback is its own namespace's, out of the proxy's reach, so the proxy
    variables come with a no-proxy list for it, kept after the caller's own entries."""
    ws = tmp_path / "ws"
    ws.mkdir()
    env = dict(os.environ, AGENTD_NETWORK="plane", AGENTD_RUNS_DIR=str(tmp_path / "runs"),
               NO_PROXY="intranet.example", no_proxy="")
    result = subprocess.run(
        ["ip", "netns", "exec", world["name"], AGENTD, "run", "--embedded", "--policy", "strict",
         "--workspace", str(ws), "--audit-log", str(tmp_path / "a.jsonl"), "--dns-upstream",
         DNS_SERVER, "--", PYTHON, "-c", LOCAL_SERVER_AGENT],
        cwd=ws, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[:2] == ["127.0.0.1 200", "localhost 200"], result.stdout
    assert lines[2] == ("NO_PROXY intranet.example,localhost,127.0.0.1,::1,127.0.0.0/8 "
                        "localhost,127.0.0.1,::1,127.0.0.0/8"), lines[2]
