"""IP fragments: give non-first fragments the ports of their first fragment (``fragments``).

ipt_NETFLOW accounts a non-first fragment (it has no transport header) as its own flow with
ports 0 (``[cache] fragments = "ports0"``). pmacct and ipfixprobe account it to the flow of its
first fragment, which is what per-port traffic needs; that is ``"track"``, the default:

* a first fragment (offset 0) leaves its protocol and ports (ICMP: type and code) in a table
  keyed by the fragment's identity, RFC 791's (source, destination, protocol, identification)
  for IPv4 and RFC 8200's (source, destination, identification) for IPv6, for ``timeout``
  seconds;
* a non-first fragment that finds its entry takes those ports (``tracked``); for IPv6 the
  protocol too, because a fragment header's next header is the first header of the
  fragmentable part, not necessarily the transport;
* one that arrives before its first fragment is held (``held``, at most ``held`` at once) and
  released with the ports when the first arrives; if it does not arrive within ``timeout``
  seconds, or the hold is full, or the agent stops, the fragment is accounted with ports 0
  (``unmatched``). Nothing is dropped: every fragment is accounted exactly once.

TCP flags are not copied: only the first fragment carries the TCP header, and the flow's flags
are the OR of its packets', so they are already right.

Both tables are bounded: the first-fragment table forgets its oldest entry when full
(``table``), and entries are refreshed in place. Time is the packets' own clock (capture time
in a replay, NFLOG timestamps live), so replays give the same result on any machine.
The C decoder (``plugins/ingest_nflog/_nflog.c``) implements exactly these rules; tests compare
both.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from netflow_agent.model import Packet

FRAGMENT_MODES = ("track", "ports0")
_PORTS = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class FragmentPolicy:
    """How packet ingests account non-first fragments (the ``[cache] fragment*`` options).

    :param mode: ``"track"`` or ``"ports0"``.
    :param timeout: seconds a first fragment's ports are kept, and a fragment waits for its
        first one.
    :param table: first fragments remembered at once.
    :param held: fragments waiting for their first fragment at once.
    """

    mode: str = "track"
    timeout: int = 30
    table: int = 4096
    held: int = 256

    @property
    def tracking(self) -> bool:
        """Whether non-first fragments get their first fragment's ports."""
        return self.mode == "track"


#: the policy when nothing is configured (the ``[cache]`` defaults)
DEFAULT_POLICY = FragmentPolicy()


@runtime_checkable
class FragmentOptions(Protocol):
    """A cache configuration that carries the fragment options (``[cache] fragments``)."""

    def fragment_policy(self) -> FragmentPolicy:
        """The options as the packet parsers take them."""
        ...
PORTS0 = FragmentPolicy("ports0")


def with_ports(pkt: Packet, proto: int, sport: int, dport: int) -> Packet:
    """``pkt`` with the protocol and ports of its key replaced (KEY4 and KEY6 alike)."""
    key = pkt[0]
    new_key = key[:1] + bytes((proto,)) + key[2:8] + _PORTS.pack(sport, dport) + key[12:]
    return (new_key, pkt[1], pkt[2], pkt[3], pkt[4])


class FragmentTracker:
    """The two bounded tables of ``"track"`` for one parser (one ingest thread).

    Released fragments (matched late, or timed out) are appended to ``out``, the owning
    parser's :attr:`~agent.packet.PacketParser.extra` list, which its caller drains.
    """

    __slots__ = ("firsts", "held", "waiting", "timeout_ns", "max_firsts", "max_held", "out",
                 "tracked", "held_total", "unmatched")

    def __init__(self, policy: FragmentPolicy, out: list[Packet]):
        self.firsts: dict[Any, tuple[int, int, int, int]] = {}  # id -> proto, ports, deadline
        self.held: list[tuple[Any, Packet, int]] = []  # (id, packet, deadline), arrival order
        self.waiting: dict[Any, int] = {}  # id -> fragments of it in ``held``
        self.timeout_ns = policy.timeout * 1_000_000_000
        self.max_firsts = policy.table
        self.max_held = policy.held
        self.out = out
        self.tracked = 0  # non-first fragments accounted with their first fragment's ports
        self.held_total = 0  # non-first fragments that had to wait for their first
        self.unmatched = 0  # non-first fragments accounted with ports 0

    def first(self, frag_id: Any, proto: int, sport: int, dport: int, ts: int) -> None:
        """A first fragment: remember its ports, release the fragments that waited for it."""
        firsts = self.firsts
        if frag_id not in firsts and len(firsts) >= self.max_firsts:
            del firsts[next(iter(firsts))]
        firsts[frag_id] = (proto, sport, dport, ts + self.timeout_ns)
        if frag_id in self.waiting:
            self._release(frag_id, proto, sport, dport)

    def later(self, frag_id: Any, pkt: Packet, ts: int) -> Packet | None:
        """A non-first fragment (``pkt`` has ports 0): the packet to account, or ``None``
        while it waits for its first fragment."""
        entry = self.firsts.get(frag_id)
        if entry is not None and ts <= entry[3]:
            self.tracked += 1
            return with_ports(pkt, entry[0], entry[1], entry[2])
        if len(self.held) >= self.max_held:
            self.unmatched += 1
            return pkt
        self.held.append((frag_id, pkt, ts + self.timeout_ns))
        self.waiting[frag_id] = self.waiting.get(frag_id, 0) + 1
        self.held_total += 1
        return None

    def _release(self, frag_id: Any, proto: int, sport: int, dport: int) -> None:
        keep = []
        for item in self.held:
            if item[0] == frag_id:
                self.out.append(with_ports(item[1], proto, sport, dport))
                self.tracked += 1
            else:
                keep.append(item)
        self.held = keep
        del self.waiting[frag_id]

    def expire(self, now_ns: int) -> None:
        """Account the fragments that waited longer than the timeout with ports 0, and forget
        first fragments older than it."""
        if self.held:
            keep = []
            for item in self.held:
                if item[2] < now_ns:
                    self._unmatched(item)
                else:
                    keep.append(item)
            self.held = keep
        firsts = self.firsts
        while firsts:
            frag_id = next(iter(firsts))
            if firsts[frag_id][3] >= now_ns:
                break
            del firsts[frag_id]

    def flush(self) -> None:
        """Account every waiting fragment with ports 0 (the ingest stops)."""
        for item in self.held:
            self._unmatched(item)
        self.held = []

    def _unmatched(self, item: tuple[Any, Packet, int]) -> None:
        self.out.append(item[1])
        self.unmatched += 1
        left = self.waiting[item[0]] - 1
        if left:
            self.waiting[item[0]] = left
        else:
            del self.waiting[item[0]]

    def stats(self) -> dict[str, int]:
        """Cumulative counters and the two tables' sizes."""
        return {"frag_tracked": self.tracked, "frag_held": self.held_total,
                "frag_unmatched": self.unmatched, "frag_waiting": len(self.held),
                "frag_table": len(self.firsts)}
