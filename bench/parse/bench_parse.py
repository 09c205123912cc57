"""Per-packet parser cost: ``python bench/parse/bench_parse.py [--runs 5]``.

Times the Python per-packet path of the pcap ingest on a fixed mix of Ethernet frames
(IPv4/IPv6, TCP/UDP/ICMP, one VLAN tag on a quarter of them, no fragments): the link layer
(``linktype.ip_offset``) plus ``PacketParser.parse``, then ``parse`` alone on the IP packets (the
NFLOG Python decoder's share). Also, when this version has them, the same with the opt-in L2
facts, with fragment tracking on a fragmented mix, and with decapsulation on (plain traffic:
what enabling ``decapsulate`` costs packets that are not tunnelled). ``--baseline REV`` also
times the parser and link layer of a git revision, interleaved in the same run. Prints
nanoseconds per packet, median of the runs. Noisy on shared machines: compare figures of the
same run.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from netflow_agent.fragments import PORTS0, FragmentPolicy  # noqa: E402
from netflow_agent.packet import PacketParser  # noqa: E402
from netflow_agent.plugins.ingest_pcap import linktype  # noqa: E402
from netflow_agent.tunnels import DecapParser  # noqa: E402
from tests.support.pcapgen import FlowSpec, PcapBuilder  # noqa: E402

ROUNDS = 20


def frames(vlans: tuple[int, ...] = (), fragment: int = 0) -> list[bytes]:
    b = PcapBuilder(vlans=vlans)
    for i in range(40):
        b.add(FlowSpec("udp", f"10.0.{i}.1", "10.9.0.2", 1000 + i, 53, packets=5, payload=60,
                       fragment=fragment and 24))
        b.add(FlowSpec("tcp", f"10.1.{i}.1", "10.9.0.3", 40000 + i, 443, packets=5,
                       payload=400))
        b.add(FlowSpec("tcp", f"fd00::{i + 1:x}", "fd00::99", 40000 + i, 80, packets=4,
                       payload=200))
        b.add(FlowSpec("icmp", f"10.2.{i}.1", "10.9.0.4", packets=1, payload=56))
    return [f for _ts, f, _orig in b.frames()]


def mix() -> list[bytes]:
    plain = frames()
    tagged = frames(vlans=(100,))
    return plain[: len(plain) * 3 // 4] + tagged[len(tagged) * 3 // 4:]


def time_link_and_parse(data: list[bytes], parser: PacketParser, offset) -> float:  # type: ignore[no-untyped-def]
    parse = parser.parse
    t = time.perf_counter()
    for _ in range(ROUNDS):
        for ts, frame in enumerate(data):
            off = offset(1, frame)
            if off >= 0:
                parse(frame[off:] if off else frame, ts, 1, 0, 0)
    return (time.perf_counter() - t) * 1e9 / (ROUNDS * len(data))


def time_parse(packets: list[bytes], parser: PacketParser) -> float:
    parse = parser.parse
    t = time.perf_counter()
    for _ in range(ROUNDS):
        for ts, ip in enumerate(packets):
            parse(ip, ts, 1, 0, 0)
    return (time.perf_counter() - t) * 1e9 / (ROUNDS * len(packets))


def link_facts_offset(lt: int, frame: bytes) -> int:
    return linktype.link_facts(lt, frame).ip_offset


def cases() -> dict[str, object]:
    """name -> a zero-argument function returning ns/packet."""
    data = mix()
    ips = [f[linktype.ip_offset(1, f):] for f in data]
    frags = [f[linktype.ip_offset(1, f):] for f in frames(fragment=1)]
    track = FragmentPolicy()
    return {
        "link + parse (defaults)": lambda: time_link_and_parse(data, PacketParser(track),
                                                               linktype.ip_offset),
        "parse only (defaults)": lambda: time_parse(ips, PacketParser(track)),
        "link + parse, opt-in L2 facts": lambda: time_link_and_parse(
            data, PacketParser(track), link_facts_offset),
        "parse only, decapsulate all (no tunnels)": lambda: time_parse(
            ips, DecapParser(["gre", "vxlan", "geneve", "ipip"], fragments=track)),
        "parse fragmented mix, ports0": lambda: time_parse(frags, PacketParser(PORTS0)),
        "parse fragmented mix, track": lambda: time_parse(frags, _drained(track)),
    }


def _drained(policy: FragmentPolicy) -> PacketParser:
    parser = PacketParser(policy)
    parser.extra = _Sink()  # type: ignore[misc,assignment]
    assert parser.tracker is not None
    parser.tracker.out = parser.extra
    return parser


class _Sink(list):  # type: ignore[type-arg]
    """A list that forgets what is appended (released fragments would pile up)."""

    def append(self, _item: object) -> None:
        pass


def _module_at(rev: str, path: str, name: str) -> types.ModuleType:
    """``path`` as it was at git revision ``rev``, imported as module ``name``."""
    root = Path(__file__).resolve().parents[2]
    source = subprocess.run(["git", "-C", str(root), "show", f"{rev}:{path}"], check=True,
                            capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"{rev}:{path}", "exec"), module.__dict__)  # noqa: S102
    return module


def baseline_cases(rev: str) -> dict[str, object]:
    """The two default cases with the parser and link layer of revision ``rev``."""
    packet = _module_at(rev, "agent/packet.py", "baseline_packet")
    link = _module_at(rev, "plugins/ingest_pcap/linktype.py", "baseline_linktype")
    data = mix()
    ips = [f[link.ip_offset(1, f):] for f in data]
    return {
        f"link + parse (defaults) at {rev}": lambda: time_link_and_parse(
            data, packet.PacketParser(), link.ip_offset),
        f"parse only (defaults) at {rev}": lambda: time_parse(ips, packet.PacketParser()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--baseline", metavar="REV", help="also time the parser of this git "
                    "revision, interleaved with this one (before/after in the same run)")
    args = ap.parse_args()
    results: dict[str, list[float]] = {}
    for _ in range(args.runs):
        todo = cases()
        if args.baseline:
            todo.update(baseline_cases(args.baseline))
        for name, fn in todo.items():
            results.setdefault(name, []).append(fn())  # type: ignore[operator]
    for name, values in results.items():
        print(f"{name:45s} {statistics.median(values):7.0f} ns/packet "
              f"[{min(values):.0f}-{max(values):.0f}]")


if __name__ == "__main__":
    main()
