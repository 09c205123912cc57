"""Reload under traffic: 20 reloads (SIGHUP and ``agent reload``) while a capture plays at its
recorded pace; every packet is exported exactly once; an invalid configuration in the middle
is rejected and the agent keeps running on the old one.

The capture's last packet comes an hour after the traffic: the agent never reaches the end
of the replay by itself (and exits) while the test still reloads, however slow the machine;
the test stops it once every other packet was read. That the agent still ends a finite
replay by itself after reloads is checked apart, with a second capture holding it until the
last reload removes that ingest."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from netflow_agent.control import request
from tests.ops.helpers import T0, RunningAgent, cli, exported, steady_capture, table
from tests.support.pcapgen import FlowSpec
from tests.support.truth import FlowId

CONFIG = """
[agent]
control_socket = "{sock}"
scan_interval_ms = 50
[cache]
active_timeout = {active}
inactive_timeout = {inactive}
[[ingest.pcap]]
path = "{capture}"
speed = "recorded"
[[export.log]]
path = "{out}"
natevents = {natevents}
"""


def write_config(path: Path, n: int, **paths: Path) -> None:
    """Variant ``n``: timeouts and the exporter's config change every time."""
    path.write_text(CONFIG.format(active=1 + n % 2, inactive=2 + n % 3,
                                  natevents=str(n % 2 == 0).lower(), **paths))


#: the held capture's last packet: a flow of its own, an hour after the steady traffic
HOLD = FlowSpec("udp", "10.7.9.9", "10.7.1.1", 4999, 53, start_ns=T0 + 3600 * 10**9)


def held_capture(path: Path, seconds: float) -> tuple[dict[FlowId, tuple[int, int]], int]:
    """:func:`steady_capture` for ``seconds``, then :data:`HOLD`; return the truth without
    :data:`HOLD` and how many packets come before it."""
    truth = steady_capture(path, seconds, extra=(HOLD,)).table()
    truth.pop(HOLD.flow_id())
    return truth, sum(packets for packets, _ in truth.values())


def packets_read(snap: dict[str, Any]) -> int:
    return int(snap["components"]["ingest.pcap[0]"]["packets"])


def test_twenty_reloads_under_traffic_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    capture, out, sock = tmp_path / "steady.pcap", tmp_path / "flows.jsonl", tmp_path / "a.sock"
    truth, before_hold = held_capture(capture, seconds=9.0)
    config = tmp_path / "agent.toml"
    paths = {"capture": capture, "out": out, "sock": sock}
    write_config(config, 0, **paths)
    agent = RunningAgent(config, sock)
    try:
        agent.wait_ready()
        for n in range(1, 21):
            time.sleep(0.15)  # spread the reloads over the capture
            write_config(config, n, **paths)
            if n == 10:  # an invalid file in the middle: rejected, the old config keeps running
                config.write_text(config.read_text().replace("active_timeout = 1",
                                                             "active_timeout = -1"))
                reply = request(str(sock), "reload")
                assert not reply["ok"] and "invalid" in reply["message"], reply
                snap = agent.stats()
                assert snap["agent"]["reload_failures"] == 1
                assert snap["cache"]["active_timeout"] == 2  # variant 9 is still in force
                write_config(config, n, **paths)
            if n % 2:
                before = agent.stats()["agent"]["reloads"]
                agent.signal(signal.SIGHUP)
                agent.wait_for(lambda s, b=before: s["agent"]["reloads"] > b, what="SIGHUP")
            elif n % 4 == 0:
                proc = cli("reload", "--socket", str(sock))
                assert proc.returncode == 0 and "reloaded" in proc.stdout, proc.stderr
            else:
                reply = request(str(sock), "reload")
                assert reply["ok"], reply
        snap = agent.stats()
        assert (snap["agent"]["reloads"], snap["agent"]["reload_failures"]) == (20, 1)
        assert snap["cache"]["active_timeout"] == 1 and snap["cache"]["inactive_timeout"] == 4
        agent.wait_for(lambda s: packets_read(s) == before_hold, timeout=60,
                       what="every packet before the held one read")
        mid_run = len(exported(out))
        assert agent.stop() == 0, agent.log()  # stops waiting for the held packet; drains
    finally:
        if agent.proc.poll() is None:
            agent.stop()
    records = exported(out)
    assert table(records) == truth  # every packet and byte exactly once
    assert mid_run > 0 and len(records) > len(truth)  # exports happened across reloads
    assert "reload: " in agent.log_path.read_text()  # the invalid file's issue was logged


HOLDING_CONFIG = CONFIG + """
[[ingest.pcap]]
path = "{holding}"
speed = "recorded"
"""


def test_after_reloads_the_agent_ends_its_finite_replay_by_itself(tmp_path: Path) -> None:
    """The agent still exits by itself (status 0, socket removed, every packet exported
    once) when its finite replay ends after reloads. No wall-clock race: a second capture
    holds the agent (its second packet is an hour after its first) until the last reload
    removes that ingest; the agent then ends when the steady capture is done."""
    capture, out, sock = tmp_path / "steady.pcap", tmp_path / "flows.jsonl", tmp_path / "a.sock"
    holding = tmp_path / "holding.pcap"
    truth = steady_capture(capture, seconds=2.0).table()
    # the recorded pace sleeps from the second batch on (the first sets the clock): two
    # packets two seconds apart, then one an hour later that the agent waits for
    first = FlowSpec("udp", "10.7.9.9", "10.7.1.1", 4998, 53, packets=2, start_ns=T0,
                     gap_ns=2 * 10**9)
    steady_capture(holding, 0, flows=0, extra=(first, HOLD))
    config = tmp_path / "agent.toml"
    paths = {"capture": capture, "out": out, "sock": sock}

    def write(n: int, hold: bool = True) -> None:
        write_config(config, n, **paths)
        if hold:
            config.write_text(HOLDING_CONFIG.format(
                active=1 + n % 2, inactive=2 + n % 3, natevents=str(n % 2 == 0).lower(),
                holding=holding, **paths))

    write(0)
    agent = RunningAgent(config, sock)
    try:
        agent.wait_ready()
        write(1)
        before = agent.stats()["agent"]["reloads"]
        agent.signal(signal.SIGHUP)
        agent.wait_for(lambda s: s["agent"]["reloads"] > before, what="SIGHUP")
        write(2)
        proc = cli("reload", "--socket", str(sock))
        assert proc.returncode == 0 and "reloaded" in proc.stdout, proc.stderr
        assert agent.proc.poll() is None  # still held
        write(3, hold=False)  # removes the holding ingest: nothing holds the agent any more
        reply = request(str(sock), "reload")
        assert reply["ok"] and "ingest.pcap[1]: removed" in reply["message"], reply
        assert agent.wait_exit(60) == 0, agent.log()
    finally:
        if agent.proc.poll() is None:
            agent.stop()
    assert not sock.exists()
    steady = [r for r in exported(out) if FlowId.of_record(r) in truth]
    assert table(steady) == truth  # every packet read, exported exactly once
