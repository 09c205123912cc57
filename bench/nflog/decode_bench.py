"""Offline decoder throughput on the recorded buffers: ``python3 bench/nflog/decode_bench.py``.

Decodes ``tests/ingest_nflog/data/router.nflog`` repeatedly with the shape cache (normal) and
with the attribute walk only, and the pyroute2 reference for scale. Medians of 5 runs.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pyroute2.netlink.marshal import Marshal  # noqa: E402

from plugins.ingest_nflog.netlink import MSG_PACKET, NflogDecoder, nfulnl_msg  # noqa: E402
from tests.ingest_nflog.test_decoder import DATAGRAMS  # noqa: E402


def rate(walk_only: bool, rounds: int = 300) -> float:
    bufs = [bytearray(d) for d in DATAGRAMS]
    dec = NflogDecoder()
    if walk_only:
        dec.MAX_SHAPES = 0  # type: ignore[misc]
    out: list = []
    t = time.perf_counter()
    for _ in range(rounds):
        out.clear()
        for b in bufs:
            dec.decode(b, len(b), 0, out)
    return rounds * len(out) / (time.perf_counter() - t)


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
    for name, fn in (("shape cache", lambda: rate(False)), ("attribute walk", lambda: rate(True)),
                     ("pyroute2 Marshal", pyroute2_rate)):
        print(f"{name:18} {statistics.median(fn() for _ in range(5)) / 1e3:8.0f} k packets/s")
