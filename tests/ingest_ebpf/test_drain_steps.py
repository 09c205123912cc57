"""Unprivileged: drain steps reuse their record arrays only once the pipeline let go of them.

A drain step's FlowBatch is written by the loader into an array the ingest keeps for the next
steps (:class:`~netflow_agent.plugins.ingest_ebpf.component.StepBuffers`): a batch that is
still queued, or that a plugin still holds, must never see its flows overwritten by a later
drain, and a batch the cache is done with gives its array back.
"""

from __future__ import annotations

import os
import threading
import time
import weakref

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
    with pytest.MonkeyPatch.context() as mp:  # nothing merges here: no use waiting for it
        mp.setattr(component, "STEP_WAIT_S", 0.001)
        comp._drain()
        loader.table["packets"] += 1000  # the second drain's flows differ
        comp._drain()
    got = batches(comp)
    assert packets(got) == list(range(1, 257)) + list(range(1001, 1257))
    arrays = {id(b.flows.base) for b in got if len(b.flows) and b.flows.base is not None}
    assert len(arrays) == 8  # no two queued steps share an array
    # the first drain's 4th step, then all of the second's: the ingest's three kept arrays
    # are still queued from the first drain
    assert comp.stats["drain_steps_unpooled"] == 5


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

    merger = threading.Thread(target=merge, daemon=True)
    merger.start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(component, "STEP_WAIT_S", 60.0)  # the merge's pace here, not the budget's
        started = time.monotonic()
        comp._drain()
        took = time.monotonic() - started
    done.set()
    merger.join(timeout=30)
    assert not merger.is_alive()
    assert took < 30  # each wait ended at a merge, not at the 60 s budget
    assert got == list(range(1, 32 * 64 + 1))
    assert most[0] <= STEP_BUFFERS
    assert comp.stats["drain_steps_unpooled"] == 0
    assert comp.stats["drain_steps_waited"] > 0


def test_the_wait_for_a_kept_array_is_bounded_per_drain():
    """With every kept array held and nothing let go, one take waits out the drain's whole
    budget and gets a new array; the takes after it do not wait at all."""
    buffers = StepBuffers(64, flow_schema().record_dtype, wait_s=0.05)
    held = [buffers.take() for _ in range(STEP_BUFFERS)]
    assert buffers.waited_s == 0.0
    extra = buffers.take()
    waited = buffers.waited_s
    assert waited >= 0.05 and buffers.fresh == 1 and buffers.waited == 0
    more = buffers.take()
    assert buffers.waited_s == waited  # no wait left: straight to a new array
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


def test_a_stop_during_a_drains_wait_ends_it_at_once():
    """The drain thread waits for a merge (all kept arrays queued) when the agent stops: the
    main thread, which merges, is in agent_stop joining the drain thread, so nothing would
    let an array go. agent_stop wakes the wait: the join ends at once, not after the drain's
    budget (60 s here), and every flow is emitted once."""
    loader = StoppableLoader(rows=8 * 64)
    comp = ingest_with(loader, chunk=64)
    comp._wake = os.eventfd(0, os.EFD_CLOEXEC)
    assert comp.context is not None
    inbox = comp.context.inbox
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(component, "STEP_WAIT_S", 60.0)
        comp._thread = threading.Thread(target=comp._drain, daemon=True)
        comp._thread.start()
        deadline = time.monotonic() + 30
        while inbox.qsize() < STEP_BUFFERS and time.monotonic() < deadline:
            time.sleep(0.005)  # the kept arrays all queued: the drain waits (or is about to)
        stopper = threading.Thread(target=comp.agent_stop, daemon=True)
        started = time.monotonic()
        stopper.start()
        stopper.join(timeout=30)
        took = time.monotonic() - started
    assert not stopper.is_alive() and took < 5
    assert packets(batches(comp)) == list(range(1, 8 * 64 + 1))
    assert loader.closed and comp.stats["drain_steps_unpooled"] >= 1


class StoppableLoader(FailingLoader):
    """A loader agent_stop can release, with one table of flows (the other empty); ``raise_at``:
    the drain step that raises."""

    def __init__(self, rows: int, raise_at: int = 0):
        super().__init__(rows=rows)
        self.closed, self.raise_at = False, raise_at

    def drain_next(self, buffer: np.ndarray, layout: bytes | None = None,
                   wall_offset: int = 0) -> tuple[int, int, bool]:
        if self.chunks + 1 == self.raise_at:
            raise OSError(5, "drain: Input/output error")
        return super().drain_next(buffer, layout, wall_offset)

    def drain_begin(self, index: int, force: bool = False) -> None:
        self.left, self.table = self.table, self.table[:0]

    def close(self) -> None:
        self.closed = True


def test_a_drain_that_raises_part_way_still_counts_its_steps():
    """Four steps while nothing merges (the fourth waits out the budget and takes a new
    array), then the fifth takes another and raises: the wait and both new arrays are in
    the stats."""
    loader = StoppableLoader(rows=8 * 64, raise_at=5)
    comp = ingest_with(loader, chunk=64)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(component, "STEP_WAIT_S", 0.01)
        with pytest.raises(OSError):
            comp._drain()
    assert len(batches(comp)) == 4
    assert comp.stats["drain_steps_unpooled"] == 2
    assert comp.stats["drain_wait_ms_last"] >= 10
    assert comp.stats["drain_wait_ms_total"] == comp.stats["drain_wait_ms_last"]


class WatchedBuffers(StepBuffers):
    """Counts the looks that found no array free."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.misses = 0

    def _free(self):
        buf = super()._free()
        self.misses += buf is None
        return buf

    def missed(self, times: int) -> bool:
        """Whether ``times`` looks found nothing free within 30 s."""
        deadline = time.monotonic() + 30
        while self.misses < times and time.monotonic() < deadline:
            time.sleep(0.001)
        return self.misses >= times


def test_a_wake_with_nothing_free_yet_looks_again_soon():
    """A consumer keeps a slice of a batch's rows: dropping the batch wakes the drain, but
    its array is still held; once the slice goes too (which wakes nothing) the drain gets
    the array at its next look, within ms, not at the end of its budget (60 s here)."""
    buffers = WatchedBuffers(64, flow_schema().record_dtype, wait_s=60.0)
    views = [buffers.lend(buffers.take()[:64]) for _ in range(STEP_BUFFERS)]
    kept = views[0][1:]  # a slice of the first batch: its array stays held
    first = kept.ctypes.data - kept.itemsize  # the array's address (no reference to it)
    buffers.misses = 0  # the pool filling up above missed too
    got: list[np.ndarray] = []
    taker = threading.Thread(target=lambda: got.append(buffers.take()), daemon=True)
    taker.start()
    assert buffers.missed(2)  # take's look and the wait's first: it waits (or is about to)
    del views[0]  # the batch is let go: a wake
    assert buffers.missed(3)  # ... that finds nothing free
    del kept  # the array is free now; nothing is lent any more to wake the drain
    taker.join(timeout=30)
    assert not taker.is_alive()
    assert got[0].ctypes.data == first and buffers.waited == 1 and buffers.waited_s < 30


def test_consecutive_drains_reuse_the_same_step_arrays():
    """The step arrays are the ingest's, not a drain's: a drain after one whose batches the
    cache let go writes into the same arrays (no new block per drain, which a drain inside a
    mass expiry's heap reuse window would take from the heap and leave there)."""
    loader = FailingLoader(rows=128)
    comp = ingest_with(loader, chunk=64)
    seen: list[list[weakref.ref]] = []
    for i in range(3):
        loader.table["packets"] += 1000 * (i > 0)
        comp._drain()
        got = batches(comp)
        assert packets(got)[:2] == [1000 * i + 1, 1000 * i + 2]
        seen.append([weakref.ref(b.flows.base) for b in got
                     if len(b.flows) and b.flows.base is not None])
        del got  # merged and dropped
    first = {id(r()) for r in seen[0] if r() is not None}
    assert len(first) == 2  # alive after the drain: the ingest keeps them
    assert {id(r()) for r in seen[1]} == first and {id(r()) for r in seen[2]} == first
    assert comp.stats["drain_steps_unpooled"] == 0
