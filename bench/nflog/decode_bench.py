"""Offline decoder throughput on the recorded buffers: ``python3 bench/nflog/decode_bench.py``.

Decodes ``tests/ingest_nflog/data/router.nflog`` repeatedly: the Python decoder with the shape
cache (normal) and with the attribute walk only, the pyroute2 reference for scale, the C
aggregator (``netflow_agent.plugins.ingest_nflog._nflog``, when built), and both decoders end to end into
the flow cache (receive buffer -> batch -> ``agent_cache_packets`` / ``agent_cache_flows``),
which is the agent's per-packet CPU without the socket. Medians of 5 runs, packets/s.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pyroute2.netlink.marshal import Marshal  # noqa: E402

from netflow_agent.model import FlowBatch  # noqa: E402
from netflow_agent.plugins.ingest_nflog import decoders  # noqa: E402
from netflow_agent.plugins.ingest_nflog.netlink import MSG_PACKET, NflogDecoder, nfulnl_msg  # noqa: E402
from netflow_agent.stages.cache import CacheConfig, FlowCache  # noqa: E402
from tests.ingest_nflog.test_decoder import DATAGRAMS  # noqa: E402

BUFS = [bytearray(d) for d in DATAGRAMS]


def rate(walk_only: bool, rounds: int = 300) -> float:
    dec = NflogDecoder()
    if walk_only:
        dec.MAX_SHAPES = 0  # type: ignore[misc]
    out: list = []
    t = time.perf_counter()
    for _ in range(rounds):
        out.clear()
        for b in BUFS:
            dec.decode(b, len(b), 0, out)
    return rounds * len(out) / (time.perf_counter() - t)


def c_rate(rounds: int = 3000) -> float:
    agg = decoders.c_extension().Aggregator()  # type: ignore[union-attr]
    n = 0
    t = time.perf_counter()
    for _ in range(rounds):
        for b in BUFS:
            n += agg.feed(b, len(b), 0)
        agg.take()
    return n / (time.perf_counter() - t)


def end_to_end(name: str, rounds: int = 300) -> float:
    """Buffers -> one batch per burst -> cache, with the table's flows kept (no expiry)."""
    batcher = decoders.CBatcher() if name == "c" else decoders.PythonBatcher()
    cache = FlowCache(CacheConfig())
    n = 0
    t = time.perf_counter()
    for _ in range(rounds):
        for b in BUFS:  # one burst: every recorded datagram, then one batch
            n += batcher.feed(b, len(b), 0)
        batch = batcher.take("bench")
        if isinstance(batch, FlowBatch):
            cache.agent_cache_flows(batch, 0)
        elif batch is not None:
            cache.agent_cache_packets(batch, 0)
    return n / (time.perf_counter() - t)


def pyroute2_rate(rounds: int = 20) -> float:
    m = Marshal()
    m.msg_map = {MSG_PACKET: nfulnl_msg}
    t, n = time.perf_counter(), 0
    for _ in range(rounds):
        for d in DATAGRAMS:
            for msg in m.parse(d):
                if msg["header"]["type"] == MSG_PACKET:
                    msg.get_attr("NFULA_PAYLOAD")
                    n += 1
    return n / (time.perf_counter() - t)


if __name__ == "__main__":
    cases = [("shape cache", lambda: rate(False)), ("attribute walk", lambda: rate(True)),
             ("pyroute2 Marshal", pyroute2_rate),
             ("python -> cache", lambda: end_to_end("python"))]
    if decoders.c_extension() is not None:
        cases += [("C aggregator", c_rate), ("C -> cache", lambda: end_to_end("c"))]
    else:
        print("C decoder not built: C rows skipped")
    for name, fn in cases:
        print(f"{name:18} {statistics.median(fn() for _ in range(5)) / 1e3:8.0f} k packets/s")
