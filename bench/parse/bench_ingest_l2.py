"""The pcap ingest's replay loop with and without ``[flow]`` layer-2 fields:
``python bench/parse/bench_ingest_l2.py [--runs 15] [--baseline REV]``.

Times ``PcapIngest._emit_all`` (link layer, IP parse, key building, batching; the emitted
batches are dropped) on ``bench_parse.mix()``'s Ethernet frames (a quarter with a VLAN tag),
per frame: with the default schema, with ``mac = true, vlan = true`` and with
``mpls_labels = 3`` too. ``--baseline REV`` also times the replay loop of the ingest as it was
at git revision ``REV`` (its ``component.py``, with today's link layer and parser), with the
defaults, interleaved in the same run. Prints ns per frame: median [fastest] of the runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_parse import mix  # noqa: E402

from netflow_agent.fragments import FragmentPolicy  # noqa: E402
from netflow_agent.packet import PacketParser  # noqa: E402
from netflow_agent.plugins.ingest_pcap import component  # noqa: E402
from netflow_agent.plugins.ingest_pcap.config import Config  # noqa: E402
from netflow_agent.schema import FlowOptions, FlowSchema, set_active  # noqa: E402

ROUNDS = 20
SCHEMAS = {"defaults": FlowOptions(), "mac + vlan": FlowOptions(mac=True, vlan=True),
           "mac + vlan + mpls_labels 3": FlowOptions(mac=True, vlan=True, mpls_labels=3)}


class _Context:
    """What the replay loop calls on its RunContext; batches are counted, then dropped."""

    def __init__(self) -> None:
        self.packets = 0

    def emit(self, batch: Any) -> None:
        self.packets += len(batch.packets)

    def report_progress(self, *args: Any, **kwargs: Any) -> None:
        pass

    def wait_for_room(self) -> None:
        pass

    def done(self, name: str) -> None:
        pass


def time_replay(cls: type, frames: list[bytes]) -> float:
    ingest = cls(Config(path="-"), "ingest.pcap[0]")
    ingest.parser = PacketParser(FragmentPolicy())
    ingest._file = io.BytesIO()
    records = [(1_700_000_000_000_000_000 + i, 1, f, len(f))
               for i, f in enumerate(frames * ROUNDS)]  # one replay: set-up amortised
    context = _Context()
    t = time.perf_counter()
    ingest._emit_all(context, iter(records))
    elapsed = time.perf_counter() - t
    assert context.packets == ROUNDS * len(frames)
    return elapsed * 1e9 / (ROUNDS * len(frames))


def _component_at(rev: str) -> types.ModuleType:
    """``plugins/ingest_pcap/component.py`` at ``rev``, importing today's siblings."""
    root = Path(__file__).resolve().parents[2]
    source = subprocess.run(["git", "-C", str(root), "show",
                             f"{rev}:plugins/ingest_pcap/component.py"],
                            check=True, capture_output=True, text=True).stdout
    name = "netflow_agent.plugins.ingest_pcap._baseline_component"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "netflow_agent.plugins.ingest_pcap"
    exec(compile(source, f"{rev}:component.py", "exec"), module.__dict__)  # noqa: S102
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--baseline", metavar="REV")
    args = ap.parse_args()
    frames = mix()
    baseline = _component_at(args.baseline).PcapIngest if args.baseline else None
    results: dict[str, list[float]] = {}
    for _ in range(args.runs):
        for name, options in SCHEMAS.items():
            set_active(FlowSchema.build(options))
            results.setdefault(name, []).append(time_replay(component.PcapIngest, frames))
        set_active(FlowSchema())
        if baseline is not None:
            results.setdefault(f"defaults at {args.baseline}", []).append(
                time_replay(baseline, frames))
    for name, values in results.items():
        print(f"{name:40s} {statistics.median(values):7.0f} [{min(values):.0f}] ns/frame")


if __name__ == "__main__":
    main()
