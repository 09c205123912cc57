"""Conntrack entry -> :class:`agent.model.NatEvent`, as ipt_NETFLOW's ``natevents`` defines it.

This module owns the mapping from a parsed ctnetlink message (:class:`.ctnetlink.CtEntry`) to
a NAT event: the pre-NAT tuple is conntrack's ORIGINAL direction, the post-NAT tuple is the
REPLY direction reversed (its destination is our translated source and vice versa); source and
destination translation come from ``CTA_STATUS`` (``IPS_SRC_NAT`` covers SNAT and MASQUERADE,
``IPS_DST_NAT`` covers DNAT / port forwards). The event time is the conntrack timestamp
extension's start (for starts) or stop (for stops) when the kernel supplied it
(``nf_conntrack_timestamp=1``), else the caller's clock. Counters come from
``CTA_COUNTERS_ORIG`` / ``CTA_COUNTERS_REPLY`` (``nf_conntrack_acct=1``, stop events only).

References: ipt_NETFLOW ``netflow_conntrack_event()`` (README "natevents"), RFC 8158 section 4.
"""

from __future__ import annotations

from netflow_agent.model import NAT_START, NatEvent

from .ctnetlink import IPS_DST_NAT, IPS_NAT_MASK, IPS_SRC_NAT, CtEntry, Tuple


def is_translated(entry: CtEntry) -> bool:
    """``True`` when conntrack rewrote the source or destination of this connection."""
    return bool(entry.status & IPS_NAT_MASK)


def entry_key(entry: CtEntry) -> tuple[int, tuple[bytes, bytes, int, int, int]]:
    """Identity of a connection across its NEW, DESTROY and dump messages.

    ``CTA_ID`` alone is a hash that may be reused after the entry is freed; together with the
    original tuple it names one connection.
    """
    return entry.ct_id, tuple(entry.orig)  # type: ignore[return-value]


def to_nat_event(entry: CtEntry, event: int, now_ns: int) -> NatEvent:
    """Build the NAT event for one conntrack entry.

    :param entry: a parsed conntrack message with both tuples.
    :param event: :data:`~agent.model.NAT_START` or :data:`~agent.model.NAT_STOP`.
    :param now_ns: wall-clock ns to use when the message carries no timestamp.
    """
    orig, reply = entry.orig, entry.reply
    if reply is orig:  # no REPLY tuple: nothing translated
        post_src, post_dst, post_sport, post_dport = orig[:2] + orig[3:]
    else:
        post_src, post_dst = reply.dst_addr, reply.src_addr
        post_sport, post_dport = _reversed_ports(orig, reply)
    return NatEvent(
        event=event,
        time_ns=event_time(entry, event, now_ns),
        ip_version=4 if len(orig.src_addr) == 4 else 6,
        protocol=orig.protocol,
        src_addr=orig.src_addr,
        dst_addr=orig.dst_addr,
        src_port=orig.src_port,
        dst_port=orig.dst_port,
        post_src_addr=post_src,
        post_dst_addr=post_dst,
        post_src_port=post_sport,
        post_dst_port=post_dport,
        snat=bool(entry.status & IPS_SRC_NAT),
        dnat=bool(entry.status & IPS_DST_NAT),
        conntrack_id=entry.ct_id,
        packets_orig=entry.packets_orig,
        octets_orig=entry.octets_orig,
        packets_reply=entry.packets_reply,
        octets_reply=entry.octets_reply,
    )


def event_time(entry: CtEntry, event: int, now_ns: int) -> int:
    """The conntrack start/stop timestamp for ``event``, or ``now_ns`` when there is none."""
    stamp = entry.start_ns if event == NAT_START else entry.stop_ns
    return stamp or now_ns


def _reversed_ports(orig: Tuple, reply: Tuple) -> tuple[int, int]:
    """Post-NAT ``(src_port, dst_port)`` from the reply tuple.

    TCP/UDP/SCTP: the reply's destination port is the translated source port and its source
    port the translated destination port. ICMP keeps one identifier per connection in both
    tuples (``src_port``); the reply tuple holds the echo-reply type, so the destination
    "port" (type/code) stays the original one.
    """
    if orig.protocol in (1, 58):
        return reply.src_port, orig.dst_port
    return reply.dst_port, reply.src_port
