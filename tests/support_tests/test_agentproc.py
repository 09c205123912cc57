"""tests/support/agentproc.py: the agent CLI helpers report failures instead of hanging."""

from __future__ import annotations

import pytest

from tests.support.agentproc import run_agent, start_agent


def test_start_agent_fails_with_the_log_when_the_agent_exits(tmp_path):
    conf = tmp_path / "bad.toml"
    conf.write_text("[[ingest.no_such_component]]\n")
    log = tmp_path / "agent.log"
    with pytest.raises(AssertionError, match="did not log 'never logged'") as err:
        start_agent(conf, log, ready="never logged", timeout=20)
    assert "no_such_component" in str(err.value)


def test_run_agent_runs_the_console_script_to_completion(tmp_path):
    conf = tmp_path / "bad.toml"
    conf.write_text("[[ingest.no_such_component]]\n")
    result = run_agent("--dry-run", "-c", str(conf))
    assert result.returncode == 78
    assert "no_such_component" in result.stdout + result.stderr
