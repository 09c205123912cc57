"""NAT event export: NetFlow v9 NEL records and ipt_NETFLOW's NetFlow v5 pseudo-flows.

This module owns how a :class:`~agent.model.NatEvent` becomes bytes; it is pure, like
:mod:`.v5` and :mod:`.v9`. References: RFC 8158 (natEvent values, IEs 225-230, 281/282, 323),
``shared/PROTOCOLS.md`` sections 6.4 and 6.5, the ipt_NETFLOW README ``natevents`` section.

* **v9 (NEL)**: ipt_NETFLOW's NAT template, field for field: observationTimeMilliseconds (323,
  8 bytes), pre-NAT source/destination address (8/12) and post-NAT ones (225/226), pre-NAT
  ports (7/11), post-NAT ports (227/228), protocol (4), natEvent (230, 1 byte). When the
  addresses are IPv6 the variant template uses 27/28/281/282.
* **natEvent values** per instance: ``legacy`` = 1 create / 2 delete (ipt_NETFLOW, Cisco NEL);
  ``rfc8158`` = 4/5 (session create/delete) for same-family translation (NAT44, and NAT66,
  which RFC 8158 has no values for) and 6/7 (NAT64 session create/delete) when the inside is
  IPv6 and the outside IPv4 (shared with IPFIX: :func:`agent.ie.nat_event_value`).
* **v5 pseudo-flows** (packets = octets = 0 so accounting is unaffected): src = pre-NAT source,
  dst = post-NAT destination; SNAT: next hop = post-NAT source address, src_as = post-NAT source
  port; DNAT: next hop = pre-NAT destination address, dst_as = pre-NAT destination port; both
  translated: two records; TCP flags SYN+ACK on start, RST+FIN on stop; First = Last = event
  time. IPv6 events cannot be carried and are counted as skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from netflow_agent import ie
from netflow_agent.model import NAT_START, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, NatEvent

from . import v5
from .state import ExportState
from .v5 import Tally
from .v9 import RefreshPolicy, Template, assemble, whole_second

TEMPLATE_NEL4 = 260
TEMPLATE_NEL6 = 261

NatValues = Literal["legacy", "rfc8158"]

#: natEvent (230) values, RFC 8158 section 4.3.

V5_START_FLAGS = TCP_SYN | TCP_ACK
V5_STOP_FLAGS = TCP_RST | TCP_FIN


def nel_templates() -> dict[int, Template]:
    """The two NEL templates (IPv4 and IPv6 addresses), keyed by template id."""
    return {
        TEMPLATE_NEL4: Template(TEMPLATE_NEL4, _nel_fields(8, 12, 225, 226, 4)),
        TEMPLATE_NEL6: Template(TEMPLATE_NEL6, _nel_fields(27, 28, 281, 282, 16)),
    }


def _nel_fields(src: int, dst: int, post_src: int, post_dst: int, alen: int):
    return (
        (323, 8),  # observationTimeMilliseconds
        (src, alen), (dst, alen),  # pre-NAT addresses
        (post_src, alen), (post_dst, alen),  # postNATSource/DestinationIPv4|6Address
        (7, 2), (11, 2),  # pre-NAT ports
        (227, 2), (228, 2),  # postNAPTSource/DestinationTransportPort
        (4, 1),  # protocolIdentifier
        (230, 1),  # natEvent
    )


def nat_event_value(event: NatEvent, values: NatValues) -> int:
    """The natEvent (230) value for ``event`` under the instance's value set.

    :param event: the NAT event.
    :param values: ``"legacy"`` (1/2) or ``"rfc8158"`` (see :func:`agent.ie.nat_event_value`).
    """
    return ie.nat_event_value(event.event == NAT_START, len(event.src_addr),
                              len(event.post_src_addr), values)


def _event_time_ns(event: NatEvent, now_ns: int) -> int:
    """The event time; an event without one gets the export time (never 1970)."""
    return event.time_ns or now_ns


def nel_groups(
    events: Sequence[NatEvent], values: NatValues, now_ns: int, tally: Tally
) -> list[tuple[Template, list[bytes]]]:
    """Pack NAT events with the NEL templates; mixed-family events are counted as skipped."""
    templates = nel_templates()
    groups: dict[int, list[bytes]] = {TEMPLATE_NEL4: [], TEMPLATE_NEL6: []}
    for e in events:
        alen = len(e.src_addr)
        if not (alen == len(e.dst_addr) == len(e.post_src_addr) == len(e.post_dst_addr)):
            tally.skipped += 1
            continue
        tid = TEMPLATE_NEL4 if alen == 4 else TEMPLATE_NEL6
        groups[tid].append(templates[tid].record.pack(
            _event_time_ns(e, now_ns) // 1_000_000,
            e.src_addr, e.dst_addr, e.post_src_addr, e.post_dst_addr,
            e.src_port, e.dst_port, e.post_src_port, e.post_dst_port,
            e.protocol, nat_event_value(e, values),
        ))
    return [(templates[tid], bodies) for tid, bodies in groups.items() if bodies]


def encode_v9(
    events: Sequence[NatEvent],
    state: ExportState,
    policy: RefreshPolicy,
    now_ns: int,
    *,
    values: NatValues = "legacy",
    tally: Tally | None = None,
) -> list[bytes]:
    """Encode NAT events as NetFlow v9 NEL export packets (same state as the flow packets).

    :param events: NAT start/stop events.
    :param state: the instance's export state (shared with its flow export).
    :param policy: MTU and template refresh settings.
    :param now_ns: the export clock.
    :param values: natEvent value set.
    :param tally: optional; receives events per packet and the skipped count.
    """
    tally = tally if tally is not None else Tally()
    state.observe(whole_second(now_ns))
    return assemble(nel_groups(events, values, now_ns, tally), state, policy, now_ns, tally)


# --- NetFlow v5 pseudo-flows ----------------------------------------------------------------


def _translations(e: NatEvent) -> tuple[bool, bool]:
    """(snat, dnat); derived from the tuples when the event does not say."""
    if e.snat or e.dnat:
        return e.snat, e.dnat
    snat = (e.post_src_addr, e.post_src_port) != (e.src_addr, e.src_port)
    dnat = (e.post_dst_addr, e.post_dst_port) != (e.dst_addr, e.dst_port)
    return snat, dnat


def v5_pseudo_records(e: NatEvent, state: ExportState, now_ns: int) -> list[bytes]:
    """The 48-byte v5 records for one IPv4 NAT event (one per translated side).

    :param e: the event; must be IPv4 on both sides.
    :param state: for the sysUpTime origin.
    :param now_ns: used when the event has no time.
    """
    snat, dnat = _translations(e)
    when = state.uptime_ms(_event_time_ns(e, now_ns))
    flags = V5_START_FLAGS if e.event == NAT_START else V5_STOP_FLAGS
    sides = []
    if snat:
        sides.append((e.post_src_addr, e.post_src_port & 0xFFFF, 0))
    if dnat:
        sides.append((e.dst_addr, 0, e.dst_port & 0xFFFF))
    return [
        v5.RECORD.pack(
            e.src_addr, e.post_dst_addr, hop, 0, 0, 0, 0, when, when,
            e.src_port, e.post_dst_port, flags, e.protocol, 0, src_as, dst_as, 0, 0,
        )
        for hop, src_as, dst_as in sides
    ]


def encode_v5(
    events: Sequence[NatEvent], state: ExportState, now_ns: int, tally: Tally | None = None
) -> list[bytes]:
    """Encode NAT events as ipt_NETFLOW's NetFlow v5 pseudo-flows.

    :param events: NAT start/stop events; IPv6 ones are counted in ``tally.skipped``.
    :param state: the instance's export state (flow_sequence counts the pseudo-flows).
    :param now_ns: the export clock.
    :param tally: optional; receives records per packet and the skipped count.
    """
    tally = tally if tally is not None else Tally()
    earliest = min((e.time_ns for e in events if e.time_ns), default=0)
    state.observe(now_ns, earliest)
    bodies: list[bytes] = []
    for e in events:
        if len(e.src_addr) != 4 or len(e.post_dst_addr) != 4 or len(e.post_src_addr) != 4:
            tally.skipped += 1
            continue
        bodies.extend(v5_pseudo_records(e, state, now_ns))
    return v5.packets_from_bodies(bodies, state, now_ns, tally)

