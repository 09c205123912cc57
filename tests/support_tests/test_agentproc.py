"""tests/support/agentproc.py: the agent process helper reports failures instead of hanging."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.agentproc import Agent, run_agent

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample.pcap"


def test_start_fails_with_the_log_when_the_agent_exits(tmp_path):
    conf = tmp_path / "bad.toml"
    conf.write_text("[[ingest.no_such_component]]\n")
    agent = Agent(conf)
    with pytest.raises(AssertionError, match="did not log 'never logged'") as err:
        agent.start(ready="never logged", timeout=20)
    assert "no_such_component" in str(err.value)
    assert agent.exit_status() == 78


def test_in_dir_serves_stats_and_stops_by_pid(tmp_path):
    steady = tmp_path / "steady.pcap"
    from tests.ops.helpers import steady_capture

    steady_capture(steady, seconds=30.0, flows=1)
    agent = Agent.in_dir(tmp_path, '[agent]\ncontrol_socket = "{socket}"\n'
                                   f'[[ingest.pcap]]\npath = "{steady}"\nspeed = "recorded"\n'
                                   '[[export.log]]\npath = "/dev/null"\n')
    with agent:
        agent.start(ready="running with")
        snap = agent.wait_for(lambda s: s["cache"]["traffic_packets"] > 0, what="packets")
        assert snap["agent"]["hook_errors"] == {}
        assert agent.memory_kb()["VmRSS"] > 0
        assert agent.stop() == 0
    assert agent.stats_latency and agent.exit_seconds >= 0
    assert "stopped;" in agent.log()


def test_wait_for_fails_when_the_agent_exits(tmp_path):
    conf = tmp_path / "agent.toml"
    conf.write_text(f'[agent]\ncontrol_socket = "{tmp_path / "a.sock"}"\n'
                    f'[[ingest.pcap]]\npath = "{SAMPLE}"\n[[export.log]]\npath = "/dev/null"\n')
    agent = Agent(conf, tmp_path / "a.sock").start(answer=False)
    with pytest.raises(AssertionError, match="exited|timeout"):
        agent.wait_for(lambda s: False, timeout=30, what="something that never happens")
    assert agent.wait_exit(30) == 0


def test_run_agent_runs_the_console_script_to_completion(tmp_path):
    conf = tmp_path / "bad.toml"
    conf.write_text("[[ingest.no_such_component]]\n")
    result = run_agent("--dry-run", "-c", str(conf))
    assert result.returncode == 78
    assert "no_such_component" in result.stdout + result.stderr
