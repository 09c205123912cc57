"""bench/ebpf/sendercpu.py: where the sender's time per packet goes, from a system-wide profile.

Runs a command (say ``bench/compare/run.py ...``) under ``perf record -a -g`` (``cpu-clock``:
this VM has no hardware PMU) and splits the samples by flood: every ``flowgen`` process is one
flood (one observer's run, in the order the command ran them). The sender, the veths, the
router's forwarding and the tc program all run in ``flowgen``'s system call and the softirqs
it raises, on the CPU ``flowgen`` is on, so for each flood it reports:

* the flood's wall time per packet (``flowgen``'s first to last sample) and how much of it
  ``flowgen`` was on a CPU (its samples, with ``ksoftirqd`` on the same CPU: softirq work the
  kernel deferred), i.e. how long it waited for the CPU;
* those samples by part of the path, in ns per packet (:data:`PARTS`: the first frame of the
  stack, from the leaf up, that names one; the BPF program split into its own JIT-ed code and
  the hash map's kernel functions under it);
* what else ran on ``flowgen``'s CPU during the flood (per command name: the time the
  sender did not have), and the other CPU's busy share.

Samples are ``1 / --freq`` seconds each, so a part needs a few per cent of a flood's samples
to be more than noise. Run as root::

    python3 bench/ebpf/sendercpu.py --observers none empty-hook agent-ebpf softflowd -- \\
        .venv/bin/python bench/compare/run.py --workload w3 --rounds 1 \\
        --only empty-hook agent-ebpf softflowd

(``--observers`` names the floods in order; ``bench/compare`` always runs ``none`` first.)
"""

from __future__ import annotations

import argparse
import bisect
import collections
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from progstats import descendants  # noqa: E402  (bench/ebpf/progstats.py)

#: (part, frame-name prefixes): the first frame from the leaf up that starts with one of the
#: prefixes names the sample's part; order matters (hash-map functions below the program are
#: checked before the program itself).
PARTS: list[tuple[str, tuple[str, ...]]] = [
    ("bpf: hash map", ("htab_", "lookup_nulls_elem_raw", "__htab_", "alloc_htab_elem",
                       "pcpu_freelist", "___pcpu_freelist", "jhash", "memcmp",
                       "bpf_map_update_elem", "bpf_map_lookup_elem")),
    ("bpf: ring buffer", ("bpf_ringbuf", "__bpf_ringbuf")),
    ("bpf: helpers", ("bpf_ktime_get_ns", "bpf_get_smp_processor_id", "bpf_jiffies64",
                      "ktime_get", "bpf_skb_pull_data")),
    ("bpf: program", ("bpf_prog_",)),
    ("tc/tcx hook", ("tcx_", "sch_handle_ingress", "tcf_classify", "cls_bpf", "bpf_mprog")),
    ("sink: nft drop", ("nft_", "nf_hook")),
    ("router: forward", ("ip_forward", "ip6_forward", "ip_route_input", "ip6_route_input",
                         "fib_", "ip_finish_output", "ip6_finish_output", "neigh_",
                         "ip_rcv", "ipv6_rcv", "ip6_rcv", "ip_sublist_rcv", "ip_list_rcv",
                         "ipv6_list_rcv", "ip6_sublist_rcv", "ip_output", "ip6_output",
                         "ip_route_", "ip6_pol_route", "dst_", "rt6_")),
    ("veth / netif", ("veth_", "__netif_receive", "netif_receive", "__netif_rx",
                      "netif_rx", "process_backlog", "enqueue_to_backlog", "net_rx_action",
                      "__dev_queue_xmit", "dev_hard_start_xmit", "eth_type_trans",
                      "__napi_poll", "napi_", "dev_queue_xmit")),
    ("skb alloc / free", ("kmem_cache_", "kfree", "__kmalloc", "skb_release", "kfree_skb",
                          "__alloc_skb", "alloc_skb", "consume_skb", "sk_skb_reason_drop",
                          "skb_free_head", "__slab_", "___slab_", "napi_skb_cache",
                          "page_frag", "__build_skb", "skb_clone")),
    ("af_packet send", ("packet_", "tpacket_", "sock_alloc_send", "skb_copy_datagram",
                        "copy_from_user", "_copy_from_iter", "memcpy", "__sys_sendmmsg",
                        "___sys_sendmsg", "__sys_sendto", "sock_sendmsg", "____sys_sendmsg")),
    ("syscall / irq entry", ("entry_SYSCALL", "do_syscall", "syscall_", "__do_softirq",
                             "handle_softirqs", "irq_exit", "asm_", "sysvec_", "do_softirq",
                             "__local_bh_enable")),
]


@dataclass
class Flood:
    """The samples of one flowgen process."""

    pid: int
    first: float = 1e30
    last: float = 0.0
    samples: int = 0
    parts: collections.Counter = field(default_factory=collections.Counter)
    leaves: collections.Counter = field(default_factory=collections.Counter)
    cpus: collections.Counter = field(default_factory=collections.Counter)


def part_of(stack: list[str]) -> str:
    """The :data:`PARTS` name of a stack (leaf first), ``user / other`` when none matches."""
    for frame in stack:
        for name, prefixes in PARTS:
            if frame.startswith(prefixes):
                return name
    return "user / other"


def read_samples(data: Path):  # type: ignore[no-untyped-def]
    """(comm, pid, cpu, time, stack leaf first) of every sample in a ``perf.data``."""
    out = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,pid,cpu,time,ip,sym"],
                         capture_output=True, text=True, check=True).stdout
    head: tuple[str, int, int, float] | None = None
    stack: list[str] = []
    for line in out.splitlines() + [""]:
        if not line.strip():
            if head is not None:
                yield (*head, stack)
            head, stack = None, []
        elif line.startswith("\t"):  # a stack frame: "\t<ip> <symbol>"
            stack.append(line.split()[-1] if len(line.split()) > 1 else line.strip())
        else:
            head = parse_head(line)
    if head is not None:
        yield (*head, stack)


def parse_head(line: str) -> tuple[str, int, int, float] | None:
    """``comm pid [cpu] time:`` (comm may hold spaces) -> its fields."""
    try:
        before, rest = line.rsplit("[", 1)
        cpu_text, time_text = rest.split("]", 1)
        comm, pid = before.strip().rsplit(None, 1)
        return comm, int(pid.split("/")[0]), int(cpu_text), float(time_text.strip(" :"))
    except ValueError:
        return None


def analyse(samples: list, mine: dict[int, str]) -> tuple[list[Flood],
                                                          dict[int, collections.Counter]]:
    """The floods (the command's flowgen processes, in time order; every flowgen when
    ``mine`` is empty) and, per flood, what else ran on flowgen's CPU (by command name,
    ``mine:`` for the command's own processes) while it was running."""
    floods: dict[int, Flood] = {}
    samples = [s for s in samples if s[0] != "flowgen" or not mine or s[1] in mine]
    for comm, pid, _cpu, t, _stack in samples:
        if comm == "flowgen":
            f = floods.setdefault(pid, Flood(pid))
            f.first, f.last = min(f.first, t), max(f.last, t)
    order = sorted(floods.values(), key=lambda f: f.first)
    others: dict[int, collections.Counter] = {f.pid: collections.Counter() for f in order}
    # flowgen's CPU at each moment: the CPU of its latest sample (it rarely migrates)
    where = sorted((t, cpu, pid) for comm, pid, cpu, t, _s in samples if comm == "flowgen")
    times = [w[0] for w in where]
    for comm, pid, cpu, t, stack in samples:
        if comm == "flowgen":
            f = floods[pid]
            f.samples += 1
            f.cpus[cpu] += 1
            f.parts[part_of(stack)] += 1
            f.leaves[stack[0] if stack else "?"] += 1
            continue
        i = bisect.bisect_right(times, t) - 1
        if i < 0:
            continue
        _t, fcpu, fpid = where[i]
        f = floods[fpid]
        if not f.first <= t <= f.last:
            continue
        if cpu == fcpu:
            if comm.startswith("ksoftirqd"):  # the sender's deferred softirq work
                f.samples += 1
                f.parts[part_of(stack)] += 1
                f.leaves[stack[0] if stack else "?"] += 1
                continue
            who = "idle" if comm == "swapper" else f"{'mine' if pid in mine else 'other'}: {comm}"
            others[fpid][who] += 1
        elif comm != "swapper":
            others[fpid]["(the other CPU busy)"] += 1
    return order, others


def stolen(on_cpu: collections.Counter) -> int:
    """Samples of other work on flowgen's CPU (not idle, not its deferred softirqs)."""
    return sum(v for k, v in on_cpu.items()
               if k not in ("idle", "(the other CPU busy)") and "ksoftirqd" not in k)


def report(order: list[Flood], others: dict[int, collections.Counter], names: list[str],
           packets: list[int], freq: float, top: int) -> str:
    """The tables: per flood, ns per packet by part, and who else held the sender's CPU."""
    lines = []
    for n, f in enumerate(order):
        name = names[n] if n < len(names) else f"flood {n}"
        pkts = packets[n] if n < len(packets) else packets[-1]
        per = 1e9 / freq / pkts  # ns per packet of one sample
        wall = (f.last - f.first) * 1e9 / pkts
        lines += [f"## {name} (flowgen pid {f.pid}, {pkts:,} packets, CPUs "
                  f"{dict(f.cpus)})", "",
                  f"wall {wall:.0f} ns per packet; flowgen + ksoftirqd on its CPU "
                  f"{f.samples * per:.0f}; other work on that CPU "
                  f"{stolen(others[f.pid]) * per:.0f}, idle "
                  f"{others[f.pid].get('idle', 0) * per:.0f}", "",
                  "| part | ns per packet | share |", "|---|---|---|"]
        for part, count in f.parts.most_common():
            lines.append(f"| {part} | {count * per:.0f} | {100 * count / f.samples:.1f} % |")
        lines += ["", "| leaf symbol | ns per packet |", "|---|---|"]
        lines += [f"| {sym} | {count * per:.1f} |" for sym, count in f.leaves.most_common(top)]
        lines += ["", "| on flowgen's CPU during the flood (not flowgen) | ns per packet |",
                  "|---|---|"]
        lines += [f"| {comm} | {count * per:.1f} |"
                  for comm, count in others[f.pid].most_common(top)]
        lines.append("")
    return "\n".join(lines)


def record(cmd: list[str], data: Path, freq: int) -> dict[int, str] | None:
    """Run ``cmd`` under ``perf record -a -g``; the PIDs (and names) of its process tree,
    polled every 20 ms (other engineers' floods run their own ``flowgen``)."""
    perf = subprocess.Popen(["perf", "record", "-a", "-g", "-F", str(freq), "-o", str(data),
                             "--", *cmd])
    mine: dict[int, str] = {}
    while perf.poll() is None:
        for pid in descendants(perf.pid):
            if pid not in mine:
                try:
                    mine[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
                except OSError:
                    continue
        time.sleep(0.02)
    return mine if perf.returncode == 0 else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--freq", type=int, default=2999, help="samples per second per CPU")
    ap.add_argument("--observers", nargs="*", default=[],
                    help="names of the floods in the order the command runs them")
    ap.add_argument("--packets", type=int, nargs="*", default=[2_000_000],
                    help="packets per flood (the last one repeats)")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--data", help="keep perf.data here (default: a temporary file)")
    ap.add_argument("--from-data", help="analyse an existing perf.data, run nothing")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command  # only the leading --
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.from_data or args.data or Path(tmp) / "perf.data")
        if not args.from_data:
            if not cmd:
                ap.error("a command to run (after --)")
            mine = record(cmd, data, args.freq)
            if mine is None:
                return 1
        else:
            mine = {}
        order, others = analyse(list(read_samples(data)), mine)
    print(report(order, others, args.observers, args.packets, args.freq, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
