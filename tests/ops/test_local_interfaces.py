"""The control socket and the metrics endpoint under hostile or careless local clients
(issue 18 items 3, 9, 10), against the real agent replaying a long capture at its recorded
pace (a long-lived ingest that needs no privileges).

Each test reproduces what the review did on the old servers: a client sending a byte at a
time, idle connections, a 60 MiB message, hundreds of idle HTTP connections, and threads
that kept root's capabilities after ``[agent] user``.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from netflow_agent.control import MAX_REQUEST, ControlError, recv_message, request
from netflow_agent.privileges import CAPABILITIES
from tests.ops.helpers import RunningAgent, cli, steady_capture
from tests.ops.test_privileges import proc_status
from tests.ops.test_stats_cli import free_tcp_port, scrape


def _config(tmp_path: Path, extra: str = "") -> tuple[Path, Path, int]:
    capture = tmp_path / "steady.pcap"
    steady_capture(capture, seconds=120, flows=3, pps_per_flow=5)
    sock, port = tmp_path / "agent.sock", free_tcp_port()
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
control_socket = "{sock}"
metrics_listen = "127.0.0.1:{port}"
scan_interval_ms = 200
{extra}
[[ingest.pcap]]
path = "{capture}"
speed = "recorded"
[[export.log]]
path = "{tmp_path / 'flows.jsonl'}"
""")
    return config, sock, port


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[RunningAgent, int]]:
    config, sock, port = _config(tmp_path)
    running = RunningAgent(config, sock)
    running.wait_ready()
    yield running, port
    assert running.stop() == 0, running.log()


def connect(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    return s


def still_open(s: socket.socket) -> bool:
    """The peer has not closed ``s`` (nothing to read, no EOF)."""
    try:
        return s.recv(1, socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def stats_ok(agent: RunningAgent) -> None:
    """``agent stats`` answers (the CLI, as an operator runs it)."""
    proc = cli("stats", "--socket", str(agent.socket), timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("netflow-agent "), proc.stderr


def test_idle_connections_do_not_delay_stats(agent: tuple[RunningAgent, int]) -> None:
    running, _ = agent
    idle = [connect(running.socket) for _ in range(100)]  # more than the server reads at once
    try:
        stats_ok(running)
        assert still_open(idle[-1])  # answered while the newest idle ones were still held
    finally:
        for s in idle:
            s.close()


class Trickle:
    """A client sending ``message`` one byte every 0.25 s on its own thread (slowloris)."""

    def __init__(self, sock: socket.socket, message: bytes):
        self.sock, self.message = sock, message
        self.sent = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for i in range(len(self.message)):
            try:
                self.sock.send(self.message[i:i + 1])
            except OSError:
                return
            self.sent = i + 1
            if self.stop.wait(0.25):  # the attack's own pace, not a wait for the agent
                return

    def wait_sent(self, count: int) -> None:
        deadline = time.monotonic() + 20
        while self.sent < count and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)

    def wait_cut(self) -> bool:
        """Until the server closed the connection (``False`` after 30 s)."""
        deadline = time.monotonic() + 30
        while still_open(self.sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.stop.set()
        self.thread.join(5)
        return not still_open(self.sock)


def test_a_slow_client_is_cut_at_the_request_deadline(agent: tuple[RunningAgent, int]) -> None:
    running, _ = agent
    body = msgpack.packb({"cmd": "stats", "pad": "x" * 1000})
    slow = connect(running.socket)
    try:
        trickle = Trickle(slow, struct.pack("!I", len(body)) + body)  # 250 s for the whole
        trickle.wait_sent(8)
        stats_ok(running)  # while the slow client is in the middle of its request
        assert trickle.wait_cut(), "the agent still waits for the slow request"
        assert trickle.sent < 4 + len(body)
    finally:
        slow.close()


def test_a_huge_message_is_refused_without_reading_or_echoing_it(
        agent: tuple[RunningAgent, int]) -> None:
    running, _ = agent
    s = connect(running.socket)
    payload = b"A" * (1 << 20)
    try:
        s.sendall(struct.pack("!I", 60 << 20))
        try:
            for _ in range(60):
                s.sendall(payload)
        except OSError:
            pass  # the agent closed the connection: it did not read the 60 MiB
        reply = recv_message(s)
    finally:
        s.close()
    assert reply == {"ok": False, "error": f"request too large (limit {MAX_REQUEST} bytes)"}
    stats_ok(running)


def test_errors_do_not_echo_the_request(agent: tuple[RunningAgent, int]) -> None:
    running, _ = agent
    marker = "Z" * 5000
    reply = request(str(running.socket), marker, timeout=10)
    assert reply["ok"] is False and "ZZZ" not in reply["error"]
    assert reply["error"].startswith("unknown command (known: stats, stats-json, reload, top")
    s = connect(running.socket)
    try:
        junk = b"\xc1" + marker.encode()  # 0xc1 is never valid msgpack
        s.sendall(struct.pack("!I", len(junk)) + junk)
        reply = recv_message(s)
    finally:
        s.close()
    assert reply == {"ok": False, "error": "malformed message (not one msgpack map)"}
    assert "ZZZ" not in running.log()


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def test_metrics_idle_connections_use_no_threads(agent: tuple[RunningAgent, int]) -> None:
    running, port = agent
    scrape(port)
    before = _threads(running.proc.pid)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(300)]
    try:
        values = scrape(port)  # answered while 300 connections are held open
        assert values["netflow_agent_flows_active"] >= 1
        assert _threads(running.proc.pid) == before
    finally:
        for s in idle:
            s.close()


def test_metrics_slow_and_oversized_requests(agent: tuple[RunningAgent, int]) -> None:
    running, port = agent
    slow = socket.create_connection(("127.0.0.1", port))
    try:
        trickle = Trickle(slow, b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"x" * 1000)
        trickle.wait_sent(30)
        scrape(port)
        assert trickle.wait_cut(), "the endpoint still waits for the slow request head"
    finally:
        slow.close()
    with socket.create_connection(("127.0.0.1", port)) as big:
        try:
            big.sendall(b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"p" * 20000)
        except OSError:
            pass
        head = big.recv(4096)
    assert head.startswith(b"HTTP/1.1 431 ") and b"ppp" not in head
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
    assert err.value.code == 404


def _kept_mask() -> int:
    return sum(1 << CAPABILITIES[c] for c in ("CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_BPF"))


def _capability_sets(pid: int) -> dict[str, tuple[int, int, int]]:
    """Thread id -> (CapPrm, CapEff, CapAmb) of every task of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        status = proc_status(pid, tid)
        out[tid] = tuple(int(status[k], 16) for k in ("CapPrm", "CapEff", "CapAmb"))
    return out  # type: ignore[return-value]


def test_every_thread_has_the_reduced_capabilities(tmp_path: Path) -> None:
    config, sock, port = _config(tmp_path, 'user = "nobody"')
    running = RunningAgent(config, sock)
    try:
        running.wait_ready()
        scrape(port)  # the metrics threads have handled a request
        assert running.stats()["agent"]["uid"] != 0
        want = (_kept_mask(),) * 3
        deadline = time.monotonic() + 10  # the replay thread follows when it next wakes
        while True:
            sets = _capability_sets(running.proc.pid)
            wrong = {k: v for k, v in sets.items() if v != want}
            if not wrong or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert wrong == {}, sets
        assert len(sets) >= 1 + 1 + 5 + 3  # main, replay, control and metrics io + workers
    finally:
        running.stop()


def test_request_to_a_missing_agent_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="no such socket"):
        request(str(tmp_path / "none.sock"), "stats", timeout=5)
