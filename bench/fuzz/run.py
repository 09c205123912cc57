"""Long fuzz runs: at least 1,000,000 inputs per parser, bounded in time, coverage guided.

Usage::

    python bench/fuzz/run.py [--runs 1000000] [--max-time 900] [--only nflog,pcap] [--out DIR]

For each target in ``target.py`` (packet parser, NFLOG decoder, the C NFLOG decoder against the
Python one, ctnetlink parser, pcap reader, config loader) it writes a seed corpus (recorded
NFLOG/ctnetlink datagrams from the ingest tests, generated pcap/pcapng files, IP packets, the
components' sample configurations), runs atheris/libFuzzer for ``--runs`` inputs or ``--max-
time`` seconds, whichever comes first, and prints one line per target: inputs executed,
seconds, inputs/s, corpus size, crashes. A crash leaves libFuzzer's ``crash-*`` file in the
output directory (replay it with ``python bench/fuzz/target.py NAME crash-file``). Exit status
1 when any target crashed.
Record the result in ``docs/reliability.md``.
"""

from __future__ import annotations

import argparse
import re
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.fuzz.strategies import BASE_TABLES, CT_SEEDS, NFLOG_SEEDS  # noqa: E402
from tests.support.pcapgen import FlowSpec, PcapBuilder  # noqa: E402

TARGETS = ("packet", "nflog", "nflog_c", "conntrack", "pcap", "config")
_DONE = re.compile(r"Done (\d+) runs in (\d+) second")
_STAT = re.compile(r"#(\d+)\s+\w+.*?corp: (\d+)")


def _ip_payloads() -> list[bytes]:
    """IP packets out of the recorded NFLOG datagrams (the PAYLOAD attribute)."""
    out = []
    for data in NFLOG_SEEDS:
        off = 0
        while off + 20 <= len(data):
            mlen, mtype = struct.unpack_from("=IH", data, off)
            if mlen < 16:
                break
            a, end = off + 20, off + mlen
            while mtype == 0x400 and a + 4 <= end:
                alen, atype = struct.unpack_from("=HH", data, a)
                if alen < 4:
                    break
                if atype & 0x3FFF == 9:
                    out.append(data[a + 4:a + alen])
                a += (alen + 3) & ~3
            off += (mlen + 3) & ~3
    return out[:64]


def _captures(tmp: Path) -> list[bytes]:
    builder = PcapBuilder(vlans=(7,))
    builder.add(FlowSpec("udp", "10.0.0.1", "10.0.0.2", 1000, 53, packets=2, payload=10))
    builder.add(FlowSpec("tcp", "fd00::1", "fd00::2", 1000, 80, packets=3, payload=20))
    builder.add(FlowSpec("icmp", "10.0.0.1", "10.0.0.2", packets=1, fragment=8, payload=30))
    out = []
    for fmt in ("pcap", "pcapng"):
        path = tmp / f"seed.{fmt}"
        builder.write(path, fmt=fmt)
        out.append(path.read_bytes())
    return out


def _configs() -> list[bytes]:
    import toml

    out = []
    for table, body in BASE_TABLES.items():
        stage, name = table.split(".")
        other = "export.log" if stage == "ingest" else "ingest.pcap"
        ostage, oname = other.split(".")
        data = {stage: {name: [body]}, ostage: {oname: [BASE_TABLES[other]]},
                "cache": {"maxflows": 100}, "agent": {"debug": 1}}
        out.append(toml.dumps(data).encode())
    return out


def seeds(name: str, tmp: Path) -> list[bytes]:
    """The seed corpus of one target."""
    return {
        "packet": _ip_payloads,
        "nflog": lambda: list(NFLOG_SEEDS),
        "nflog_c": lambda: list(NFLOG_SEEDS),
        "conntrack": lambda: list(CT_SEEDS),
        "pcap": lambda: _captures(tmp),
        "config": _configs,
    }[name]()


def run_target(name: str, runs: int, max_time: int, out: Path) -> dict[str, object]:
    """Fuzz one target; returns its figures."""
    corpus = out / f"corpus-{name}"
    corpus.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(seeds(name, out)):
        (corpus / f"seed-{i}").write_bytes(data)
    cmd = [sys.executable, str(Path(__file__).with_name("target.py")), name,
           f"-runs={runs}", f"-max_total_time={max_time}", "-max_len=4096", "-timeout=10",
           "-rss_limit_mb=2048", "-print_final_stats=1", f"-artifact_prefix={out}/{name}-",
           str(corpus)]
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          timeout=max_time + 300, check=False)
    seconds = time.monotonic() - started
    log = proc.stderr
    (out / f"{name}.log").write_text(log)
    done = _DONE.search(log)
    stats = _STAT.findall(log)
    executed = int(done.group(1)) if done else (int(stats[-1][0]) if stats else 0)
    crashes = sorted(p.name for p in out.glob(f"{name}-crash-*"))
    return {"target": name, "inputs": executed, "seconds": round(seconds, 1),
            "per_s": round(executed / seconds) if seconds else 0,
            "corpus": len(list(corpus.iterdir())), "crashes": crashes,
            "exit": proc.returncode}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=1_000_000)
    p.add_argument("--max-time", type=int, default=900, help="seconds per target")
    p.add_argument("--only", default=",".join(TARGETS))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="nfa-fuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"output: {out}")
    print(f"{'target':<10} {'inputs':>10} {'seconds':>8} {'inputs/s':>9} {'corpus':>7}  crashes")
    failed = False
    for name in args.only.split(","):
        r = run_target(name, args.runs, args.max_time, out)
        failed |= bool(r["crashes"]) or r["exit"] not in (0,)
        print(f"{r['target']:<10} {r['inputs']:>10} {r['seconds']:>8} {r['per_s']:>9} "
              f"{r['corpus']:>7}  {', '.join(r['crashes']) or 'none'} (exit {r['exit']})",
              flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
