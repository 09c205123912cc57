"""Privileged: a drain skips only the work that is provably empty, and never loses a packet.

A loaded, attached ``Loader`` on a veth in fresh namespaces, drained the way the ingest does
it: flip to the other table, wait for the grace period (``synchronize()``), drain the idle
table, flip back for the next flood. The program marks a hash table before every insert into
it (``hash_touched``); a drain whose table no CPU marked since its last whole walk skips the
walk of its buckets (``slot_info()["hash_walks_skipped"]``), and a walk that another program
could race (the table still active, or no grace period) keeps the marks, so the next drain
walks again. Inside a slot window only the slots whose tag is set are read: every flow of
floods that fill the slots densely, read through steps that end inside windows, is one exact
row. Only counts are asserted, never times.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from netflow_agent.plugins.ingest_ebpf.decode import COUNTER_NAMES, RECORD_DTYPE
from tests.ingest_ebpf.test_slot_probes import Bench, assert_one_row_per_flow
from tests.support.flowgen import Flood, build
from tests.support.netns import Netns, veth_pair

pytestmark = pytest.mark.bpf

HASH_NEW = COUNTER_NAMES.index("hash_new")


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    """Name: bench. Scope: module. A :class:`Bench` (the receiving namespace drops the UDP)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")
    with Netns() as a, Netns() as b:
        pair = veth_pair(a, b)
        b.run(["iptables", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "-j", "DROP"])
        yield Bench(pair, build(Path(tmp_path_factory.mktemp("flowgen"))), b.name)


def drain_table(loader, index: int, chunk: int = 4096) -> np.ndarray:
    """Table ``index`` (and its slots) as flow_record rows, in steps of ``chunk`` rows."""
    out, buf, more = [], np.empty(chunk, RECORD_DTYPE), True
    loader.drain_begin(index)
    while more:
        rows, err, more = loader.drain_next(buf)
        assert not err
        out.append(buf[:rows].copy())
    return np.concatenate(out)


def flip_and_drain(loader, chunk: int = 4096) -> np.ndarray:
    """As the ingest: table 0 was written; flip to 1, grace period, drain 0, flip back."""
    loader.set_active(1)
    assert loader.synchronize()
    rows = drain_table(loader, 0, chunk)
    loader.set_active(0)
    assert loader.synchronize()
    return rows


def skipped(loader) -> int:
    return loader.slot_info()["hash_walks_skipped"]


def test_a_hash_no_cpu_inserted_into_is_not_walked(bench):
    """Flows that all fit in the slots: the drain skips the hash walk and every packet is
    there; flows beyond the slots go to the hash, whose next drain walks it (no skip) and
    gets them all; the drain after that, with nothing new in the hash, skips again."""
    few, many = Flood(flows=20, per_flow=3, concurrent=20), Flood(3000, 2, 3000)
    with bench.loader(slots=4096) as loader:
        before = skipped(loader)
        bench.send(few)
        assert loader.counters()[HASH_NEW] == 0
        assert_one_row_per_flow(flip_and_drain(loader), few)
        assert skipped(loader) == before + 1
        bench.send(many)
        assert loader.counters()[HASH_NEW] > 0  # 3,000 flows, 4,096 slots, 8 probes
        assert_one_row_per_flow(flip_and_drain(loader, chunk=256), many)
        assert skipped(loader) == before + 1
        bench.send(few)
        assert_one_row_per_flow(flip_and_drain(loader), few)
        assert skipped(loader) == before + 2


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
        assert counters[HASH_NEW] <= 3 * 300  # ~10 a period: the slots were freed each time
