"""Unit tests of the operations modules: no agent process, no network namespace."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from netflow_agent import state
from netflow_agent.config.model import AgentSection
from netflow_agent.control import ControlError, recv_message, send_message
from netflow_agent.logutil import RepeatFilter
from netflow_agent.model import make_key
from netflow_agent.ops import check_agent_section
from netflow_agent.privileges import PrivilegeError, capability_mask, mask_names, resolve
from netflow_agent.report import HashMeter
from netflow_agent.sdnotify import Notifier
from netflow_agent.stages.cache import CacheConfig, FlowCache
from tests.ops.helpers import T0, RunningAgent, steady_capture

KEY = make_key(4, 17, b"\x0a\0\0\x01", b"\x0a\0\0\x02", 1000, 53)


def record(msg: str, *args: object, name: str = "agent.x") -> logging.LogRecord:
    return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, args, None)


def test_repeat_filter_holds_back_identical_messages_and_says_how_many() -> None:
    now = [0.0]
    f = RepeatFilter(60, clock=lambda: now[0])
    assert f.filter(record("%s: cannot connect (attempt %d)", "10.0.0.1:2055", 1))
    assert not any(f.filter(record("%s: cannot connect (attempt %d)", "10.0.0.1:2055", n))
                   for n in range(2, 100))
    assert f.filter(record("%s: cannot connect (attempt %d)", "10.0.0.2:2055", 1))  # other key
    now[0] = 61
    passed = record("%s: cannot connect (attempt %d)", "10.0.0.1:2055", 100)
    assert f.filter(passed)
    assert "[98 similar message(s) suppressed in the last 61 s]" in passed.getMessage()
    assert RepeatFilter(0).filter(record("x")) and RepeatFilter(0).filter(record("x"))


def test_hash_meter_is_lookups_per_match_with_ewma() -> None:
    m = HashMeter()
    m.update(10**9, 100, 100)  # first sample only sets the origin
    assert m.current == 1.0
    m.update(2 * 10**9, 300, 200)  # 200 lookups, 100 matches in 1 s
    assert m.current == 2.0
    assert 1.0 < m.averages[0] < 2.0 and m.averages[0] > m.averages[3]
    assert HashMeter.ratio(0, 0) == 1.0 and HashMeter.ratio(5, 0) == 5.0


def test_sd_notify_datagrams(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(path))
    sink.settimeout(2)
    clock = [100.0]
    n = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "3000000",
                  "WATCHDOG_PID": str(os.getpid())}, clock=lambda: clock[0])
    assert n.enabled and n.watchdog_s == 3.0
    assert n.notify("READY=1", "STATUS=ok")
    assert sink.recv(4096) == b"READY=1\nSTATUS=ok"
    n.heartbeat()
    n.heartbeat()  # within a third of the timeout: not sent again
    clock[0] += 1.0
    n.heartbeat()
    assert [sink.recv(100), sink.recv(100)] == [b"WATCHDOG=1", b"WATCHDOG=1"]
    sink.setblocking(False)
    with pytest.raises(BlockingIOError):
        sink.recv(100)
    assert not Notifier({}).notify("READY=1")  # outside systemd: nothing
    assert Notifier({"NOTIFY_SOCKET": "@abstract-x"}).address == b"\0abstract-x"
    assert Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "5",
                     "WATCHDOG_PID": "1"}).watchdog_s == 0  # meant for another process
    n.close()
    sink.close()


def test_control_framing_round_trip_and_bad_input() -> None:
    a, b = socket.socketpair()
    send_message(a, {"cmd": "stats", "x": [1, 2]})
    assert recv_message(b) == {"cmd": "stats", "x": [1, 2]}
    a.sendall(b"\0\0\0\x02\x91\x01")  # a list, not a map
    with pytest.raises(ControlError, match="not a map"):
        recv_message(b)
    a.sendall(b"\xff\xff\xff\xff")
    with pytest.raises(ControlError, match="too large"):
        recv_message(b)
    a.sendall(b"\0\0\0\x10abc")
    a.close()
    with pytest.raises(ControlError, match="closed"):
        recv_message(b)
    b.close()


def test_state_save_restore_sums_and_rejects_damage(tmp_path: Path) -> None:
    cache = FlowCache(CacheConfig())
    cache.restore([(KEY, 3, 300, T0, T0 + 5, 0x18, 7)])
    path = str(tmp_path / "flows.state")
    assert state.save(cache, path) == (1, 3, 300)
    assert cache.active_flows == 0 and os.stat(path).st_mode & 0o777 == 0o600
    other = FlowCache(CacheConfig())
    other.restore([(KEY, 2, 100, T0 + 10, T0 + 20, 0x01, 0)])  # seen again before the restore
    assert state.restore(other, path) == 1 and not os.path.exists(path)
    [(key, packets, octets, first, last, flags, out_if)] = other.dump()
    assert (key, packets, octets, first, last, flags, out_if) == \
        (KEY, 5, 400, T0, T0 + 20, 0x19, 7)
    Path(path).write_bytes(msgpack.packb({"format": "other"}))
    assert state.restore(other, path) == 0 and os.path.exists(path + ".bad")
    Path(path).write_bytes(msgpack.packb({"format": state.FORMAT, "version": 1,
                                          "flows": [[b"\x09", 1, 1, 1, 1, 0, 0]]}))
    with pytest.raises(state.StateError, match="flow 0"):
        state.load(path)


def test_state_save_failure_keeps_flows_for_export(tmp_path: Path) -> None:
    cache = FlowCache(CacheConfig())
    cache.restore([(KEY, 1, 60, T0, T0, 0, 0)])
    assert state.save(cache, str(tmp_path / "missing-dir" / "f.state")) == (0, 0, 0)
    assert cache.active_flows == 1


def test_agent_section_checks() -> None:
    ok = AgentSection(metrics_listen="127.0.0.1:9184", state_file="/var/lib/x/state")
    assert check_agent_section(ok) == []
    bad = AgentSection(metrics_listen="localhost", keep_capabilities=["CAP_NOPE"],
                       control_socket="rel.sock", state_file="rel", group="g")
    paths = sorted(i.path for i in check_agent_section(bad))
    assert paths == ["control_socket", "group", "keep_capabilities", "metrics_listen",
                     "state_file"]
    warn = check_agent_section(AgentSection(metrics_listen="0.0.0.0:9184"))
    assert [i.severity for i in warn] == ["warning"]


def test_capability_names() -> None:
    assert capability_mask(["CAP_NET_ADMIN", "net_raw"]) == 1 << 12 | 1 << 13
    assert mask_names(1 << 39) == ["CAP_BPF"]
    with pytest.raises(PrivilegeError):
        capability_mask(["CAP_FLY"])
    with pytest.raises(PrivilegeError, match="does not exist"):
        resolve("nfa-no-such-user-x")


def test_dry_run_reports_ops_errors(tmp_path: Path) -> None:
    config = tmp_path / "a.toml"
    config.write_text('[agent]\nuser = "nfa-no-such-user-x"\nmetrics_listen = "nope"\n'
                      '[[ingest.pcap]]\npath = "/dev/null"\n[[export.log]]\n')
    proc = subprocess.run([sys.executable, "-m", "netflow_agent.cli", "--dry-run", "--check-env", "-c",
                           str(config)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 78
    assert "agent.metrics_listen" in proc.stderr


def test_systemd_notify_from_the_real_agent(tmp_path: Path) -> None:
    """READY=1 after start, WATCHDOG=1 from the pipeline loop, STOPPING=1 at SIGTERM."""
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(tmp_path / "notify"))
    sink.settimeout(20)
    steady_capture(tmp_path / "c.pcap", seconds=30, flows=1, pps_per_flow=2)
    config = tmp_path / "agent.toml"
    sock = tmp_path / "agent.sock"
    config.write_text(f'[agent]\ncontrol_socket = "{sock}"\n[[ingest.pcap]]\n'
                      f'path = "{tmp_path / "c.pcap"}"\nspeed = "recorded"\n'
                      f'[[export.log]]\npath = "{tmp_path / "out.jsonl"}"\n')
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="600000")
    agent = RunningAgent(config, sock, env=env)
    try:
        first = sink.recv(4096).decode().split("\n")
        assert first[0] == "READY=1" and f"MAINPID={agent.proc.pid}" in first
        assert {sink.recv(100), sink.recv(100)} == {b"WATCHDOG=1"}
    finally:
        agent.stop()
    rest = []
    sink.settimeout(0.5)
    try:
        while True:
            rest.append(sink.recv(100))
    except TimeoutError:
        pass
    assert b"STOPPING=1" in rest
    sink.close()


UNIT = Path(__file__).resolve().parents[2] / "packaging/systemd/netflow-agent.service"


def test_systemd_unit_has_the_operational_contract() -> None:
    text = UNIT.read_text()
    keys = {line.partition("=")[0] for line in text.splitlines() if "=" in line
            and not line.startswith("#")}
    for key in ("Type", "WatchdogSec", "ExecStartPre", "ExecReload", "CapabilityBoundingSet",
                "NoNewPrivileges", "ProtectSystem", "RuntimeDirectory", "StateDirectory"):
        assert key in keys, key
    assert "Type=notify\n" in text and "--dry-run" in text and "kill -HUP $MAINPID" in text
    if not os.path.exists("/usr/bin/systemd-analyze"):
        return
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(UNIT)],
                          capture_output=True, text=True, timeout=60)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if line.strip() and "is not executable" not in line]
    assert problems == [], problems
