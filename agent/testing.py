"""Test helpers for plugin authors (a pytest plugin, loaded through the ``pytest11`` entry point).

Fixtures:

* ``make_agent``: build a pipeline from TOML text, with extra plugin modules or objects
  registered, without touching the machine (no CLI, no signals);
* ``collecting_plugin``: a plugin module providing ``[[export.collect]]`` (records every flow,
  NAT event and tick) and ``[[ingest.fake]]`` (emits the batches the test queues).

Example::

    def test_my_exporter(make_agent, collecting_plugin):
        agent = make_agent('''
            [[ingest.fake]]
            [[export.collect]]
            [[export.mine]]
            target = "x"
        ''', plugins=[collecting_plugin, my_plugin_module])
        agent.feed(packets=[...])
        agent.finish()
"""

from __future__ import annotations

import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from netflow_agent import hookimpl
from netflow_agent.config.check import validate
from netflow_agent.config.schema import option
from netflow_agent.discovery import build_registry, make_manager
from netflow_agent.errors import ConfigError
from netflow_agent.model import FlowBatch, FlowRecord, NatEvent, Packet, PacketBatch
from netflow_agent.pipeline import Pipeline
from netflow_agent.registry import ComponentRegistry
from netflow_agent.roles import Ingest, NatExporter
from netflow_agent.runtime import ITEM_FLOWS, RunContext


@dataclass(frozen=True, slots=True, kw_only=True)
class _NoConfig:
    """A component without keys."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FakeIngestConfig:
    """``[[ingest.fake]]``."""

    finite: bool = option(True, doc="Whether the source ends by itself.")
    delivery_lag_ms: int = option(
        0, doc="The delivery lag it declares (RunContext.declare_delivery_lag), as a live "
               "ingest that hands packets over late would.", min=0)


class FakeIngest(Ingest):
    """Hands queued batches to the pipeline; the test drives it through :meth:`push`."""

    stage = "ingest"
    type_name = "fake"
    finite = True

    def __init__(self, config: FakeIngestConfig, name: str):
        super().__init__(config, name)
        self.context: RunContext | None = None

    @hookimpl
    def agent_start(self, context: RunContext) -> None:
        """Keep the context for :meth:`push`; declare the configured delivery lag."""
        self.context = context
        context.declare_delivery_lag(self.name, self.config.delivery_lag_ms * 1_000_000)

    def push(self, packets: list[Packet], **counters: int) -> None:
        """Emit one batch of packets."""
        assert self.context is not None, "pipeline not started"
        self.context.emit(PacketBatch(self.name, list(packets), **counters))

    def push_nat(self, events: list[NatEvent]) -> None:
        """Emit NAT events."""
        assert self.context is not None, "pipeline not started"
        self.context.emit_nat_events(events)

    def end(self) -> None:
        """Signal that this finite source is done."""
        assert self.context is not None
        self.context.done(self.name)


class CollectingExporter(NatExporter):
    """Remembers everything exported to it."""

    stage = "export"
    type_name = "collect"

    def __init__(self, config: _NoConfig, name: str):
        super().__init__(config, name)
        self.flows: list[FlowRecord] = []
        self.nat_events: list[NatEvent] = []
        self.ticks: list[int] = []
        self.stopped = False

    @hookimpl
    def agent_export_flows(self, records: list[FlowRecord]) -> None:
        """Collect flows."""
        self.flows.extend(records)

    @hookimpl
    def agent_export_nat_events(self, events: list[NatEvent]) -> None:
        """Collect NAT events."""
        self.nat_events.extend(events)

    @hookimpl
    def agent_tick(self, now_ns: int) -> None:
        """Remember tick times."""
        self.ticks.append(now_ns)

    @hookimpl
    def agent_stop(self) -> None:
        """Remember that stop was called."""
        self.stopped = True


def _register(registry: ComponentRegistry) -> None:
    registry.add("ingest", "fake", FakeIngest, FakeIngestConfig, doc="test source")
    registry.add("export", "collect", CollectingExporter, _NoConfig, doc="test sink")


#: A plugin module providing ``[[ingest.fake]]`` and ``[[export.collect]]``.
collecting_plugin_module = types.SimpleNamespace(
    agent_register_components=hookimpl(_register))


@dataclass
class AgentUnderTest:
    """A built and started pipeline under test control."""

    pipeline: Pipeline
    components: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        return self.pipeline.components[name]

    def feed(self, packets: list[Packet], source: str = "ingest.fake[0]", **counters: int) -> None:
        """Queue packets on a fake ingest and process everything queued."""
        self[source].push(packets, **counters)
        self.process()

    def process(self) -> None:
        """Handle every queued inbox item on this thread."""
        inbox = self.pipeline.context.inbox
        while not inbox.empty():
            kind, item = inbox.get_nowait()
            self.pipeline.dispatch(kind, item)

    def scan(self, now_ns: int) -> None:
        """Run one expiry/export/timer round at ``now_ns``."""
        self.pipeline.scan(now_ns)

    def finish(self) -> None:
        """Shut down: stop ingests, export every flow, stop exporters."""
        self.pipeline.shutdown()


def build_agent(toml_text: str, tmp_path: Path, plugins: Sequence[Any] = ()) -> AgentUnderTest:
    """Validate ``toml_text``, build and start a pipeline; raise ConfigError on issues."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text(toml_text)
    pm, _ = make_manager()
    for n, plugin in enumerate(plugins):
        pm.register(plugin, name=f"test-plugin-{n}")
    registry = build_registry(pm)
    config, issues = validate(cfg, registry, pm.hook)
    if config is None:
        raise ConfigError(issues)
    pipeline = Pipeline(config, pm)
    pipeline.build()
    pipeline.start()
    return AgentUnderTest(pipeline)


def v9_export_agent(port: int, tmp_path: Path, extra: str = "") -> AgentUnderTest:
    """An agent whose ``[[ingest.fake]]`` feeds a NetFlow v9 exporter to ``127.0.0.1:port``
    (``extra``: more ``[[export.netflow]]`` lines): the stop's export path, without a kernel."""
    return build_agent(f"""
[agent]
control_socket = ""
[[ingest.fake]]
[[export.netflow]]
destination = ["127.0.0.1:{port}"]
protocol = 9
{extra}""", tmp_path, [collecting_plugin_module])


def fill_cache(agent: AgentUnderTest, flows: FlowBatch, rows: int) -> None:
    """Hand ``flows`` to the agent's cache in slices of ``rows`` (an ingest's batches)."""
    for i in range(0, len(flows), rows):
        agent.pipeline.dispatch(ITEM_FLOWS, FlowBatch("ingest.fake[0]", flows.flows[i:i + rows]))


@pytest.fixture
def collecting_plugin() -> Any:
    """Name: collecting_plugin. Scope: function. Provides [[ingest.fake]], [[export.collect]]."""
    return collecting_plugin_module


@pytest.fixture
def make_agent(tmp_path: Path) -> Any:
    """Name: make_agent. Scope: function. Depends: tmp_path. ``make_agent(toml, plugins=[])``."""
    built: list[AgentUnderTest] = []

    def factory(toml_text: str, plugins: Sequence[Any] = ()) -> AgentUnderTest:
        agent = build_agent(toml_text, tmp_path, list(plugins))
        built.append(agent)
        return agent

    yield factory
    for agent in built:
        if agent.pipeline.started:
            agent.pipeline.stop_started()
