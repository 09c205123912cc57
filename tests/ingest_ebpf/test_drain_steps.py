"""Unprivileged: drain steps reuse their record arrays only once the pipeline let go of them.

A drain step's FlowBatch is written by the loader into an array the ingest keeps for the next
steps (:class:`~netflow_agent.plugins.ingest_ebpf.component.StepBuffers`): a batch that is
still queued, or that a plugin still holds, must never see its flows overwritten by a later
drain, and a batch the cache is done with gives its array back.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from netflow_agent.api import flow_schema
from netflow_agent.plugins.ingest_ebpf import component
from netflow_agent.plugins.ingest_ebpf.component import (
    FREE_REFS,
    STEP_BUFFERS,
    StepBuffers,
    _refcounts,
)
from tests.ingest_ebpf.test_drain_failures import FailingLoader, batches, ingest_with


def packets(got: list) -> list[int]:
    return [int(p) for b in got for p in b.flows["packets"]]


def test_queued_batches_keep_their_flows_through_later_drains():
    """Two drains of 4 steps each while nothing is consumed: 8 batches, each with its own
    rows, the first drain's untouched by the second's (more steps than kept arrays; each
    drain waits for a kept array only as long as its wait allows, then takes new ones)."""
    loader = FailingLoader(rows=256)
    comp = ingest_with(loader, chunk=64)
    comp._drain()
    loader.table["packets"] += 1000  # the second drain's flows differ
    comp._drain()
    got = batches(comp)
    assert packets(got) == list(range(1, 257)) + list(range(1001, 1257))
    arrays = {id(b.flows.base) for b in got if len(b.flows) and b.flows.base is not None}
    assert len(arrays) == 8  # no two queued steps share an array
    assert comp.stats["drain_steps_unpooled"] == 2  # the 4th step of each drain


def test_an_array_is_reused_once_its_batch_is_dropped():
    """Within one drain, a step whose batch the cache is done with (dropped) gives its array
    to a later step: 6 steps consumed one by one use a single array; the pool never holds
    more than STEP_BUFFERS."""
    buffers = StepBuffers(64, flow_schema().record_dtype)
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


def test_reuse_is_calibrated_to_this_interpreters_reference_counts():
    """FREE_REFS is what a pool-only array shows here; one view more is seen as held."""
    assert FREE_REFS > 0  # CPython with a GIL: reuse is on
    pool = [np.empty(4)]
    assert _refcounts(pool) == [FREE_REFS]
    view = pool[0][1:]
    assert _refcounts(pool) == [FREE_REFS + 1]
    del view


def test_a_drain_that_outruns_the_merge_waits_for_a_kept_array():
    """A drain of 32 steps while the pipeline merges slowly: the drain waits for the cache to
    let a kept array go instead of queuing a new one per step, so at most STEP_BUFFERS
    batches are ever queued or being merged, and every flow arrives once, in order."""
    loader = FailingLoader(rows=32 * 64)
    comp = ingest_with(loader, chunk=64)
    assert comp.context is not None
    inbox, got, most = comp.context.inbox, [], [0]
    done = threading.Event()

    def merge() -> None:  # the main thread: one batch at a time, slower than the drain
        while not (done.is_set() and inbox.empty()):
            most[0] = max(most[0], inbox.qsize())
            try:
                batch = inbox.get(timeout=0.01)[1]
            except Exception:  # queue.Empty
                continue
            got.extend(int(p) for p in batch.flows["packets"])
            done.wait(0.002)
            del batch

    merger = threading.Thread(target=merge)
    merger.start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(component, "STEP_WAIT_S", 60.0)  # the merge's pace here, not the budget's
        comp._drain()
    done.set()
    merger.join(timeout=30)
    assert got == list(range(1, 32 * 64 + 1))
    assert most[0] <= STEP_BUFFERS
    assert comp.stats["drain_steps_unpooled"] == 0
    assert comp.stats["drain_steps_waited"] > 0


def test_the_wait_for_a_kept_array_is_bounded_per_drain():
    """With every kept array held and nothing let go, one take waits out the drain's whole
    budget and gets a new array; the takes after it do not wait at all."""
    buffers = StepBuffers(64, flow_schema().record_dtype, wait_s=0.05)
    held = [buffers.take() for _ in range(STEP_BUFFERS)]
    extra = buffers.take()
    assert buffers._wait_s == 0.0 and buffers.fresh == 1 and buffers.waited == 0
    more = buffers.take()
    assert buffers.fresh == 2
    assert len({a.ctypes.data for a in [*held, extra, more]}) == STEP_BUFFERS + 2


def test_a_drain_at_stop_never_waits():
    """At stop the caller merges only after the drain: a drain then takes new arrays at once
    instead of waiting for batches nobody merges yet."""
    comp = ingest_with(FailingLoader(rows=256), chunk=64)
    comp._stop.set()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(component, "STEP_WAIT_S", 60.0)  # would hang the test if it waited
        comp._drain()
    assert len(batches(comp)) == 4
    assert comp.stats["drain_steps_waited"] == 0
    assert comp.stats["drain_steps_unpooled"] == 1
