"""Ingest delivery lag: the cache judges inactivity only up to what every live ingest has
surely delivered.

The eBPF ingest hands a packet to the cache up to a poll interval after its kernel timestamp,
the NFLOG ingest up to its ``batch_ms`` (and the kernel's flush timeout) later. Each declares
that bound (``RunContext.declare_delivery_lag``); the cache exports a flow as idle only when
``last + inactive_timeout + lag <= now``, so a flow that pauses for just under
``inactive_timeout`` is one record, as with ipt_NETFLOW (which sees every packet at once),
not two. The lag goes with the ingest that declared it (reload, removal).
"""

from __future__ import annotations

import time
import types

import pytest

from netflow_agent import hookimpl
from netflow_agent.config.check import validate
from netflow_agent.discovery import build_registry
from netflow_agent.lifecycle import StartupError
from netflow_agent.model import END_ACTIVE, END_IDLE
from netflow_agent.runtime import ITEM_CALL, ITEM_STOP, RunContext
from netflow_agent.stages.cache import MAX_DEFER_S, CacheConfig, FlowCache
from netflow_agent.testing import (
    FakeIngest,
    FakeIngestConfig,
    build_agent,
    collecting_plugin_module,
)
from tests.unit.test_cache import T0, S, feed, key

MS = 1_000_000
CONFIG = """
[agent]
control_socket = ""
[cache]
inactive_timeout = 15
active_timeout = 1800
{ingests}
[[export.collect]]
"""
FAKE = "[[ingest.fake]]\n"


def lagged_cache(lag_ns: int, **config: int) -> FlowCache:
    """A cache started in a context where one live ingest declared ``lag_ns``."""
    cache = FlowCache(CacheConfig(**{"inactive_timeout": 15, **config}))
    context = RunContext()
    context.declare_delivery_lag("ingest.live[0]", lag_ns)
    cache.agent_start(context=context)
    return cache


def test_a_flow_idle_less_than_timeout_plus_lag_stays_and_its_late_packet_joins_it():
    """The packet sent 14.9 s after the last one reaches the cache only at the next drain,
    after the scan at T0+15.5: the flow must still be there to take it (one record)."""
    c = lagged_cache(S)
    feed(c, (key(1), 100, 0, T0, 0))
    assert len(c.agent_cache_expire(now_ns=T0 + 15_500 * MS, force=False)) == 0
    feed(c, (key(1), 60, 0, T0 + 14_900 * MS, 0))  # delivered late, kernel timestamp
    assert len(c.agent_cache_expire(now_ns=T0 + 16 * S, force=False)) == 0
    (flow,) = c.agent_cache_expire(now_ns=T0 + 31 * S, force=False)
    assert (flow.packets, flow.octets, flow.start_ns, flow.end_ns, flow.end_reason) == (
        2, 160, T0, T0 + 14_900 * MS, END_IDLE)


def test_a_flow_idle_longer_than_timeout_plus_lag_leaves_as_idle():
    c = lagged_cache(S)
    feed(c, (key(1), 100, 0, T0, 0), (key(2), 100, 0, T0 + S, 0))
    (flow,) = c.agent_cache_expire(now_ns=T0 + 16 * S, force=False)  # 16 >= 15 + 1
    assert (flow.src_port, flow.end_reason) == (1, END_IDLE)
    assert c.active_flows == 1  # flow 2: idle 15 s, lag not over


def test_without_a_declared_lag_the_idle_cutoff_is_the_timeout():
    """A third-party ingest that declares nothing, a pcap replay: exactly ipt_NETFLOW's
    timing, as before."""
    c = FlowCache(CacheConfig(inactive_timeout=15))
    c.agent_start(context=RunContext())
    feed(c, (key(1), 100, 0, T0, 0))
    assert len(c.agent_cache_expire(now_ns=T0 + 15 * S, force=False)) == 1


def test_the_lag_moves_neither_the_active_timeout_nor_a_forced_export():
    c = lagged_cache(S, active_timeout=60)
    feed(c, (key(1), 100, 0, T0, 0), (key(1), 100, 0, T0 + 59_500 * MS, 0),
         (key(2), 100, 0, T0 + 59 * S, 0))
    (old,) = c.agent_cache_expire(now_ns=T0 + 60 * S, force=False)
    assert (old.src_port, old.end_reason) == (1, END_ACTIVE)
    assert len(c.agent_cache_expire(now_ns=T0 + 61 * S, force=True)) == 1


def test_a_deferred_flow_waits_for_room_as_long_as_without_a_lag():
    """The wait bound counts from the flow's due time, which the lag moves too."""
    c = lagged_cache(2 * S)
    feed(c, (key(1), 100, 0, T0, 0))
    due = T0 + 17 * S  # 15 s idle + 2 s lag
    assert len(c.agent_cache_expire(now_ns=due, force=False, limit=-1)) == 0
    assert c.counters()["expiry_deferred_since_ns"] == due
    assert len(c.agent_cache_expire(now_ns=due + MAX_DEFER_S * S - S, force=False,
                                    limit=-1)) == 0
    assert len(c.agent_cache_expire(now_ns=due + MAX_DEFER_S * S, force=False, limit=-1)) == 1


def test_the_largest_declared_lag_counts_and_zero_withdraws():
    now = [T0]
    context = RunContext(clock=lambda: now[0])
    assert context.delivery_lag_ns() == 0
    context.declare_delivery_lag("ingest.ebpf[0]", 1500 * MS)
    context.declare_delivery_lag("ingest.nflog[0]", 400 * MS)
    assert context.delivery_lag_ns() == 1500 * MS
    context.declare_delivery_lag("ingest.ebpf[0]", 0)
    assert context.delivery_lag_ns() == 400 * MS
    context.forget_delivery_lag("ingest.nflog[0]", at_once=True)
    assert context.delivery_lag_ns() == 0
    with pytest.raises(ValueError):
        context.declare_delivery_lag("ingest.nflog[0]", -1)


def test_a_retired_ingests_lag_lasts_one_lag_for_the_packets_its_stop_queued():
    """The eBPF ingest's stop drains both kernel tables into the inbox, NFLOG's its held
    rows: they are merged after the retirement, so its lag must still count until then."""
    now = [T0]
    context = RunContext(clock=lambda: now[0])
    context.declare_delivery_lag("ingest.ebpf[0]", 1500 * MS)
    context.declare_delivery_lag("ingest.nflog[0]", 400 * MS)
    context.forget_delivery_lag("ingest.ebpf[0]")
    assert context.delivery_lag_ns() == 1500 * MS
    context.declare_delivery_lag("ingest.ebpf[0]", 300 * MS)  # its replacement, same path
    now[0] += 1499 * MS
    assert context.delivery_lag_ns() == 1500 * MS
    now[0] += MS
    assert context.delivery_lag_ns() == 400 * MS
    assert context.retiring_lags == {}


def test_a_full_table_calls_flows_idle_without_the_lag():
    """Holding idle flows one lag longer in a full table would refuse new flows (maxflows
    drops) that ipt_NETFLOW's timing takes: there the timeout alone decides."""
    c = lagged_cache(2 * S, maxflows=4)
    feed(c, *[(key(port), 100, 0, T0, 0) for port in range(4)])
    assert c.active_flows == 4
    assert len(c.agent_cache_expire(now_ns=T0 + 15_500 * MS, force=False)) == 4
    c = lagged_cache(2 * S, maxflows=4)
    feed(c, *[(key(port), 100, 0, T0, 0) for port in range(3)])
    assert len(c.agent_cache_expire(now_ns=T0 + 15_500 * MS, force=False)) == 0  # room left
    feed(c, (key(3), 100, 0, T0 + S, 0), (key(4), 100, 0, T0 + S, 0))  # one refused
    assert c.counters()["maxflows"] == 1
    assert len(c.agent_cache_expire(now_ns=T0 + 15_900 * MS, force=False)) == 3
    assert len(c.agent_cache_expire(now_ns=T0 + 16_100 * MS, force=False)) == 0  # lag again


def test_a_flow_due_by_both_timeouts_leaves_as_idle_when_idle_by_the_timeout():
    c = lagged_cache(2 * S, active_timeout=60)
    feed(c, (key(1), 100, 0, T0, 0), (key(1), 100, 0, T0 + 44_500 * MS, 0))
    (flow,) = c.agent_cache_expire(now_ns=T0 + 60 * S, force=False)  # idle 15.5 s < 17
    assert flow.end_reason == END_IDLE


def _reload(agent, tmp_path, ingests: str) -> None:
    (tmp_path / "new.toml").write_text(CONFIG.format(ingests=ingests))
    new, issues = validate(tmp_path / "new.toml", build_registry(agent.pipeline.pm), None)
    assert new is not None, issues
    agent.pipeline.reload(new)


def _idle_flow_exported(agent, sport: int, idle_s: float) -> bool:
    """Feed one packet of a new flow at T0 + sport s, scan ``idle_s`` later: exported?"""
    sink = agent["export.collect[0]"]
    before = len(sink.flows)
    agent.feed([(key(sport), 100, 0, T0 + sport * S, 0)])
    agent.scan(T0 + sport * S + int(idle_s * S))
    return any(r.src_port == sport for r in sink.flows[before:])


def test_the_pipeline_holds_idle_flows_for_a_live_ingests_lag_and_forgets_it_on_retire(
        tmp_path):
    lagged = FAKE + "delivery_lag_ms = 1000\n"
    agent = build_agent(CONFIG.format(ingests=FAKE + lagged), tmp_path,
                        [collecting_plugin_module])
    try:
        assert agent.pipeline.context.delivery_lag_ns() == S
        assert not _idle_flow_exported(agent, 100, 15.5)
        agent.feed([(key(100), 60, 0, T0 + 114_900 * MS, 0)])  # its late packet
        agent.scan(T0 + 131 * S)
        assert [(r.src_port, r.packets) for r in agent["export.collect[0]"].flows] == [(100, 2)]
        context = agent.pipeline.context
        now = [context.now_ns()]
        context.clock = lambda: now[0]
        _reload(agent, tmp_path, FAKE + FAKE + "delivery_lag_ms = 300\n")  # changed: replaced
        assert context.delivery_lag_ns() == S  # the old one's stop drain may still be queued
        now[0] += S
        assert context.delivery_lag_ns() == 300 * MS
        assert not _idle_flow_exported(agent, 200, 15.2)
        _reload(agent, tmp_path, FAKE)  # the lagged ingest removed: its lag goes with it
        now[0] += 300 * MS
        assert context.delivery_lag_ns() == 0
        assert _idle_flow_exported(agent, 300, 15.0)
    finally:
        agent.finish()


class _FailingIngest(FakeIngest):
    """Declares a sampling, a lag and a namespace, then fails to start (as the eBPF ingest
    does when the kernel refuses its maps)."""

    type_name = "failing"

    @hookimpl
    def agent_start(self, context: RunContext) -> None:
        context.declare_sampling(self.name, 10)
        context.declare_delivery_lag(self.name, 5 * S)
        context.declare_netns(self.name, "/proc/1/ns/net")
        raise OSError("the kernel refused the maps")


failing_plugin = types.SimpleNamespace(agent_register_components=hookimpl(
    lambda registry: registry.add("ingest", "failing", _FailingIngest, FakeIngestConfig,
                                  doc="fails to start")))


def test_an_ingest_that_fails_to_start_on_reload_leaves_no_declaration(tmp_path):
    """Its flows never come: a lag it declared before failing would hold every idle flow
    (and its sampling and netns would mislabel the others' records)."""
    agent = build_agent(CONFIG.format(ingests=FAKE), tmp_path,
                        [collecting_plugin_module, failing_plugin])
    try:
        with pytest.raises(StartupError, match="refused the maps"):
            _reload(agent, tmp_path, FAKE + "[[ingest.failing]]\n")
        context = agent.pipeline.context
        assert (context.delivery_lags, context.samplings, context.observed_netns) == ({}, {}, {})
        assert _idle_flow_exported(agent, 100, 15.0)
    finally:
        agent.finish()


class _LateIngest(FakeIngest):
    """A live ingest that holds a packet "in the kernel" and emits it at its stop, as the
    eBPF ingest's stop drains its tables into the inbox."""

    type_name = "late"
    finite = False
    held: list = []

    @hookimpl
    def agent_stop(self) -> None:
        if self.held:
            self.push(self.held)


late_plugin = types.SimpleNamespace(agent_register_components=hookimpl(
    lambda registry: registry.add("ingest", "late", _LateIngest, FakeIngestConfig,
                                  doc="emits at stop")))


def test_a_removed_ingests_last_packets_join_their_flow_though_a_scan_runs_first(tmp_path):
    """The loop scans right after the reload item, before the stop's packets are merged:
    the flow, idle 15.3 s of 15 s + 1 s, must wait for them (one record, not two)."""
    live = "[[ingest.fake]]\nfinite = false\n"
    agent = build_agent(CONFIG.format(ingests="[[ingest.late]]\ndelivery_lag_ms = 1000\n" + live),
                        tmp_path, [collecting_plugin_module, late_plugin])
    pipeline = agent.pipeline
    now = time.time_ns()
    agent.feed([(key(7), 100, 0, now - 15_300 * MS, 0)], source="ingest.late[0]")
    _LateIngest.held = [(key(7), 60, 0, now - 400 * MS, 0)]
    (tmp_path / "new.toml").write_text(CONFIG.format(ingests=live))
    new, issues = validate(tmp_path / "new.toml", build_registry(pipeline.pm), None)
    assert new is not None, issues
    pipeline.context.inbox.put((ITEM_CALL, lambda pipe: pipe.reload(new)))
    pipeline.context.inbox.put((ITEM_STOP, None))
    pipeline.loop.next_scan_ns = 1  # a scan is due when the reload item is done
    try:
        pipeline.run()
    finally:
        _LateIngest.held = []
        agent.finish()
    assert [(r.packets, r.octets) for r in agent["export.collect[0]"].flows
            if r.src_port == 7] == [(2, 160)]


def test_the_stats_show_how_long_past_the_timeout_an_idle_flow_stays(tmp_path):
    """``agent stats`` says why idle flows leave 16.5 s after their last packet with eBPF's
    defaults, not 15 s: the Timeouts line, the JSON's ``cache.delivery_lag_s`` and the
    Prometheus gauge carry the largest declared lag; without one, ipt_NETFLOW's line."""
    from netflow_agent.metrics import metric_families
    from netflow_agent.report import build_snapshot, format_report

    def shown(ingests: str) -> tuple[float, str, float]:
        agent = build_agent(CONFIG.format(ingests=ingests), tmp_path, [collecting_plugin_module])
        try:
            snap = build_snapshot(agent.pipeline)
            timeouts = next(line for line in format_report(snap).splitlines()
                            if "Timeouts:" in line)
            gauge = next(f for f in metric_families(snap)
                         if f.name.endswith("delivery_lag_seconds"))
            return snap["cache"]["delivery_lag_s"], timeouts, gauge.samples[0].value
        finally:
            agent.finish()

    lag_s, line, gauge = shown(FAKE + FAKE + "delivery_lag_ms = 1500\n")
    assert (lag_s, gauge) == (1.5, 1.5)
    assert "Timeouts: active 1800, inactive 15 (+1.5 s delivery lag). Maxflows" in line
    lag_s, line, gauge = shown(FAKE)
    assert (lag_s, gauge) == (0, 0)
    assert "Timeouts: active 1800, inactive 15. Maxflows" in line
