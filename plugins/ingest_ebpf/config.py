"""``[[ingest.ebpf]]`` configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from netflow_agent.api import (
    ConfigIssue,
    Resource,
    TunnelName,
    check_decapsulate,
    decapsulate_option,
    keep_outer_option,
    option,
)

IFNAMSIZ = 16


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Account flows in the kernel with a tc/TCX or XDP program; drain them every tick."""

    interfaces: list[str] = option(
        doc='Interface names or shell globs ("eth*"); matching interfaces that appear later '
            "are attached too.", min_items=1)
    mode: Literal["tcx", "tc", "xdp"] = option(
        "tcx", doc='"tcx" (kernel 6.6+, falls back to "tc" when missing), "tc" (clsact '
                   'filters), or "xdp" (ingress only).')
    direction: Literal["ingress", "egress", "both"] = option(
        "both", doc="Which traffic to account; xdp sees ingress only.")
    sampling: int = option(
        1, doc="Account 1 packet in N, chosen at random (1 = every packet); counters are not "
               "scaled.", min=1, max=2**31 - 1)
    netns: str = option(
        "", doc='Network namespace to observe: a name under /run/netns or a path; "" = the '
                "agent's own.")
    maxflows: int = option(
        0, doc="Flow table size in the kernel: distinct flows per drain (each of the two "
               "tables); packets of flows beyond it go through the overflow ring or are "
               "counted as dropped. 0 = the [cache] maxflows, at most what fits both tables "
               "in 256 MiB (524288 flows), at least 65536; with the derived slots at most "
               "1/8 of the host's memory in all (hosts under 2.25 GB get less).",
        min=0, max=2**24)
    prealloc: bool = option(
        True, doc="Allocate the tables' memory at load: 2 x maxflows x 152 bytes (shared "
                  "map; 120 + 40 x CPUs bytes per entry per-CPU). false: memory per flow "
                  "present, but a drain costs about 17 times more kernel time (every entry "
                  "is freed) and an insert that finds no memory goes through the overflow "
                  "ring or is counted.")
    drain_threshold: int = option(
        50, doc="Drain before the poll interval is up when the active table holds this "
                "percentage of maxflows, when the overflow ring is this full, or at once when "
                "a packet was lost (the program signals it at once); 100 = only at the poll "
                "interval.",
        min=1, max=100)
    cpu_slots: int | Literal["auto"] = option(
        "auto", doc="Per-CPU flow slots checked before the hash table (a power of two; 0 = "
                    "none): open addressing in an array, 8 probes found through a tag "
                    "byte per slot, a flow in a slot costs one or two cache misses instead of "
                    "a hash walk. The kernel then holds up to maxflows + cpu_slots per CPU "
                    "flows per poll interval; kernel memory 2 x cpu_slots x CPUs x 65 bytes "
                    "(a 64-byte slot and its tag; 89 with precise timestamps, 153 with [flow] "
                    "key fields). \"auto\" = "
                    "what the hash tables leave of 288 MiB (shared map: 524288 per CPU on 2 "
                    "CPUs, 130 MiB; 16384 on 64 CPUs; at least 4096 unless the next bound is "
                    "lower), all CPUs together at most twice the [cache] maxflows or "
                    "maxflows; with a derived hash at most 1/8 of the host's memory in all. "
                    "The drain maps only the parts of the slots that flows used, "
                    "one at a time: they do not count in the agent's RSS.", min=0, max=2**20)
    drain_chunk: int = option(
        4096, doc="Flows a drain takes from the kernel table per step and hands on as one "
                   "batch: the drain's memory is bounded by it (44 + 40 x CPUs bytes "
                   "per flow of a step, and 100 per flow of each step's batch, of which a "
                   "drain reuses up to 3) whatever the table holds.",
        min=64, max=2**20)
    overflow_ring_kb: int = option(
        256, doc="Ring buffer that carries packets of new flows while the kernel table is "
                 "full (rounded up to a power of two); 0 = count them as dropped instead.",
        min=0, max=1024 * 1024)
    poll_interval_ms: int = option(
        1000, doc="How often the flow table is drained into the cache; shorter than the "
                  "[cache] inactive_timeout. A packet waits in the kernel up to this long, "
                  "so the cache waits this long plus 0.5 s past inactive_timeout before "
                  "it exports a flow as idle (no flow is split by the wait; idle flows "
                  "leave that much later).",
        min=20, max=60000)
    rescan_interval_ms: int = option(
        2000, doc="How often interfaces are listed to attach new matching ones, in addition "
                  "to the rescan that every link notification (RTM_NEWLINK) triggers at once.",
        min=100, max=600000)
    timestamps: Literal["tick", "precise"] = option(
        "tick", doc='Flow start/end times: "tick" reads the clock once per jiffy and CPU '
                    '(precision 1/HZ, 4 ms at HZ=250, as ipt_NETFLOW; about 30 ns per packet '
                    'less) or "precise" (read for every packet; the per-CPU slots are then 88 '
                    'bytes instead of one 64-byte line: 37 % more slot memory).')
    promisc: bool = option(
        False, doc="Put every attached interface in promiscuous mode while attached, so "
                   "frames for other MAC addresses (a SPAN/mirror port) are accounted: one "
                   "kernel promiscuity reference per interface (a PACKET_MR_PROMISC packet "
                   "socket), dropped at stop, at detach and when the agent dies; needs "
                   "CAP_NET_RAW.")
    map_type: Literal["percpu", "shared"] = option(
        "shared", doc='"shared": one hash with atomic adds (kernel 5.12+ for the atomic OR): '
                      "a new flow costs a quarter less in the program and the memory does not "
                      'grow with the CPUs; "percpu": per-CPU hash, no atomics (kernel 5.8+).')
    decapsulate: list[TunnelName] = decapsulate_option()
    keep_outer: bool = keep_outer_option(
        " Outer flows take cpu_slots and hash entries like inner ones, and the derived sizes "
        "(maxflows = 0, cpu_slots = \"auto\") do not allow for them: with VXLAN/Geneve the "
        "outer source port is a hash of the inner flow, so every inner flow adds an outer "
        "flow. Expect more early drains and packets through the overflow ring or "
        "in full_packets (counted, never lost silently) unless maxflows is raised for them.")

    def check(self) -> list[ConfigIssue]:
        """Interface patterns must fit IFNAMSIZ; xdp cannot see egress."""
        issues = []
        for i, pattern in enumerate(self.interfaces):
            if not pattern or "/" in pattern or len(pattern) >= IFNAMSIZ and "*" not in pattern:
                issues.append(ConfigIssue(
                    f"interfaces[{i}]",
                    f"'{pattern}' is not an interface name or glob (1-15 characters, no '/')"))
        if isinstance(self.cpu_slots, int) and self.cpu_slots & (self.cpu_slots - 1):
            issues.append(ConfigIssue(
                "cpu_slots", f"{self.cpu_slots} is not a power of two (or 0 for none)"))
        if self.mode == "xdp" and self.direction != "ingress":
            issues.append(ConfigIssue(
                "direction", 'mode = "xdp" sees only ingress traffic; set direction = '
                             '"ingress" or use mode = "tcx"/"tc"'))
        return issues + check_decapsulate(list(self.decapsulate), self.keep_outer)

    def resources(self) -> list[Resource]:
        """tc filters use one fixed handle and XDP one program per interface: exclusive."""
        if self.mode == "tcx":
            return []
        kind = "xdp-prog" if self.mode == "xdp" else "tc-ebpf-filter"
        return [Resource(kind, f"netns={self.netns or '-'} interface={p}")
                for p in self.interfaces]
