"""The C aggregator's row buffers (``_nflog.c`` pool_get, ensure_fill, take): which buffer a
batch's rows go on in, how large it is, what the counters say, and that appended native rows
are handed on without a copy. Also the flow table's seeded hash (no crafted probe chains)."""

from __future__ import annotations

import ctypes
import struct
from typing import Any

import numpy as np
import pytest

from netflow_agent.plugins.ingest_nflog import decoders
from tests.ingest_nflog.test_append_mode import MIN_PACKETS, _agg, _feed, _flood, _summed_rows
from tests.ingest_nflog.test_c_decoder import (
    RECV_NS,
    _ext,
    _ip4,
    _many_flows,
    _message,
    _native_rows,
)
from tests.ingest_nflog.test_fragments_tunnels import TRACK, datagrams_of, fragmented, run

LIMIT, NATIVE = decoders.TAKE_LIMIT, decoders.NATIVE_DTYPE.itemsize


def _ports(rows: Any) -> list[int]:
    return np.frombuffer(rows, decoders.NATIVE_DTYPE)["src_port"].tolist()


def _address(view: memoryview) -> int:
    return np.frombuffer(view, np.uint8).ctypes.data


def _appending() -> Any:
    """A native aggregator in append mode whose flood batch is let go (its buffer free)."""
    agg = _agg(native=True)
    _flood(agg)
    assert agg.appending
    return agg


def test_appended_rows_are_written_where_the_batch_is_handed_on() -> None:
    """While appending, a feed writes the rows into the pooled buffer the next batch then
    is: they are there before take(), and the batches take turns in exactly two buffers
    while the pipeline holds one batch as the next is taken."""
    agg, held, objects, addresses = _appending(), None, [], []
    for cycle in range(6):
        d = _many_flows(400, 1000 * cycle)
        _feed(agg, d)
        if cycle >= 2:  # the buffer of two batches ago (let go) holds the rows already
            assert ctypes.string_at(addresses[cycle - 2], 400 * NATIVE) == \
                _native_rows(d)
        got = agg.take(LIMIT)
        assert _ports(got[0]) == list(range(1000 * cycle, 1000 * cycle + 400))
        objects.append(id(got[0].obj))
        addresses.append(_address(got[0]))
        held = got  # the pipeline merges the previous batch while this one is taken
    assert held is not None and len(set(objects)) == 2
    assert objects[0::2] == [objects[0]] * 3 and objects[1::2] == [objects[1]] * 3


def test_a_buffer_let_go_mid_cycle_waits_for_the_take() -> None:
    """Rows of a cycle already in the table when a buffer comes free: the next feed leaves
    that buffer to the take (which copies the rows into it), so no fresh one is allocated."""
    agg = _agg(native=True)
    held = [_flood(agg)[0]]
    _feed(agg, _many_flows(500))
    held.append(agg.take(LIMIT)[0])  # both pooled buffers hold a batch
    fresh = agg.pool_fresh
    _feed(agg, _many_flows(300, 5000))  # no buffer free: rows wait in the table
    held.pop()  # the pipeline lets one go
    _feed(agg, _many_flows(300, 6000))
    rows = agg.take(LIMIT)[0]
    assert agg.pool_fresh == fresh
    assert _ports(rows) == list(range(5000, 5300)) + list(range(6000, 6300))


def test_a_buffer_that_comes_free_before_the_cycles_first_row_takes_it() -> None:
    """Several feeds in a cycle: a buffer let go after feeds that brought no row is still
    written directly by the feed that brings the first."""
    agg = _agg(native=True)
    held = [_flood(agg)[0]]
    _feed(agg, _many_flows(500))
    held.append(agg.take(LIMIT)[0])
    fresh, reused = agg.pool_fresh, agg.pool_reused
    _feed(agg, b"")  # no buffer free, no row
    held.pop()
    _feed(agg, _many_flows(200, 7000))
    _feed(agg, _many_flows(200, 8000))
    got = agg.take(LIMIT)[0]
    assert _ports(got) == list(range(7000, 7200)) + list(range(8000, 8200))
    assert (agg.pool_fresh, agg.pool_reused) == (fresh, reused + 1)


def test_a_take_hands_the_full_buffer_on_while_rows_wait_in_the_table() -> None:
    """Rows beyond the buffer's room wait in the table: a take of exactly the buffer's rows
    hands the buffer itself on, the next take copies the rest, and a feed between them
    appends after the rest."""
    agg = _agg(native=True)
    flood = _flood(agg)  # held: the next buffer is a fresh one
    agg.take(250)  # the limit: room for 250 rows
    _feed(agg, _many_flows(300))  # 250 in the buffer, 50 in the table
    whole = agg.take(250)[0]
    assert len(whole.obj) == 250 * NATIVE and _ports(whole) == list(range(250))
    assert agg.pending == 50
    _feed(agg, _many_flows(100, 300))
    rest = agg.take(1000)[0]
    assert rest.obj is not whole.obj and _ports(rest) == list(range(250, 400))
    assert agg.pending == 0 and flood[1] == MIN_PACKETS


def test_an_idle_reader_takes_no_buffer_after_letting_go() -> None:
    """An idle reader's poll: drop_buffers(), an empty take, a feed of nothing. No buffer
    is allocated for rows that are not there."""
    agg = _appending()
    fresh = agg.pool_fresh
    for _ in range(5):
        agg.drop_buffers()
        assert agg.take(LIMIT)[0] == b""
        _feed(agg, b"")
    assert agg.pool_fresh == fresh


def test_the_counters_count_each_batch_once() -> None:
    """row_buffers_reused + row_buffers_new is the number of batches handed on in a row
    buffer: bounded takes out of an appended buffer, buffers held by the pipeline, idle
    polls and a buffer never written all included."""
    agg, batches = _agg(native=True), 1
    held = [_flood(agg)[0]]

    def take(limit: int = LIMIT) -> None:
        nonlocal batches
        rows = agg.take(limit)[0]
        batches += len(rows) > 0

    for cycle in range(4):
        _feed(agg, _many_flows(300, 1000 * cycle))
        take(100)  # a copy of the buffer's head
        take(100)
        _feed(agg, _many_flows(50, 1000 * cycle + 500))
        take()  # the buffer itself
        _feed(agg, _many_flows(300, 1000 * cycle + 600))
        take(150)  # every row copied out: the buffer stays empty
        take(150)
        agg.drop_buffers()  # idle: the empty buffer goes
        take()
    _feed(agg, _many_flows(10))
    held.append(agg.take(LIMIT)[0])  # both pooled buffers held
    _feed(agg, _many_flows(10, 100))  # the rows wait in the table
    held.pop()
    _feed(agg, _many_flows(10, 200))  # a buffer comes free mid-cycle
    take()
    assert agg.pool_reused + agg.pool_fresh == batches + 1
    assert set(decoders.C_ONLY_STATS) <= set(decoders.CBatcher().stats())


@pytest.mark.parametrize("limit", [10**9, 2**61, 2**63 - 1])
def test_a_huge_limit_takes_everything_into_a_bounded_buffer(limit: int) -> None:
    """take()'s limit bounds the rows, it is no size: a huge one returns every row, in a
    buffer with room for at most TAKE_LIMIT rows, also for the appended rows after it."""
    ext = _ext()
    for native in (False, True):
        agg = ext.Aggregator()
        d = _many_flows(3)
        agg.feed(d, len(d), RECV_NS)
        rows = agg.take(limit, native=native)[0]
        size = NATIVE if native else decoders.TAKE_DTYPE.itemsize
        assert len(rows) == 3 * size and len(rows.obj) <= LIMIT * size
    agg = _appending()
    agg.take(limit)
    _feed(agg, _many_flows(3))
    rows = agg.take(limit)[0]
    assert _ports(rows) == [0, 1, 2] and len(rows.obj) <= LIMIT * NATIVE


def test_a_buffer_outside_the_pool_has_the_batchs_size() -> None:
    """With every pooled buffer held, a batch gets a buffer of its own size, not room for
    a whole take (it is freed with the batch: room would only be address space)."""
    agg = _ext().Aggregator()
    held = []
    for i in range(3):
        d = _many_flows(10, 100 * i)
        agg.feed(d, len(d), RECV_NS)
        held.append(agg.take(LIMIT, native=True)[0])
    assert [len(h.obj) for h in held] == [LIMIT * NATIVE] * 2 + [10 * NATIVE]


def test_take_native_accepts_any_truth_value() -> None:
    """take(native=...) is a truth value as it always was: None and numpy booleans too."""
    ext = _ext()
    d = _many_flows(4)
    for value, size in ((None, decoders.TAKE_DTYPE.itemsize), (np.bool_(False),
                        decoders.TAKE_DTYPE.itemsize), (np.bool_(True), NATIVE), (1, NATIVE)):
        agg = ext.Aggregator()
        agg.feed(d, len(d), RECV_NS)
        assert len(agg.take(native=value)[0]) == 4 * size
    with pytest.raises(ValueError):
        _agg(native=True).take(native=None)


def test_released_fragments_are_appended_into_the_buffer() -> None:
    """release() accounts fragments while appending with native rows: their rows go into
    the row buffer like the walk's, and sum to the hashed table's."""
    grams = datagrams_of(fragmented(True).packets)
    appending = decoders.CBatcher(TRACK, (), False, hold=MIN_PACKETS)
    _flood(appending.aggregator, start=20_000)
    hashed = decoders.CBatcher(TRACK, (), False, hold=MIN_PACKETS)
    agg = appending.aggregator
    buffers = agg.pool_reused + agg.pool_fresh
    got, want = run(appending, grams, {1: None}), run(hashed, grams, {1: None})
    assert got is not None and want is not None
    assert _summed_rows(got) == _summed_rows(want)
    assert int(got.flows["packets"].sum()) == len(got) > len(want)  # a row per packet
    assert agg.pool_reused + agg.pool_fresh == buffers + 1  # one batch, one buffer
    assert appending.stats()["frag_held"] == hashed.stats()["frag_held"] > 0


# --- the flow table's hash -------------------------------------------------------------------

M1, M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F)


def _unseeded_hash(keys: np.ndarray) -> np.ndarray:
    """_nflog.c key_hash() for 44-byte keys as it was without seeds (a = len, b = const)."""
    words = keys[:, :40].copy().view("<u8")
    tail = keys[:, 40:44].copy().view("<u4")[:, 0].astype(np.uint64)
    a = np.full(len(keys), 44, np.uint64)
    b = np.full(len(keys), 0x2545F4914F6CDD1D, np.uint64)
    with np.errstate(over="ignore"):
        for i, w in enumerate(words.T):
            if i % 2:
                b = (b ^ w) * M2
                b ^= b >> np.uint64(29)
            else:
                a = (a ^ w) * M1
                a ^= a >> np.uint64(29)
        b = (b ^ tail) * M2
        a = (a ^ (b >> np.uint64(31) | b << np.uint64(33))) * M1
    return a ^ (a >> np.uint64(32))


def test_crafted_keys_do_not_share_a_probe_chain() -> None:
    """Flows chosen so that a fixed hash puts them all in one slot (ports picked offline)
    spread over the table: the hash is seeded per instance."""
    agg = _ext().Aggregator()
    one = _many_flows(1)
    agg.feed(one, len(one), RECV_NS)
    key = np.frombuffer(bytes(agg.take()[0])[:44], np.uint8)
    sport, dport = np.meshgrid(np.arange(65536, dtype=np.uint32), np.arange(24, dtype=np.uint32))
    keys = np.tile(key, (sport.size, 1))
    keys[:, 8], keys[:, 9] = sport.ravel() >> 8, sport.ravel() & 0xFF
    keys[:, 10], keys[:, 11] = dport.ravel() >> 8, dport.ravel() & 0xFF
    slots = _unseeded_hash(keys) & np.uint64(2047)
    chosen = np.flatnonzero(slots == np.bincount(slots.astype(np.int64)).argmax())[:600]
    assert len(chosen) == 600
    flows = [(int(sport.ravel()[i]), int(dport.ravel()[i])) for i in chosen]
    datagram = b"".join(_udp_message(s, d) for s, d in flows)
    for _ in range(2):  # two instances: two seeds
        agg = _ext().Aggregator()
        agg.feed(datagram, len(datagram), RECV_NS)
        assert agg.pending == 600 and agg.longest_probe < 64


def _udp_message(sport: int, dport: int) -> bytes:
    return _message(_ip4(17, struct.pack("!HHHH", sport, dport, 8, 0)))
