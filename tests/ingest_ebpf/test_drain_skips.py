"""Privileged: a drain skips only the work that is provably empty, and never loses a packet.

A loaded, attached ``Loader`` on a veth in fresh namespaces, drained the way the ingest does
it: flip to the other table, wait for the grace period (``synchronize()``), drain the idle
table, flip back for the next flood. The program marks a hash table before every insert into
it (``hash_touched``); a drain whose table no CPU marked since its last whole walk skips the
walk of its buckets (``slot_info()["hash_walks_skipped"]``), and a walk that another program
could race (the table still active, no grace period, or a flip while it ran) keeps the
marks, so the next drain walks again; a forced drain walks an unmarked hash too. Inside a
slot window only the slots whose tag is set are read (``slots_read``): every flow of floods
that fill the slots densely, read through steps that end inside windows, is one exact row.
Floods come from CPU 0 or CPU 1. Only counts are asserted, never times.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import numpy as np
import pytest

from netflow_agent.plugins.ingest_ebpf.decode import COUNTER_NAMES, RECORD_DTYPE
from tests.ingest_ebpf.test_slot_probes import Bench, assert_one_row_per_flow, bench_pair
from tests.support.flowgen import Flood

pytestmark = pytest.mark.bpf

HASH_NEW = COUNTER_NAMES.index("hash_new")


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    """Name: bench. Scope: module. A :class:`Bench` (the receiving namespace drops the UDP)."""
    with bench_pair(tmp_path_factory) as made:
        yield made


def drain_table(loader, index: int, chunk: int = 4096, force: bool = False) -> np.ndarray:
    """Table ``index`` (and its slots) as flow_record rows, in steps of ``chunk`` rows."""
    out, buf, more = [], np.empty(chunk, RECORD_DTYPE), True
    loader.drain_begin(index, force=force)
    while more:
        rows, err, more = loader.drain_next(buf)
        assert not err
        out.append(buf[:rows].copy())
    return np.concatenate(out)


def flip_and_drain(loader, chunk: int = 4096, force: bool = False) -> np.ndarray:
    """As the ingest: table 0 was written; flip to 1, grace period, drain 0, flip back."""
    loader.set_active(1)
    assert loader.synchronize()
    rows = drain_table(loader, 0, chunk, force)
    loader.set_active(0)
    assert loader.synchronize()
    return rows


def finish_then_drain_twice(loader, buf: np.ndarray, more: bool) -> list[int]:
    """The packets of the rest of a walk begun on table 0 (table 1 active), then of two drains
    the way the ingest does them, table 0 active again."""
    got = []
    while more:
        rows, err, more = loader.drain_next(buf)
        assert not err
        got.append(packets(buf[:rows]))
    loader.set_active(0)
    assert loader.synchronize()
    return got + [packets(flip_and_drain(loader)) for _ in range(2)]


def skipped(loader) -> int:
    return loader.slot_info()["hash_walks_skipped"]


def packets(rows: np.ndarray) -> int:
    return int(rows["packets"].sum())


@pytest.mark.parametrize("cpu", [0, 1])
def test_a_hash_no_cpu_inserted_into_is_not_walked(bench, cpu):
    """Flows that all fit in the slots: the drain skips the hash walk and every packet is
    there; flows beyond the slots go to the hash, whose next drain walks it (no skip) and
    gets them all; the drain after that, with nothing new in the hash, skips again. A forced
    drain walks the unmarked hash all the same (the stop, every 8th drain of a table)."""
    few, many = Flood(flows=20, per_flow=3, concurrent=20), Flood(3000, 2, 3000)
    with bench.loader(slots=4096) as loader:
        before = skipped(loader)
        bench.send(few, cpu)
        assert loader.counters()[HASH_NEW] == 0
        assert_one_row_per_flow(flip_and_drain(loader), few)
        assert skipped(loader) == before + 1
        bench.send(many, cpu)
        assert loader.counters()[HASH_NEW] > 0  # 3,000 flows, 4,096 slots, 8 probes
        assert_one_row_per_flow(flip_and_drain(loader, chunk=256), many)
        assert skipped(loader) == before + 1
        bench.send(few, cpu)
        assert_one_row_per_flow(flip_and_drain(loader), few)
        assert skipped(loader) == before + 2
        walks = loader.slot_info()["hash_walks"]
        bench.send(few, cpu)
        assert_one_row_per_flow(flip_and_drain(loader, force=True), few)
        assert (skipped(loader), loader.slot_info()["hash_walks"]) == (before + 2, walks + 1)


def test_a_flip_during_a_walk_keeps_the_marks(bench):
    """A drain of the idle table (after a grace period) during which the table becomes the
    active one, takes packets behind the walk, and goes idle again with a new grace period
    before the walk ends: the walk did not start and end race-free, so the marks stay and a
    later drain gets those packets (clearing them lost 64 of 4,000 packets for good)."""
    first, second = Flood(2000, 1, 2000), Flood(2000, 1, 2000)
    got = []
    with bench.loader(slots=64) as loader:  # 2,000 flows in 64 slots: the rest in the hash
        bench.send(first)
        loader.set_active(1)
        assert loader.synchronize()
        buf = np.empty(64, RECORD_DTYPE)
        loader.drain_begin(0)
        rows, err, more = loader.drain_next(buf)
        assert more and not err
        got.append(packets(buf[:rows]))
        loader.set_active(0)
        bench.send(second)
        loader.set_active(1)
        assert loader.synchronize()
        got += finish_then_drain_twice(loader, buf, more)
    assert sum(got) == first.packets + second.packets


def test_a_flip_during_a_walk_keeps_the_slot_windows_marks(bench):
    """A drain of table 0 reads its windows' touched marks at drain_begin (CPU 0's only);
    after one row, a flip makes table 0 the active one and CPU 1 puts 20 flows in its own
    slots, whose windows the walk never reads; the table goes idle again (grace period) and
    the drain ends. The flip during the walk keeps the slot windows' marks, so later drains
    read CPU 1's windows: all 120 packets come out (clearing the marks lost CPU 1's 60)."""
    cpu0, cpu1 = Flood(flows=20, per_flow=3, concurrent=20), Flood(20, 3, 20)
    got = []
    with bench.loader(slots=4096) as loader:
        bench.send(cpu0, 0)
        buf = np.empty(1, RECORD_DTYPE)
        loader.drain_begin(0)
        rows, err, more = loader.drain_next(buf)
        assert more and not err
        got.append(packets(buf[:rows]))
        loader.set_active(0)
        bench.send(cpu1, 1)
        loader.set_active(1)
        assert loader.synchronize()
        buf = np.empty(4096, RECORD_DTYPE)
        got += finish_then_drain_twice(loader, buf, more)
    assert sum(got) == cpu0.packets + cpu1.packets == 120


def test_a_flip_without_a_grace_period_keeps_the_marks(bench):
    """The hash drained after a flip but without synchronize(): a program may still insert
    behind the walk, so its marks stay and the next drain walks it again, though nothing new
    came; that walk, after a grace period, clears them: the one after skips."""
    flood = Flood(flows=200, per_flow=2, concurrent=200)
    with bench.loader(slots=64) as loader:
        bench.send(flood, 1)
        assert loader.counters()[HASH_NEW] > 0
        before = skipped(loader)
        loader.set_active(1)  # no synchronize()
        assert_one_row_per_flow(drain_table(loader, 0), flood)
        loader.set_active(0)
        assert len(flip_and_drain(loader)) == 0
        assert skipped(loader) == before  # walked: the marks stayed
        assert len(flip_and_drain(loader)) == 0
        assert skipped(loader) == before + 1


def test_a_drain_without_a_grace_period_keeps_the_window_marks(bench):
    """The slots drained after a flip but without synchronize(): a straggler may still write
    a slot of a window the walk already read, so the windows' touched marks stay and the next
    drain maps them again; that drain, after a grace period, clears them, and the one after
    maps no window (drains that begin clean do not re-read windows forever)."""
    flood = Flood(flows=20, per_flow=3, concurrent=20)
    with bench.loader(slots=4096) as loader:
        bench.send(flood, 1)
        loader.set_active(1)  # no synchronize()
        assert_one_row_per_flow(drain_table(loader, 0), flood)
        loader.set_active(0)
        scanned = loader.slot_info()["windows_scanned"]
        assert len(flip_and_drain(loader)) == 0
        assert loader.slot_info()["windows_scanned"] > scanned  # the marks stayed
        scanned = loader.slot_info()["windows_scanned"]
        assert len(flip_and_drain(loader)) == 0
        assert loader.slot_info()["windows_scanned"] == scanned


def test_a_sparse_drain_reads_only_the_tagged_slots(bench):
    """300 flows from CPU 1 in 65,536 slots per CPU: the drain reads one slot per flow it
    holds (by the tags, mapped without a failure), not the 4,096 of each window it maps."""
    flood = Flood(flows=300, per_flow=2, concurrent=300)
    with bench.loader(slots=65536) as loader:
        info = loader.slot_info()
        bench.send(flood, 1)
        in_hash = loader.counters()[HASH_NEW]
        assert_one_row_per_flow(flip_and_drain(loader), flood)
        after = loader.slot_info()
    assert after["tag_errno"] == 0 and after["tag_map_errors"] == 0
    scanned = after["windows_scanned"] - info["windows_scanned"]
    assert scanned >= 1
    assert after["slots_read"] - info["slots_read"] == flood.flows - in_hash
    assert flood.flows < scanned * info["window"] // 10


def test_a_walk_a_program_could_race_keeps_the_marks(bench):
    """The hash drained while its table is still the active one (no flip): a program may
    insert behind the walk, so its marks stay and the next drain walks it again, though
    nothing new came; once drained after a flip and a grace period, the walk is skipped."""
    flood = Flood(flows=200, per_flow=2, concurrent=200)
    with bench.loader(slots=64) as loader:  # 200 flows in 64 slots: the rest in the hash
        bench.send(flood)
        assert loader.counters()[HASH_NEW] > 0
        before = skipped(loader)
        assert_one_row_per_flow(drain_table(loader, 0), flood)  # table 0 is active
        assert len(drain_table(loader, 0)) == 0
        assert skipped(loader) == before  # walked twice: the marks stayed
        assert len(flip_and_drain(loader)) == 0  # walked: a clean walk clears the marks
        assert len(flip_and_drain(loader)) == 0
        assert skipped(loader) == before + 1


def test_dense_slots_read_by_their_tags_give_every_flow_once(bench):
    """20,000 flows in 65,536 slots on one CPU (every window holds some), in three drain
    periods, read through 300-row steps that end inside windows and at slots after skipped
    (free) ones: each flow is one exact row each time, and the slots drained in one period
    take new flows in the next."""
    flood = Flood(20000, 2, 20000)
    with bench.loader(slots=65536) as loader:
        for _ in range(3):
            bench.send(flood)
            counters = loader.counters()
            assert_one_row_per_flow(flip_and_drain(loader, chunk=300), flood)
        info = loader.slot_info()
        assert counters[HASH_NEW] <= 3 * 300  # ~10 a period: the slots were freed each time
        assert info["tag_errno"] == 0 and info["tag_map_errors"] == 0  # read by their tags


def clear_hash_marks(loader, index: int) -> None:
    """Zero table ``index``'s hash_touched words on every CPU (bpftool, by the map ids of
    this loader's programs): the marks as a straggler behind a walk can leave them."""
    def bpftool(*args: str) -> object:
        return json.loads(subprocess.run(["bpftool", "-j", *args], capture_output=True,
                                         text=True, check=True).stdout)

    maps = {m for pid in loader.prog_ids().values()
            for m in bpftool("prog", "show", "id", str(pid)).get("map_ids", [])}
    (touched,) = [m for m in maps if bpftool("map", "show", "id", str(m))["name"]
                  == "hash_touched"]
    subprocess.run(["bpftool", "map", "update", "id", str(touched), "key",
                    *index.to_bytes(4, "little").hex(" ").split(), "value", *["0"] * 8],
                   check=True)


def test_a_walk_stopped_part_way_forces_the_next(bench):
    """A hash holding entries but no marks (as a straggler's insert behind a clean walk can
    leave it where synchronize() is no real grace period; here bpftool zeroes the marks)
    drained forced in 1-row steps: the walk stops at the first bucket holding two entries
    (ENOSPC). The table's next drain walks the unmarked hash all the same and gets every
    packet left (without that it skipped the walk and they waited for a forced one)."""
    flood = Flood(3000, 2, 3000)  # ~70 buckets of 65,536 hold two flows
    with bench.loader(slots=64) as loader:
        bench.send(flood)
        loader.set_active(1)
        assert loader.synchronize()
        clear_hash_marks(loader, 0)
        got, buf, more, stopped = [], np.empty(1, RECORD_DTYPE), True, 0
        loader.drain_begin(0, force=True)
        while more:
            rows, err, more = loader.drain_next(buf)
            stopped = stopped or err
            got.append(packets(buf[:rows]))
        assert stopped and sum(got) < flood.packets
        walks, before = loader.slot_info()["hash_walks"], skipped(loader)
        got.append(packets(drain_table(loader, 0)))
        assert (loader.slot_info()["hash_walks"], skipped(loader)) == (walks + 1, before)
    assert sum(got) == flood.packets
