"""The guest agent in --no-init mode on loopback: control protocol, UDP echo, supervision of the
counter workload, and bad requests (clear error reply, the agent keeps running)."""
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

BUILD = Path(os.environ.get("CRBENCH_BUILD", Path(__file__).resolve().parent.parent / "build"))
AGENT = BUILD / "guest-agent" / "crbench-agent"
COUNTER = BUILD / "scenarios" / "crb-counter"


def free_port(kind):
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call_raw(port, line: bytes, timeout=15.0):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(line)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    assert data.endswith(b"\n"), f"reply not newline-terminated: {data[:200]!r}"
    assert data.count(b"\n") == 1, "one reply per connection"
    return json.loads(data)


class Agent:
    def __init__(self, tmp: Path):
        for b in (AGENT, COUNTER):
            if not b.exists():
                pytest.skip(f"{b} is not built (ninja -C {BUILD})")
        self.state = tmp / "counter.state"
        self.cfg = tmp / "scenario.json"
        self.cfg.write_text(json.dumps({
            "programs": [
                {"name": "counter", "argv": [str(COUNTER), "--hz", "100", "--mib", "1", "--state", str(self.state)],
                 "env": {}, "restart_on_exit": False, "start_delay_s": 0},
                {"name": "flaky", "argv": ["sh", "-c", "exit 3"], "env": {}, "restart_on_exit": False,
                 "start_delay_s": 0},
                {"name": "missing", "argv": ["/nonexistent/prog"], "env": {}, "restart_on_exit": False,
                 "start_delay_s": 0},
            ],
            "digest": [str(COUNTER), "--read", str(self.state)],
        }))
        self.ctl = free_port(socket.SOCK_STREAM)
        self.echo = free_port(socket.SOCK_DGRAM)
        self.log = tmp / "agent.log"
        self.proc = subprocess.Popen(
            [str(AGENT), "--no-init", "--listen", "127.0.0.1", "--echo-port", str(self.echo),
             "--control-port", str(self.ctl), "--config", str(self.cfg)],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.call({"op": "ping"})["ok"]:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"agent did not come up; log:\n{self.log.read_text()}")
            time.sleep(0.05)

    def call(self, req):
        return call_raw(self.ctl, (json.dumps(req) + "\n").encode())

    def wait_for(self, what, pred, timeout=20):
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; log:\n{self.log.read_text()}")
            time.sleep(0.02)

    def close(self):
        if self.proc.poll() is None:
            try:
                self.call({"op": "shutdown"})
                self.proc.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired, AssertionError):
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def agent(tmp_path):
    a = Agent(tmp_path)
    yield a
    a.close()


def test_ping_status_and_supervision(agent):
    r = agent.call({"op": "ping"})
    assert r["ok"] and r["pid"] == agent.proc.pid and r["mode"] == "no-init"
    agent.wait_for("the counter's state file", agent.state.exists)
    agent.wait_for("flaky to exit", lambda: not next(p for p in agent.call({"op": "status"})["programs"]
                                                     if p["name"] == "flaky")["running"])
    progs = {p["name"]: p for p in agent.call({"op": "status"})["programs"]}
    assert progs["counter"]["running"] and progs["counter"]["pid"] > 0
    assert progs["flaky"]["exit"] == 3 and progs["flaky"]["last_exit"] == "exit 3"
    agent.wait_for("missing to be reported", lambda: "error" in next(
        p for p in agent.call({"op": "status"})["programs"] if p["name"] == "missing"))
    missing = next(p for p in agent.call({"op": "status"})["programs"] if p["name"] == "missing")
    assert "exec /nonexistent/prog: No such file" in missing["error"], missing


def test_digest(agent):
    agent.wait_for("the counter's state file", agent.state.exists)
    d = agent.call({"op": "digest"})
    assert d["ok"], d
    names = {p["name"] for p in d["processes"]}
    assert "crbench-agent" in names and "crb-counter" in names
    me = next(p for p in d["processes"] if p["pid"] == agent.proc.pid)
    kinds = {f["kind"] for f in me["fds"]}
    assert "socket" in kinds and "pipe" in kinds, me["fds"]
    assert me["maps"]["count"] > 0 and len(me["maps"]["hash"]) == 16
    assert me["cwd"] and me["limits_hash"]
    assert d["workload"].startswith("count=") and d["workload_exit"] == 0
    assert d["wall_ns"] > 0 and d["mono_ns"] > 0


def test_exec_and_counter_checks(agent):
    agent.wait_for("the counter's state file", agent.state.exists)
    r = agent.call({"op": "exec", "argv": ["sh", "-c", "echo out; echo err >&2; exit 5"]})
    assert r["ok"] and r["exit"] == 5 and r["stdout"] == "out\n" and r["stderr"] == "err\n"
    v = agent.call({"op": "exec", "argv": [str(COUNTER), "--verify", str(agent.state)]})
    assert v["exit"] == 0, v
    first = int(agent.call({"op": "exec", "argv": [str(COUNTER), "--read", str(agent.state), "count"]})["stdout"])
    agent.wait_for("the count to increase", lambda: int(agent.call(
        {"op": "exec", "argv": [str(COUNTER), "--read", str(agent.state), "count"]})["stdout"]) > first)
    t = agent.call({"op": "exec", "argv": ["sleep", "30"], "timeout_ms": 200})
    assert t["ok"] and t["timed_out"] and t["exit"] is None and t["signal"] == 9


def test_udp_echo(agent):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        for i in range(20):
            payload = f"probe-{i}".encode() + bytes(range(32))
            s.sendto(payload, ("127.0.0.1", agent.echo))
            data, _ = s.recvfrom(2048)
            assert data == payload


@pytest.mark.parametrize("line,expect", [
    (b"this is not json\n", "not valid JSON"),
    (b"[1,2]\n", "no \"op\""),
    (b'{"op":"teleport"}\n', "unknown op 'teleport'"),
    (b'{"op":"exec"}\n', "exec needs \"argv\""),
    (b'{"op":"exec","argv":[]}\n', "is empty"),
    (b'{"op":"exec","argv":["/nonexistent/tool"]}\n', "exec /nonexistent/tool: No such file"),
    (b'{"op":"exec","argv":["true"],"timeout_ms":0}\n', "timeout_ms"),
])
def test_bad_requests_get_clear_errors(agent, line, expect):
    r = call_raw(agent.ctl, line)
    assert r["ok"] is False and expect in r["error"], r
    assert agent.call({"op": "ping"})["ok"], "the agent must keep running after a bad request"
    assert agent.proc.poll() is None


def test_shutdown_ends_agent_and_workload(agent):
    agent.wait_for("the counter's state file", agent.state.exists)
    pid = next(p for p in agent.call({"op": "status"})["programs"] if p["name"] == "counter")["pid"]
    assert agent.call({"op": "shutdown"}) == {"ok": True}
    assert agent.proc.wait(timeout=30) == 0
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert "shutting down" in agent.log.read_text()
