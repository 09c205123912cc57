"""The ``[[ingest.nflog]]`` table: which NFLOG groups to read, where, and how."""

from __future__ import annotations

import re
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

#: the kernel clamps NFULA_CFG_NLBUFSIZ to [NLMSG_GOODSIZE, 131072] (nfulnl_set_nlbufsiz);
#: defined here, not in .netlink, so registering the type does not load the netlink code
NLBUFSIZ_MAX = 131072
_NETNS_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")
GROUP_MAX = 65535
#: bytes a snap length needs to reach the ports behind an IPv6 header plus one extension header
SNAPLEN_MIN_USEFUL = 68
#: ... and the inner ports of IPv6 in VXLAN in IPv6 with a VLAN tag (40+8+8+18+40+4)
SNAPLEN_MIN_DECAP = 118
#: what the delivery lag the ingest declares (:meth:`Config.delivery_lag_ns`) adds to the
#: waits it configures: the reader's own time and the pipeline's taking the batch
DELIVERY_MARGIN_S = 0.2
NLBUFSIZ_MIN = 4096  # NLMSG_GOODSIZE on 4 KiB pages; the kernel raises smaller values to it
#: nlbufsiz = 0 picks the first of these that fits. The kernel allocates a batch as one block
#: of nlbufsiz + 320 bytes (skb_shared_info) rounded up to a power of two (above 8 KiB whole
#: pages of 2^order), and before sending copies it into a smaller block when it filled less
#: than half (netlink_trim). 2^k - 320 fills its block; 65536 took a 128 KiB block, of which
#: a 64-packet batch of 128-byte snaps (16 KB) used an eighth, then was copied.
NLBUFSIZ_AUTO = tuple((1 << k) - 320 for k in range(13, 18))
#: bytes a prerouting message carries besides its payload: nlmsghdr, nfgenmsg, PACKET_HDR,
#: INDEV, HWADDR, HWTYPE, HWLEN, HWHEADER, TIMESTAMP, SEQ and the payload's header
MESSAGE_OVERHEAD = 16 + 4 + 8 + 8 + 16 + 8 + 8 + 20 + 20 + 8 + 4
NLMSG_DONE_LEN = 20
SNAP_WHOLE = 1500  # snaplen 0 copies whole packets: size for Ethernet-sized ones
RULES_TABLE = "netflow_agent"

Chain = Literal["input", "forward", "output", "bridge"]
Family = Literal["ipv4", "ipv6"]
Decoder = Literal["auto", "c", "python"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Packets from netfilter NFLOG groups: the userspace ``-j NETFLOW``."""

    group: int | list[int] = option(
        doc="NFLOG group(s) to read (--nflog-group / nft 'log group'), 0-65535; one reader "
        "thread per group.")
    snaplen: int = option(
        128, doc="Bytes of each packet copied to the agent (the instance's copy range; the "
        "rule's --nflog-size / snaplen caps it). 0 = whole packet.", min=0, max=65535)
    qthreshold: int = option(
        64, doc="Packets the kernel queues before it sends a batch (a rule's --nflog-threshold"
        " / queue-threshold caps it).", min=1, max=65535)
    nlbufsiz: int = option(
        0, doc="Size in bytes of the kernel's batch buffer per group (4096-131072). 0 = "
        "auto: room for qthreshold packets of snaplen bytes, sized so that the kernel "
        "neither allocates a larger block than it fills nor copies the batch into a smaller "
        "one before sending it (16064 with the defaults).", min=0, max=2**31 - 1)
    flush_timeout_ms: int = option(
        100, doc="Longest time in ms a packet waits in a partial batch (kernel default 1000).",
        min=10, max=3_600_000)
    rcvbuf: int = option(
        8 * 1024 * 1024, doc="Socket receive buffer in bytes (SO_RCVBUFFORCE); overruns are "
        "counted as dropped packets. 0 = system default.", min=0, max=1 << 30)
    coalesce_ms: int = option(
        20, doc="After a read that emptied the socket, wait this long before the next read "
        "so that the kernel's batches arriving meanwhile are read and handed on together: "
        "one wakeup and one pipeline batch for many (less CPU per packet under load; the "
        "socket buffer holds them meanwhile). 0 = read each batch as soon as it arrives.",
        min=0, max=1000)
    batch_ms: int = option(
        200, doc="With the C decoder: how long the reader sums packets per flow before it "
        "hands the sums to the cache (at most 8192 rows held; then at once). Longer: "
        "fewer rows per packet for the cache (a flow sending every few ms becomes one row "
        "per period, not one per packet; under a flood of new flows, where summing does "
        "not pay, one row per packet while appending) and less CPU; flows reach the cache "
        "this much later, and the cache waits as much longer before it exports a flow as "
        "idle (with flush_timeout_ms, coalesce_ms and 0.2 s: a late packet joins its flow). "
        "0 = after every read.", min=0, max=1000)
    netns: str = option(
        "", doc="Network namespace to read: a name under /run/netns or a path such as "
        "/proc/PID/ns/net; empty = the agent's own.")
    manage_rules: bool = option(
        False, doc="Install an nftables table 'inet netflow_agent' with 'log group' rules for "
        "`chains` at start and delete it at exit (IPv4 and IPv6).")
    chains: list[Chain] = option(
        ["input", "forward", "output"],
        doc="Hooks that get a log rule when manage_rules is true; \"bridge\" adds a table "
        "'bridge netflow_agent' logging the IPv4/IPv6 frames bridges forward (only those "
        "messages carry the VLAN tag, [flow] vlan; with br_netfilter the inet forward chain "
        "sees the same packets: list one of them).")
    families: list[Family] = option(
        ["ipv4", "ipv6"], doc="Address families the managed rules log (like choosing "
        "iptables, ip6tables or both).", min_items=1)
    decoder: Decoder = option(
        "auto", doc="Per-packet decoding: \"c\" sums each receive buffer per flow in the C "
        "extension (netflow_agent.plugins.ingest_nflog._nflog), \"python\" hands every packet "
        "to the cache, \"auto\" = C when it is built.")
    rule_priority: int = option(
        -1, doc="Priority of the managed chains (-1: after DNAT, before the filter chains at 0,"
        " like a NETFLOW rule inserted at the top of the filter table).",
        min=-1000, max=1000)
    decapsulate: list[TunnelName] = decapsulate_option()
    keep_outer: bool = keep_outer_option()

    def delivery_lag_ns(self, c_decoder: bool) -> int:
        """The longest time between a packet's timestamp (the kernel's, else its receive
        time) and its delivery to the pipeline, declared to the core
        (``RunContext.declare_delivery_lag``) so that the cache waits as long before it calls
        a flow idle: the kernel holds the packet in a partial batch up to
        ``flush_timeout_ms``, the reader pauses ``coalesce_ms``, the C decoder sums it up to
        ``batch_ms``; plus :data:`DELIVERY_MARGIN_S` for the reader's and the pipeline's own
        time."""
        wait_ms = self.flush_timeout_ms + self.coalesce_ms + (self.batch_ms if c_decoder else 0)
        return wait_ms * 1_000_000 + round(DELIVERY_MARGIN_S * 1e9)

    def ip_versions(self) -> frozenset[int]:
        """IP versions this instance can produce: only the managed rules' families are known."""
        if not self.manage_rules:
            return frozenset({4, 6})
        return frozenset(4 if f == "ipv4" else 6 for f in self.families)

    @property
    def groups(self) -> list[int]:
        """The configured groups as a list."""
        return [self.group] if isinstance(self.group, int) else list(self.group)

    def check(self) -> list[ConfigIssue]:
        """Pure checks: group range and duplicates, buffer sizes, namespace name, chains."""
        issues = self._check_groups()
        if self.nlbufsiz and not NLBUFSIZ_MIN <= self.nlbufsiz <= NLBUFSIZ_MAX:
            issues.append(ConfigIssue("nlbufsiz", f"{self.nlbufsiz} is outside "
                                      f"{NLBUFSIZ_MIN}-{NLBUFSIZ_MAX}; the kernel would clamp "
                                      "it", "warning"))
        if 0 < self.snaplen < SNAPLEN_MIN_USEFUL:
            issues.append(ConfigIssue("snaplen", f"{self.snaplen} bytes may cut IPv6 or "
                                      "IPv4-with-options headers before the ports (ports then "
                                      f"read as 0); use at least {SNAPLEN_MIN_USEFUL}",
                                      "warning"))
        if self.netns and not (self.netns.startswith("/") or _NETNS_NAME.match(self.netns)):
            issues.append(ConfigIssue("netns", f"{self.netns!r} is neither a namespace name "
                                      "(letters, digits, '_', '.', '-') nor an absolute path"))
        if self.manage_rules and not self.chains:
            issues.append(ConfigIssue("chains", "manage_rules needs at least one chain "
                                      "(input, forward, output)"))
        if len(set(self.chains)) != len(self.chains):
            issues.append(ConfigIssue("chains", "lists a chain twice"))
        if self.decapsulate and 0 < self.snaplen < SNAPLEN_MIN_DECAP:
            issues.append(ConfigIssue("snaplen", f"{self.snaplen} bytes may cut tunnelled "
                                      "packets before their inner ports (the packet is then "
                                      "accounted as its outer flow); use at least "
                                      f"{SNAPLEN_MIN_DECAP} with decapsulate", "warning"))
        return issues + check_decapsulate(list(self.decapsulate), self.keep_outer)

    def batch_buffer(self) -> int:
        """The ``nlbufsiz`` to configure: the option, or with 0 the smallest of
        :data:`NLBUFSIZ_AUTO` that holds ``qthreshold`` messages of ``snaplen`` bytes."""
        if self.nlbufsiz:
            return self.nlbufsiz
        snap = self.snaplen or SNAP_WHOLE
        need = self.qthreshold * (MESSAGE_OVERHEAD + (snap + 3) // 4 * 4) + NLMSG_DONE_LEN
        return next((size for size in NLBUFSIZ_AUTO if size >= need), NLBUFSIZ_AUTO[-1])

    def _check_groups(self) -> list[ConfigIssue]:
        issues = []
        many = not isinstance(self.group, int)
        if many and not self.groups:
            return [ConfigIssue("group", "needs at least one group")]
        seen: set[int] = set()
        for i, g in enumerate(self.groups):
            path = f"group[{i}]" if many else "group"
            if not 0 <= g <= GROUP_MAX:
                issues.append(ConfigIssue(path, f"{g} is not an NFLOG group (0-{GROUP_MAX})"))
            elif g in seen:
                issues.append(ConfigIssue(path, f"group {g} is listed twice"))
            seen.add(g)
        return issues

    def resources(self) -> list[Resource]:
        """One listener per group per namespace (the kernel refuses a second: EPERM)."""
        out = [Resource("nflog-group", f"netns={self.netns} group={g}") for g in self.groups]
        if self.manage_rules:
            families = (["inet"] if set(self.chains) - {"bridge"} else []) + (
                ["bridge"] if "bridge" in self.chains else [])
            out += [Resource("nft-table", f"netns={self.netns} {family} {RULES_TABLE}")
                    for family in families]
        return out
