"""``agent top`` in a real terminal (tmux), as a one-shot table and as JSON, and the ``top``
command's cost at a million flows.

The agent replays a capture at its recorded pace, so the flows have known shapes: a burst
that is over (most bytes, no rate), a flow of many small packets (most packets), a flow of
big packets (highest rate) and a small flow the filter picks.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from netflow_agent.control import ControlServer, request
from netflow_agent.flowtop import FlowTop, TopQuery
from netflow_agent.model import PacketBatch, make_key
from netflow_agent.runtime import RunContext
from netflow_agent.stages.cache import CacheConfig, FlowCache
from netflow_agent.topview import WIDTH, parse_filter
from tests.ops.helpers import MS, T0, RunningAgent, cli
from tests.support.pcapgen import FlowSpec, PcapBuilder

SECOND = 1000 * MS
BURST = FlowSpec("udp", "10.8.0.3", "10.8.1.2", 6000, 7000, packets=200, payload=1372,
                 start_ns=T0, gap_ns=1 * MS)  # 280 kB in 0.2 s, then silence
SMALL = FlowSpec("udp", "10.8.0.1", "10.8.1.1", 4000, 53, packets=40 * 120, payload=20,
                 start_ns=T0, gap_ns=25 * MS)  # 40 packets/s of 48 bytes
BIG = FlowSpec("tcp", "10.8.0.2", "10.8.1.1", 5000, 80, packets=4 * 120, payload=1200,
               start_ns=T0, gap_ns=250 * MS, tcp_flags=0x18)  # 4 packets/s of 1240 bytes
PICKED = FlowSpec("udp", "10.8.0.4", "10.8.1.1", 4001, 53, packets=10 * 120, payload=80,
                  start_ns=T0, gap_ns=100 * MS)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAgent]:
    """Name: agent. Scope: module (7 s of the capture to wait for; the tests only read).
    The agent replaying the capture of the four flow shapes at its recorded pace."""
    tmp_path = tmp_path_factory.mktemp("top")
    b = PcapBuilder()
    for spec in (BURST, SMALL, BIG, PICKED):
        b.add(spec)
    b.write(tmp_path / "shapes.pcap")
    sock = tmp_path / "agent.sock"
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
control_socket = "{sock}"
scan_interval_ms = 200
[cache]
inactive_timeout = 600
[[ingest.pcap]]
path = "{tmp_path / 'shapes.pcap'}"
speed = "recorded"
[[export.log]]
path = "{tmp_path / 'flows.jsonl'}"
""")
    running = RunningAgent(config, sock)
    running.wait_ready()
    # the small flow must have overtaken the burst's 200 packets
    running.wait_for(lambda s: s["cache"]["traffic_packets"] > 200 + 54 * 7, timeout=60,
                     what="7 s of the capture")
    yield running
    assert running.stop() == 0, running.log()


class Tmux:
    """A private tmux server (its own socket name) running one command in an 80x24 pane."""

    def __init__(self, command: list[str]):
        self.name = f"nfa-top-{uuid.uuid4().hex[:8]}"
        self.run("new-session", "-d", "-s", "top", "-x", "80", "-y", "24",
                 " ".join(command))

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-L", self.name, "-f", "/dev/null", *args],
                              capture_output=True, text=True, timeout=10)

    def screen(self) -> list[str]:
        return self.run("capture-pane", "-p", "-t", "top").stdout.splitlines()

    def keys(self, *keys: str) -> None:
        self.run("send-keys", "-t", "top", *keys)

    def alive(self) -> bool:
        return self.run("has-session", "-t", "top").returncode == 0

    def wait(self, predicate: Callable[[list[str]], bool], what: str,
             timeout: float = 20) -> list[str]:
        deadline = time.monotonic() + timeout
        screen: list[str] = []
        while time.monotonic() < deadline:
            screen = self.screen()
            if predicate(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"screen never showed {what}:\n" + "\n".join(screen))

    def kill(self) -> None:
        self.run("kill-server")


def first_flow(screen: list[str]) -> str:
    return screen[3] if len(screen) > 3 else ""


def test_top_in_a_terminal_sorts_filters_and_quits(agent: RunningAgent) -> None:
    tmux = Tmux([sys.executable, "-m", "netflow_agent.cli", "top", "--socket", str(agent.socket)])
    try:
        screen = tmux.wait(lambda s: "sort: bytes" in "\n".join(s) and "10.8.0.3:6000" in
                           first_flow(s), "the burst first by bytes")
        assert screen[0].startswith("flows 4 ") and "drops 0" in screen[0]
        assert screen[2].split() == ["PROTO", "SOURCE", "DESTINATION", "PKTS", "BYTES", "RATE"]
        assert len(screen) <= 24 and all(len(line) <= WIDTH for line in screen)
        tmux.keys("p")
        tmux.wait(lambda s: "sort: packets" in s[0] and "10.8.0.1:4000" in first_flow(s),
                  "the small-packet flow first by packets")
        tmux.keys("r")
        screen = tmux.wait(lambda s: s[0].endswith("sort: rate") and "10.8.0.2:5000" in
                           first_flow(s), "the big-packet flow first by rate")
        assert "10.8.0.3:6000" in screen[6]  # the burst is over: last by rate
        tmux.keys("/")
        tmux.keys("p", "o", "r", "t", " ", "4", "0", "0", "1", "Enter")
        screen = tmux.wait(lambda s: "filter: port 4001 (1 match)" in s[1],
                           "the filter applied")
        tmux.wait(lambda s: "10.8.0.4:4001" in first_flow(s) and not s[4].strip(),
                  "only the picked flow")
        tmux.keys("q")
        deadline = time.monotonic() + 10
        while tmux.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not tmux.alive(), "agent top did not quit on q"
    finally:
        tmux.kill()


def test_top_without_a_terminal_prints_one_table_and_json(agent: RunningAgent) -> None:
    proc = cli("top", "--socket", str(agent.socket), "--sort", "packets")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("flows 4 ") and lines[2].startswith("PROTO")
    assert "10.8.0.1:4000" in lines[3] and len(lines) == 3 + 4
    proc = cli("top", "--socket", str(agent.socket), "--json", "--filter", "tcp")
    top = json.loads(proc.stdout)
    assert [(f["src"], f["sport"], f["proto"]) for f in top["flows"]] == [("10.8.0.2", 5000, 6)]
    assert top["matched"] == 1 and top["active"] == 4
    proc = cli("top", "--socket", str(agent.socket), "--filter", "port 99999")
    assert proc.returncode == 2 and "port must be a number" in proc.stderr


def test_filter_language() -> None:
    assert parse_filter("tcp port 80 10.0.0.0/8") == {"proto": 6, "port": 80,
                                                      "net": "10.0.0.0/8"}
    assert parse_filter("2001:db8::1 53 proto 132") == {"net": "2001:db8::1/128", "port": 53,
                                                        "proto": 132}
    assert parse_filter("") == {}


# --- a million flows ---------------------------------------------------------------------------


def million_flow_cache(n: int = 1_000_000) -> FlowCache:
    """``n`` UDP flows; flow ``i`` has ``i % 1000 + 1`` packets' worth of bytes and one
    packet, and flows 0..9 are IPv6, so every filter path meets both layouts."""
    cache = FlowCache(CacheConfig(maxflows=0, hashsize=n))
    packets = []
    for i in range(n):
        if i < 10:
            key = make_key(6, 17, b"\x20\x01\x0d\xb8" + bytes(10) + i.to_bytes(2, "big"),
                           b"\x20\x01\x0d\xb8" + bytes(11) + b"\x01", 1000 + i, 443)
        else:
            key = make_key(4, 17, (0x0A000000 + i).to_bytes(4, "big"), b"\xc0\x00\x02\x01",
                           1024 + i % 60000, 53 if i % 2 else 123)
        packets.append((key, 40 + i % 1000, 0, T0 + i, 0))
    cache.agent_cache_packets(PacketBatch("test", packets), T0 + n)
    return cache


class PipelineThread:
    """What the control server needs of a pipeline: an inbox served by one thread."""

    def __init__(self, cache: FlowCache):
        self.cache = cache
        self.context = RunContext()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import queue

        while not self.stop.is_set():
            try:
                _, fn = self.context.inbox.get(timeout=0.1)
            except queue.Empty:
                continue
            fn(self)

    def cache_component(self) -> FlowCache:
        return self.cache

    def core_stats(self) -> dict[str, Any]:
        return {**self.cache.agent_collect_stats(), "pps": 0.0, "bps": 0.0}

    def now_ns(self) -> int:
        return T0 + 2 * SECOND


def test_top_at_a_million_flows_is_answered_with_bounded_work(tmp_path: Path) -> None:
    cache = million_flow_cache()
    pipeline = PipelineThread(cache)
    server = ControlServer(str(tmp_path / "c.sock"), pipeline, lambda p: {}, str,
                           top=FlowTop().answer)
    server.start()
    server.serve()
    try:
        timings = {}
        for name, params in (("no filter", {}), ("port filter", {"filter": {"port": 53}}),
                             ("network filter", {"filter": {"net": "10.0.0.0/16"}}),
                             ("IPv6 network", {"filter": {"net": "2001:db8::/32"}})):
            started = time.perf_counter()
            reply = request(str(tmp_path / "c.sock"), "top", timeout=60, n=20, **params)
            timings[name] = time.perf_counter() - started
            assert reply["ok"], reply
            top = reply["top"]
            assert len(top["flows"]) == (10 if name == "IPv6 network" else 20)
            sizes = [f["bytes"] for f in top["flows"]]
            assert sizes == sorted(sizes, reverse=True)
            if name == "no filter":
                assert top["matched"] == 1_000_000 and sizes[0] == 40 + 999
            if name == "port filter":
                assert top["matched"] == (1_000_000 - 10) // 2
                assert all(f["dport"] == 53 for f in top["flows"])
            if name == "network filter":
                assert all(f["src"].startswith("10.0.") for f in top["flows"])
                assert top["matched"] == 65536 - 10
        print("top at 1M flows, seconds per request:",
              {k: round(v, 3) for k, v in timings.items()}, file=sys.stderr)
    finally:
        server.close()
        pipeline.stop.set()


def test_rates_come_from_the_last_interval_and_see_reused_slots() -> None:
    cache = FlowCache(CacheConfig())
    a, b = (make_key(4, 17, bytes([10, 0, 0, n]), b"\x0a\x00\x00\x09", 1, 2) for n in (1, 2))
    cache.agent_cache_packets(PacketBatch("t", [(a, 1000, 0, T0, 0)] * 10
                                          + [(b, 100, 0, T0, 0)]), T0)
    top, query = FlowTop(), TopQuery(sort="rate")
    core = {"active_flows": 2, "drop_packets": 0}
    first = top.select(cache.columns(), query, T0 + SECOND, core)
    assert first["rate_basis"] == "lifetime"
    cache.agent_cache_packets(PacketBatch("t", [(b, 100, 0, T0 + SECOND, 0)] * 30), T0)
    second = top.select(cache.columns(), query, T0 + 3 * SECOND, core)
    assert second["rate_basis"] == "interval" and second["interval_s"] == 2.0
    assert [(f["src"], f["bytes_per_s"]) for f in second["flows"]] == \
        [("10.0.0.2", 1500.0), ("10.0.0.1", 0.0)]
    expired = cache.agent_cache_expire(T0 + 10_000 * SECOND, force=True)
    assert len(expired) == 2  # both slots free; a new flow takes slot 0 with 5 packets
    cache.agent_cache_packets(PacketBatch("t", [(a, 10, 0, T0 + 4 * SECOND, 0)] * 5), T0)
    third = top.select(cache.columns(), query, T0 + 5 * SECOND, core)
    assert [(f["packets"], f["packets_per_s"]) for f in third["flows"]] == [(5, 2.5)]
    assert third["interval_s"] == 2.0  # against the copy of 3 s: the clock moved on
