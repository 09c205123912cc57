"""The NFLOG group reader thread with the C decoder: row buffers, batches, exact counts.

The reader thread (``GroupReader``) reads one end of a socket pair here instead of a netlink
socket. Datagrams of NFLOG messages arrive every 15 ms with ``batch_ms = 50``, so the sums
are held and most batches go on because their time ran out while no datagram was waiting,
the path a moderate, bursty rate takes. Each batch is dropped by the consumer at once, so
its buffer is free for the next take: the reader must reuse it, not give its buffers back
as if the socket had been idle for a whole poll (which made every batch a fresh mapping).
The reader's waits and reads run in C until a batch is due (``Aggregator.serve``): many
wakeups per batch, and every packet and sequence gap of them in its batches.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable
from types import SimpleNamespace

from netflow_agent.model import FlowBatch
from netflow_agent.plugins.ingest_nflog.component import GroupReader
from tests.ingest_nflog.test_c_decoder import _many_flows, _sequenced

DATAGRAMS = 30


class _PairSocket:
    """What the reader uses of an ``NflogSocket``, over one end of a datagram socket pair."""

    group = 7

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def unbind_request(self) -> None:  # no netlink here: the reader skips its stop drain
        raise OSError(errno.ENOTCONN, "a socket pair, not NETLINK_NETFILTER")

    def overruns(self) -> int:  # the kernel's drops for this socket: none on a pair
        return 0

    @property
    def rcvbuf(self) -> int:
        return self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def close(self) -> None:
        self.sock.close()


def _reader(ours: socket.socket, batch_ms: int, coalesce_ms: int,
            emit: Callable[[FlowBatch], None]) -> GroupReader:
    """A started C-decoder reader of ``ours`` handing its batches to ``emit``."""
    config = SimpleNamespace(decoder="c", decapsulate=(), keep_outer=False, batch_ms=batch_ms,
                             coalesce_ms=coalesce_ms, snaplen=0)
    owner = SimpleNamespace(config=config, fragments=None, name="ingest.nflog[0]",
                            log=logging.getLogger("test_reader_buffers"))
    reader = GroupReader(owner, _PairSocket(ours), [])
    reader.start(SimpleNamespace(emit=emit, wait_for_room=lambda limit: None))
    return reader


def _wait_until(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_batches_sent_on_the_timer_reuse_the_row_buffers() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    flows: list[int] = []  # the consumer keeps only the count: the batch is freed at once
    reader = _reader(ours, 50, 0, lambda batch: flows.append(len(batch.flows)))
    try:
        for i in range(DATAGRAMS):
            theirs.send(_many_flows(40, start=100 * i))
            time.sleep(0.015)
        _wait_until(lambda: sum(flows) >= 40 * DATAGRAMS)
    finally:
        reader.stopping.set()
        reader.thread.join(timeout=10)
        theirs.close()
    assert sum(flows) == 40 * DATAGRAMS
    stats = reader.decoder.stats()
    assert len(flows) >= 4  # batches of several datagrams each, most sent on the timer
    assert stats["row_buffers_new"] <= 2, (flows, stats)  # the pool's two, then reused
    assert stats["row_buffers_reused"] == len(flows) - stats["row_buffers_new"], stats


def test_one_batch_gathers_many_wakeups_and_keeps_every_packet_and_gap() -> None:
    """With a long ``batch_ms`` the reader wakes for every datagram but runs its Python (and
    the pipeline gets a batch) far less often; the batches hold every packet received, and
    the packets of the datagrams lost on the way are their sequence gaps, exactly."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    datagrams = _sequenced(DATAGRAMS, 20, lost={4, 17, 18})
    batches: list[tuple[int, int]] = []  # (packets, dropped packets) of each batch
    reader = _reader(ours, 1000, 1, lambda batch: batches.append(
        (int(batch.flows["packets"].sum()), batch.dropped_packets)))
    try:
        for d in datagrams:
            theirs.send(d)
            time.sleep(0.005)
        _wait_until(lambda: sum(b[0] for b in batches) >= 20 * len(datagrams))
    finally:
        reader.stopping.set()
        reader.thread.join(timeout=10)
        theirs.close()
    stats = reader.stats()
    assert sum(b[0] for b in batches) == stats["packets"] == 20 * len(datagrams)
    assert sum(b[1] for b in batches) == 3 * 20  # the lost datagrams' packets
    assert stats["batches"] == len(datagrams)
    assert stats["wakeups"] > len(batches), (stats, batches)
