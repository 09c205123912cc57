"""bench/memory: where a running agent's peak RSS comes from.

Usage (root, beside a bench that starts agents, e.g. ``bench/compare/run.py --workload w2``)::

    python bench/memory/peak_watch.py [--match netflow_agent.cli] [--tree DIR] [--count 2]

Waits for a process whose command line contains ``--match`` (and, with ``--tree``, whose
interpreter lives under that checkout), samples its ``VmRSS`` every 20 ms until it exits,
reads ``/proc/PID/smaps`` at each new maximum, and prints per process: the peak, when it came
(seconds after the process started, and after the agent's RSS last rose by a MB: a peak at
the stop comes after the flood's plateau), the RSS over time (every second's maximum), and
the mappings that held most of it at the peak (by file name; anonymous mappings by size
class: the interpreter's 1 MiB object arenas, ``[heap]``, big ``mmap`` blocks of NumPy
columns and C buffers). ``--count`` processes one after another (an eBPF then an NFLOG run).
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import time
from pathlib import Path

SAMPLE_S = 0.02
_MAP = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) ")


def find(match: str, tree: str | None, seen: set[int]) -> int | None:
    """The PID of a process not seen before whose command line contains ``match``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in seen:
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = b" ".join(cmd).decode(errors="replace")
        if match in text and (tree is None or text.startswith(tree)):
            return int(proc.name)
    return None


def vmrss(pid: int) -> int | None:
    """``VmRSS`` in kB, or None once the process is gone (or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    m = re.search(r"^VmRSS:\s+(\d+)", text, re.M)
    return int(m[1]) if m else None


def smaps_by_kind(pid: int) -> collections.Counter[str]:
    """RSS kB per mapping: file mappings by file name, anonymous ones by size class."""
    rss: collections.Counter[str] = collections.Counter()
    name = ""
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return rss
    for line in text.splitlines():
        m = _MAP.match(line)
        if m:
            parts = line.split()
            size = int(m[2], 16) - int(m[1], 16)
            if len(parts) > 5:
                name = parts[5].rsplit("/", 1)[-1]
            elif size == 1 << 20:
                name = "[anon 1 MiB: object arenas]"
            elif size >= 4 << 20:
                name = "[anon >= 4 MiB]"
            else:
                name = "[anon < 4 MiB]"
        elif line.startswith("Rss:"):
            rss[name] += int(line.split()[1])
    return rss


def watch(pid: int) -> dict:
    """Sample ``pid`` until it exits: the peak, its time, per-second maxima, smaps there."""
    start = time.monotonic()
    peak, peak_t, rise_t, maps = 0, 0.0, 0.0, collections.Counter()
    seconds: dict[int, int] = {}
    while (kb := vmrss(pid)) is not None:
        t = time.monotonic() - start
        seconds[int(t)] = max(seconds.get(int(t), 0), kb)
        if kb > peak:
            if kb > peak + 1024:
                rise_t = t
            peak, peak_t = kb, t
            maps = smaps_by_kind(pid) or maps
        time.sleep(SAMPLE_S)
    return {"pid": pid, "peak_kb": peak, "peak_s": peak_t, "last_rise_s": rise_t,
            "seconds": seconds, "maps": maps}


def report(r: dict) -> None:
    print(f"pid {r['pid']}: peak VmRSS {r['peak_kb'] / 1024:.1f} MB at {r['peak_s']:.1f} s "
          f"(last rise by > 1 MB at {r['last_rise_s']:.1f} s)")
    print("  per second (max MB): " + " ".join(
        f"{s}:{kb / 1024:.0f}" for s, kb in sorted(r["seconds"].items())))
    for name, kb in r["maps"].most_common(14):
        print(f"  {kb / 1024:6.1f} MB  {name}")
    sys.stdout.flush()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--match", default="netflow_agent.cli")
    ap.add_argument("--tree", help="only agents whose interpreter is under this checkout")
    ap.add_argument("--count", type=int, default=1, help="processes to watch, in turn")
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for each")
    args = ap.parse_args()
    seen: set[int] = set()
    for _ in range(args.count):
        deadline = time.monotonic() + args.timeout
        while (pid := find(args.match, args.tree, seen)) is None:
            if time.monotonic() > deadline:
                print("no such process", file=sys.stderr)
                return 1
            time.sleep(SAMPLE_S)
        seen.add(pid)
        report(watch(pid))
    return 0


if __name__ == "__main__":
    sys.exit(main())
