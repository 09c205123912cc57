"""bench/ebpf/idle_cpu: what an idle agent costs in CPU and wake-ups, optionally per checkout.

Usage (root)::

    python bench/ebpf/idle_cpu.py [--tree DIR ...] [--ingest ebpf nflog] [--seconds 20]
                                  [--rounds 3]

Starts the agent with its defaults apart from the ingest (the same configurations as
``bench/memory/idle_rss.py``: eBPF on one end of a fresh veth pair, or an NFLOG group), waits
until it is ready and 3 s more, then measures over ``--seconds`` with no traffic: CPU
(user + system of every thread, from ``/proc/PID/task/*/stat``) and wake-ups (voluntary
context switches: every return from a wait), then the CPU its stop takes (SIGTERM to
exit: the final drain, export and interpreter teardown; ``wait4``). Wake-ups are exact
counts and barely depend on the machine's load, so they compare checkouts better than CPU
time on a shared machine.
``--tree`` runs each checkout's own ``.venv/bin/python``, rounds interleaved (back to back);
prints medians: CPU as percent of one core and wake-ups per second, per thread.
"""

from __future__ import annotations

import collections
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.compare.run import TICK, end_tree  # noqa: E402
from bench.memory.idle_rss import checkout_parser, idle_agent, not_root  # noqa: E402


def threads(pid: int) -> dict[int, tuple[float, int]]:
    """tid -> (CPU seconds, voluntary context switches) of every thread of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        task = Path(f"/proc/{pid}/task/{tid}")
        stat = (task / "stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        switches = next(int(line.split()[1]) for line in (task / "status").read_text()
                        .splitlines() if line.startswith("voluntary_ctxt_switches"))
        out[int(tid)] = ((int(fields[11]) + int(fields[12])) / TICK, switches)
    return out


class Exit:
    """Takes ``end_tree``'s ``wait4`` totals (a process's whole CPU at its exit)."""

    final = 0.0

    def ended(self, rusage: object) -> None:
        self.final = rusage.ru_utime + rusage.ru_stime  # type: ignore[attr-defined]


def one_run(tree: Path, ingest: str, tmp: Path, seconds: float) -> dict[str, float]:
    """Start ``tree``'s agent with ``ingest``; its idle CPU % and wake-ups/s (total and by
    thread: ``main``, and the others by rank of their wake-ups)."""
    with idle_agent(tree, ingest, tmp) as proc:
        time.sleep(3)
        before = threads(proc.pid)
        time.sleep(seconds)
        after = threads(proc.pid)
        usage = Exit()
        end_tree(proc, usage, 30)  # type: ignore[arg-type]
    per = {tid: (after[tid][0] - before.get(tid, (0.0, 0))[0],
                 after[tid][1] - before.get(tid, (0.0, 0))[1]) for tid in after}
    res = {"cpu %": 100 * sum(c for c, _ in per.values()) / seconds,
           "wake-ups/s": sum(w for _, w in per.values()) / seconds,
           "stop ms": 1000 * (usage.final - sum(c for c, _ in after.values())),
           "main wake-ups/s": per.get(proc.pid, (0, 0))[1] / seconds}
    others = sorted((w for tid, (_, w) in per.items() if tid != proc.pid), reverse=True)
    for n, w in enumerate(others[:3]):
        res[f"thread {n + 1} wake-ups/s"] = w / seconds
    return res


def main() -> int:
    ap = checkout_parser(__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    if not_root("bench/ebpf/idle_cpu"):
        return 2
    runs: dict[tuple[Path, str], list[dict]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for ingest in args.ingest:
                for tree in args.tree:
                    runs[tree, ingest].append(one_run(tree.resolve(), ingest, Path(tmp),
                                                      args.seconds))
    for (tree, ingest), res in runs.items():
        keys = list(res[0])
        cells = ", ".join(f"{k} {statistics.median(r.get(k, 0) for r in res):.2f}" for k in keys)
        print(f"{tree} {ingest} (medians of {len(res)} x {args.seconds:.0f} s): {cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
