"""agent.loop: a big expiry reaches the exporters in consecutive parts, every record once."""

from __future__ import annotations

import numpy as np

from netflow_agent.clock import Clock
from netflow_agent.loop import EXPORT_ROWS, Loop, export_parts
from netflow_agent.model import FlowBatch
from netflow_agent.runtime import RunContext
from netflow_agent.schema import active


def batch(n: int) -> FlowBatch:
    flows = active().empty(n)
    flows["ip_version"] = 4
    flows["packets"] = np.arange(1, n + 1)  # each row its own count: order is visible
    return FlowBatch("cache", flows)


class Hook:
    """The stage hooks a scan calls, standing in for the plugins."""

    def __init__(self, records: FlowBatch):
        self.records = records
        self.parts: list[np.ndarray] = []

    def agent_cache_expire(self, now_ns, force, limit=0):
        return [self.records]

    def agent_export_room(self):
        return []  # no exporter limits the scan

    def agent_aggregate_flows(self, records):
        pass

    def agent_export_flows(self, records):
        self.parts.append(records.flows["packets"].copy())

    def agent_tick(self, now_ns):
        pass


def test_a_big_expiry_is_exported_in_parts_in_order():
    n = 2 * EXPORT_ROWS + 5
    hook = Hook(batch(n))
    loop = Loop(RunContext(), Clock(), hook, 1_000_000)
    loop.scan(1, force=True)
    assert [len(p) for p in hook.parts] == [EXPORT_ROWS, EXPORT_ROWS, 5]
    assert np.array_equal(np.concatenate(hook.parts), np.arange(1, n + 1))
    assert loop.exported_flows == n


def test_a_small_expiry_is_one_call_and_no_copy():
    records = batch(10)
    assert export_parts(records) == [records]
    parts = export_parts(records, rows=4)
    assert [len(p) for p in parts] == [4, 4, 2]
    assert all(np.shares_memory(p.flows, records.flows) for p in parts)  # views


def test_a_scan_takes_the_exporters_smallest_room_but_none_while_stopping():
    class Rooms(Hook):
        def agent_export_room(self):
            return [500, 20]  # pluggy leaves out the exporters that answered None

    context = RunContext()
    loop = Loop(context, Clock(), Rooms(batch(1)), 1_000_000)
    assert loop.export_room() == 20
    Rooms.agent_export_room = lambda self: [0]
    assert loop.export_room() == -1  # full: nothing this scan
    context.stopping = True  # the exporters wait for room at stop: the scan is not limited
    assert loop.export_room() == 0
