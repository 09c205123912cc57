"""The whole pcap replay in-process (reader, link layer, IP parse, cache, a collecting
exporter): CPU time per packet of every thread, ``python bench/parse/bench_replay.py
[--packets 300000] [--flows 20000]``.

Writes (once, in the temp directory) a nanosecond pcap of UDP packets over ``--flows`` flows
in random order, 20 µs apart, replays it with the defaults and prints ``ns per packet`` of
process CPU time (``time.process_time``). Run it alternating with a baseline checkout for an
A/B: the figure moves ±5 % between runs on a shared 2-core VM.
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from netflow_agent.testing import build_agent, collecting_plugin_module  # noqa: E402

T0 = 1_765_000_000_000_000_000
ETH = bytes.fromhex("02000000000b02000000000a0800")


def capture(packets: int, flows: int) -> Path:
    """The capture for these sizes, written once."""
    path = Path(tempfile.gettempdir()) / f"nfa-bench-replay-{packets}-{flows}.pcap"
    if path.exists():
        return path
    rng = random.Random(1)
    out = [struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1)]
    for i in range(packets):
        f = rng.randrange(flows)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 48, 0, 0, 64, 17, 0,
                         bytes([10, 0, f >> 8 & 255, f & 255]), bytes([10, 1, 0, 1]))
        frame = ETH + ip + struct.pack("!HHHH", 1000 + f % 7, 53, 28, 0) + b"x" * 20
        sec, ns = divmod(T0 + i * 20_000, 10**9)
        out.append(struct.pack("<IIII", sec, ns, len(frame), len(frame)) + frame)
    path.write_bytes(b"".join(out))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=300_000)
    ap.add_argument("--flows", type=int, default=20_000)
    args = ap.parse_args()
    path = capture(args.packets, args.flows)
    with tempfile.TemporaryDirectory() as tmp:
        agent = build_agent(f'[[ingest.pcap]]\npath = "{path}"\n[[export.collect]]\n',
                            Path(tmp), [collecting_plugin_module])
        start = time.process_time()
        agent.pipeline.run()
        agent.finish()
        print(f"{(time.process_time() - start) / args.packets * 1e9:.0f} ns per packet")


if __name__ == "__main__":
    main()
