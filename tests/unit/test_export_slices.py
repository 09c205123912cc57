"""agent/loop.py: a scan hands its flows to aggregation and export in slices of EXPORT_ROWS,
so a forced scan of 100k+ flows keeps the encoders' memory small; every flow leaves once."""

from __future__ import annotations

import socket
import types
from dataclasses import dataclass

from netflow_agent import hookimpl, loop
from netflow_agent.model import END_FORCED, END_OF_FLOW, TCP_FIN, make_key
from netflow_agent.registry import Component

S = 1_000_000_000
T0 = 1_700_000_000 * S


@dataclass(frozen=True, slots=True, kw_only=True)
class NoConfig:
    """A component without keys."""


def _packets(n: int) -> list[tuple[bytes, int, int, int, int]]:
    dst = socket.inet_aton("10.0.0.2")
    return [(make_key(4, 17, socket.inet_aton("10.0.0.1"), dst, 1000 + i, 53), 100 + i, 0, T0, 0)
            for i in range(n)]


def test_a_big_scan_is_exported_in_slices_every_flow_once(make_agent, collecting_plugin,
                                                          monkeypatch):
    monkeypatch.setattr(loop, "EXPORT_ROWS", 7)
    sizes: list[int] = []

    class Count(Component):
        stage, type_name = "aggregate", "count"

        @hookimpl
        def agent_aggregate_flows(self, records):
            sizes.append(len(records))

    def register(registry):
        registry.add("aggregate", "count", Count, NoConfig)

    agent = make_agent("[[ingest.fake]]\n[[export.collect]]\n[[aggregate.count]]\n", [
        collecting_plugin, types.SimpleNamespace(agent_register_components=hookimpl(register))])
    agent.feed(_packets(23))
    agent.finish()
    flows = agent["export.collect[0]"].flows
    assert sizes == [7, 7, 7, 2]
    assert sorted(f.octets for f in flows) == [100 + i for i in range(23)]
    assert agent.pipeline.loop.exported_flows == 23


def test_a_forced_scan_takes_the_table_out_in_steps(make_agent, collecting_plugin,
                                                   monkeypatch):
    """At stop the cache hands over EXPORT_ROWS flows per call, until fewer come; every flow
    leaves once, a flow that saw FIN keeps its end reason."""
    monkeypatch.setattr(loop, "EXPORT_ROWS", 7)
    calls: list[tuple[bool, int]] = []

    def agent_cache_expire(now_ns, force, limit):
        calls.append((force, limit))

    agent = make_agent("[cache]\ninactive_timeout = 60\n[[ingest.fake]]\n[[export.collect]]\n",
                       [collecting_plugin, types.SimpleNamespace(
                           agent_cache_expire=hookimpl(agent_cache_expire))])
    fin = make_key(4, 6, socket.inet_aton("10.0.0.9"), socket.inet_aton("10.0.0.2"), 80, 443)
    agent.feed(_packets(22) + [(fin, 40, TCP_FIN, T0, 0)])
    agent.finish()
    flows = agent["export.collect[0]"].flows
    assert [c for c in calls if c[0]] == [(True, 7)] * 4  # 7 + 7 + 7 + 2
    assert len(flows) == 23 and sorted(f.octets for f in flows) == sorted(
        [100 + i for i in range(22)] + [40])
    assert {f.end_reason for f in flows if f.octets == 40} == {END_OF_FLOW}  # the FIN flow
    assert {f.end_reason for f in flows if f.octets != 40} == {END_FORCED}


def test_a_sliced_timed_scan_trims_the_heap_after_it_unless_stopping(make_agent,
                                                                    collecting_plugin,
                                                                    monkeypatch):
    """A timed scan exported in slices opens the heap reuse window and gives the free heap
    back when it closes; the one before the state is saved at stop does not (the process
    exits after the final scan: a malloc_trim then is CPU for nothing)."""
    import contextlib

    from netflow_agent import heap

    monkeypatch.setattr(loop, "EXPORT_ROWS", 7)
    windows: list[bool] = []
    monkeypatch.setattr(heap, "reuse_parts",
                        lambda release=True: windows.append(release) or contextlib.nullcontext())
    opened = []
    for stopping in (False, True):
        agent = make_agent("[[ingest.fake]]\n[[export.collect]]\n", [collecting_plugin])
        agent.feed(_packets(23))
        lp = agent.pipeline.loop
        lp.context.stopping = stopping
        windows.clear()
        lp._expire(T0 + 1000 * S, False)  # every flow idle: 23 records, 4 slices
        opened.append(list(windows))
        lp.context.stopping = False
        assert len(agent["export.collect[0]"].flows) == 23
        agent.finish()
    assert opened == [[True], [False]]
