"""What an observer costs the sender, per packet, from a system-wide ``perf record``.

On a veth path the receive side runs in the sender's softirq, so an NFLOG rule's message
building (``nft_log_eval`` -> ``nfulnl_log_packet``) and a pcap socket's copy
(``tpacket_rcv``/``packet_rcv``) are paid by the sending process. Record a bench/compare run
with call graphs, then split each flood's samples::

    perf record -F 999 -g -a -o /tmp/flood.data -- \\
        python bench/compare/run.py --workload w3 --rounds 1 --only agent-nflog softflowd
    python bench/nflog/sender_cost.py /tmp/flood.data --packets 1999994

Each ``flowgen`` process (one per run, in the order the runs started: ``none`` first, then
the ``--only`` observers; floods of other users of the machine show too: ``--pids`` keeps
only the named ones, a bench's own floods being the ``flowgen`` children of its process)
gets a line: its samples, µs of CPU per packet at the recorded frequency, and the samples
under the NFLOG and AF_PACKET receive paths; then the NFLOG path split by what the kernel
does per message (``net/netfilter/nfnetlink_log.c``): building the attributes, the
timestamp, the instance lookup, the prefix, the hardware address, the payload copy (what a
copy range can shorten) and the per-batch work (skb allocation and netlink send: what
``qthreshold``/``nlbufsiz`` change).
"""

from __future__ import annotations

import argparse
import collections
import subprocess

#: the NFLOG path's leaf functions by what they do per message; the rest is "other"
NFLOG_PARTS = {
    "attributes (nla_put, memset/memcpy of values)": {
        "nla_put", "__nla_put", "__nla_reserve", "nla_reserve", "__pi_memset", "__pi_memcpy",
        "skb_put", "__nlmsg_put"},
    "timestamp (ktime_get_real)": {"read_tsc", "ktime_get_with_offset", "ns_to_timespec64"},
    "instance lookup, refcount, lock": {
        "instance_lookup_get_rcu", "instance_put", "_raw_spin_lock_bh", "_raw_spin_unlock_bh",
        "__raw_callee_save___pv_queued_spin_unlock"},
    "prefix (vsnprintf)": {"vsnprintf", "format_decode", "string"},
    "hardware address (eth_header_parse)": {"eth_header_parse"},
    "nft_log_eval, nf_log_packet, nfulnl_log_packet themselves": {
        "nfulnl_log_packet", "nf_log_packet", "nft_log_eval"},
}
#: in the stack: the sample belongs to a batch's allocation or send, not one message
BATCH = {"__nfulnl_send", "__nfulnl_flush", "netlink_unicast", "nfulnl_alloc_skb",
         "__alloc_skb", "__kmalloc_large_node_noprof"}
COPY = "skb_copy_bits"  # the payload, as long as the copy range allows


def samples(path: str) -> list[tuple[str, list[str]]]:
    """(pid, stack leaf first) of every flowgen sample in the recording."""
    text = subprocess.run(["perf", "script", "-i", path, "--comm", "flowgen", "-F", "pid,ip,sym"],
                          capture_output=True, text=True, check=True).stdout
    out: list[tuple[str, list[str]]] = []
    for block in text.split("\n\n"):
        lines = [ln.strip() for ln in block.strip().splitlines()]
        if lines:
            out.append((lines[0].split()[0], [ln.split()[-1] for ln in lines[1:]]))
    return out


def nflog_part(stack: list[str]) -> str:
    """What a sample under ``nft_log_eval`` was doing."""
    if BATCH & set(stack):
        return "per batch (skb allocation, netlink send)"
    if stack and stack[0] == COPY or stack[1:2] == [COPY]:
        return "payload copy (skb_copy_bits)"
    for part, leaves in NFLOG_PARTS.items():
        if stack and stack[0] in leaves:
            return part
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="perf.data of a system-wide recording with -g")
    ap.add_argument("--packets", type=int, required=True, help="packets each flood sent")
    ap.add_argument("--freq", type=float, default=999, help="perf record -F")
    ap.add_argument("--pids", nargs="+", help="only these flowgen PIDs (default: all)")
    args = ap.parse_args()
    per_pid: dict[str, list[list[str]]] = collections.defaultdict(list)
    for pid, stack in samples(args.data):
        if not args.pids or pid in args.pids:
            per_pid[pid].append(stack)
    us = 1e6 / args.freq / args.packets
    for pid, stacks in per_pid.items():
        nflog = [s for s in stacks if "nft_log_eval" in s]
        pcap = sum(1 for s in stacks if {"tpacket_rcv", "packet_rcv"} & set(s))
        print(f"flowgen {pid}: {len(stacks)} samples, {len(stacks) * us:.3f} us/packet; "
              f"NFLOG {len(nflog)} ({len(nflog) * us:.3f} us/packet), AF_PACKET {pcap} "
              f"({pcap * us:.3f} us/packet)")
        parts = collections.Counter(nflog_part(s) for s in nflog)
        for part, n in parts.most_common():
            print(f"    {part:58s} {n:5d}  {100 * n / len(nflog):5.1f} %")


if __name__ == "__main__":
    main()
