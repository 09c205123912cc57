"""Honest reloads: ``agent reload`` exits 0 only when the new configuration runs (or nothing
changed), 1 with the reason otherwise; the old configuration keeps running; every failure is
logged; ``agent stats`` and the metrics show the last reload. Also the start-time warning when
the dropped user cannot read its configuration, and the reload that then fails."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netflow_agent.metrics import metric_families
from tests.ops.helpers import RunningAgent, cli, exported, steady_capture

CONFIG = """
[agent]
control_socket = "{sock}"
scan_interval_ms = 50
{agent_extra}
[cache]
active_timeout = {active}
inactive_timeout = 1
[[ingest.pcap]]
path = "{capture}"
speed = "recorded"
[[export.log]]
path = "{out}"
"""


class Setup:
    """A directory with a long capture, a config and a running agent."""

    def __init__(self, root: Path, agent_extra: str = "") -> None:
        self.root = root
        self.capture, self.out = root / "steady.pcap", root / "flows.jsonl"
        self.sock, self.config = root / "agent.sock", root / "agent.toml"
        self.agent_extra = agent_extra
        steady_capture(self.capture, seconds=120.0, flows=2, pps_per_flow=10)
        self.write(active=2)

    def write(self, active: int | str, out: Path | None = None) -> None:
        self.config.write_text(CONFIG.format(sock=self.sock, capture=self.capture,
                                             out=out or self.out, active=active,
                                             agent_extra=self.agent_extra))

    def reload(self) -> Any:
        return cli("reload", "--socket", str(self.sock))


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Setup, RunningAgent]]:
    s = Setup(tmp_path)
    agent = RunningAgent(s.config, s.sock)
    try:
        agent.wait_ready()
        yield s, agent
    finally:
        agent.stop()


def test_reload_applies_reports_and_counts(setup: tuple[Setup, RunningAgent]) -> None:
    s, agent = setup
    assert "Reload: none since start (generation 1)" in cli("stats", "--socket",
                                                              str(s.sock)).stdout
    s.write(active=5)
    proc = s.reload()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("reloaded: generation 2 applied (3 components)")
    assert "cache: changed" in proc.stdout
    assert agent.stats()["cache"]["active_timeout"] == 5
    proc = s.reload()  # same file again: nothing to do, still a success
    assert proc.returncode == 0 and "configuration unchanged (generation 2)" in proc.stdout
    text = cli("stats", "--socket", str(s.sock)).stdout
    assert re.search(r"^Reload: last \d{4}-\d\d-\d\d \d\d:\d\d:\d\d unchanged \(generation 2\)$",
                     text, re.M), text
    snap = agent.stats()
    reload = snap["agent"]["reload"]
    assert (reload["generation"], reload["ok"], reload["unchanged"], reload["failed"]) == \
        (2, 1, 1, 0)
    assert reload["last_result"] == "unchanged" and reload["last_time"] > 0
    metrics = {f.name: f for f in metric_families(snap)}
    samples = {(s.name, tuple(s.labels.values())): s.value
               for f in metrics.values() for s in f.samples}
    assert samples[("netflow_agent_reloads_total", ("ok",))] == 1
    assert samples[("netflow_agent_reloads_total", ("unchanged",))] == 1
    assert samples[("netflow_agent_reload_last_success", ())] == 1
    assert samples[("netflow_agent_reload_last_timestamp_seconds", ())] == reload["last_time"]
    assert samples[("netflow_agent_config_generation", ())] == 2


def test_invalid_config_is_refused_with_the_key_and_every_failure_is_logged(
        setup: tuple[Setup, RunningAgent]) -> None:
    s, agent = setup
    s.write(active=-1)
    for _ in range(3):  # within the log repeat interval (60 s): each one is still logged
        proc = s.reload()
        assert proc.returncode == 1
        assert proc.stdout == ""
        assert "not applied: the new configuration is invalid (1 error(s)); still running " \
               "generation 1" in proc.stderr
        assert f"{s.config}: cache.active_timeout: -1 is below the minimum 1" in proc.stderr
    snap = agent.stats()
    assert snap["cache"]["active_timeout"] == 2  # the old configuration runs
    assert snap["agent"]["reload"]["failed"] == 3 and snap["agent"]["reload_failures"] == 3
    text = cli("stats", "--socket", str(s.sock)).stdout
    assert re.search(r"^Reload: last .* failed, not applied: the new configuration is invalid "
                     r"\(1 error\(s\)\); still running generation 1; .*cache.active_timeout",
                     text, re.M), text
    log = agent.log()
    errors = [line for line in log.splitlines() if " ERROR agent.reload: reload: not applied"
              in line]
    assert len(errors) == 3, log
    assert "suppressed" not in log
    samples = {(sm.name, tuple(sm.labels.values())): sm.value
               for f in metric_families(snap) for sm in f.samples}
    assert samples[("netflow_agent_reload_last_success", ())] == 0
    assert samples[("netflow_agent_reloads_total", ("failed",))] == 3


def test_a_component_that_fails_to_start_leaves_the_old_one_running(
        setup: tuple[Setup, RunningAgent], tmp_path: Path) -> None:
    s, agent = setup
    (tmp_path / "a-directory").mkdir()  # passes validation (writable), fails to open
    s.write(active=2, out=tmp_path / "a-directory")
    proc = s.reload()
    assert proc.returncode == 1
    assert "not applied: export.log[0]: failed to start: [Errno 21] Is a directory" \
        in proc.stderr
    assert "(the previous configuration was restored); still running generation 1" \
        in proc.stderr
    before = len(exported(s.out))
    agent.wait_for(lambda snap: len(exported(s.out)) > before, what="the old exporter writes")
    assert agent.stats()["agent"]["reload"]["generation"] == 1


def test_a_start_only_key_is_refused_not_ignored(setup: tuple[Setup, RunningAgent]) -> None:
    s, agent = setup
    s.agent_extra = 'metrics_listen = "127.0.0.1:19184"'
    s.write(active=5)
    proc = s.reload()
    assert proc.returncode == 1
    assert "changes [agent] keys that are read at start only; restart the agent" in proc.stderr
    assert "agent.metrics_listen: '' -> '127.0.0.1:19184'" in proc.stderr
    assert agent.stats()["cache"]["active_timeout"] == 2  # nothing of it was applied


def test_reload_of_an_unreachable_agent_fails(tmp_path: Path) -> None:
    proc = cli("reload", "--socket", str(tmp_path / "none.sock"))
    assert proc.returncode == 1 and "no such socket" in proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to another user needs root")
def test_root_only_config_warns_at_start_and_reload_fails_honestly(readable_dir: Path) -> None:
    s = Setup(readable_dir, agent_extra='user = "nobody"')
    s.config.chmod(0o600)  # as configuration management often writes it
    dry = cli("--dry-run", "--check-env", "-c", str(s.config))
    warning = (f"{s.config}: agent.user: warning: user 'nobody' cannot read this file: after "
               "start-up the agent drops to this user, so every reload will fail")
    assert dry.returncode == 0 and warning in dry.stderr, dry.stderr
    agent = RunningAgent(s.config, s.sock)
    try:
        agent.wait_ready()
        assert agent.stats()["agent"]["uid"] == 65534
        assert warning in agent.log()
        s.write(active=5)
        s.config.chmod(0o600)
        proc = s.reload()
        assert proc.returncode == 1
        assert f"{s.config}: cannot read: permission denied for user 'nobody' (uid 65534)" \
            in proc.stderr, proc.stderr
        assert agent.stats()["cache"]["active_timeout"] == 2
        s.config.chmod(0o644)  # the fix the warning suggests
        proc = s.reload()
        assert proc.returncode == 0 and "generation 2 applied" in proc.stdout, proc.stderr
        assert agent.stats()["cache"]["active_timeout"] == 5
    finally:
        agent.stop()
