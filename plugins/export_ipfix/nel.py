"""NAT Event Logging (NEL) in IPFIX: templates and Data Records for :class:`NatEvent`.

Follows ipt_NETFLOW's NAT template (``BTPL_NAT4``, field order below) so collectors that
already decode it keep working, and RFC 8158 for the natEvent (230) values and the IPv6
post-NAT fields (281/282)::

    observationTimeMilliseconds(323) sourceIPv4Address(8) destinationIPv4Address(12)
    postNATSourceIPv4Address(225) postNATDestinationIPv4Address(226)
    sourceTransportPort(7) destinationTransportPort(11)
    postNAPTSourceTransportPort(227) postNAPTDestinationTransportPort(228)
    protocolIdentifier(4) natEvent(230)

The pre-NAT tuple uses 8/12 (IPv4) or 27/28 (IPv6), the post-NAT tuple 225/226 or 281/282,
so there is one template per (pre, post) address family pair: NAT44, NAT66, NAT64, NAT46.

natEvent values (``nat_event_values``): ``legacy`` = 1 create / 2 delete (ipt_NETFLOW, Cisco
NEL); ``rfc8158`` = 4/5 NAT44 session create/delete, 6/7 NAT64 session create/delete. RFC
8158 defines no NAT66/NAT46 session values; those use 4/5.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

from netflow_agent import ie
from netflow_agent.model import NAT_START, NatEvent

from .ipfix import DataGroup, Template

NEL_TEMPLATE_BASE = 264  # 264..267, see nel_template_id()

#: Earliest plausible event time (2000-01-01); older values are clock-conversion bugs.
MIN_EVENT_TIME_NS = 946_684_800 * 1_000_000_000



def nel_template_id(pre_v6: bool, post_v6: bool) -> int:
    """Template ID for a (pre-NAT family, post-NAT family) pair: 264 + pre_v6 + 2 * post_v6."""
    return NEL_TEMPLATE_BASE + pre_v6 + 2 * post_v6


def _nel_fields(pre_v6: bool, post_v6: bool) -> tuple[tuple[int, int], ...]:
    pre = ((27, 16), (28, 16)) if pre_v6 else ((8, 4), (12, 4))
    post = ((281, 16), (282, 16)) if post_v6 else ((225, 4), (226, 4))
    return ((323, 8),) + pre + post + ((7, 2), (11, 2), (227, 2), (228, 2), (4, 1), (230, 1))


def _nel_struct(pre_v6: bool, post_v6: bool) -> struct.Struct:
    pre = "16s16s" if pre_v6 else "4s4s"
    post = "16s16s" if post_v6 else "4s4s"
    return struct.Struct(f"!Q{pre}{post}HHHHBB")


#: Template ID -> (Template, Struct) for the four address family pairs.
NEL_LAYOUTS: dict[int, tuple[Template, struct.Struct]] = {
    nel_template_id(pre, post): (
        Template(nel_template_id(pre, post), _nel_fields(pre, post), 0,
                 f"nel{'6' if pre else '4'}{'6' if post else '4'}"),
        _nel_struct(pre, post),
    )
    for pre in (False, True)
    for post in (False, True)
}


def event_value(event: NatEvent, value_set: str) -> int:
    """The natEvent (230) value for ``event`` under ``value_set`` (``legacy``/``rfc8158``)."""
    return ie.nat_event_value(event.event == NAT_START, len(event.src_addr),
                              len(event.post_src_addr), value_set)


def encode_nat_groups(
    events: Iterable[NatEvent],
    value_set: str,
    wall_ns: int,
    on_fixed_time: Callable[[NatEvent], None],
) -> list[DataGroup]:
    """Encode NAT events into one :class:`DataGroup` per NEL template, keeping their order.

    :param events: NAT start/stop events.
    :param value_set: ``"legacy"`` or ``"rfc8158"``.
    :param wall_ns: wall clock now; used for events whose time is missing or implausible.
    :param on_fixed_time: called for each event whose time was replaced by ``wall_ns``.
    """
    groups: dict[int, list[bytes]] = {}
    for e in events:
        tid = nel_template_id(len(e.src_addr) == 16, len(e.post_src_addr) == 16)
        _, s = NEL_LAYOUTS[tid]
        t = e.time_ns
        if t < MIN_EVENT_TIME_NS:
            on_fixed_time(e)
            t = wall_ns
        record = s.pack(t // 1_000_000, e.src_addr, e.dst_addr, e.post_src_addr,
                        e.post_dst_addr, e.src_port, e.dst_port, e.post_src_port,
                        e.post_dst_port, e.protocol, event_value(e, value_set))
        groups.setdefault(tid, []).append(record)
    return [DataGroup(NEL_LAYOUTS[tid][0], recs) for tid, recs in groups.items()]
