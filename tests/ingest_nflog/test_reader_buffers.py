"""The NFLOG group reader keeps its C row buffers across batches sent on the batch timer.

The reader thread (``GroupReader``) reads one end of a socket pair here instead of a netlink
socket: datagrams of NFLOG messages arrive every 15 ms with ``batch_ms = 50``, so the sums
are held and most batches go on because their time ran out while no datagram was waiting,
the path a moderate, bursty rate takes. Each batch is dropped by the consumer at once, so
its buffer is free for the next take: the reader must reuse it, not give its buffers back
as if the socket had been idle for a whole poll (which made every batch a fresh mapping).
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from types import SimpleNamespace

from netflow_agent.plugins.ingest_nflog.component import GroupReader
from tests.ingest_nflog.test_c_decoder import _many_flows

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

    def close(self) -> None:
        self.sock.close()


def test_batches_sent_on_the_timer_reuse_the_row_buffers() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    config = SimpleNamespace(decoder="c", decapsulate=(), keep_outer=False, batch_ms=50,
                             coalesce_ms=0, snaplen=0)
    owner = SimpleNamespace(config=config, fragments=None, name="ingest.nflog[0]",
                            log=logging.getLogger("test_reader_buffers"))
    reader = GroupReader(owner, _PairSocket(ours), [])
    flows: list[int] = []  # the consumer keeps only the count: the batch is freed at once
    reader.start(SimpleNamespace(emit=lambda batch: flows.append(len(batch.flows)),
                                 wait_for_room=lambda limit: None))
    try:
        for i in range(DATAGRAMS):
            theirs.send(_many_flows(40, start=100 * i))
            time.sleep(0.015)
        deadline = time.monotonic() + 10
        while sum(flows) < 40 * DATAGRAMS and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        reader.stopping.set()
        reader.thread.join(timeout=10)
        theirs.close()
    assert sum(flows) == 40 * DATAGRAMS
    stats = reader.decoder.stats()
    assert len(flows) >= 4  # batches of several datagrams each, most sent on the timer
    assert stats["row_buffers_new"] <= 2, (flows, stats)  # the pool's two, then reused
    assert stats["row_buffers_reused"] == len(flows) - stats["row_buffers_new"], stats
