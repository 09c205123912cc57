"""Unprivileged: drain steps reuse their record arrays only once the pipeline let go of them.

A drain step's FlowBatch is written by the loader into an array the ingest keeps for the next
steps (:class:`~netflow_agent.plugins.ingest_ebpf.component.StepBuffers`): a batch that is
still queued, or that a plugin still holds, must never see its flows overwritten by a later
drain, and a batch the cache is done with gives its array back.
"""

from __future__ import annotations

from netflow_agent.plugins.ingest_ebpf.component import STEP_BUFFERS
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
    """Steps drained after the earlier batches were consumed (and dropped) are written into
    the arrays those batches used: the pool stays at STEP_BUFFERS arrays."""
    loader = FailingLoader(rows=64)
    comp = ingest_with(loader, chunk=64)
    comp._drain()
    first = batches(comp)
    kept = [b.flows.base for b in first if len(b.flows)]
    assert len(kept) == 1 and packets(first) == list(range(1, 65))
    del first, kept  # the cache is done with the batch
    pool = [buf.ctypes.data for buf in comp._buffers._pool]  # addresses: no reference
    loader.table["packets"] += 1000
    comp._drain()
    second = [b for b in batches(comp) if len(b.flows)]
    assert packets(second) == list(range(1001, 1065))
    assert second[0].flows.ctypes.data in pool
    assert len(comp._buffers._pool) <= STEP_BUFFERS
