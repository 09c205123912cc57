"""Unprivileged: a drain that fails part way never loses the rows the kernel already deleted.

The loader is replaced by a stand-in that hands out one drained flow and then fails where the
real one can (a batch walk that stops with an errno, a counters read that raises).
"""

from __future__ import annotations

import pytest

from netflow_agent.model import FlowBatch
from netflow_agent.plugins.ingest_ebpf.component import EbpfIngest
from netflow_agent.plugins.ingest_ebpf.config import Config
from netflow_agent.plugins.ingest_ebpf.decode import COUNTER_NAMES
from netflow_agent.runtime import RunContext
from tests.ingest_ebpf.test_decode import _record

ROW = _record("10.0.0.1", "10.0.0.2", 3, 1000, 53, 17, 0, 0, 7, 700, 1, 2, 0)


class FailingLoader:
    """Drains ``ROW``; ``drain_errno`` is what the batch walk reports; the ``fail_at``-th
    ``counters()`` call raises."""

    def __init__(self, drain_errno: int = 0, fail_at: int = 0):
        self.drain_errno, self.fail_at, self.counter_calls = drain_errno, fail_at, 0

    def set_active(self, index: int) -> None:
        pass

    def synchronize(self) -> bool:
        return True

    def drain(self, index: int) -> tuple[bytes, int]:
        return ROW, self.drain_errno

    def reset_fill(self, index: int) -> None:
        pass

    def consume(self) -> tuple[bytes, int]:
        return b"", 0

    def counters(self) -> tuple[int, ...]:
        self.counter_calls += 1
        if self.counter_calls == self.fail_at:
            raise OSError(5, "read counters: Input/output error")
        return (0,) * len(COUNTER_NAMES)


def ingest_with(loader: FailingLoader) -> EbpfIngest:
    comp = EbpfIngest(Config(interfaces=["eth0"]), "ingest.ebpf[0]")
    comp.context, comp.loader = RunContext(), loader
    return comp


def emitted(comp: EbpfIngest) -> list[int]:
    """Packets of every flow the ingest emitted."""
    assert comp.context is not None
    batches: list[FlowBatch] = []
    while not comp.context.inbox.empty():
        batches.append(comp.context.inbox.get_nowait()[1])
    return [int(p) for b in batches for p in b.flows["packets"]]


def test_rows_of_a_walk_that_stopped_part_way_are_emitted_and_counted():
    comp = ingest_with(FailingLoader(drain_errno=5))
    comp._drain()
    assert emitted(comp) == [7]
    assert comp.stats["drain_errors"] == 1


def test_rows_are_emitted_when_reading_the_counters_fails_after_the_delete():
    comp = ingest_with(FailingLoader(fail_at=2))  # call 1: before the flip; 2: after the drain
    with pytest.raises(OSError):
        comp._drain()
    assert emitted(comp) == [7]
