"""Unprivileged: drain steps reuse their record arrays only once the pipeline let go of them.

A drain step's FlowBatch is written by the loader into an array the ingest keeps for the next
steps (:class:`~netflow_agent.plugins.ingest_ebpf.component.StepBuffers`): a batch that is
still queued, or that a plugin still holds, must never see its flows overwritten by a later
drain, and a batch the cache is done with gives its array back.
"""

from __future__ import annotations

from netflow_agent.plugins.ingest_ebpf.component import STEP_BUFFERS, StepBuffers
from tests.ingest_ebpf.test_drain_failures import FailingLoader, batches, ingest_with


def packets(got: list) -> list[int]:
    return [int(p) for b in got for p in b.flows["packets"]]


def test_queued_batches_keep_their_flows_through_later_drains():
    """Two drains of 4 steps each while nothing is consumed: 8 batches, each with its own
    rows, the first drain's untouched by the second's (more steps than kept arrays)."""
    loader = FailingLoader(rows=256)
    comp = ingest_with(loader, chunk=64)
    comp._drain()
    loader.table["packets"] += 1000  # the second drain's flows differ
    comp._drain()
    got = batches(comp)
    assert packets(got) == list(range(1, 257)) + list(range(1001, 1257))
    arrays = {id(b.flows.base) for b in got if len(b.flows) and b.flows.base is not None}
    assert len(arrays) == 8  # no two queued steps share an array


def test_an_array_is_reused_once_its_batch_is_dropped():
    """Within one drain, a step whose batch the cache is done with (dropped) gives its array
    to a later step: 6 steps consumed one by one use a single array; the pool never holds
    more than STEP_BUFFERS."""
    buffers = StepBuffers(64)
    seen = set()
    for _ in range(6):
        flows = buffers.take()
        seen.add(flows.ctypes.data)
        batch = flows[:64]  # the step's FlowBatch view, merged and dropped
        del batch, flows
    assert len(seen) == 1
    held = [buffers.take() for _ in range(STEP_BUFFERS + 2)]  # none given back: all new
    assert len({a.ctypes.data for a in held}) == STEP_BUFFERS + 2
    assert len(buffers._pool) == STEP_BUFFERS
