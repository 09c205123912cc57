"""``[agent] state_file`` as hostile input (issue 18, items 4-8): a damaged, forged or planted
file is quarantined, counted and logged; the agent starts (empty or with the valid rows), never
crashes, never hangs, and never deletes a file it could not read."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

from netflow_agent import state
from netflow_agent.model import END_IDLE, make_key
from tests.ops.helpers import MS, T0, RunningAgent, cli, exported, steady_capture
from tests.ops.test_state import CONFIG
from tests.support.pcapgen import FlowSpec, PcapBuilder
from tests.support.truth import FlowId

#: the restart test's configuration, with a chosen idle timeout
REPLAY = CONFIG + "[cache]\ninactive_timeout = {inactive}\n"
NOBODY = 65534


def saved_flow(n: int, packets: int = 2, octets: int = 200, first: int = T0,
               last: int = T0 + MS) -> list[Any]:
    """One state-file row of a UDP flow 10.9.0.n:1000+n -> 10.9.1.1:53."""
    key = make_key(4, 17, bytes([10, 9, 0, n]), bytes([10, 9, 1, 1]), 1000 + n, 53)
    return [key, packets, octets, first, last, 0, 0]


def state_bytes(flows: Any) -> bytes:
    return msgpack.packb({"format": state.FORMAT, "version": state.VERSION, "saved_ns": T0,
                          "agent": "test", "flows": flows}, use_bin_type=True)


def flow_id(n: int) -> FlowId:
    return FlowSpec("udp", f"10.9.0.{n}", "10.9.1.1", 1000 + n, 53).flow_id()


def quarantined(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".bad-*"))


class Setup:
    """A state file at ``tmp/state/flows.state`` and an agent configuration around it."""

    def __init__(self, tmp: Path, inactive: int = 15):
        self.tmp = tmp
        self.state = tmp / "state" / "flows.state"
        self.state.parent.mkdir()
        self.sock = tmp / "agent.sock"
        self.out = tmp / "out.jsonl"
        self.inactive = inactive

    def config(self, capture: Path, speed: str = "max") -> Path:
        conf = self.tmp / "agent.toml"
        conf.write_text(REPLAY.format(sock=self.sock, state=self.state, capture=capture,
                                      speed=speed, out=self.out, inactive=self.inactive))
        return conf

    def replay(self, specs: list[FlowSpec] | None = None, timeout: float = 30) -> RunningAgent:
        """Replay a short capture to its end (everything exported); return the finished run."""
        builder = PcapBuilder()
        for spec in specs or [FlowSpec("udp", "10.9.5.5", "10.9.1.1", 7, 7, packets=2,
                                       payload=10, start_ns=T0, gap_ns=MS)]:
            builder.add(spec)
        builder.write(self.tmp / "c.pcap")
        agent = RunningAgent(self.config(self.tmp / "c.pcap"), self.sock)
        try:
            code = agent.wait_exit(timeout)
        except subprocess.TimeoutExpired:
            agent.proc.kill()
            agent.proc.wait()
            raise AssertionError(f"the agent hung at start:\n{agent.log()}") from None
        assert code == 0, agent.log()
        assert "Traceback" not in agent.log(), agent.log()
        return agent

    def summary(self, agent: RunningAgent) -> str:
        return next(line for line in agent.log().splitlines() if "stopped;" in line)


@pytest.mark.parametrize("flows", [5, None], ids=["int", "nil"])
def test_flows_not_a_list_is_quarantined_counted_and_reported(tmp_path: Path,
                                                              flows: Any) -> None:
    """Item 4: was a TypeError traceback, exit 1 and the file left in place (a crash loop)."""
    s = Setup(tmp_path)
    s.state.write_bytes(state_bytes(flows))
    original = s.state.read_bytes()
    steady_capture(tmp_path / "c.pcap", seconds=30, flows=1, pps_per_flow=2)
    agent = RunningAgent(s.config(tmp_path / "c.pcap", speed="recorded"), s.sock)
    try:
        snap = agent.wait_for(lambda _: True, what="control socket")
        report = cli("stats", "--socket", str(s.sock)).stdout
    finally:
        assert agent.stop() == 0, agent.log()
    info = snap["agent"]["state_file"]
    assert info["quarantined"] == 1 and info["flows"] == 0, info
    assert "not a list" in info["reason"]
    [bad] = quarantined(s.state)
    assert str(bad) == info["moved_to"] and bad.read_bytes() == original  # kept, not parsed
    assert "state file quarantined" in report.splitlines()[0], report
    assert re.search(r"state file .*flows\.state refused: 'flows' is \w+, not a list; moved "
                     r"to .*\.bad-\d{8}T\d{6}Z", agent.log()), agent.log()


def test_values_out_of_range_are_rejected_and_the_valid_rows_restored(tmp_path: Path) -> None:
    """Item 5: was an OverflowError, exit 1, after the file was already deleted (flows lost)."""
    s = Setup(tmp_path)
    flags_256, after_2_63, if_2_32 = saved_flow(3), saved_flow(4), saved_flow(5)
    flags_256[5], after_2_63[4], if_2_32[6] = 256, 2**63, 2**32
    s.state.write_bytes(state_bytes([saved_flow(1), flags_256, after_2_63, if_2_32,
                                     saved_flow(2, packets=7, octets=700)]))
    original = s.state.read_bytes()
    agent = s.replay()
    got = {FlowId.of_record(r): (r["packets"], r["octets"]) for r in exported(s.out)}
    assert got[flow_id(1)] == (2, 200) and got[flow_id(2)] == (7, 700)
    assert not {flow_id(3), flow_id(4), flow_id(5)} & set(got)
    [bad] = quarantined(s.state)
    assert bad.read_bytes() == original and not s.state.exists()  # nothing lost unseen
    assert "state file: restored 2 flows, rejected 3" in s.summary(agent)
    assert "3 of 5 flows rejected, first flow 1: tcp_flags 256 is outside 0..255" in agent.log()


def test_one_malformed_key_costs_that_row_only(tmp_path: Path) -> None:
    """Item 6: one bad key made expiry raise: 3 of 10 flows exported, the summary "dropped 0"."""
    s = Setup(tmp_path)
    rows = [saved_flow(n) for n in range(1, 11)]
    rows[3][0] = rows[3][0][:19]  # a 19-byte IPv4 key
    s.state.write_bytes(state_bytes(rows))
    agent = s.replay()
    got = {FlowId.of_record(r) for r in exported(s.out)}
    assert got >= {flow_id(n) for n in range(1, 11) if n != 4} and flow_id(4) not in got
    assert "rejected 1" in s.summary(agent)
    assert "raised in agent_cache_expire" not in agent.log()
    assert "flow 3: key of 19 bytes with IP version 4" in agent.log()


def test_a_fifo_at_the_path_does_not_hang_the_start(tmp_path: Path) -> None:
    """Item 7: opening a FIFO blocked the start for ever."""
    s = Setup(tmp_path)
    os.mkfifo(s.state)
    agent = s.replay(timeout=30)
    [bad] = quarantined(s.state)
    assert bad.is_fifo() and "not a regular file (FIFO)" in agent.log()


def test_future_times_are_clamped_so_the_flow_times_out(tmp_path: Path) -> None:
    """Item 7: a flow whose last packet lies in the future never went idle; it is now clamped
    to the restore time and expires at ``inactive_timeout`` like any other."""
    s = Setup(tmp_path, inactive=1)
    now = time.time_ns()
    day = 86_400 * 10**9
    s.state.write_bytes(state_bytes([saved_flow(1, first=now - MS, last=now + day),
                                     saved_flow(2, first=now - MS, last=now)]))
    # a capture on today's clock, 5 s long: the replay clock passes the inactive timeout
    agent = s.replay([FlowSpec("udp", "10.9.5.5", "10.9.1.1", 7, 7, packets=50, payload=10,
                               start_ns=now, gap_ns=100 * MS)])
    records = {FlowId.of_record(r): r for r in exported(s.out)}
    future = records[flow_id(1)]
    assert future["end_reason"] == END_IDLE, future  # not only the forced export at the end
    assert now <= future["end_ns"] < now + day
    assert "1 flows of" in agent.log() and "clamped to now" in agent.log()
    assert "clamped 1" in s.summary(agent) and quarantined(s.state) == []


@pytest.mark.parametrize("owner,mode", [(NOBODY, 0o600), (0, 0o666)],
                         ids=["owned-by-nobody", "world-writable"])
def test_as_root_a_file_others_could_write_is_not_parsed(tmp_path: Path, owner: int,
                                                          mode: int) -> None:
    """Item 8: a file planted by the dropped user (or anyone) was parsed by root."""
    if os.geteuid() != 0:
        pytest.skip("ownership is only enforced when the agent runs as root")
    s = Setup(tmp_path)
    s.state.write_bytes(state_bytes([saved_flow(1, packets=1000, octets=10**9)]))
    os.chown(s.state, owner, owner)
    os.chmod(s.state, mode)
    agent = s.replay()
    assert flow_id(1) not in {FlowId.of_record(r) for r in exported(s.out)}  # forged flow
    [bad] = quarantined(s.state)
    assert bad.stat().st_uid == owner
    reason = "owned by uid 65534, not root" if owner else "writable by group or others"
    assert reason in agent.log() and "file quarantined" in s.summary(agent)


def test_with_a_user_the_saved_file_is_roots_and_restored(tmp_path: Path) -> None:
    """Item 8, the design: with ``[agent] user`` root creates the state file before the drop
    and the agent writes it through that descriptor at SIGTERM, so the file is root's (0600)
    in a directory the user cannot write, and the next start (as root) restores it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to a user")
    s = Setup(tmp_path)
    os.chmod(tmp_path, 0o755)  # the user may reach the control socket's directory
    steady_capture(tmp_path / "c.pcap", seconds=30, flows=2, pps_per_flow=10)
    conf = s.config(tmp_path / "c.pcap", speed="recorded")
    conf.write_text(conf.read_text().replace("[agent]\n", '[agent]\nuser = "nobody"\n'))
    agent = RunningAgent(conf, s.sock)
    try:
        agent.wait_for(lambda st: st["agent"]["uid"] == NOBODY
                       and st["cache"]["active_flows"] == 2, what="two flows as nobody")
    finally:
        assert agent.stop() == 0, agent.log()
    assert "saved 2 flows" in agent.log(), agent.log()
    st = s.state.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600)
    directory = s.state.parent.stat()
    assert directory.st_uid == 0 and directory.st_mode & 0o022 == 0  # nobody cannot plant
    run2 = s.replay()
    assert "restored 2 flows" in run2.log() and not s.state.exists()
