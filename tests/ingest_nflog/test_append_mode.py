"""The C aggregator's append mode: under a flood of new flows (a table cycle in which almost
no packet found its flow held) it appends each packet as its own row for the next cycles
instead of hashing it into the sum table; the cache sums the rows, so the flows, packets and
counters are exactly those of the hashed table and of the Python decoder. Only a cycle of at
least the reader's hold (``Aggregator(hold=...)``, the reader's ``_HOLD_FLOWS``) fed in more
than one round decides, and only when at most one packet in 16 summed."""

from __future__ import annotations

import socket
import struct
from typing import Any

import numpy as np
import pytest

from netflow_agent.model import FlowBatch
from netflow_agent.plugins.ingest_nflog import decoders
from netflow_agent.plugins.ingest_nflog.component import _HOLD_FLOWS
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
from tests.ingest_nflog.test_fragments_tunnels import TRACK, datagrams_of, fragmented, run
from tests.support.pcapgen import FlowSpec, PcapBuilder

#: the reader's hold (the fewest packets of a deciding cycle) and _nflog.c's APPEND_CYCLES
MIN_PACKETS, CYCLES = _HOLD_FLOWS, 15


def _feed(agg: Any, datagram: bytes) -> None:
    agg.feed(datagram, len(datagram), RECV_NS)


def _agg(**kwargs: Any) -> Any:
    return _ext().Aggregator(hold=MIN_PACKETS, **kwargs)


def _flood(agg: Any, start: int = 0) -> tuple:
    """One cycle of MIN_PACKETS packets, each a new flow, fed in two rounds: its take()."""
    half = MIN_PACKETS // 2
    _feed(agg, _many_flows(half, start))
    _feed(agg, _many_flows(half, start + half))
    return agg.take()


def _ports(rows: list[tuple]) -> list[int]:
    return [struct.unpack("!H", r[0][8:10])[0] for r in rows]


def test_a_flood_of_new_flows_appends_each_packet_as_a_row() -> None:
    """After a cycle of only new flows, a repeated flow is one row per packet (the cache
    sums them), with each packet's own counters; a cycle that sums stays hashed."""
    agg = _agg()
    assert (agg.appending, agg.hashed_cycles, agg.append_cycles) == (0, 0, 0)
    assert len(rows_of(_flood(agg)[0])) == MIN_PACKETS
    assert (agg.appending, agg.hashed_cycles) == (CYCLES, 1)
    twice = _many_flows(10) + _many_flows(10)
    _feed(agg, twice)
    rows = rows_of(agg.take()[0])
    assert _ports(rows) == list(range(10)) * 2
    assert all(r[1] == 1 for r in rows)  # packets: one per row
    assert agg.append_cycles == 1 and agg.appending == CYCLES - 1

    summing = _agg()  # the same packets hashed: summed per flow
    _feed(summing, _many_flows(MIN_PACKETS // 2))
    _feed(summing, _many_flows(MIN_PACKETS // 2))
    assert len(rows_of(summing.take()[0])) == MIN_PACKETS // 2
    assert (summing.appending, summing.hashed_cycles) == (0, 1)


def test_empty_takes_are_no_cycles() -> None:
    """An idle reader's takes (nothing pending) neither count nor end append mode."""
    agg = _agg()
    _flood(agg)
    for _ in range(3 * CYCLES):
        assert agg.take() == (b"", 0, 0, 0, 0, 0)
    assert (agg.appending, agg.append_cycles, agg.hashed_cycles) == (CYCLES, 0, 1)


def test_small_cycles_never_append() -> None:
    """A cycle below MIN_PACKETS packets decides nothing: a trickle, or the first read round
    of a flood (its 4,096 packets each the first of its flow, though the flows repeat)."""
    agg = _agg()
    for start in range(0, 5000, 500):
        _feed(agg, _many_flows(500, start))
        agg.take()
    _feed(agg, _many_flows(4096, 10_000))
    agg.take()
    assert (agg.appending, agg.append_cycles, agg.hashed_cycles) == (0, 0, 11)


@pytest.mark.parametrize(("summed", "appends"), [(512, True), (513, False)])
def test_at_most_one_packet_in_16_summed_switches(summed: int, appends: bool) -> None:
    """The exact boundary: a cycle of 8,192 packets in two rounds switches with 512 of them
    summed into a flow already held (one in 16), not with 513."""
    agg = _agg()
    half = MIN_PACKETS // 2
    _feed(agg, _many_flows(half))
    _feed(agg, _many_flows(half - summed, half) + _many_flows(summed))
    rows = rows_of(agg.take()[0])
    assert len(rows) == MIN_PACKETS - summed and sum(r[1] for r in rows) == MIN_PACKETS
    assert agg.appending == (CYCLES if appends else 0) and agg.hashed_cycles == 1


def test_a_single_round_never_decides() -> None:
    """However large, one round is no cycle that decides (the first read round of a flood
    after an idle reader: each packet the first of its flow, though W1's flows repeat);
    nor a cycle of an aggregator without a hold."""
    agg = _agg()
    _feed(agg, _many_flows(2 * MIN_PACKETS))
    assert len(rows_of(agg.take()[0])) == 2 * MIN_PACKETS
    assert (agg.appending, agg.hashed_cycles) == (0, 1)
    unheld = _ext().Aggregator()
    assert unheld.hold == 0
    _flood(unheld)
    assert (unheld.appending, unheld.hashed_cycles) == (0, 1)


def test_read_rounds_count_as_rounds(pair: tuple[socket.socket, socket.socket]) -> None:
    """A read() that receives several datagrams is one round; two read()s are two."""
    reader, writer = pair
    agg = _ext().Aggregator(hold=1024)
    for rounds in (1, 2):
        for start in (0, 512):
            writer.send(_many_flows(512, start))
        for _ in range(rounds):
            got = decoders.ReadResult(*agg.read(reader.fileno(), 2 // rounds, 1 << 20, 65536))
            assert got.datagrams == 2 // rounds
        assert len(rows_of(agg.take()[0])) == 1024
        assert agg.appending == (0 if rounds == 1 else CYCLES)


def test_after_the_append_cycles_it_hashes_and_sums_again() -> None:
    """The slots stay empty while appending: the hashed cycle after sums exactly."""
    agg = _agg()
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
    agg = _agg()
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
    half = MIN_PACKETS // 2  # taken alone, then two rounds of new flows in one cycle
    stream = [_many_flows(half, k * half) for k in range(3)] + [_many_flows(700, 300)] * 3 + \
        [_many_flows(200) * 4]
    py, c = _through_cache(stream, False), _through_cache(stream, True, hold=MIN_PACKETS)
    assert _records(c) == _records(py)
    # found: one lookup per packet as with the Python decoder, so the C rows were appended
    keys = ("traffic_packets", "traffic_bytes", "drop_packets", "new", "found")
    assert {k: c.stats.as_dict()[k] for k in keys} == {k: py.stats.as_dict()[k] for k in keys}


def test_the_batcher_reports_the_cycles() -> None:
    """``append_cycles`` / ``hashed_cycles`` in the reader's stats (C decoder only)."""
    batcher = decoders.make_batcher("c", hold=MIN_PACKETS)
    half = MIN_PACKETS // 2
    for _ in range(3):
        for start in (0, half):
            data = _many_flows(half, start)
            batcher.feed(bytearray(data), len(data), RECV_NS)
        batcher.take("ingest.nflog[0]")
    stats = batcher.stats()
    assert (stats["hashed_cycles"], stats["append_cycles"]) == (1, 2)
    assert {"append_cycles", "hashed_cycles"} <= set(decoders.C_ONLY_STATS)


@pytest.mark.parametrize(("l2", "native"), [(0, False), (0, True), (decoders.L2_MAC, False)])
def test_appended_rows_are_the_hashed_rows_of_distinct_flows(l2: int, native: bool) -> None:
    """Each of 1,002 distinct flows (UDP, TCP with its flags, IPv6) gives the same row
    appended as hashed, in every take layout and key width."""
    appending, hashed = _agg(l2=l2), _agg(l2=l2)
    _flood(appending)
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


def test_native_rows_appended_go_into_the_batch_as_they_are() -> None:
    """With native rows (``Aggregator(native=True)``, the default schema) each appended
    packet's FlowBatch row is written into the buffer that take() then hands on without a
    copy: the same rows as the hashed table of distinct flows, the pool's two buffers taking
    turns cycle after cycle (no fresh one while the batches are let go)."""
    appending, limit = _agg(native=True), decoders.TAKE_LIMIT
    half = MIN_PACKETS // 2
    _feed(appending, _many_flows(half))
    _feed(appending, _many_flows(half, half))
    appending.take(limit)
    assert appending.appending
    for cycle in range(6):
        hashed = _agg(native=True)
        distinct = [_many_flows(700, 1000 * cycle), _message(_ip6(17, UDP), outdev=0)]
        for agg in (appending, hashed):
            for d in distinct:
                _feed(agg, d)
        got, want = appending.take(limit), hashed.take()
        assert bytes(got[0]) == bytes(want[0]) and got[1:] == want[1:]
        assert len(got[0]) == 701 * decoders.NATIVE_DTYPE.itemsize
    # the hashed take's buffer, then the one beside it while `got` holds the first
    assert (appending.append_cycles, appending.pool_fresh) == (6, _ext().TAKE_POOL)


def test_appending_while_the_pipeline_holds_every_buffer_takes_no_fresh_one_early() -> None:
    """When every pooled buffer is still held by a batch, appended rows wait in the table
    and take() copies them into a buffer then, when the pipeline may have let one go: no
    fresh buffer (whose pages all fault) is allocated ahead."""
    agg, limit = _agg(native=True), decoders.TAKE_LIMIT
    held = [_flood(agg)[0]]
    _feed(agg, _many_flows(500))
    held.append(agg.take(limit)[0])  # the pool's two buffers each hold a batch now
    fresh = agg.pool_fresh
    _feed(agg, _many_flows(500, 5000))
    assert [bytes(h[:2]) for h in held] == [b"\x04\x11"] * 2  # kept, not rewritten
    held.clear()  # the pipeline merged them
    rows = agg.take(limit)[0]
    assert agg.pool_fresh == fresh  # a pooled buffer again
    assert np.frombuffer(rows, decoders.NATIVE_DTYPE)["src_port"].tolist() == \
        list(range(5000, 5500))


def test_an_idle_reader_that_lets_go_of_its_buffers_takes_none_until_a_take() -> None:
    """After drop_buffers() (an idle reader, every poll) a feed takes no buffer while it
    appends: the rows wait in the table for the take (which allocates one), then the next
    cycles write into buffers again."""
    agg, limit = _agg(native=True), decoders.TAKE_LIMIT
    _flood(agg)
    agg.drop_buffers()
    for _ in range(5):  # idle polls: each lets go again
        _feed(agg, b"")
        agg.drop_buffers()
    assert agg.pool_fresh == 1  # the flood's take only
    _feed(agg, _many_flows(100))
    assert agg.pool_fresh == 1 and agg.pending == 100
    assert len(agg.take(limit)[0]) == 100 * decoders.NATIVE_DTYPE.itemsize
    _feed(agg, _many_flows(100, 100))  # into the take's buffer, now free again
    assert (agg.pool_fresh, len(agg.take(limit)[0])) == (2, 100 * decoders.NATIVE_DTYPE.itemsize)


def test_native_rows_appended_survive_bounded_takes_feeds_and_a_full_buffer() -> None:
    """A bounded take copies the head of the appended rows; a feed in between forgets it;
    rows beyond the buffer's room (take()'s limit in rows) go on in order after it: every
    packet in exactly one row, in arrival order, as without native rows."""
    for native in (True, False):
        agg = _agg(native=native)
        flood = _flood(agg)  # held: the next buffer is a fresh one
        agg.take(250)  # the limit: room for 250 rows in the next buffer
        _feed(agg, _many_flows(300))  # 250 in the buffer, 50 after it
        assert agg.pending == 300
        head = agg.take(100, native=native)[0]
        _feed(agg, _many_flows(300, start=150))
        assert agg.pending == 500
        rest = agg.take(1000, native=native)[0]
        ports = (np.frombuffer(bytes(head) + bytes(rest), decoders.NATIVE_DTYPE)["src_port"]
                 .tolist() if native else _ports(rows_of(bytes(head) + bytes(rest))))
        assert ports == list(range(300)) + list(range(150, 450)), native
        assert agg.pending == 0 and agg.append_cycles == 1 and flood[1] == MIN_PACKETS


def test_a_native_aggregator_takes_native_rows_only() -> None:
    """take(native=False) cannot give an Aggregator(native=True)'s rows; native needs the
    44-byte key (no layer-2 key fields)."""
    with pytest.raises(ValueError):
        _agg(native=True).take(native=False)
    with pytest.raises(ValueError):
        _agg(native=True, l2=decoders.L2_MAC)
    assert decoders.CBatcher().aggregator.native


def _summed_rows(batch: FlowBatch | None) -> list[tuple]:
    """A batch's rows summed per key in order of first appearance (what the cache does)."""
    if batch is None:
        return []
    out: dict[bytes, list] = {}
    columns = ("packets", "octets", "start_ns", "end_ns", "tcp_flags", "out_if")
    for key, packets, octets, start, end, flags, out_if in zip(
            batch.keys(), *(batch.flows[n].tolist() for n in columns), strict=True):
        row = out.setdefault(key, [key, 0, 0, start, end, 0, 0])
        row[1] += packets
        row[2] += octets
        row[3], row[4] = min(row[3], start), max(row[4], end)
        row[5] |= flags
        row[6] = out_if or row[6]
    return [tuple(r) for r in out.values()]


def _lost_first_fragment() -> tuple[list[bytes], dict[int, int | None]]:
    """A datagram whose first fragment never came: released by timeout, then at the end."""
    b = PcapBuilder(fragments="track")
    b.add(FlowSpec("udp", "10.2.0.1", "10.2.0.2", 7, 8, packets=2, payload=3000,
                   fragment=1400, reorder=True))
    packets = [p for p in b.packets if p is not b.packets[2]]
    last_ts = max(ts for ts, _ip in packets)
    return datagrams_of(packets), {0: last_ts, 1: last_ts + 31 * 10**9}


def _tunneled() -> list[bytes]:
    b = PcapBuilder()
    b.tunnel, b.tunnel_id = "vxlan", 77
    b.add(FlowSpec("udp", "10.3.0.1", "10.3.0.2", 5, 6, packets=3, payload=100))
    b.add(FlowSpec("tcp", "fd03::1", "fd03::2", 7, 8, packets=2, payload=300))
    return datagrams_of(b.packets)


@pytest.mark.parametrize("case", ["fragments", "reordered", "lost-first", "keep-outer"])
def test_fragments_and_tunnels_appended_sum_to_the_hashed_rows(case: str) -> None:
    """Fragments matched or released by release() (by timeout and at the end) and
    keep_outer's outer rows, fed while appending: one row per packet, and those rows summed
    per key are the hashed table's rows."""
    release: dict[int, int | None] = {}
    opts: tuple[Any, ...] = (TRACK, (), False)
    if case == "lost-first":
        grams, release = _lost_first_fragment()
    elif case == "keep-outer":
        grams, opts = _tunneled(), (None, ("vxlan",), True)
    else:
        grams = datagrams_of(fragmented(case == "reordered").packets)
    appending = decoders.CBatcher(*opts, hold=MIN_PACKETS)
    _flood(appending.aggregator, start=20_000)
    assert appending.aggregator.appending == CYCLES
    hashed = decoders.CBatcher(*opts, hold=MIN_PACKETS)
    got, want = run(appending, grams, release), run(hashed, grams, release)
    assert got is not None and want is not None
    assert _summed_rows(got) == _summed_rows(want) and len(_summed_rows(want)) == len(want)
    assert int(got.flows["packets"].sum()) == len(got) > len(want)  # a row per packet
    assert (got.trunc, got.frag, got.dropped_packets) == \
        (want.trunc, want.frag, want.dropped_packets)
    skip = ("messages", *decoders.C_ONLY_STATS)  # the flood's messages
    assert {k: v for k, v in appending.stats().items() if k not in skip} == \
        {k: v for k, v in hashed.stats().items() if k not in skip}
    assert appending.stats()["append_cycles"] == 1
