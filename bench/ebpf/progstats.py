"""bench/ebpf/progstats.py: the flow program's run time per packet in a real flood.

Runs a command (say ``bench/compare/run.py ...``) with ``BPF_ENABLE_STATS`` held (the kernel
times every BPF program while the fd is open; no sysctl is changed) and samples
``bpftool prog show`` twice a second. Every ``flow_tc_*``/``flow_xdp`` program owned by a
process of that command's tree (one per agent run: a workload, a round) is reported when the
command ends: packets run, mean ns per run, and how many of its packets inserted a new flow
into the hash or went to a per-CPU slot: the program's own counters (its ``flow_stats`` map,
summed over the CPUs, read at each sample: the last one before the agent stopped), as packets
in slots and flows inserted into the hash (the rest of the packets went to hash entries
already there). Those counters are the agent's, not one program's: its ingress and egress
programs share the ``flow_stats`` map, so they are shown on the first row of the agent's
programs and the others refer to it. Programs of other processes (other agents on the
machine) are left out. Stats add two clock reads per run (about 20-25 ns) to every
program: compare figures taken this way with each other only.

Run as root: ``python3 bench/ebpf/progstats.py -- python bench/compare/run.py --workload w2
--rounds 1 --only agent-ebpf``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import BpfStats  # noqa: E402  (bench/ebpf/run.py)

NAMES = ("flow_tc_ingress", "flow_tc_egress", "flow_xdp")
#: indices in the program's counters (plugins/ingest_ebpf/decode.py COUNTER_NAMES)
SLOT_PACKETS, HASH_NEW = 10, 12


def descendants(root: int) -> set[int]:
    """PIDs of ``root`` and every process below it."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    tree, grew = {root}, True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                grew = True
    return tree


def prog_ids(pids: set[int]) -> set[int]:
    """Ids of the BPF programs these processes hold a file descriptor of (their fdinfo says;
    bpftool's own ``pids`` needs a build with BPF iterators, Debian's has none)."""
    ids = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                    continue
                info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
            except OSError:
                continue
            ids.update(int(line.split()[1]) for line in info.splitlines()
                       if line.startswith("prog_id:"))
    return ids


def counters(map_ids: list[int]) -> tuple[int, list[int]] | None:
    """The id of the program's ``flow_stats`` map and its counters summed over the CPUs
    (None: not readable)."""
    for map_id in map_ids:
        show = subprocess.run(["bpftool", "-j", "map", "show", "id", str(map_id)],
                              capture_output=True, text=True, check=False).stdout
        if not show or json.loads(show).get("name") != "flow_stats":
            continue
        dump = subprocess.run(["bpftool", "-j", "map", "dump", "id", str(map_id)],
                              capture_output=True, text=True, check=False).stdout
        try:
            per_cpu = json.loads(dump)[0]["formatted"]["values"]
        except (ValueError, LookupError, TypeError):
            return None
        return map_id, [sum(v) for v in zip(*(cpu["value"]["v"] for cpu in per_cpu),
                                            strict=True)]
    return None


def sample(tree: set[int], seen: dict[int, dict]) -> None:
    """Record the run time of the tree's flow programs (the last value seen wins)."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                         check=False).stdout
    held = prog_ids(tree)
    for prog in json.loads(out or "[]"):
        if prog.get("name") not in NAMES or prog.get("run_cnt") is None:
            continue
        if prog["id"] not in seen and prog["id"] not in held:
            continue
        entry = seen.setdefault(prog["id"], {"first": time.strftime("%H:%M:%S")})
        entry.update(name=prog["name"], run_cnt=prog["run_cnt"], run_time_ns=prog["run_time_ns"])
        if (read := counters(prog.get("map_ids", []))) is not None:
            entry["stats_map"], entry["counters"] = read


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", nargs="+", help="the command to run (after --)")
    args = ap.parse_args()
    seen: dict[int, dict] = {}
    with BpfStats():
        proc = subprocess.Popen(args.command)
        while proc.poll() is None:
            sample(descendants(proc.pid), seen)
            time.sleep(0.5)
    print("| program id | loaded | name | runs | ns / run | packets in slots "
          "| flows into the hash |")
    print("|---|---|---|---|---|---|---|")
    shown: dict[int, int] = {}  # flow_stats map id -> the program whose row shows its counters
    for pid, s in sorted(seen.items()):
        per = s["run_time_ns"] / s["run_cnt"] if s["run_cnt"] else 0.0
        cnt = s.get("counters")
        owner = shown.setdefault(s["stats_map"], pid) if cnt else pid
        if not cnt:
            slots, hashed = "-", "-"
        elif owner == pid:  # the agent's totals (all its programs), once
            slots, hashed = f"{cnt[SLOT_PACKETS]:,}", f"{cnt[HASH_NEW]:,}"
        else:  # the same flow_stats map as program `owner`: its totals are these too
            slots = hashed = f"in {owner}'s row (shared)"
        print(f"| {pid} | {s['first']} | {s['name']} | {s['run_cnt']} | {per:.1f} | {slots} "
              f"| {hashed} |")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
