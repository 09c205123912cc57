"""The NFLOG reader thread's receive and walk per packet, builds side by side (thread CPU).

``python bench/nflog/recv_bench.py --builds /tmp/old/_nflog.so
plugins/ingest_nflog/_nflog.cpython-311-x86_64-linux-gnu.so`` (root: ``SO_SNDBUFFORCE`` lets
the writer queue a whole wakeup's datagrams past ``net.core.wmem_max``; a connected socket
pair's queue is bounded by the writer's send buffer alone, not by
``net.unix.max_dgram_qlen``, and with the default wmem_max ``--per-wakeup 64`` would block
in ``send()`` for good): the kernel-shaped datagrams of
``scale_bench.py`` (64 messages each, ``--concurrent`` flows in turn) are queued on a datagram
socket pair ``--per-wakeup`` at a time (what one wakeup of the reader finds: about 10 at
100 kpps, 64 at 1 Mpps), then each build's ``Aggregator.read()`` receives them into its
table, taken as the reader does (once :data:`HOLD` flows are pending, native rows, the batch
dropped). Timed: the reader's calls only (``time.thread_time``: user and system time of this
thread, so the receive system calls and the kernel's copy to user count, the queueing does
not). What ``reader_bench.py`` measures plus the receive path; no socket wait, no netlink
(an AF_UNIX datagram's copy costs about what a netlink one does), no second thread. Builds
alternate within each round (the machine is shared); medians of ``--rounds``.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from bench.nflog.reader_bench import load  # noqa: E402
from bench.nflog.scale_bench import aggregator, datagrams  # noqa: E402  (sets the malloc threshold)
from netflow_agent.plugins.ingest_nflog.component import _DRAIN_BYTES  # noqa: E402
from netflow_agent.plugins.ingest_nflog.component import _HOLD_FLOWS as HOLD  # noqa: E402
from netflow_agent.plugins.ingest_nflog.config import NLBUFSIZ_MAX  # noqa: E402
from netflow_agent.plugins.ingest_nflog.decoders import NATIVE_DTYPE, TAKE_LIMIT  # noqa: E402

#: socket(7): set the buffers past net.core.{r,w}mem_max (CAP_NET_ADMIN)
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
#: the reader's receive buffer per datagram (GroupReader.buf with the default snaplen)
BUFSIZE = NLBUFSIZ_MAX + 4096


def run(module: object, bufs: list[bytearray], per_wakeup: int) -> float:
    """Thread CPU ns per packet: queue ``per_wakeup`` datagrams, read them, take as the reader
    does, until every datagram went through."""
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        for sock, opt in ((reader, SO_RCVBUFFORCE), (writer, SO_SNDBUFFORCE)):
            sock.setsockopt(socket.SOL_SOCKET, opt, 64 << 20)
        reader.setblocking(False)
        agg = aggregator(module, HOLD)
        fd, packets, spent = reader.fileno(), 0, 0.0
        for start in range(0, len(bufs), per_wakeup):
            chunk = bufs[start:start + per_wakeup]
            for buf in chunk:
                writer.send(buf)
            begin = time.thread_time()
            got = agg.read(fd, per_wakeup, _DRAIN_BYTES, BUFSIZE)  # type: ignore[attr-defined]
            if got[0] != len(chunk):
                raise SystemExit(f"read {got[0]} of {len(chunk)} datagrams queued")
            packets += got[2]
            last = start + per_wakeup >= len(bufs)
            while agg.pending >= HOLD or (last and agg.pending):  # type: ignore[attr-defined]
                rows = np.frombuffer(agg.take(TAKE_LIMIT, native=True)[0],  # type: ignore[attr-defined]
                                     NATIVE_DTYPE)
                del rows  # merged and freed by the pipeline thread
            spent += time.thread_time() - begin
        return spent / packets * 1e9
    finally:
        reader.close()
        writer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--builds", nargs="+", required=True, help="_nflog .so files")
    ap.add_argument("--concurrent", type=int, nargs="+", default=[4000])
    ap.add_argument("--packets", type=int, default=600_000)
    ap.add_argument("--per-wakeup", type=int, nargs="+", default=[10, 64])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: SO_SNDBUFFORCE queues a wakeup's datagrams")
    modules = [load(p) for p in args.builds]
    for concurrent in args.concurrent:
        bufs = datagrams(concurrent, args.packets)
        for per_wakeup in args.per_wakeup:
            times: list[list[float]] = [[] for _ in modules]
            for _ in range(args.rounds):
                for module, out in zip(modules, times, strict=True):
                    out.append(run(module, bufs, per_wakeup))
            for path, out in zip(args.builds, times, strict=True):
                print(f"concurrent {concurrent:>7}  {per_wakeup:>3} per wakeup  {path}: "
                      f"{statistics.median(out):.1f} ns/packet (median of {len(out)}, "
                      f"{min(out):.1f}-{max(out):.1f})", flush=True)


if __name__ == "__main__":
    main()
