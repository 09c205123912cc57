"""Export state owned by one ``[[export.netflow]]`` instance and passed to the pure encoders.

The encoders (:mod:`.v5`, :mod:`.v9`, :mod:`.nel`) keep nothing between calls; everything
that must survive from one export packet to the next lives here: the sysUpTime origin, the
sequence counters (RFC 3954 section 5.1 for v9: export *packets*; NetFlow v5: *flows*), and
when each template was last sent (RFC 3954 section 9: templates are resent periodically).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from netflow_agent.api import export_stamp

UINT32_MASK = 0xFFFFFFFF
NS_PER_MS = 1_000_000


@dataclass(slots=True)
class TemplateMark:
    """When a template was last put on the wire.

    :param packet: the export packet counter (``ExportState.packets``) at that time.
    :param time_ns: the export clock at that time.
    """

    packet: int
    time_ns: int


@dataclass(slots=True)
class ExportState:
    """Mutable export state of one exporter instance (never shared between instances).

    :param boot_ns: wall-clock ns that sysUpTime 0 stands for (the agent's start). It only
        ever moves back (see :meth:`observe`), so sysUpTime never decreases.
    :param source_id: NetFlow v9 Source ID (observation domain) / v5 engine id.
    :param engine_type: NetFlow v5 engine type.
    :param packets: export packets produced so far (v9 header sequence is taken from it).
    :param flows: flow records produced so far (v5 ``flow_sequence``).
    :param templates: template id -> when it was last sent.
    :param force_templates: put every needed template into the next packet (collector came
        back, or is refusing); cleared by the encoder after use.
    :param sampling_interval: the v5 header's sampling field for flow packets (mode << 14 |
        interval, see :func:`.v5.sampling_field`); 0 = every packet accounted.
    :param export_ns: the header time of the last packet (see :meth:`stamp`); 0 = none yet.
    """

    boot_ns: int
    source_id: int = 0
    engine_type: int = 0
    packets: int = 0
    flows: int = 0
    templates: dict[int, TemplateMark] = field(default_factory=dict)
    force_templates: bool = False
    sampling_interval: int = 0
    export_ns: int = 0

    def stamp(self, now_ns: int, latest_ns: int = 0, unit_ns: int = 1) -> int:
        """The header time of the next packets: never before ``latest_ns`` nor a previous one.

        See :mod:`agent.exportclock`: ``now_ns`` moved forward to the latest record time,
        rounded up to ``unit_ns`` (v9: whole seconds; v5: exact), never going back.
        """
        self.export_ns = export_stamp(now_ns, latest_ns, self.export_ns, unit_ns)
        return self.export_ns

    def observe(self, now_ns: int, earliest_ns: int = 0) -> None:
        """Move the sysUpTime origin back so that ``now_ns`` and ``earliest_ns`` are >= it.

        Collectors compute absolute times as ``export time - (sysUpTime - First)``; moving the
        origin back changes sysUpTime and First by the same amount, so absolute times stay
        exact while pcap replays with old timestamps never produce negative uptimes.

        :param now_ns: the export clock.
        :param earliest_ns: the earliest record time in the batch (0 = none).
        """
        low = now_ns if not earliest_ns else min(now_ns, earliest_ns)
        if low < self.boot_ns:
            self.boot_ns = low

    def uptime_ms(self, ns: int) -> int:
        """Milliseconds since :attr:`boot_ns`, modulo 2**32 (sysUpTime, First, Last): whole
        milliseconds of each, rounded down, subtracted, so that collectors' absolute times
        (``header time - (sysUpTime - First)``) are ``ns`` rounded down to the millisecond,
        what IPFIX's flowStartMilliseconds says, whatever the origin's sub-millisecond part."""
        return (ns // NS_PER_MS - self.boot_ns // NS_PER_MS) & UINT32_MASK
