"""The C decoder (``netflow_agent.plugins.ingest_nflog._nflog``) against the Python decoder,
the reference.

For every receive buffer the C aggregator must give exactly what the Python decoder's packets
give once summed per flow key (same keys, byte for byte ``make_key``; packets, bytes, first
and last time, OR of TCP flags, last output interface; order of first appearance) and the
same counters (trunc, frag, trunc bytes, sequence gaps and resets, malformed, messages).
Inputs: the buffers recorded on this machine, hand-built messages for every parse case,
hypothesis-generated netlink datagrams, and a few thousand cut/garbled/random buffers (a C
crash would kill the interpreter, so these run in-process on purpose). The cache then gets
the same flows and the same ``traffic``/``drop`` counters from either decoder.
"""

from __future__ import annotations

import errno
import importlib
import os
import random
import re
import socket
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from netflow_agent.model import (
    DIRECTION_EGRESS,
    END_OF_FLOW,
    TCP_ACK,
    TCP_FIN,
    TCP_SYN,
    FlowBatch,
    PacketBatch,
    make_key,
)
from netflow_agent.plugins.ingest_nflog import decoders
from netflow_agent.plugins.ingest_nflog.decoders import rows_of
from netflow_agent.plugins.ingest_nflog.netlink import NflogDecoder
from netflow_agent.stages.cache import CacheConfig, FlowCache
from tests.fuzz.strategies import fuzz_settings, nflog_datagrams
from tests.ingest_nflog.test_decoder import DATAGRAMS
from tests.support import require_tool, strict_environment

NS = 1_000_000_000
RECV_NS = 1_700_000_001_000_000_000
TAIL = bytes(range(256)) * 2  # junk after n: reading it would change the answer


def _ext() -> Any:
    try:
        return importlib.import_module("netflow_agent.plugins.ingest_nflog._nflog")
    except ImportError as exc:
        if strict_environment():
            pytest.fail(f"NFLOG C decoder not built: {exc}", pytrace=False)
        pytest.skip(f"NFLOG C decoder not built: {exc}")


# --- the two decoders, compared per buffer ---------------------------------------------------


def _summed(packets: list) -> list[tuple]:
    """Packets summed per key the way the C decoder does (and the cache would)."""
    rows: dict[bytes, list] = {}
    for key, length, flags, ts, out_if in packets:
        r = rows.get(key)
        if r is None:
            rows[key] = [key, 1, length, ts, ts, flags, out_if]
            continue
        r[1] += 1
        r[2] += length
        r[3], r[4] = min(r[3], ts), max(r[4], ts)
        r[5] |= flags
        if out_if:
            r[6] = out_if
    return [tuple(r) for r in rows.values()]


def _python_run(datagrams: list[bytes]) -> tuple[list, dict[str, int]]:
    dec = NflogDecoder()
    out = []
    for data in datagrams:
        packets: list = []
        gaps = dec.seq_gaps
        dec.decode(bytearray(data + TAIL), len(data), RECV_NS, packets)
        trunc, frag, trunc_bytes = dec.parser.take_counters()
        out.append((_summed(packets), len(packets), trunc, frag, trunc_bytes,
                    dec.seq_gaps - gaps))
    stats = dec.stats()
    stats.pop("shapes")
    return out, stats | {"expect_seq": dec.expect_seq}


def _c_run(datagrams: list[bytes]) -> tuple[list, dict[str, int]]:
    agg = _ext().Aggregator()
    out = [agg.decode(bytearray(data + TAIL), len(data), RECV_NS) for data in datagrams]
    out = [(rows_of(records), *counts) for records, *counts in out]
    return out, {"messages": agg.messages, "seq_gaps": agg.seq_gaps,
                 "seq_resets": agg.seq_resets, "malformed": agg.malformed,
                 "expect_seq": agg.expect_seq}


def _same(datagrams: list[bytes]) -> tuple[list, dict[str, int]]:
    c, py = _c_run(datagrams), _python_run(datagrams)
    assert c == py
    return c


def test_recorded_buffers_identical() -> None:
    results, stats = _same(DATAGRAMS)
    assert stats["malformed"] == 0 and stats["seq_gaps"] == 0
    assert sum(r[1] for r in results) == stats["messages"] >= 50
    assert sum(r[3] for r in results) >= 2 * 3 + 2 * 2  # the recorder's fragments


def test_recorded_buffers_with_a_lost_datagram() -> None:
    _results, stats = _same(DATAGRAMS[:3] + DATAGRAMS[4:])
    assert stats["seq_gaps"] > 0


def test_feeding_several_buffers_then_taking_sums_them_all() -> None:
    """A burst of datagrams fed one by one gives the sums of all, counters included."""
    agg = _ext().Aggregator()
    fed = [agg.feed(bytearray(d + TAIL), len(d), RECV_NS) for d in DATAGRAMS]
    records, packets, trunc, frag, trunc_bytes, gaps = agg.take()
    rows = rows_of(records)
    per_buffer, _stats = _python_run(DATAGRAMS)
    assert fed == [r[1] for r in per_buffer] and packets == sum(fed)
    dec = NflogDecoder()
    everything: list = []
    for d in DATAGRAMS:
        dec.decode(bytearray(d), len(d), RECV_NS, everything)
    assert rows == _summed(everything)
    assert (trunc, frag, trunc_bytes, gaps) == (*dec.parser.take_counters(), 0)
    assert agg.take() == (b"", 0, 0, 0, 0, 0)  # take starts over
    many = [_message(_ip4(17, struct.pack("!HHHH", p, 53, 8, 0))) for p in range(3000)]
    agg.feed(b"".join(many), sum(map(len, many)), RECV_NS)  # grows the table several times
    rows = rows_of(agg.take()[0])
    assert len(rows) == 3000 and [r[0][8:10] for r in rows] == \
        [struct.pack("!H", p) for p in range(3000)]


def _many_flows(n: int, start: int = 0) -> bytes:
    """One datagram of ``n`` UDP packets, each its own flow (source port ``start + i``)."""
    return b"".join(_message(_ip4(17, struct.pack("!HHHH", start + i, 53, 8, 0)))
                    for i in range(n))


def test_bounded_takes_return_every_flow_once_with_the_counters() -> None:
    """take(limit) hands the table on in chunks: together exactly one full take."""
    ext = _ext()
    datagrams = DATAGRAMS + [_many_flows(700)]
    whole = ext.Aggregator()
    for d in datagrams:
        whole.feed(d, len(d), RECV_NS)
    want = whole.take()
    agg = ext.Aggregator()
    for d in datagrams:
        agg.feed(d, len(d), RECV_NS)
    pending = agg.pending
    chunks = []
    while agg.pending:
        chunks.append(agg.take(64))
        assert len(chunks[-1][0]) <= 64 * decoders.TAKE_DTYPE.itemsize
    assert pending == len(want[0]) // decoders.TAKE_DTYPE.itemsize > 700
    assert b"".join(c[0] for c in chunks) == want[0]
    assert chunks[0][1:] == want[1:]  # the counters come once, with the first chunk
    assert all(c[1:] == (0, 0, 0, 0, 0) for c in chunks[1:])
    assert agg.take() == (b"", 0, 0, 0, 0, 0)


def test_feeding_between_bounded_takes_loses_nothing() -> None:
    """Packets of a flow already taken (a chunk left) come back as a new row; the flows
    still pending keep summing: every packet is in exactly one row."""
    agg = _ext().Aggregator()
    first, second = _many_flows(300), _many_flows(300, start=150)  # 150 flows in both
    agg.feed(first, len(first), RECV_NS)
    head = rows_of(agg.take(100)[0])
    agg.feed(second, len(second), RECV_NS)  # forgets the 100 taken, keeps 200 pending
    assert agg.pending == 200 + 150  # 100-299 pending, 300-449 new
    rest = rows_of(agg.take()[0])
    ports = [struct.unpack("!H", r[0][8:10])[0] for r in head + rest]
    per_port: dict[int, int] = {}
    for port, row in zip(ports, head + rest, strict=True):
        per_port[port] = per_port.get(port, 0) + row[1]
    assert per_port == {p: 2 if 150 <= p < 300 else 1 for p in range(450)}
    assert ports[:300] == list(range(300))  # taken, then pending, in first-packet order
    assert sum(r[1] for r in head + rest) == 600


def test_native_take_is_the_flow_batch_the_generic_path_builds() -> None:
    """take(native=True) writes the default schema's record array itself."""
    ext = _ext()
    datagrams = DATAGRAMS + [_many_flows(50)]
    generic, native = ext.Aggregator(), ext.Aggregator()
    for d in datagrams:
        generic.feed(d, len(d), RECV_NS)
        native.feed(d, len(d), RECV_NS)
    want = decoders.flows_of(generic.take()[0])
    got = np.frombuffer(native.take(native=True)[0], decoders.NATIVE_DTYPE)
    assert want.dtype == got.dtype and len(got) > 50
    assert want.tobytes() == got.tobytes()
    with pytest.raises(ValueError):
        ext.Aggregator(l2=decoders.L2_MAC).take(native=True)



def _native_rows(datagram: bytes) -> bytes:
    """What a fresh aggregator's native take gives for one datagram."""
    agg = _ext().Aggregator()
    agg.feed(datagram, len(datagram), RECV_NS)
    return bytes(agg.take(native=True)[0])


def test_take_rewrites_a_row_buffer_only_once_nothing_holds_it() -> None:
    """take() reuses its row buffers (no fresh pages per batch), but never one a batch, an
    array over it or the view itself still holds: every batch keeps its rows."""
    ext = _ext()
    agg, pool = ext.Aggregator(), ext.TAKE_POOL
    datagrams = [_many_flows(300, start=1000 * i) for i in range(pool + 3)]
    want = [_native_rows(d) for d in datagrams]
    held = []
    for d in datagrams[:pool + 2]:  # all held: more than the pool
        agg.feed(d, len(d), RECV_NS)
        rows = agg.take(native=True)[0]
        assert isinstance(rows, memoryview)  # pooled or not: the documented type
        held.append(np.frombuffer(rows, decoders.NATIVE_DTYPE))
    del rows
    assert (agg.pool_fresh, agg.pool_reused) == (pool + 2, 0)
    assert [a.tobytes() for a in held] == want[:pool + 2]
    del held[:-1]  # the batches in the pooled buffers are gone, the last (unpooled) is not
    last = datagrams[-1]
    agg.feed(last, len(last), RECV_NS)
    rows = agg.take(native=True)[0]
    assert bytes(rows) == want[-1] and held[0].tobytes() == want[pool + 1]
    assert (agg.pool_fresh, agg.pool_reused) == (pool + 2, 1)
    small = _many_flows(3, start=9000)  # a smaller take reuses a larger buffer's start
    held.clear()
    del rows
    agg.feed(small, len(small), RECV_NS)
    assert bytes(agg.take(native=True)[0]) == _native_rows(small)
    assert (agg.pool_fresh, agg.pool_reused) == (pool + 2, 2)
    assert agg.take(native=True)[0] == b""  # nothing pending: empty, no buffer taken
    agg.drop_buffers()  # an idle reader: the next batch gets a fresh buffer
    agg.feed(small, len(small), RECV_NS)
    assert bytes(agg.take(native=True)[0]) == _native_rows(small)
    assert (agg.pool_fresh, agg.pool_reused) == (pool + 3, 2)


def test_a_pooled_row_buffer_has_room_for_the_largest_take() -> None:
    """A row buffer is allocated for take()'s limit, not for the take at hand: takes that
    grow from batch to batch (a flood's rounds) rewrite the pool's buffers instead of
    replacing each with a fresh one (whose pages all fault again)."""
    ext = _ext()
    agg, limit = ext.Aggregator(), 2048
    for i, n in enumerate((100, 400, 900, 1500, 2000, 2048)):
        d = _many_flows(n, start=3000 * i)
        agg.feed(d, len(d), RECV_NS)
        assert bytes(agg.take(limit, native=True)[0]) == _native_rows(d)
    assert (agg.pool_fresh, agg.pool_reused) == (1, 5)


def test_reading_a_socket_is_feeding_its_datagrams(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """read() receives what waits on a socket (non-blocking) into the table, within its
    bounds, and reports an error instead of raising."""
    ext = _ext()
    reader, writer = pair
    for d in DATAGRAMS:
        writer.send(d)
    agg = ext.Aggregator()
    first = decoders.ReadResult(*agg.read(reader.fileno(), 3, 1 << 20, 65536))
    assert (first.datagrams, first.full, first.errno) == (3, True, 0)
    rest = decoders.ReadResult(*agg.read(reader.fileno(), 1000, 1 << 20, 65536))
    assert (rest.datagrams, rest.full) == (len(DATAGRAMS) - 3, False)
    assert first.bytes + rest.bytes == sum(map(len, DATAGRAMS))
    fed = ext.Aggregator()
    packets = sum(fed.feed(d, len(d), RECV_NS) for d in DATAGRAMS)
    assert first.packets + rest.packets == packets
    got, want = agg.take(), fed.take()
    assert [r[:3] + r[5:] for r in rows_of(got[0])] == \
        [r[:3] + r[5:] for r in rows_of(want[0])]  # times: the recorded timestamps
    assert got[1:] == want[1:]
    writer.send(DATAGRAMS[0])
    small = decoders.ReadResult(*agg.read(reader.fileno(), 10, 1, 65536))
    assert (small.datagrams, small.full) == (1, True)  # max_bytes reached
    pipe_r, pipe_w = os.pipe()  # not a socket: the error is reported, nothing raised
    try:
        bad = decoders.ReadResult(*ext.Aggregator().read(pipe_r, 10, 1 << 20, 65536))
    finally:
        os.close(pipe_r)
        os.close(pipe_w)
    assert bad.errno == errno.ENOTSOCK and bad.datagrams == 0
    with pytest.raises(ValueError):
        agg.read(0, 0, 1, 65536)
    # the receive buffer holds 8 datagrams of bufsize: bounded (4 MiB each, 32 MiB in all),
    # a larger one is refused before anything is allocated, as in serve()
    writer.send(DATAGRAMS[0])
    largest = decoders.ReadResult(*agg.read(reader.fileno(), 10, 1 << 20, 4 << 20))
    assert (largest.datagrams, largest.errno) == (1, 0)
    for call in (lambda: agg.read(reader.fileno(), 10, 1 << 20, (4 << 20) + 1),
                 lambda: agg.serve(reader.fileno(), 0, 0, 0, 1, 1, 1, (4 << 20) + 1)):
        with pytest.raises(ValueError, match="bufsize <= 4 MiB"):
            call()


_RECV_COUNT_SCRIPT = """
import socket, sys
from netflow_agent.plugins.ingest_nflog import decoders
from tests.ingest_nflog.test_c_decoder import _many_flows
reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
count = int(sys.argv[1])
for i in range(count):
    writer.send(_many_flows(64, start=64 * i))
from netflow_agent.plugins.ingest_nflog._nflog import Aggregator
got = decoders.ReadResult(*Aggregator().read(reader.fileno(), 64, 1 << 20, 65536))
print(got.datagrams, got.packets, got.enobufs, got.errno, got.full)
"""


def _strace_read(tmp_path: Any, waiting: int, *inject: str) -> tuple[list[str], list[int]]:
    """Run read() on ``waiting`` datagrams in a child under strace (``inject``: its fault
    injection options); return the receive calls it made and read()'s datagrams, packets,
    enobufs, errno and full. Skips only where ptrace is forbidden (a container's seccomp
    policy); a missing strace fails under root or CI (``require_tool``)."""
    _ext()  # built, or the test fails (strict) or skips here, not in the child
    strace = require_tool("strace")
    out = tmp_path / f"strace-{waiting}.txt"
    run = subprocess.run(
        [strace, "-f", "-qq", "-o", str(out), "-e", "trace=recvfrom,recvmsg,recvmmsg",
         *inject, sys.executable, "-c", _RECV_COUNT_SCRIPT, str(waiting)],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=60)
    if run.returncode != 0 and re.search(r"PTRACE_\w+: Operation not permitted", run.stderr):
        pytest.skip(f"ptrace is forbidden here: {run.stderr.strip()}")
    assert run.returncode == 0, run.stderr
    calls = [line for line in out.read_text().splitlines() if "recv" in line]
    return calls, [int(v) for v in run.stdout.split()]


def test_reading_many_waiting_datagrams_takes_few_system_calls(tmp_path: Any) -> None:
    """read() receives the datagrams waiting on the socket several per system call: 20
    datagrams (a loaded reader's wakeup finds a dozen kernel batches) in 4 calls (8, 8, 4,
    and one that finds the socket empty), where one recv() per datagram and one more were
    21; and a low rate's wakeup (3 waiting) needs no call more than the one that reads
    them."""
    calls, got = _strace_read(tmp_path, 20)
    assert got == [20, 20 * 64, 0, 0, 0] and len(calls) == 4, calls
    calls, got = _strace_read(tmp_path, 3)
    assert got == [3, 3 * 64, 0, 0, 0] and len(calls) == 1, calls


def test_an_error_after_a_busy_rounds_short_batch_is_counted_and_draining_goes_on(
        tmp_path: Any) -> None:
    """A short batch after a full one may be recvmmsg() stopping at an error (ENOBUFS: the
    kernel overran the socket) that it leaves for the next call, while netlink drops every
    new batch until the reader empties the socket. read() makes that next call at once
    (here: 8 datagrams, then 3, then the injected ENOBUFS), counts the overrun exactly once
    and reads on until the socket is empty, instead of taking the short batch for an empty
    socket and pausing."""
    calls, got = _strace_read(tmp_path, 11, "-e", "inject=recvmmsg:error=ENOBUFS:when=3")
    assert got == [11, 11 * 64, 1, 0, 0], calls
    assert len(calls) == 4 and "ENOBUFS" in calls[2] and "EAGAIN" in calls[3], calls


def _sequenced(count: int, per: int, lost: set[int]) -> list[bytes]:
    """``count`` datagrams of ``per`` UDP packets of different flows, numbered by NFULA_SEQ
    from 0; the datagrams in ``lost`` are left out (the kernel logged them, we never got
    them: sequence gaps)."""
    return [b"".join(_message(_ip4(17, struct.pack("!HHHH", 1000 + d * per + i, 53, 8, 0)),
                              seq=d * per + i) for i in range(per)) + _done()
            for d in range(count) if d not in lost]


def _serve(agg: Any, fd: int, timeout_ms: float = 2000, due_ms: float = 50,
           pause_ms: float = 0, hold: int = 1 << 20, max_datagrams: int = 64
           ) -> decoders.ServeResult:
    return decoders.ServeResult(*agg.serve(fd, timeout_ms, due_ms, pause_ms, hold,
                                           max_datagrams, 1 << 20, 65536))


def test_serve_sums_many_datagrams_in_one_call_with_exact_counts_and_gaps(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """serve() reads round after round until the sums are due: one call takes in every
    waiting datagram (several rounds, 3 per round here), and its flows, packets and sequence
    gaps are exactly those of feeding the same datagrams one by one."""
    ext = _ext()
    datagrams = _sequenced(40, 16, lost={7, 8, 30})
    reader, writer = pair
    for d in datagrams:
        writer.send(d)
    agg = ext.Aggregator()
    got = _serve(agg, reader.fileno(), max_datagrams=3)
    assert (got.datagrams, got.errno, got.enobufs, got.cut) == (37, 0, 0, 0)
    assert got.rounds == 13 and got.timed_out  # 3 a round, then nothing until due
    assert got.bytes == sum(map(len, datagrams)) and got.packets == 37 * 16
    fed = ext.Aggregator()
    for d in datagrams:
        fed.feed(d, len(d), RECV_NS)
    taken, want = agg.take(), fed.take()
    assert taken[0] == want[0] and taken[1:] == want[1:]  # times: the messages' own
    assert taken[5] == agg.seq_gaps == 3 * 16  # the three lost datagrams' packets


def test_serve_returns_when_the_sums_are_due(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """serve() hands back once ``hold`` flows are pending (more datagrams still waiting),
    once ``due_ms`` passed with flows pending, after ``timeout_ms`` with nothing, and never
    waits past ``timeout_ms`` (the reader's stop flag is seen in time); a receive error ends
    it with its errno; the calls together lose nothing."""
    ext = _ext()
    datagrams = _sequenced(10, 8, lost=set())
    reader, writer = pair
    for d in datagrams:
        writer.send(d)
    agg = ext.Aggregator()
    held = _serve(agg, reader.fileno(), hold=20, max_datagrams=1)
    assert (held.datagrams, held.rounds, held.timed_out) == (3, 3, False)  # 24 >= 20
    rows = bytes(agg.take()[0])
    due = _serve(agg, reader.fileno(), due_ms=0)
    assert (due.datagrams, due.rounds, due.timed_out) == (7, 1, False)
    rows += bytes(agg.take()[0])
    idle = _serve(agg, reader.fileno(), timeout_ms=20)
    assert (idle.datagrams, idle.rounds, idle.timed_out, agg.pending) == (0, 0, True, 0)
    writer.send(datagrams[0])  # sums held, not due for a minute: the call still ends
    bounded = _serve(agg, reader.fileno(), timeout_ms=20, due_ms=60_000)
    assert (bounded.datagrams, bounded.timed_out, agg.pending) == (1, False, 8)
    rows += bytes(agg.take()[0])
    assert len(rows) == 88 * decoders.TAKE_DTYPE.itemsize
    assert agg.seq_resets == 1 and agg.seq_gaps == 0  # datagram 0 again: a reset, no loss
    pipe_r, pipe_w = os.pipe()  # readable, but not a socket: the error comes back
    try:
        os.write(pipe_w, b"x")
        bad = _serve(ext.Aggregator(), pipe_r)
    finally:
        os.close(pipe_r)
        os.close(pipe_w)
    assert bad.errno == errno.ENOTSOCK and bad.datagrams == 0
    for args in ((0, 1.0, 1.0, 0.0, 0, 1, 1, 65536), (0, -1.0, 1.0, 0.0, 1, 1, 1, 65536),
                 (0, 1.0, 1.0, 0.0, 1, 1, 1, 100)):
        with pytest.raises(ValueError):
            agg.serve(*args)


def test_batcher_takes_in_bounded_batches_until_nothing_is_pending() -> None:
    """CBatcher.take gives at most TAKE_LIMIT flows; the reader takes until pending is 0,
    and the cache ends with every packet."""
    batcher = decoders.CBatcher()
    data = _many_flows(1000)
    batcher.feed(data, len(data), RECV_NS)
    cache = FlowCache(CacheConfig())
    sizes = []
    while batcher.pending:
        batch = batcher.take("ingest.nflog[0]", limit=300)
        assert batch is not None
        sizes.append(len(batch))
        cache.agent_cache_flows(batch, RECV_NS)
    assert sizes == [300, 300, 300, 100]
    assert cache.stats.traffic_packets == 1000 and len(cache.table) == 1000


def test_buffer_types_and_bad_arguments() -> None:
    ext = _ext()
    data = DATAGRAMS[0]
    want = ext.Aggregator().decode(data, len(data), RECV_NS)
    for buf in (bytearray(data), memoryview(data), memoryview(bytearray(data + TAIL))):
        assert ext.Aggregator().decode(buf, len(data), RECV_NS) == want
    agg = ext.Aggregator()
    with pytest.raises(ValueError):
        agg.decode(data, len(data) + 1, 0)
    with pytest.raises(ValueError):
        agg.decode(data, -1, 0)
    with pytest.raises(TypeError):
        agg.decode("text", 4, 0)
    assert agg.decode(b"", 0, 0) == (b"", 0, 0, 0, 0, 0)


# --- hand-built messages: every parse case, keys compared with make_key ----------------------


def _attr(atype: int, value: bytes) -> bytes:
    alen = 4 + len(value)
    return struct.pack("=HH", alen, atype) + value + b"\0" * (-alen % 4)


def _message(payload: bytes, hook: int = 2, indev: int = 2, outdev: int = 3,
             ts: tuple[int, int] | None = (1_700_000_000, 250_000), seq: int | None = None,
             ) -> bytes:
    attrs = [_attr(1, struct.pack(">HBx", 0x0800, hook))]
    if indev:
        attrs.append(_attr(4, struct.pack(">I", indev)))
    if outdev:
        attrs.append(_attr(5, struct.pack(">I", outdev)))
    if ts is not None:
        attrs.append(_attr(3, struct.pack(">QQ", *ts)))
    if seq is not None:
        attrs.append(_attr(12, struct.pack(">I", seq)))
    attrs.append(_attr(9, payload))
    body = struct.pack("=BB2s", socket.AF_INET, 0, b"\0\x05") + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), 0x400, 0, 0, 0) + body


def _done() -> bytes:
    return struct.pack("=IHHII", 20, 3, 2, 0, 0) + b"\0" * 4


A4, B4 = bytes([10, 1, 0, 1]), bytes([10, 2, 0, 2])
A6 = bytes.fromhex("fd000000000000000000000000000001")
B6 = bytes.fromhex("fd000000000000000000000000000002")


def _ip4(proto: int, l4: bytes, tos: int = 0, frag: int = 0, options: bytes = b"",
         total: int | None = None) -> bytes:
    ihl = 5 + len(options) // 4
    total = 20 + len(options) + len(l4) if total is None else total
    return struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, tos, total, 1, frag, 64, proto, 0,
                       A4, B4) + options + l4


def _ip6(nh: int, rest: bytes, tclass: int = 0, payload_len: int | None = None) -> bytes:
    plen = len(rest) if payload_len is None else payload_len
    return struct.pack("!IHBB16s16s", 6 << 28 | tclass << 20, plen, nh, 64, A6, B6) + rest


def _tcp(sport: int, dport: int, flags: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 0x50, flags, 512, 0, 0)


UDP = struct.pack("!HHHH", 4000, 53, 8, 0)
TCP_SA = _tcp(443, 51000, TCP_SYN | TCP_ACK)
#: (id, payload, hook, indev, outdev, make_key arguments after ip_version/protocol, frag)
CASES = [
    ("v4 udp forward", _ip4(17, UDP), 2, 2, 3, (4, 17, A4, B4, 4000, 53, 0, 2, 0), 0),
    ("v4 tcp tos", _ip4(6, TCP_SA, tos=0xB8), 2, 2, 3, (4, 6, A4, B4, 443, 51000, 0xB8, 2, 0),
     0),
    ("v4 options", _ip4(6, TCP_SA, options=b"\x01" * 8), 2, 2, 3,
     (4, 6, A4, B4, 443, 51000, 0, 2, 0), 0),
    ("v4 icmp echo", _ip4(1, b"\x08\x00\0\0\0\1\0\1"), 1, 2, 0,
     (4, 1, A4, B4, 0, 0x0800, 0, 2, 0), 0),
    ("v4 icmp unreach", _ip4(1, b"\x03\x03\0\0"), 2, 2, 3, (4, 1, A4, B4, 0, 0x0303, 0, 2, 0),
     0),
    ("v4 first fragment", _ip4(17, UDP, frag=0x2000), 2, 2, 3,
     (4, 17, A4, B4, 4000, 53, 0, 2, 0), 1),
    ("v4 later fragment", _ip4(17, UDP, frag=0x00B9), 2, 2, 3, (4, 17, A4, B4, 0, 0, 0, 2, 0),
     1),
    ("v4 sctp", _ip4(132, struct.pack("!HHII", 36412, 36412, 0, 0)), 2, 2, 3,
     (4, 132, A4, B4, 36412, 36412, 0, 2, 0), 0),
    ("v4 dccp", _ip4(33, struct.pack("!HH", 5004, 5005) + b"\0" * 12), 2, 2, 3,
     (4, 33, A4, B4, 5004, 5005, 0, 2, 0), 0),
    ("v4 udplite", _ip4(136, UDP), 2, 2, 3, (4, 136, A4, B4, 4000, 53, 0, 2, 0), 0),
    ("v4 gre", _ip4(47, b"\0" * 8), 2, 2, 3, (4, 47, A4, B4, 0, 0, 0, 2, 0), 0),
    ("v4 tcp cut before flags", _ip4(6, TCP_SA[:8], total=60), 2, 2, 3,
     (4, 6, A4, B4, 443, 51000, 0, 2, 0), 0),
    ("v4 udp cut before ports", _ip4(17, b"\x0f", total=28), 2, 2, 3,
     (4, 17, A4, B4, 0, 0, 0, 2, 0), 0),
    ("v4 output", _ip4(17, UDP), 3, 0, 5, (4, 17, A4, B4, 4000, 53, 0, 5, DIRECTION_EGRESS), 0),
    ("v4 postrouting", _ip4(17, UDP), 4, 0, 5,
     (4, 17, A4, B4, 4000, 53, 0, 5, DIRECTION_EGRESS), 0),
    ("v4 postrouting forwarded", _ip4(17, UDP), 4, 2, 5, (4, 17, A4, B4, 4000, 53, 0, 2, 0), 0),
    ("v4 prerouting", _ip4(17, UDP), 0, 7, 0, (4, 17, A4, B4, 4000, 53, 0, 7, 0), 0),
    ("v4 big ifindex", _ip4(17, UDP), 2, 0xFFFFFFF0, 1,
     (4, 17, A4, B4, 4000, 53, 0, 0xFFFFFFF0, 0), 0),
    ("v6 udp tclass", _ip6(17, UDP, tclass=0x2E), 2, 2, 3,
     (6, 17, A6, B6, 4000, 53, 0x2E, 2, 0), 0),
    ("v6 tcp hop+dst opts", _ip6(0, bytes([60, 0]) + b"\0" * 6 + bytes([6, 1]) + b"\0" * 14
                                 + TCP_SA), 2, 2, 3, (6, 6, A6, B6, 443, 51000, 0, 2, 0), 0),
    ("v6 routing", _ip6(43, bytes([17, 0]) + b"\0" * 6 + UDP), 2, 2, 3,
     (6, 17, A6, B6, 4000, 53, 0, 2, 0), 0),
    ("v6 ah", _ip6(51, bytes([6, 4]) + b"\0" * 22 + TCP_SA), 2, 2, 3,
     (6, 6, A6, B6, 443, 51000, 0, 2, 0), 0),
    ("v6 mobility", _ip6(135, bytes([59, 0]) + b"\0" * 6), 2, 2, 3,
     (6, 135, A6, B6, 0, 0, 0, 2, 0), 0),
    ("v6 icmpv6 echo", _ip6(58, b"\x80\x00\0\0\0\1\0\1"), 1, 2, 0,
     (6, 58, A6, B6, 0, 0x8000, 0, 2, 0), 0),
    ("v6 first fragment", _ip6(44, bytes([17, 0, 0, 1]) + b"\0\0\0\7" + UDP), 2, 2, 3,
     (6, 17, A6, B6, 4000, 53, 0, 2, 0), 1),
    ("v6 later fragment", _ip6(44, bytes([17, 0, 0x05, 0xA8]) + b"\0\0\0\7" + b"x" * 8), 2, 2,
     3, (6, 17, A6, B6, 0, 0, 0, 2, 0), 1),
    ("v6 two fragment headers", _ip6(44, bytes([44, 0, 0, 1]) + b"\0" * 4
                                     + bytes([17, 0, 0, 1]) + b"\0" * 4 + UDP), 2, 2, 3,
     (6, 17, A6, B6, 4000, 53, 0, 2, 0), 1),
    ("v6 nine ext headers", _ip6(60, b"".join(bytes([60, 0]) + b"\0" * 6 for _ in range(9))
                                 + UDP), 2, 2, 3, (6, 60, A6, B6, 0, 0, 0, 2, 0), 0),
    ("v6 ext cut", _ip6(0, b"\x11"), 2, 2, 3, (6, 0, A6, B6, 0, 0, 0, 2, 0), 0),
    ("v6 output", _ip6(6, _tcp(22, 50000, TCP_FIN | TCP_ACK)), 3, 0, 4,
     (6, 6, A6, B6, 22, 50000, 0, 4, DIRECTION_EGRESS), 0),
]


@pytest.mark.parametrize("payload, hook, indev, outdev, key_args, frag",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_keys_are_make_key(payload: bytes, hook: int, indev: int, outdev: int,
                           key_args: tuple, frag: int) -> None:
    """One message per case: the C key is exactly ``make_key``; the Python decoder agrees."""
    data = _message(payload, hook, indev, outdev, ts=(1_700_000_000, 5)) + _done()
    (rows, packets, trunc, nfrag, _tb, _gaps) = _same([data])[0][0]
    assert (packets, trunc, nfrag) == (1, 0, frag)
    [(key, npk, octets, first, last, _flags, out_if)] = rows
    version, proto, src, dst, sport, dport, tos, in_if, direction = key_args
    assert key == make_key(version, proto, src, dst, sport, dport, tos, in_if, direction)
    total = struct.unpack_from("!H", payload, 2)[0] if version == 4 else \
        40 + struct.unpack_from("!H", payload, 4)[0]
    assert (npk, octets, out_if) == (1, total, outdev)
    assert first == last == 1_700_000_000 * NS + 5000


@pytest.mark.parametrize("frag", [0, 0x2000, 0x00B9], ids=["whole", "first", "later"])
def test_a_total_length_of_0_is_counted_truncated_not_undercounted(frag: int) -> None:
    """IPv4 with total length 0 reaches NFLOG only as a BIG TCP packet over 65,535 bytes, of
    which NFLOG copied at most 65,531 and no attribute says how long it was: both decoders
    count it in ``trunc`` (a visible drop) instead of accounting the copied length (a 185 KB
    packet cut to the 128-byte snaplen was accounted as 128 octets)."""
    payload = _ip4(6, _tcp(1000, 80, TCP_ACK) + b"t" * 88, frag=frag, total=0)
    [((), packets, trunc, _frag, trunc_bytes, _gaps)], _ = _same(
        [_message(payload, ts=(1_700_000_000, 0)) + _done()])
    assert (packets, trunc, trunc_bytes) == (0, 1, 0)


def _jumbo(length: int) -> bytes:
    """A hop-by-hop header with a Jumbo Payload option (RFC 2675), next header TCP."""
    return bytes([6, 0, 0xC2, 4]) + struct.pack("!I", length)


@pytest.mark.parametrize(("nh", "rest", "octets"), [
    (6, _tcp(1000, 80, TCP_ACK) + b"t" * 88, None),  # IPv6 BIG TCP: no length anywhere
    (0, bytes([6, 0, 1, 4, 0, 0, 0, 0]) + _tcp(1000, 80, TCP_ACK), None),  # no Jumbo option
    (0, _jumbo(8 + 20 + 70_000) + _tcp(1000, 80, TCP_ACK) + b"t" * 88, 40 + 70_028),
    (0, bytes([6, 0, 0, 1, 0, 0xC2, 4, 0]), None),  # Pad1, PadN, a cut Jumbo option
    (0, _jumbo(0) + _tcp(1000, 80, TCP_ACK), None),  # RFC 2675: a Jumbo length > 65,535
    (0, _jumbo(65_535) + _tcp(1000, 80, TCP_ACK), None),
    (0, _jumbo(65_536) + _tcp(1000, 80, TCP_ACK), 40 + 65_536),
    (0, _jumbo(512 * 1024 - 40) + _tcp(1000, 80, TCP_ACK), 512 * 1024),
    (0, _jumbo(512 * 1024 - 39) + _tcp(1000, 80, TCP_ACK), None),  # no skb is longer
    (0, _jumbo(0xFFFF_FFFF) + _tcp(1000, 80, TCP_ACK), None),  # 4 GiB from 68 bytes
], ids=["big-tcp", "hbh-without-jumbo", "jumbogram", "jumbo-option-cut", "jumbo-0",
        "jumbo-65535", "jumbo-65536", "jumbo-512k", "jumbo-over-512k", "jumbo-4g"])
def test_an_ipv6_payload_length_of_0_is_a_jumbogram_or_truncated(nh: int, rest: bytes,
                                                                 octets: int | None) -> None:
    """IPv6 payload length 0 with a payload (next header not 59): the Jumbo Payload option's
    length when there is one, else counted in ``trunc``; it was accounted as 40 bytes."""
    [(rows, packets, trunc, _frag, _tb, _gaps)], _ = _same(
        [_message(_ip6(nh, rest, payload_len=0), ts=(1_700_000_000, 0)) + _done()])
    if octets is None:
        assert (rows, packets, trunc) == ([], 0, 1)
    else:
        [row] = rows
        assert (packets, trunc) == (1, 0) and row[1:3] == (1, octets)


def test_an_ipv6_packet_with_no_next_header_and_payload_length_0_is_40_bytes() -> None:
    [((row,), packets, trunc, _frag, _tb, _gaps)], _ = _same(
        [_message(_ip6(59, b""), ts=(1_700_000_000, 0)) + _done()])
    assert (packets, trunc) == (1, 0) and row[1:3] == (1, 40)


def test_tcp_flags_or_times_and_out_if_per_flow() -> None:
    msgs = [_message(_ip4(6, _tcp(1000, 80, TCP_SYN)), ts=(1_700_000_000, 3), outdev=0),
            _message(_ip4(6, _tcp(1000, 80, TCP_ACK)), ts=(1_700_000_000, 1), outdev=9),
            _message(_ip4(17, UDP), ts=None),
            _message(_ip4(6, _tcp(1000, 80, TCP_FIN | TCP_ACK)), ts=(1_700_000_001, 0),
                     outdev=0)]
    [((tcp, udp), packets, *_rest)], _ = _same([b"".join(msgs) + _done()])
    assert packets == 4
    assert tcp[1:] == (3, 120, 1_700_000_000 * NS + 1000, 1_700_000_001 * NS,
                       TCP_SYN | TCP_ACK | TCP_FIN, 9)
    assert udp[3] == udp[4] == RECV_NS  # no NFULA_TIMESTAMP (OUTPUT): receive time


@pytest.mark.parametrize("payload, trunc_bytes", [
    (b"\x45" + b"\0" * 10, 0),  # shorter than an IPv4 header
    (_ip4(17, UDP)[:19], 0),
    (bytes([0x44]) + _ip4(17, UDP)[1:], 28),  # ihl 16 bytes
    (_ip4(17, UDP, total=12), 12),  # total length below the header length
    (bytes([0x55]) + _ip4(17, UDP)[1:], 0),  # version 5
    (_ip6(17, UDP)[:39], 0),
    (b"", 0),
], ids=["short", "19 bytes", "ihl<5", "total<ihl", "version 5", "v6 short", "empty"])
def test_truncated_payloads(payload: bytes, trunc_bytes: int) -> None:
    [(rows, packets, trunc, _frag, tb, _gaps)], stats = _same([_message(payload)])
    assert (rows, packets, trunc, tb) == ([], 0, 1, trunc_bytes)
    assert stats["messages"] == 1


def test_sequence_gaps_and_resets() -> None:
    pkt = _ip4(17, UDP)
    bufs = [_message(pkt, seq=0) + _message(pkt, seq=1), _message(pkt, seq=5),
            _message(pkt, seq=2), _message(pkt, seq=0xFFFFFFFF), _message(pkt, seq=3)]
    results, stats = _same(bufs)
    # 5 after 1: 3 lost; 2 after 5 and 2**32-1 after 2: resets; 3 after 2**32-1: 0, 1, 2 lost
    assert [r[5] for r in results] == [0, 3, 0, 0, 3]
    assert stats["seq_resets"] == 2 and stats["expect_seq"] == 4


def test_garbage_timestamps_use_the_receive_time() -> None:
    pkt = _ip4(17, UDP)
    bufs = [_message(pkt, ts=(2**64 - 1, 0)), _message(pkt, ts=(9_223_372_036, 854_775)),
            _message(pkt, ts=(9_223_372_036, 854_776)), _message(pkt, ts=(1, 2**64 - 1))]
    results, _ = _same(bufs)
    assert [r[0][0][3] for r in results] == [RECV_NS, 9_223_372_036_854_775_000, RECV_NS,
                                             RECV_NS]


def test_malformed_framing() -> None:
    good = _message(_ip4(17, UDP))
    cases = [good[:30], good + b"\0\0\0", good + b"\1\0\0", struct.pack("=IH", 8, 0x400),
             struct.pack("=IHHII", 18, 0x400, 0, 0, 0) + b"\0\0" + good,
             good[:24] + struct.pack("=HH", 2, 9) + good[28:],
             _done() + struct.pack("=IHHII", 100, 3, 0, 0, 0)]
    for data in cases:
        _same([data])


# --- fuzzing: never crash, always equal ------------------------------------------------------


@fuzz_settings(scale=2)
@given(nflog_datagrams())
@example(b"")
@example(b"\x14\0\0\0\0\x04" + b"\0" * 14)
def test_fuzzed_datagrams_equal_python(data: bytes) -> None:
    _same([data, data])


@fuzz_settings()
@given(st.binary(max_size=300))
def test_random_bytes_equal_python(data: bytes) -> None:
    _same([data])


def test_thousands_of_cut_and_garbled_buffers() -> None:
    """Deterministic stress: cuts, byte flips, splices and noise over the recorded buffers."""
    ext = _ext()
    rng = random.Random(20261130)
    for i in range(3000):
        base = bytearray(DATAGRAMS[i % len(DATAGRAMS)])
        kind = i % 4
        if kind == 0:
            data = bytes(base[:rng.randrange(len(base) + 1)])
        elif kind == 1:
            for _ in range(rng.randrange(1, 8)):
                base[rng.randrange(len(base))] = rng.randrange(256)
            data = bytes(base)
        elif kind == 2:
            at = rng.randrange(len(base))
            data = bytes(base[:at]) + rng.randbytes(rng.randrange(64)) + bytes(base[at:])
        else:
            data = rng.randbytes(rng.randrange(400))
        if i % 10 == 0:  # the full comparison for a tenth; the rest must simply not crash
            _same([data])
        else:
            ext.Aggregator().decode(data, rng.randrange(len(data) + 1), RECV_NS)


# --- the cache sees the same flows and counters ----------------------------------------------


def _through_cache(datagrams: list[bytes], use_c: bool, maxflows: int = 0,
                   aggregation: str = "", hold: int = 0) -> FlowCache:
    cache = FlowCache(CacheConfig(maxflows=maxflows, aggregation=aggregation))
    batcher = decoders.CBatcher(hold=hold) if use_c else decoders.PythonBatcher()
    for i, data in enumerate(datagrams):
        batcher.feed(bytearray(data), len(data), RECV_NS)
        if i % 3 == 1:  # bursts of several datagrams in one batch, as the reader does
            continue
        batch = batcher.take("ingest.nflog[0]")
        if isinstance(batch, FlowBatch):
            assert use_c
            cache.agent_cache_flows(batch, RECV_NS)
        elif isinstance(batch, PacketBatch):
            assert not use_c
            cache.agent_cache_packets(batch, RECV_NS)
    return cache


def _records(cache: FlowCache) -> list[tuple]:
    recs = cache.agent_cache_expire(RECV_NS, True)
    return sorted((r.key(), r.packets, r.octets, r.start_ns, r.end_ns, r.tcp_flags, r.out_if,
                   r.end_reason, r.src_mask, r.dst_mask) for r in recs)


PACKET_COUNTERS = ("traffic_packets", "traffic_bytes", "drop_packets", "drop_bytes", "trunc",
                   "frag", "maxflows", "new")


@pytest.mark.parametrize("maxflows", [0, 3])
def test_cache_gets_the_same_flows_and_packet_counters(maxflows: int) -> None:
    """traffic and drop count packets with either decoder (trunc, seq gaps, maxflows)."""
    _ext()
    lossy = DATAGRAMS[:5] + DATAGRAMS[6:]  # a lost datagram: seq gap
    bad = _message(_ip4(17, UDP)[:12]) + _message(bytes([0x44]) + _ip4(17, UDP)[1:])
    stream = lossy + [bad]
    py, c = _through_cache(stream, False, maxflows), _through_cache(stream, True, maxflows)
    py_stats, c_stats = py.stats.as_dict(), c.stats.as_dict()
    assert {k: c_stats[k] for k in PACKET_COUNTERS} == {k: py_stats[k] for k in PACKET_COUNTERS}
    assert c_stats["trunc"] == 2 and c_stats["drop_bytes"] >= 28
    assert c_stats["drop_packets"] == 2 + _python_run(lossy)[1]["seq_gaps"] + c_stats["maxflows"]
    assert (c_stats["maxflows"] > 0) == bool(maxflows)
    assert c_stats["search"] < py_stats["search"]  # one lookup per flow and buffer
    if not maxflows:  # (with it, maxflows counts packets and search lookups)
        assert c_stats["search"] == c_stats["found"] + c_stats["new"]
    assert _records(c) == _records(py)


@pytest.mark.parametrize("maxflows", [0, 2])
def test_aggregation_rules_apply_to_c_decoder_deltas_as_to_packets(maxflows: int) -> None:
    """[cache] aggregation on the NFLOG C path (agent_cache_flows): the same aggregated flows,
    masks and counters as the Python decoder's packets, and fewer flows than without rules."""
    _ext()
    rules = "0.0.0.0/0=8,::/0=16,1-65535=1"  # every address to /8 or /16, every port to 1
    plain = _through_cache(DATAGRAMS, True)
    py, c = (_through_cache(DATAGRAMS, use_c, maxflows, rules) for use_c in (False, True))
    assert c.active_flows < plain.active_flows and c.active_flows <= (maxflows or 99)
    py_stats, c_stats = py.stats.as_dict(), c.stats.as_dict()
    assert {k: c_stats[k] for k in PACKET_COUNTERS} == {k: py_stats[k] for k in PACKET_COUNTERS}
    assert c_stats["traffic_packets"] + c_stats["maxflows"] == \
        plain.stats.as_dict()["traffic_packets"]
    records = _records(c)
    assert records == _records(py)
    assert {(r[-2], r[-1]) for r in records} <= {(8, 8), (16, 16)}


def test_fin_in_a_delta_ends_the_flow() -> None:
    _ext()
    data = b"".join(_message(_ip4(6, _tcp(1000, 80, f))) for f in
                    (TCP_SYN, TCP_ACK, TCP_FIN | TCP_ACK)) + _message(_ip4(17, UDP))
    cache = _through_cache([data], True)
    recs = cache.agent_cache_expire(RECV_NS, False)  # nothing idle yet: only the ended flow
    assert [(r.protocol, r.packets, r.end_reason) for r in recs] == [(6, 3, END_OF_FLOW)]


# --- decoder choice --------------------------------------------------------------------------


def test_decoder_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    _ext()
    assert decoders.resolve("auto") == "c" and decoders.resolve("python") == "python"
    assert isinstance(decoders.make_batcher("auto"), decoders.CBatcher)
    monkeypatch.setattr(decoders, "c_extension", lambda: None)
    assert decoders.resolve("auto") == "python"
    assert isinstance(decoders.make_batcher("auto"), decoders.PythonBatcher)
    with pytest.raises(RuntimeError, match="not built"):
        decoders.resolve("c")


def test_dry_run_rejects_c_without_the_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from netflow_agent.plugins.ingest_nflog import agent_check_config
    from netflow_agent.plugins.ingest_nflog.config import Config

    class _Cfg:
        def by_stage(self, stage: str) -> list[Any]:
            return [SimpleNamespace(type_name="nflog", path="ingest.nflog[0]",
                                    config=Config(group=1, decoder="c"))]

    assert agent_check_config(_Cfg(), False) == []
    monkeypatch.setattr(decoders, "c_extension", lambda: None)
    [issue] = agent_check_config(_Cfg(), False)
    assert issue.path == "ingest.nflog[0].decoder" and "not built" in issue.message
