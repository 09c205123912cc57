"""The C aggregator's append mode: under a flood of new flows (a table cycle in which almost
no packet found its flow held) it appends each packet as its own row for the next cycles
instead of hashing it into the sum table; the cache sums the rows, so the flows, packets and
counters are exactly those of the hashed table and of the Python decoder."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from netflow_agent.plugins.ingest_nflog import decoders
from netflow_agent.plugins.ingest_nflog.decoders import rows_of
from tests.ingest_nflog.test_c_decoder import (
    RECV_NS,
    UDP,
    _ext,
    _ip4,
    _ip6,
    _many_flows,
    _message,
    _records,
    _tcp,
    _through_cache,
)

#: _nflog.c's APPEND_MIN_PACKETS and APPEND_CYCLES
MIN_PACKETS, CYCLES = 8192, 15


def _feed(agg: Any, datagram: bytes) -> None:
    agg.feed(datagram, len(datagram), RECV_NS)


def _flood(agg: Any, start: int = 0) -> list[tuple]:
    """One cycle of MIN_PACKETS packets, each a new flow, fed and taken."""
    _feed(agg, _many_flows(MIN_PACKETS, start))
    return rows_of(agg.take()[0])


def _ports(rows: list[tuple]) -> list[int]:
    return [struct.unpack("!H", r[0][8:10])[0] for r in rows]


def test_a_flood_of_new_flows_appends_each_packet_as_a_row() -> None:
    """After a cycle of only new flows, a repeated flow is one row per packet (the cache
    sums them), with each packet's own counters; a cycle that sums stays hashed."""
    agg = _ext().Aggregator()
    assert (agg.appending, agg.hashed_cycles, agg.append_cycles) == (0, 0, 0)
    assert len(_flood(agg)) == MIN_PACKETS
    assert (agg.appending, agg.hashed_cycles) == (CYCLES, 1)
    twice = _many_flows(10) + _many_flows(10)
    _feed(agg, twice)
    rows = rows_of(agg.take()[0])
    assert _ports(rows) == list(range(10)) * 2
    assert all(r[1] == 1 for r in rows)  # packets: one per row
    assert agg.append_cycles == 1 and agg.appending == CYCLES - 1

    summing = _ext().Aggregator()  # the same packets hashed: summed per flow
    _feed(summing, _many_flows(MIN_PACKETS // 2) * 2)
    assert len(rows_of(summing.take()[0])) == MIN_PACKETS // 2
    assert (summing.appending, summing.hashed_cycles) == (0, 1)


def test_empty_takes_are_no_cycles() -> None:
    """An idle reader's takes (nothing pending) neither count nor end append mode."""
    agg = _ext().Aggregator()
    _flood(agg)
    for _ in range(3 * CYCLES):
        assert agg.take() == (b"", 0, 0, 0, 0, 0)
    assert (agg.appending, agg.append_cycles, agg.hashed_cycles) == (CYCLES, 0, 1)


def test_small_cycles_never_append() -> None:
    """A cycle below MIN_PACKETS packets decides nothing: a trickle, or the first read round
    of a flood (its 4,096 packets each the first of its flow, though the flows repeat)."""
    agg = _ext().Aggregator()
    for start in range(0, 5000, 500):
        _feed(agg, _many_flows(500, start))
        agg.take()
    _feed(agg, _many_flows(4096, 10_000))
    agg.take()
    assert (agg.appending, agg.append_cycles, agg.hashed_cycles) == (0, 0, 11)


def test_after_the_append_cycles_it_hashes_and_sums_again() -> None:
    """The slots stay empty while appending: the hashed cycle after sums exactly."""
    agg = _ext().Aggregator()
    _flood(agg)
    for i in range(CYCLES):
        _feed(agg, _many_flows(5) * 2)
        assert len(agg.take()[0]) == 10 * decoders.TAKE_DTYPE.itemsize
        assert agg.appending == CYCLES - 1 - i
    _feed(agg, _many_flows(5) * 3)
    rows = rows_of(agg.take()[0])
    assert _ports(rows) == list(range(5)) and [r[1] for r in rows] == [3] * 5
    assert (agg.append_cycles, agg.hashed_cycles, agg.appending) == (CYCLES, 2, 0)


def test_bounded_takes_and_feeds_between_them_while_appending_lose_nothing() -> None:
    """Chunks, a feed between two of them (which forgets the chunk taken) and the next
    cycle: every packet in exactly one row, in arrival order."""
    agg = _ext().Aggregator()
    _flood(agg)
    _feed(agg, _many_flows(300))
    head = rows_of(agg.take(100)[0])
    _feed(agg, _many_flows(300, start=150))
    assert agg.pending == 500
    rest = rows_of(agg.take()[0])
    assert _ports(head + rest) == list(range(300)) + list(range(150, 450))
    assert agg.append_cycles == 1


def test_the_cache_gets_the_same_flows_and_counters_appended_or_hashed() -> None:
    """A flood of new flows, then flows repeated across and within batches: the C path
    (appending after the first cycle) and the Python decoder give the same cache."""
    _ext()
    stream = [_many_flows(MIN_PACKETS)] * 2 + [_many_flows(700, 300)] * 3 + \
        [_many_flows(200) * 4]
    py, c = _through_cache(stream, False), _through_cache(stream, True)
    assert _records(c) == _records(py)
    keys = ("traffic_packets", "traffic_bytes", "drop_packets", "new", "found")
    assert {k: c.stats.as_dict()[k] for k in keys} == {k: py.stats.as_dict()[k] for k in keys}


def test_the_batcher_reports_the_cycles() -> None:
    """``append_cycles`` / ``hashed_cycles`` in the reader's stats (C decoder only)."""
    batcher = decoders.CBatcher()
    data = _many_flows(MIN_PACKETS)
    for _ in range(3):
        batcher.feed(bytearray(data), len(data), RECV_NS)
        batcher.take("ingest.nflog[0]")
    stats = batcher.stats()
    assert (stats["hashed_cycles"], stats["append_cycles"]) == (1, 2)
    assert {"append_cycles", "hashed_cycles"} <= set(decoders.C_ONLY_STATS)


@pytest.mark.parametrize(("l2", "native"), [(0, False), (0, True), (decoders.L2_MAC, False)])
def test_appended_rows_are_the_hashed_rows_of_distinct_flows(l2: int, native: bool) -> None:
    """Each of 1,002 distinct flows (UDP, TCP with its flags, IPv6) gives the same row
    appended as hashed, in every take layout and key width."""
    ext = _ext()
    appending, hashed = ext.Aggregator(l2=l2), ext.Aggregator(l2=l2)
    _feed(appending, _many_flows(MIN_PACKETS))
    appending.take()
    assert appending.appending
    distinct = [_many_flows(1000, 2000), _message(_ip4(6, _tcp(1000, 80, 0x12))),
                _message(_ip6(17, UDP), outdev=0)]
    for agg in (appending, hashed):
        for d in distinct:
            _feed(agg, d)
    got, want = appending.take(native=native), hashed.take(native=native)
    assert bytes(got[0]) == bytes(want[0]) and got[1:] == want[1:]
    assert len(got[0]) >= 1000 * (decoders.NATIVE_DTYPE.itemsize if native
                                  else decoders.TAKE_DTYPE.itemsize)
