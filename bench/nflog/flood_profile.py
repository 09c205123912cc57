"""Where an NFLOG agent's threads spend a flood, from a system-wide ``perf`` recording.

Record a bench run system-wide and note the agent's PID (it is the agent's own ``python -m
netflow_agent.cli`` process of that run), then classify::

    perf record -a -F 4999 -g -o /tmp/flood.data -- \\
        python bench/compare/run.py --workload w2 --rounds 1 --only agent-nflog
    python bench/nflog/flood_profile.py /tmp/flood.data --pid <agent pid>

The flood is the span in which the reader thread (the thread with samples in ``_nflog``) is
busy: from its first sample to the last one before a pause of ``--gap`` seconds. Each sample
of the agent's threads in that span goes to the first class in :data:`CLASSES` whose name
appears in its stack (leaf first); the shares are per thread. Needs ``perf`` and call graphs
(``-g``); the agent's extensions are built with frame pointers enough for this (``-O2``).
"""

from __future__ import annotations

import argparse
import collections
import subprocess

#: (class, stack frame substrings), tried in this order
CLASSES = (
    ("recv: copy to user and syscall", ("netlink_recvmsg", "__sys_recvfrom", "__libc_recv")),
    ("poll, sleep, scheduler", ("do_sys_poll", "__x64_sys_ppoll", "__x64_sys_poll", "futex",
                                "schedule", "finish_task_switch", "nanosleep")),
    ("Aggregator.take", ("Aggregator_take",)),
    ("C walk and sum table", ("walk", "read_socket", "serve_socket")),
    ("page faults", ("asm_exc_page_fault",)),
    ("cache merge (C)", ("lookup_rows", "merge_rows", "siphash13", "probe", "resize_buckets",
                         "grow_slots", "module_merge_records")),
    ("NumPy", ("_multiarray_umath",)),
    ("Python", ("libpython",)),
)


def samples(data: str, pid: int) -> list[tuple[int, float, list[str]]]:
    """``(tid, time, stack)`` of every sample of ``pid`` in the recording."""
    out = subprocess.run(["perf", "script", "-i", data, "--pid", str(pid), "-F",
                          "tid,time,ip,sym,dso"], capture_output=True, text=True,
                         check=True).stdout
    result: list[tuple[int, float, list[str]]] = []
    for block in out.split("\n\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        head = lines[0].split()
        result.append((int(head[0]), float(head[1].rstrip(":")), lines[1:]))
    return result


def flood_span(taken: list[tuple[int, float, list[str]]], gap: float) -> tuple[int, float, float]:
    """The reader thread and its first busy span: ``(tid, start, end)``."""
    counts = collections.Counter(tid for tid, _t, stack in taken
                                 if any("_nflog" in frame for frame in stack))
    if not counts:
        raise SystemExit("no sample in _nflog: is --pid the agent's, with the C decoder?")
    reader = counts.most_common(1)[0][0]
    times = sorted(t for tid, t, _s in taken if tid == reader)
    end = times[0]
    for t in times:
        if t - end > gap:
            break
        end = t
    return reader, times[0], end


def classify(stack: list[str]) -> str:
    """The first class of :data:`CLASSES` that a frame of ``stack`` names, else "other"."""
    for name, keys in CLASSES:
        if any(key in frame for frame in stack for key in keys):
            return name
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="perf.data of a system-wide recording (perf record -a -g)")
    ap.add_argument("--pid", type=int, required=True, help="the agent's process id")
    ap.add_argument("--gap", type=float, default=0.3,
                    help="seconds without a reader sample that end the flood")
    args = ap.parse_args()
    taken = samples(args.data, args.pid)
    reader, start, end = flood_span(taken, args.gap)
    per_thread: dict[int, collections.Counter[str]] = collections.defaultdict(
        collections.Counter)
    for tid, t, stack in taken:
        if start <= t <= end:
            per_thread[tid][classify(stack)] += 1
    print(f"flood {end - start:.2f} s; reader thread {reader}")
    for tid, counts in sorted(per_thread.items(), key=lambda kv: -sum(kv[1].values())):
        total = sum(counts.values())
        role = "reader" if tid == reader else "main" if tid == args.pid else "other"
        print(f"thread {tid} ({role}): {total} samples")
        for name, n in counts.most_common():
            print(f"  {name:32s} {n:6d} {100 * n / total:5.1f} %")


if __name__ == "__main__":
    main()
