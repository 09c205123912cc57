"""Reload outcomes at the pipeline (agent/reloading.py): a component that fails to start half
way through a reload leaves the previous configuration running, restored instance by
instance; a file identical to what runs is "unchanged"; [agent] keys read at start only are
refused, not silently ignored."""

from __future__ import annotations

import gc
import logging
import threading
import types
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from netflow_agent import hookimpl
from netflow_agent.config.check import validate
from netflow_agent.config.schema import option
from netflow_agent.control import reload_and_wait
from netflow_agent.discovery import build_registry
from netflow_agent.lifecycle import StartupError
from netflow_agent.logutil import RepeatFilter
from netflow_agent.registry import Component
from netflow_agent.reloading import release_frozen
from tests.export_netflow.collect import UdpSink
from tests.support.wireaudit import WireAudit
from tests.unit.test_reload_swap import T0, S, packet

BASE = """
[[ingest.fake]]
[[ingest.flaky]]
mark = 1
[[export.collect]]
"""


@dataclass(frozen=True, slots=True, kw_only=True)
class FlakyConfig:
    mark: int = option(0, doc="Tells instances apart.")
    fail: bool = option(False, doc="agent_start raises.")


class Flaky(Component):
    """An ingest whose start fails when configured to; records which instances run."""

    stage, type_name = "ingest", "flaky"
    running: list[int] = []

    @hookimpl
    def agent_start(self, context: Any) -> None:
        if self.config.fail:
            raise OSError("boom")
        Flaky.running.append(self.config.mark)

    @hookimpl
    def agent_stop(self) -> None:
        Flaky.running.remove(self.config.mark)


FLAKY = types.SimpleNamespace(agent_register_components=hookimpl(
    lambda registry: registry.add("ingest", "flaky", Flaky, FlakyConfig, doc="test ingest")))


def reload_to(agent: Any, tmp_path: Path, text: str) -> Any:
    """Point the agent's reloader at ``text`` and run one reload; return the outcome."""
    path = tmp_path / "next.toml"
    path.write_text(text)
    pm = agent.pipeline.pm
    agent.pipeline.reloader = lambda: validate(path, build_registry(pm), None)
    outcomes: list[Any] = []
    agent.pipeline.request_reload(outcomes.append)
    agent.process()
    [outcome] = outcomes
    return outcome


def test_failed_start_restores_the_previous_configuration(make_agent, collecting_plugin,
                                                          tmp_path: Path) -> None:
    Flaky.running = []
    agent = make_agent(BASE, [collecting_plugin, FLAKY])
    before = list(agent.pipeline.components)
    # the new exporter starts first, then the changed ingest is stopped and its successor fails
    outcome = reload_to(agent, tmp_path, BASE.replace("mark = 1", "mark = 2\nfail = true")
                        + "[[export.collect]]\n")
    assert (outcome.result, outcome.generation) == ("failed", 1)
    assert outcome.reason == ("not applied: ingest.flaky[0]: failed to start: boom (the "
                              "previous configuration was restored); still running generation 1")
    assert sorted(agent.pipeline.components) == sorted(before)  # export.collect[1] is gone
    assert Flaky.running == [1]  # the old ingest runs again, once
    assert sorted(i.path for i in agent.pipeline.config.instances) == sorted(before)
    assert agent.pipeline.config.by_stage("ingest")[1].config.mark == 1
    assert agent.pipeline.reload_history.counts == {"failed": 1}


def test_a_reload_queued_as_the_agent_stops_is_refused_not_applied(
        make_agent, collecting_plugin, tmp_path: Path) -> None:
    """A reload (agent reload, SIGHUP) still in the inbox when the stop drains it: answered
    "not applied", the configuration never read, no component started after the ingests
    stopped (a changed ingest used to be started then and left running)."""
    Flaky.running = []
    agent = make_agent(BASE, [collecting_plugin, FLAKY])
    read: list[int] = []
    path = tmp_path / "next.toml"
    path.write_text(BASE.replace("mark = 1", "mark = 2"))
    pm = agent.pipeline.pm
    agent.pipeline.reloader = lambda: (read.append(1), validate(path, build_registry(pm),
                                                                 None))[1]
    outcomes: list[Any] = []
    agent.pipeline.request_reload(outcomes.append)
    agent.finish()
    [outcome] = outcomes
    assert (outcome.result, outcome.generation) == ("failed", 1)
    assert outcome.reason == ("not applied: the agent is stopping; still running "
                              "generation 1")
    assert read == [] and Flaky.running == []


@pytest.mark.parametrize("stopping", [False, True])
def test_a_control_reload_the_pipeline_never_started_is_withdrawn_and_never_applied(
        make_agent, collecting_plugin, tmp_path: Path, stopping: bool,
        caplog: pytest.LogCaptureFixture) -> None:
    """`agent reload` whose wait ends (its timeout; the agent stopping) before the pipeline
    took the request: the reply says "not applied" (not "unknown"), and when the pipeline
    gets to the request later it skips it: a user who asks again applies it once. The
    withdrawal leaves a trace: a WARNING that says why, and a failed reload in the history
    `agent stats` shows (as the asker was told)."""
    Flaky.running = []
    agent = make_agent(BASE, [collecting_plugin, FLAKY])
    read: list[int] = []
    agent.pipeline.reloader = lambda: (read.append(1), (None, []))[1]
    cancel = threading.Event()
    if stopping:
        cancel.set()
    with caplog.at_level(logging.WARNING, logger="agent.control"):
        reply = reload_and_wait(agent.pipeline, timeout=0.2, cancel=cancel)
    why = "the agent is stopping" if stopping else "the agent did not get to it within 0.2 s"
    assert reply == {"ok": False, "result": "failed",
                     "message": f"not applied: {why}; nothing changed"}
    assert [(r.levelname, r.getMessage()) for r in caplog.records
            if r.name == "agent.control"] == [
        ("WARNING", f"reload not applied: {why} (asked over the control socket)")]
    agent.process()  # the pipeline takes the request now
    history = agent.pipeline.reload_history.as_dict()
    assert read == [] and history["generation"] == 1
    assert (history["ok"], history["failed"], history["last_result"]) == (0, 1, "failed")
    assert history["last_reason"] == (f"not applied: withdrawn before it started: {why}; "
                                      "still running generation 1")


def test_every_withdrawn_reload_is_logged_never_folded(make_agent, collecting_plugin,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Three `agent reload` runs that time out within a minute: the log has three WARNING
    lines, not one (the handlers' repeat filter folds identical lines unless told not to)."""
    agent = make_agent(BASE, [collecting_plugin, FLAKY])
    agent.pipeline.reloader = lambda: (None, [])
    fold = RepeatFilter(60)
    with caplog.at_level(logging.WARNING, logger="agent.control"):
        for _ in range(3):
            reload_and_wait(agent.pipeline, timeout=0.05)
    warnings = [r for r in caplog.records if r.name == "agent.control"]
    assert len(warnings) == 3
    assert [fold.filter(r) for r in warnings] == [True, True, True]


def test_a_reload_that_waited_its_whole_time_queued_is_not_applied(
        make_agent, collecting_plugin) -> None:
    """No time left (it waited in the control server's queue): withdrawn at once, counted
    when the pipeline gets there, never applied."""
    agent = make_agent(BASE, [collecting_plugin, FLAKY])
    read: list[int] = []
    agent.pipeline.reloader = lambda: (read.append(1), (None, []))[1]
    reply = reload_and_wait(agent.pipeline, timeout=-0.5, limit=60)
    assert reply["result"] == "failed"
    assert reply["message"] == "not applied: the agent did not get to it within 60 s; nothing " \
        "changed"
    agent.process()
    assert read == [] and agent.pipeline.reload_history.counts["failed"] == 1


def test_unchanged_and_start_only_outcomes(make_agent, collecting_plugin,
                                           tmp_path: Path) -> None:
    Flaky.running = []
    agent = make_agent(BASE, [collecting_plugin, FLAKY])
    flaky = agent["ingest.flaky[0]"]
    outcome = reload_to(agent, tmp_path, BASE)
    assert (outcome.result, outcome.ok, outcome.reason) == \
        ("unchanged", True, "configuration unchanged (generation 1)")
    assert agent["ingest.flaky[0]"] is flaky
    outcome = reload_to(agent, tmp_path, '[agent]\nuser = "nobody"\n'
                        + BASE.replace("mark = 1", "mark = 3"))
    assert not outcome.ok
    assert outcome.details == ("agent.user: '' -> 'nobody' (read at start only)",)
    assert agent["ingest.flaky[0]"] is flaky and Flaky.running == [1]
    outcome = reload_to(agent, tmp_path, BASE.replace("mark = 1", "mark = 3"))
    assert (outcome.result, outcome.generation, outcome.details) == \
        ("ok", 2, ("ingest.flaky[0]: changed",))
    assert Flaky.running == [3]
    history = agent.pipeline.reload_history.as_dict()
    assert (history["ok"], history["unchanged"], history["failed"]) == (1, 1, 1)
    assert history["last_result"] == "ok" and history["generation"] == 2


def test_a_reload_lets_replaced_frozen_objects_be_collected():
    """The agent freezes start-up's objects out of garbage collection; a component a reload
    replaced, held in a reference cycle, must still be freed (not kept until exit)."""
    class Replaced:
        pass

    old = Replaced()
    old.me = old  # a cycle, as an exporter and its destinations' callbacks make
    ref = weakref.ref(old)
    gc.freeze()
    try:
        del old
        gc.collect()
        assert ref() is not None  # frozen: a full collection does not see it
        release_frozen()
        assert ref() is None
        assert gc.get_freeze_count() > 0  # what is still alive is frozen again
    finally:
        gc.unfreeze()


class FlakyExport(Component):
    """An exporter whose start fails when configured to; records which instances run."""

    stage, type_name = "export", "flaky"
    running: list[int] = []

    @hookimpl
    def agent_start(self, context: Any) -> None:
        if self.config.fail:
            raise OSError("refused")
        FlakyExport.running.append(self.config.mark)

    @hookimpl
    def agent_stop(self) -> None:
        FlakyExport.running.remove(self.config.mark)


FLAKY_EXPORT = types.SimpleNamespace(agent_register_components=hookimpl(
    lambda registry: registry.add("export", "flaky", FlakyExport, FlakyConfig,
                                  doc="test exporter")))

FLOW = "[flow]\nvlan = true\n"


def test_a_failed_reload_keeps_flow_and_schema_so_later_reloads_still_apply(
        make_agent, collecting_plugin, tmp_path: Path) -> None:
    """Lifecycle.reload failing with no rollback after it (the rollback failed too): the
    configuration it leaves keeps [flow] and the schema, so the next reload of the same
    [flow] is applied, not refused as a change of keys read at start only."""
    Flaky.running = []
    agent = make_agent(FLOW + BASE, [collecting_plugin, FLAKY])
    flow, fields = agent.pipeline.config.flow, agent.pipeline.config.schema
    path = tmp_path / "failing.toml"
    path.write_text(FLOW + BASE.replace("mark = 1", "mark = 2\nfail = true"))
    failing, issues = validate(path, build_registry(agent.pipeline.pm), None)
    assert failing is not None, issues
    with pytest.raises(StartupError, match="boom"):
        agent.pipeline.reload(failing)
    assert agent.pipeline.config.flow == flow and agent.pipeline.config.schema == fields
    assert Flaky.running == []  # the failed ingest is gone, nothing restored it
    outcome = reload_to(agent, tmp_path, FLOW + BASE.replace("mark = 1", "mark = 3"))
    assert (outcome.result, outcome.details) == ("ok", ("ingest.flaky[0]: added",))
    assert Flaky.running == [3]


TWO_EACH = """
[agent]
control_socket = ""
[cache]
inactive_timeout = 1
[[ingest.fake]]
[[ingest.flaky]]
mark = 1
[[ingest.flaky]]
mark = 2
[[export.netflow]]
destination = ["{dest}"]
protocol = 9
refresh_rate = {refresh}
[[export.flaky]]
mark = 1
"""


def test_the_second_of_two_changed_instances_failing_rolls_back_the_whole_stage(
        make_agent, collecting_plugin, tmp_path: Path) -> None:
    """Two changed instances in one stage, the second's start fails: ingests (both flaky
    ones) and exporters (a NetFlow exporter and a flaky one) are back as they were, and the
    NetFlow stream goes on across the replacement and the rollback (one stream, sequence
    never restarted), because a failed reload keeps what the stopped instances left."""
    Flaky.running, FlakyExport.running = [], []
    sink = UdpSink()
    agent = make_agent(TWO_EACH.format(dest=sink.endpoint, refresh=20),
                       [collecting_plugin, FLAKY, FLAKY_EXPORT])
    try:
        agent.feed([packet(1000 + i, T0) for i in range(30)])
        agent.scan(T0 + 3 * S)
        for changed in (TWO_EACH.replace("mark = 1\n[[ingest.flaky]]\nmark = 2",
                                         "mark = 3\n[[ingest.flaky]]\nmark = 4\nfail = true"),
                        TWO_EACH.replace("[[export.flaky]]\nmark = 1",
                                         "[[export.flaky]]\nmark = 5\nfail = true")):
            outcome = reload_to(agent, tmp_path, changed.format(dest=sink.endpoint,
                                                                refresh=21))
            assert outcome.result == "failed" and "failed to start" in outcome.reason
            assert "previous configuration was restored" in outcome.reason
            assert sorted(Flaky.running) == [1, 2] and FlakyExport.running == [1]
            assert agent["export.netflow[0]"].config.refresh_rate == 20
        agent.feed([packet(2000 + i, T0 + 4 * S) for i in range(30)])
        agent.scan(T0 + 7 * S)
    finally:
        agent.finish()
    audit = WireAudit().feed_all(sink.drain())
    sink.close()
    audit.assert_clean()  # one stream: sequence from 0, never back
    assert len(audit.streams) == 1
    assert sorted(r.values[7] for r in audit.flows()) == [*range(1000, 1030),
                                                         *range(2000, 2030)]
