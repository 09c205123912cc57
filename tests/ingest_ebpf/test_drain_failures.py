"""Unprivileged: a drain that fails part way never loses the rows the kernel already deleted.

The loader is replaced by a stand-in that hands out drained flows in chunks (as
``drain_begin``/``drain_next`` do) and fails where the real one can (a batch walk that stops
with an errno, a counters read that raises).
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time

import numpy as np
import pytest

from netflow_agent.model import FlowBatch
from netflow_agent.plugins.ingest_ebpf import component
from netflow_agent.plugins.ingest_ebpf.component import EbpfIngest
from netflow_agent.plugins.ingest_ebpf.config import Config
from netflow_agent.plugins.ingest_ebpf.decode import COUNTER_NAMES, RECORD_DTYPE, decode_rows
from netflow_agent.runtime import RunContext
from tests.ingest_ebpf.test_decode import _record

ROW = _record("10.0.0.1", "10.0.0.2", 3, 1000, 53, 17, 0, 0, 7, 700, 1, 2, 0)
ROW_PACKETS = 7


class FailingLoader:
    """Drains ``rows`` copies of ``ROW`` (packets 1, 2, ...) in chunks of the caller's buffer;
    ``drain_errno`` is what the batch walk reports with its last chunk; the ``fail_at``-th
    ``counters()`` call raises; ``tag_errno`` is a failed clear of the slots' tags, which
    ``slot_info()`` reports once every row is out."""

    def __init__(self, drain_errno: int = 0, fail_at: int = 0, rows: int = 1,
                 tag_errno: int = 0):
        self.drain_errno, self.fail_at, self.counter_calls = drain_errno, fail_at, 0
        self.tag_errno = tag_errno
        self.tag_map_errors = 0  # windows read whole: their tags not mapped
        self.table = np.repeat(np.frombuffer(ROW, RECORD_DTYPE), rows)
        self.table["packets"] = np.arange(1, rows + 1)
        self.left = self.table[:0]
        self.chunks = 0

    def set_active(self, index: int) -> None:
        pass

    def synchronize(self) -> bool:
        return True

    def drain_begin(self, index: int, force: bool = False) -> None:
        self.left = self.table

    def drain_next(self, buffer: np.ndarray, layout: bytes | None = None,
                   wall_offset: int = 0) -> tuple[int, int, bool]:
        """As the loader: rows in ``layout`` (a FlowBatch's columns), else flow_record rows."""
        n = min(len(buffer), len(self.left))
        rows, self.left = self.left[:n], self.left[n:]
        buffer[:n] = rows if layout is None else decode_rows(rows, wall_offset)
        self.chunks += 1
        more = len(self.left) > 0
        return n, 0 if more else self.drain_errno, more

    def reset_fill(self, index: int) -> None:
        pass

    def slot_info(self) -> dict[str, int]:
        return {"windows_scanned": 0, "tag_errno": self.tag_errno, "hash_walks": 0,
                "hash_walks_skipped": 0, "mark_clear_errors": 0, "slots_read": self.chunks,
                "tag_map_errors": self.tag_map_errors}

    def consume(self) -> tuple[bytes, int]:
        return b"", 0

    def counters(self) -> tuple[int, ...]:
        self.counter_calls += 1
        if self.counter_calls == self.fail_at:
            raise OSError(5, "read counters: Input/output error")
        return (0,) * len(COUNTER_NAMES)


def ingest_with(loader: FailingLoader, chunk: int = 16384) -> EbpfIngest:
    comp = EbpfIngest(Config(interfaces=["eth0"], drain_chunk=chunk), "ingest.ebpf[0]")
    comp.context, comp.loader = RunContext(), loader
    return comp


def batches(comp: EbpfIngest) -> list[FlowBatch]:
    """Every batch the ingest emitted."""
    assert comp.context is not None
    out: list[FlowBatch] = []
    while not comp.context.inbox.empty():
        out.append(comp.context.inbox.get_nowait()[1])
    return out


def emitted(comp: EbpfIngest) -> list[int]:
    """Packets of every flow the ingest emitted."""
    return [int(p) for b in batches(comp) for p in b.flows["packets"]]


def test_rows_of_a_walk_that_stopped_part_way_are_emitted_and_counted():
    comp = ingest_with(FailingLoader(drain_errno=5))
    comp._drain()
    assert emitted(comp) == [1]
    assert comp.stats["drain_errors"] == 1


def test_a_failed_tag_clear_is_reported_as_such_not_as_a_part_way_drain(caplog):
    """Every row is out and emitted; the log names the tags (not a walk that stopped part
    way), and the drain counts as an error, so a quiet kernel is not assumed and the next
    drain of the table clears the tags again."""
    comp = ingest_with(FailingLoader(tag_errno=errno.ENOMEM))
    with caplog.at_level(logging.WARNING):
        comp._drain()
    assert emitted(comp) == [1]
    assert comp.stats["drain_errors"] == 1 and not comp._last_drain_clean
    (message,) = [r.getMessage() for r in caplog.records]
    assert "clearing slot tags of table 0 failed: " + os.strerror(errno.ENOMEM) in message
    assert "part way" not in message


def test_rows_are_emitted_when_reading_the_counters_fails_after_the_delete():
    comp = ingest_with(FailingLoader(fail_at=2))  # call 1: before the flip; 2: after the drain
    with pytest.raises(OSError):
        comp._drain()
    assert emitted(comp) == [1]


def test_a_drain_larger_than_a_chunk_emits_every_row_once_chunk_by_chunk():
    """1,000 rows through a 64-row buffer: 16 chunks, each its own FlowBatch (no batch holds
    more than a chunk), every row once, then the counters' batch; a walk error on the last
    chunk loses nothing either."""
    loader = FailingLoader(rows=1000, drain_errno=5)
    comp = ingest_with(loader, chunk=64)
    with pytest.MonkeyPatch.context() as mp:  # nothing merges here: no use waiting for it
        mp.setattr(component, "STEP_WAIT_S", 0.001)
        comp._drain()
    got = batches(comp)
    assert loader.chunks == 16 and max(len(b.flows) for b in got) == 64
    assert sorted(int(p) for b in got for p in b.flows["packets"]) == list(range(1, 1001))
    assert comp.stats["flows_drained"] == comp.stats["table_peak"] == 1000
    assert comp.stats["drain_errors"] == 1


def test_a_quiet_kernel_is_not_drained_again_until_a_packet_arrives():
    """After a drain that emptied its table, no packet since its flip means both tables are
    empty: the timer's drain is skipped (it would walk every kernel bucket); one packet more
    on the kernel's counter and it drains again. A drain that failed part way never counts
    as quiet."""
    loader = FailingLoader()
    comp = ingest_with(loader)
    assert not comp._quiet()  # never drained: not known to be empty
    comp._drain()
    assert not comp._quiet()  # a program counted before the first flip may write after it
    comp._drain()  # the count unchanged since the first drain's: both tables empty
    assert comp._quiet()
    packets = COUNTER_NAMES.index("packets")
    loader.counters = lambda: tuple(1 if i == packets else 0  # type: ignore[method-assign]
                                    for i in range(len(COUNTER_NAMES)))
    assert not comp._quiet()
    failing = FailingLoader(drain_errno=5)
    comp = ingest_with(failing)
    comp._drain()
    assert not comp._quiet()


def test_a_table_left_part_drained_is_drained_again_before_the_kernel_counts_as_quiet():
    """A drain that failed part way leaves flows in its table; the next drain (of the other
    table) succeeding does not make the kernel quiet: the first table still holds them, and
    with no new packet the timer would skip it until the stop. Only a second clean drain
    (that table again) does."""
    loader = FailingLoader(drain_errno=5)
    comp = ingest_with(loader)
    comp._drain()  # table A: stopped part way
    loader.drain_errno = 0
    comp._drain()  # table B: clean, but A may still hold flows
    assert not comp._quiet()
    comp._drain()  # table A again: emptied
    assert comp._quiet()


def test_pressure_checks_back_off_while_no_packet_arrives():
    """The fallback pressure check (a counters read) runs every 0.1 s only while packets
    arrive: each check that sees none doubles the interval up to the poll interval, and the
    first that sees one brings it back."""
    loader = FailingLoader()
    comp = ingest_with(loader)
    comp._fill_limit, comp._check_max_s = 1000, 1.0  # as agent_start sets them (defaults)
    intervals = []
    for _ in range(6):
        assert not comp._under_pressure()
        intervals.append(comp._check_s)
    assert intervals == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]  # the first sees the count change
    packets = COUNTER_NAMES.index("packets")
    loader.counters = lambda: tuple(5 if i == packets else 0  # type: ignore[method-assign]
                                    for i in range(len(COUNTER_NAMES)))
    comp._under_pressure()
    assert comp._check_s == 0.1
    assert comp.stats["pressure_checks"] == 7


class IdleLoader(FailingLoader):
    """A kernel that sees no packet: nothing to drain, no signal (an eventfd that stays
    silent)."""

    def __init__(self) -> None:
        super().__init__(rows=0)
        self.fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    def signal_fd(self) -> int:
        return self.fd

    def take_signals(self) -> bool:
        return False


def test_an_idle_drain_thread_wakes_rarely():
    """With no traffic the drain thread drains twice (not known to be empty before), then
    skips every timer drain and checks the counters less and less often: at most 4 checks
    in the first 1.5 s, then one a second (it was 10 a second)."""
    loader = IdleLoader()
    comp = ingest_with(loader)
    comp._watch_links = lambda: None  # type: ignore[method-assign]
    comp._rescan = lambda initial=False: None  # type: ignore[method-assign]  # no interfaces
    comp._fill_limit = 1000  # early drains on: pressure checks every PRESSURE_CHECK_S at most
    comp._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
    started = time.monotonic()
    comp._thread = threading.Thread(target=comp._run, daemon=True)
    comp._thread.start()
    try:
        deadline = started + 30
        while comp.stats["quiet_skips"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        comp._stop.set()
        os.eventfd_write(comp._wake, 1)
        comp._thread.join()
        os.close(comp._wake)
        os.close(loader.fd)
    elapsed = time.monotonic() - started
    assert comp.stats["quiet_skips"] >= 2
    assert comp.stats["drains"] == 2  # the first two drains; every later one skipped as quiet
    assert comp.stats["pressure_checks"] <= 4 + elapsed


def test_windows_read_without_their_tags_are_counted_and_warned_once(caplog):
    """The loader's slots_read and tag_map_errors reach the stats after every drain; the
    first drain that sees tag_map_errors grow logs a warning, later ones only count."""
    loader = FailingLoader()
    comp = ingest_with(loader)
    comp._drain()
    assert comp.stats["tag_map_errors"] == 0 and comp.stats["slots_read"] == loader.chunks
    with caplog.at_level(logging.WARNING):
        for errors in (2, 5):
            loader.tag_map_errors = errors
            comp._drain()
    assert comp.stats["tag_map_errors"] == 5 and comp.stats["slots_read"] == loader.chunks
    warnings = [r for r in caplog.records if "tags could not be mapped" in r.getMessage()]
    assert len(warnings) == 1 and "2 slot window(s)" in warnings[0].getMessage()


class StoppingLoader(FailingLoader):
    """A loader that counts table walks and can be closed (``agent_stop`` unloads it)."""

    def __init__(self, rows: int = 1):
        super().__init__(rows=rows)
        self.walks = 0
        self.forced: list[tuple[int, bool]] = []  # (table, force) of each walk
        self.closed = False

    def drain_begin(self, index: int, force: bool = False) -> None:
        self.walks += 1
        self.forced.append((index, force))
        super().drain_begin(index, force)

    def close(self) -> None:
        self.closed = True


def test_the_stop_drains_both_tables_of_a_quiet_kernel_too():
    """Even after the timer took the kernel for quiet, the stop walks both tables: a packet
    whose program was counted before a flip may still sit in one (emitted once, not lost)."""
    loader = StoppingLoader()
    comp = ingest_with(loader)
    comp._drain()
    comp._drain()
    assert comp._quiet() and emitted(comp) == [1, 1]
    comp.agent_stop()
    assert loader.walks == 4 and loader.closed
    assert emitted(comp) == [1, 1]  # the fake hands its row at every walk
    assert comp.stats["drains"] == 4


def test_the_stop_drains_both_tables_after_a_new_packet():
    """A packet after the last drain's flip (the kernel's packet count moved): the stop
    drains both tables and every row they hold is emitted; never drained at all: the same."""
    loader = StoppingLoader()
    comp = ingest_with(loader)
    comp._drain()
    emitted(comp)
    packets = COUNTER_NAMES.index("packets")
    loader.counters = lambda: tuple(1 if i == packets else 0  # type: ignore[method-assign]
                                    for i in range(len(COUNTER_NAMES)))
    comp.agent_stop()
    assert loader.walks == 3 and emitted(comp) == [1, 1]
    fresh = StoppingLoader()
    comp = ingest_with(fresh)
    comp.agent_stop()
    assert fresh.walks == 2 and emitted(comp) == [1, 1]


def test_the_stop_and_every_eighth_drain_of_a_table_walk_the_hash_even_unmarked():
    """Where synchronize() is no real grace period, a straggler's entry can sit in a hash
    whose marks were cleared: every FORCED_WALK_EVERY-th drain of each table and both drains
    of the stop walk the hash whatever its marks say."""
    loader = StoppingLoader()
    comp = ingest_with(loader)
    every = component.FORCED_WALK_EVERY
    for _ in range(2 * every):
        comp._drain()
    forced = [(i, table) for i, (table, force) in enumerate(loader.forced) if force]
    assert forced == [(2 * every - 2, 0), (2 * every - 1, 1)]  # each table's every-th drain
    comp.agent_stop()
    assert loader.forced[2 * every:] == [(0, True), (1, True)]


class RaisingLoader(StoppingLoader):
    """Every ``k``-th drain raises at its first step (after the flip and drain_begin)."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k

    def drain_next(self, buffer: np.ndarray, layout: bytes | None = None,
                   wall_offset: int = 0) -> tuple[int, int, bool]:
        if self.walks % self.k == 0:
            raise MemoryError("drain step")
        return super().drain_next(buffer, layout, wall_offset)


@pytest.mark.parametrize("k", [2, 3, 5, 7, 8])
def test_drains_that_raise_do_not_shift_the_forced_walks(k):
    """Drains that raise after the flip (every k-th) still count: each table's hash is
    walked at every FORCED_WALK_EVERY-th of its own drains, so neither table goes unforced
    (counting completed drains only, a raise shifted the cadence: one table could be forced
    every time and the other never)."""
    loader = RaisingLoader(k)
    comp = ingest_with(loader)
    every = component.FORCED_WALK_EVERY
    for _ in range(8 * every):
        try:
            comp._drain()
        except MemoryError:
            pass
    for table in (0, 1):
        walks = [force for index, force in loader.forced if index == table]
        assert len(walks) == 4 * every
        assert [n for n, force in enumerate(walks, 1) if force] == [every * i
                                                                     for i in range(1, 5)]


class KernelTables:
    """Two flow tables and the packet counter as the BPF program uses them: a program counts
    its packet at its start (``begin``) and writes into the table active when it reads the
    index (``write``); in between, a drain may flip. ``late`` programs write at the next flip
    (they read the index after it), or, with ``after_walk``, once the drain's walk is over
    (later than the 5 ms a kernel without grace periods gets)."""

    def __init__(self, synced: bool = True) -> None:
        self.synced = synced
        self.tables: list[list[int]] = [[], []]
        self.active = 0
        self.packets = 0
        self.late: list[int] = []
        self.after_walk: list[tuple[int, int]] = []  # (table, packets)
        self.raise_next = False
        self.left: list[int] = []
        self.draining = 0

    def begin(self) -> None:
        self.packets += 1

    def write(self, table: int | None = None) -> None:
        self.tables[self.active if table is None else table].append(1)

    def set_active(self, index: int) -> None:
        self.active = index
        for _ in self.late:
            self.write()
        self.late = []

    def synchronize(self) -> bool:
        return self.synced

    def drain_begin(self, index: int, force: bool = False) -> None:
        self.draining = index

    def drain_next(self, buffer: np.ndarray, layout: bytes | None = None,
                   wall_offset: int = 0) -> tuple[int, int, bool]:
        if self.raise_next:  # e.g. a MemoryError of the step's array: nothing deleted
            self.raise_next = False
            raise MemoryError("drain step")
        table = self.tables[self.draining]
        n = len(table)
        rows = np.repeat(np.frombuffer(ROW, RECORD_DTYPE), n)
        buffer[:n] = decode_rows(rows, wall_offset)
        table.clear()
        for where, count in self.after_walk:
            self.tables[where].extend([1] * count)
        self.after_walk = []
        return n, 0, False

    def reset_fill(self, index: int) -> None:
        pass

    def slot_info(self) -> dict[str, int]:
        return {"windows_scanned": 0, "tag_errno": 0, "hash_walks": 0,
                "hash_walks_skipped": 0, "mark_clear_errors": 0, "slots_read": 0,
                "tag_map_errors": 0}

    def consume(self) -> tuple[bytes, int]:
        return b"", 0

    def counters(self) -> tuple[int, ...]:
        packets = COUNTER_NAMES.index("packets")
        return tuple(self.packets if i == packets else 0 for i in range(len(COUNTER_NAMES)))


def timer_tick(comp: EbpfIngest) -> None:
    """What the drain thread does at each poll interval: skip while quiet, else drain."""
    if comp._quiet():
        comp.stats["quiet_skips"] += 1
    else:
        comp._drain()


def test_a_packet_counted_before_a_flip_and_written_after_it_is_drained_by_the_timer():
    """A program counted at its start, just before the drain read the count and flipped, reads
    the table index after the flip and writes into the newly active table. That table is
    not empty, though the count equals the one read before the flip: the timer must not
    take the kernel for quiet, and its next drain emits the packet (it waited for the stop,
    and a stop that skipped quiet tables lost it)."""
    kernel = KernelTables()
    comp = ingest_with(kernel)  # type: ignore[arg-type]
    timer_tick(comp)  # both tables empty, nothing counted
    kernel.begin()
    kernel.late.append(1)  # counted now, writes after the next flip
    for _ in range(4):
        timer_tick(comp)
    assert kernel.tables == [[], []]
    assert emitted(comp) == [ROW_PACKETS]  # the packet's flow, once
    assert comp._quiet()  # now every program counted has returned and been drained


def test_a_straggler_later_than_the_grace_sleep_never_makes_the_kernel_quiet():
    """A kernel that refuses the RCU grace period (nohz_full): the drain sleeps 5 ms instead,
    and a program later than that writes into the table just drained. The timer keeps
    draining (it never takes such a kernel for quiet) and emits the packet."""
    kernel = KernelTables(synced=False)
    comp = ingest_with(kernel)  # type: ignore[arg-type]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(component, "FLIP_GRACE_S", 0.0)
        timer_tick(comp)
        timer_tick(comp)
        kernel.begin()
        kernel.write()
        timer_tick(comp)  # the flip: the packet's table is drained now
        kernel.begin()
        kernel.after_walk.append((kernel.active, 1))  # a straggler into the table drained next
        timer_tick(comp)
        for _ in range(3):
            timer_tick(comp)
    assert kernel.tables == [[], []]
    assert emitted(comp) == [ROW_PACKETS] * 2  # each packet's flow, once
    assert not comp._quiet() and comp.stats["quiet_skips"] == 0


def test_a_drain_that_raised_part_way_never_makes_the_kernel_quiet():
    """A drain that raised before its table was emptied (the rows stay in the kernel) leaves
    it for the next drain of that table: the drain of the other table in between does not
    take the kernel for quiet, so the timer gets to the rows before the stop."""
    kernel = KernelTables()
    comp = ingest_with(kernel)  # type: ignore[arg-type]
    timer_tick(comp)
    timer_tick(comp)  # quiet: both tables drained with the count unchanged
    assert comp._quiet()
    kernel.begin()
    kernel.write()
    kernel.raise_next = True
    with pytest.raises(MemoryError):
        timer_tick(comp)  # flips; the table holding the packet keeps it
    assert kernel.tables[1 - kernel.active] == [1]
    for _ in range(3):
        timer_tick(comp)
    assert kernel.tables == [[], []]
    assert emitted(comp) == [ROW_PACKETS]  # the packet's flow, once
