"""Privileged: the per-CPU slots as a flow table (issue 14): probing and the windowed drain.

A loaded, attached ``Loader`` on a veth in fresh namespaces; ``flowgen`` floods distinct flows
while this process (and so the sender, whose veth transmit runs the receive softirq on its own
CPU) is pinned to one CPU, so every packet of a flood lands in that CPU's slot region. Then
table 0 is drained as flow_record rows and compared with what was sent:

* probing: a flow goes to the first free or matching slot of its few probes, else to the
  hash, and stays there for the drain period, so each flow is one row, the kernel's counters
  say which (``slot_packets``, ``hash_new``) and 4 probes leave far fewer flows to the hash
  than 1 (direct-mapped) at the same load; the slots' tags, which the program reads instead
  of the slots, are cleared with them, so drained slots take new flows again;
* the windowed drain maps only the windows the program marked, clears the marks, and a row
  written across drain steps and windows is read once;
* one flow seen on two CPUs is two rows (two slots), which the cache adds.

Only counts are asserted, never times.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from netflow_agent.netns import NetnsScope
from netflow_agent.plugins.ingest_ebpf.attach import Attacher
from netflow_agent.plugins.ingest_ebpf.decode import COUNTER_NAMES, RECORD_DTYPE
from tests.support.flowgen import Flood, build
from tests.support.netns import Netns, VethPair, veth_pair

pytestmark = pytest.mark.bpf

SLOT_PACKETS = COUNTER_NAMES.index("slot_packets")
HASH_NEW = COUNTER_NAMES.index("hash_new")


@contextlib.contextmanager
def on_cpu(cpu: int) -> Iterator[None]:
    """Pin this process (and what it starts: the sender) to ``cpu`` for the block."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


class Bench:
    """A veth pair in two fresh namespaces, flowgen, and loaders attached one at a time."""

    def __init__(self, pair: VethPair, flowgen: str, ns: str):
        self.pair, self.flowgen, self.ns = pair, flowgen, ns

    @contextlib.contextmanager
    def loader(self, **kwargs: object) -> Iterator[object]:
        """A ``Loader(**kwargs)`` writing table 0, attached to the receiving end."""
        from netflow_agent.plugins.ingest_ebpf._loader import Loader

        loader = Loader(maxflows=65536, prealloc=True, percpu=False, **kwargs)
        loader.set_active(0)
        attacher = Attacher(loader, "tcx", "ingress")
        with NetnsScope(self.ns):
            attacher.attach(self.pair.b.ifindex, self.pair.b.ifname)
        try:
            yield loader
        finally:
            with NetnsScope(self.ns):
                attacher.detach_all()
            loader.close()

    def send(self, flood: Flood, cpu: int = 0) -> None:
        """Send ``flood`` from one CPU; every packet must leave."""
        with on_cpu(cpu):
            assert flood.send(self.flowgen, self.pair.a, self.pair.b.mac,
                              self.pair.b.addr) == flood.packets


@contextlib.contextmanager
def bench_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    """A :class:`Bench` on a veth pair in two fresh namespaces (the receiving one drops the
    UDP), for the module fixtures of this file and of test_drain_skips.py."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs")
    with Netns() as a, Netns() as b:
        pair = veth_pair(a, b)
        b.run(["iptables", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "-j", "DROP"])
        yield Bench(pair, build(Path(tmp_path_factory.mktemp("flowgen"))), b.name)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    """Name: bench. Scope: module. A :class:`Bench` (the receiving namespace drops the UDP)."""
    with bench_pair(tmp_path_factory) as made:
        yield made


def drain(loader, chunk: int = 4096, idle: bool = False) -> np.ndarray:
    """Table 0 as flow_record rows, in steps of ``chunk`` rows; ``idle``: as the ingest does
    it (flip to table 1 and wait for the grace period first, flip back after), so the drain
    may clear the slot windows' marks (a drain of the active table keeps them)."""
    out, buf, more = [], np.empty(chunk, RECORD_DTYPE), True
    if idle:
        loader.set_active(1)
        assert loader.synchronize()
    loader.drain_begin(0)
    while more:
        rows, err, more = loader.drain_next(buf)
        assert not err
        out.append(buf[:rows].copy())
    if idle:
        loader.set_active(0)
        assert loader.synchronize()
    return np.concatenate(out)


def keys(rows: np.ndarray) -> list[tuple[bytes, int]]:
    """Each row's flow (flowgen's flows differ in source address and port)."""
    return [(bytes(r["saddr"]), int(r["sport"])) for r in rows]


def assert_one_row_per_flow(rows: np.ndarray, flood: Flood) -> None:
    assert len(set(keys(rows))) == len(rows) == flood.flows
    assert (rows["packets"] == flood.per_flow).all()


@pytest.mark.parametrize("probes, hash_range", [(1, (140, 260)), (4, (1, 100))])
def test_probes_put_colliding_flows_in_slots_or_the_hash(bench, probes, hash_range):
    """700 flows into 1,024 slots on one CPU: with 1 probe (direct-mapped) about 190 collide
    and go to the hash, with 4 probes about 50 (simulated over 300 seeds: 167-213 and 29-64).
    Each flow is one row with all its packets; the counters split them exactly."""
    flood = Flood(flows=700, per_flow=3, concurrent=700)
    with bench.loader(slots=1024, probes=probes) as loader:
        bench.send(flood)
        counters = loader.counters()
        rows = drain(loader)
    assert_one_row_per_flow(rows, flood)
    in_hash = counters[HASH_NEW]
    assert hash_range[0] <= in_hash <= hash_range[1]
    assert counters[SLOT_PACKETS] == (flood.flows - in_hash) * flood.per_flow


def test_full_slots_send_the_rest_to_the_hash(bench):
    """3,000 flows into 64 slots, 8 probes (the default): every slot taken, the other flows
    in the hash, each flow one row (a flow that found its probes taken stays in the hash for
    the period)."""
    flood = Flood(flows=3000, per_flow=2, concurrent=3000)
    with bench.loader(slots=64) as loader:
        bench.send(flood)
        counters = loader.counters()
        rows = drain(loader, chunk=256)
    assert_one_row_per_flow(rows, flood)
    assert counters[SLOT_PACKETS] == 64 * flood.per_flow
    assert counters[HASH_NEW] == flood.flows - 64


def test_drained_slots_take_new_flows_again(bench):
    """64 slots, filled by 3,000 flows, drained, then 3,000 other flows (the mixed flood:
    other protocols, ports and destinations): the drain cleared the slots' tags, so the second
    period's flows take all 64 slots again instead of finding them taken by the first period's
    tags and going to the hash; every flow of both periods is one exact row."""
    first, second = Flood(3000, 2, 3000), Flood(3000, 2, 3000, mix=True)
    with bench.loader(slots=64) as loader:
        bench.send(first)
        before = loader.counters()
        assert_one_row_per_flow(drain(loader, chunk=256), first)
        bench.send(second)
        after = loader.counters()
        rows = drain(loader, chunk=256)
    assert_one_row_per_flow(rows, second)
    assert before[SLOT_PACKETS] == after[SLOT_PACKETS] - before[SLOT_PACKETS] == 64 * 2
    assert after[HASH_NEW] - before[HASH_NEW] == second.flows - 64


def test_fewer_slots_than_a_tag_word(bench):
    """4 slots per CPU, one tag word per CPU (a word holds 8): 40 flows take all 4 slots
    and the rest go to the hash, in each of two drain periods, each flow one exact row."""
    flood = Flood(flows=40, per_flow=3, concurrent=40)
    with bench.loader(slots=4) as loader:
        for period in (1, 2):
            bench.send(flood)
            counters = loader.counters()
            assert_one_row_per_flow(drain(loader), flood)
            assert counters[SLOT_PACKETS] == period * 4 * flood.per_flow
            assert counters[HASH_NEW] == period * (flood.flows - 4)


def test_windowed_drain_maps_only_touched_windows(bench):
    """65,536 slots per CPU are 16 windows of 4,096 per CPU. 3 flows touch at most 3 windows
    and the drain (after a flip and a grace period) maps only those; a drain with nothing new
    maps none; 20,000 flows on one CPU touch all 16 of its windows, read through 512-row
    steps that end inside windows."""
    few, many = Flood(flows=3, per_flow=5, concurrent=3), Flood(20000, 2, 20000)
    with bench.loader(slots=65536) as loader:
        info = loader.slot_info()
        assert (info["window"], info["windows"]) == (4096, 16)
        bench.send(few)
        rows = drain(loader, idle=True)
        scanned = loader.slot_info()["windows_scanned"]
        assert_one_row_per_flow(rows, few)
        assert 1 <= scanned <= 3
        assert len(drain(loader, idle=True)) == 0  # marks cleared: nothing mapped again
        assert loader.slot_info()["windows_scanned"] == scanned
        bench.send(many)
        counters = loader.counters()
        rows = drain(loader, chunk=512, idle=True)
        assert loader.slot_info()["windows_scanned"] == scanned + 16
    assert_one_row_per_flow(rows, many)
    # 20,000 of 65,536 slots, 8 probes (the default): ~10 (simulated over 200 seeds: 2-22)
    in_hash = counters[HASH_NEW]
    assert in_hash <= 300
    assert counters[SLOT_PACKETS] == few.packets + (many.flows - in_hash) * many.per_flow


def test_one_flow_on_two_cpus_is_two_rows(bench):
    """The same flow sent from CPU 0 (2 packets) then CPU 1 (3 packets) takes a slot in each
    CPU's region: two rows of one key, which the cache adds."""
    with bench.loader(slots=4096) as loader:
        bench.send(Flood(flows=1, per_flow=2, concurrent=1), cpu=0)
        bench.send(Flood(flows=1, per_flow=3, concurrent=1), cpu=1)
        counters = loader.counters()
        rows = drain(loader)
    assert len(rows) == 2 and len(set(keys(rows))) == 1
    assert sorted(rows["packets"].tolist()) == [2, 3]
    assert counters[SLOT_PACKETS] == 5 and counters[HASH_NEW] == 0
