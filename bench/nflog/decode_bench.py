"""Offline decoder throughput on the recorded buffers: ``python3 bench/nflog/decode_bench.py``.

Decodes ``tests/ingest_nflog/data/router.nflog`` repeatedly: the Python decoder with the shape
cache (normal) and with the attribute walk only, the pyroute2 reference for scale, the C
aggregator (``netflow_agent.plugins.ingest_nflog._nflog``, when built; also with fragment
tracking, the agent's default, and with every tunnel decapsulated; "L2": both decoders with
``[flow] mac, vlan, physdev = "export"``; an argument names another
build of the extension, e.g. an older revision's, to time side by side), and both decoders end
to end into the flow cache (receive buffer -> batch -> ``agent_cache_packets`` /
``agent_cache_flows``), which is the agent's per-packet CPU without the socket. Medians of 5
runs, packets/s.
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pyroute2.netlink.marshal import Marshal  # noqa: E402

from netflow_agent.fragments import DEFAULT_POLICY  # noqa: E402
from netflow_agent.model import FlowBatch  # noqa: E402
from netflow_agent.plugins.ingest_nflog import decoders  # noqa: E402
from netflow_agent.plugins.ingest_nflog.netlink import MSG_PACKET, NflogDecoder  # noqa: E402
from netflow_agent.plugins.ingest_nflog.reference import nfulnl_msg  # noqa: E402
from netflow_agent.schema import FlowOptions, FlowSchema  # noqa: E402
from netflow_agent.stages.cache import CacheConfig, FlowCache  # noqa: E402
from tests.ingest_nflog.test_decoder import DATAGRAMS  # noqa: E402

BUFS = [bytearray(d) for d in DATAGRAMS]


#: [flow] mac, vlan and physdev = "export": the layer-2 fields NFLOG can fill
L2_SCHEMA = FlowSchema.build(FlowOptions(mac=True, vlan=True, physdev="export"))


def rate(walk_only: bool, rounds: int = 300, l2: bool = False) -> float:
    dec = NflogDecoder(l2=decoders.nflog_l2(L2_SCHEMA) if l2 else None)
    if walk_only:
        dec.MAX_SHAPES = 0  # type: ignore[misc]
    out: list = []
    t = time.perf_counter()
    for _ in range(rounds):
        out.clear()
        for b in BUFS:
            dec.decode(b, len(b), 0, out)
    return rounds * len(out) / (time.perf_counter() - t)


def c_rate(rounds: int = 3000, module: Any = None, **options: int) -> float:
    """The C aggregator alone; ``options`` as ``decoders.c_options`` gives them."""
    ext = module or decoders.c_extension()
    agg = ext.Aggregator(**options)  # type: ignore[union-attr]
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
             ("shape cache, L2", lambda: rate(False, l2=True)),
             ("pyroute2 Marshal", pyroute2_rate),
             ("python -> cache", lambda: end_to_end("python"))]
    if decoders.c_extension() is not None:
        track = decoders.c_options(DEFAULT_POLICY, (), False)
        decap = decoders.c_options(DEFAULT_POLICY, ("gre", "vxlan", "geneve", "ipip"), False)
        cases += [("C aggregator", c_rate),
                  ("C, fragments track", lambda: c_rate(**track)),
                  ("C, track + decap", lambda: c_rate(**decap)),
                  ("C, L2", lambda: c_rate(l2=decoders.l2_mask(L2_SCHEMA))),
                  ("C -> cache", lambda: end_to_end("c"))]
        if len(sys.argv) > 1:  # an older build of _nflog to compare with, side by side
            spec = importlib.util.spec_from_file_location("_nflog", sys.argv[1])
            assert spec is not None and spec.loader is not None
            old = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(old)
            cases.append((f"C aggregator, {Path(sys.argv[1]).name}", lambda: c_rate(
                module=old)))
    else:
        print("C decoder not built: C rows skipped")
    for name, fn in cases:
        print(f"{name:18} {statistics.median(fn() for _ in range(5)) / 1e3:8.0f} k packets/s")
