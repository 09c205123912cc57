"""``[[export.netflow]]`` component: owns sockets, batching, timers and counters.

The encoders (:mod:`.v5`, :mod:`.v9`, :mod:`.nel`) are pure; this class feeds them records
and NAT events with the instance's :class:`~.state.ExportState`, and hands every datagram to
every destination (ipt_NETFLOW ``destination=a,b`` mirrors the same stream, so sequence numbers
are the same on every collector). Sockets are :class:`agent.transport.udp.UdpDestination`:
non-blocking, loss counted, never blocking the pipeline thread.

Template-based export (v9) puts templates into the next packet whenever a destination is
unconnected, refusing (ICMP port unreachable) or just came back, so a collector that starts
late decodes the very first packet it receives.

Sampling: before each flow export the instance reads the agent's sampling
(:meth:`agent.runtime.RunContext.sampling`, declared by the ingests); v5 puts it into every
flow packet's header, v9 sends the sampling options record with the templates (and at once
when the sampling changes). An interval over v5's 14 bits is not clamped: the header says 0
and an error is logged, since a wrong rate would silently mis-scale every flow.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, TypeVar

from netflow_agent.api import (
    NAT_START,
    EncodeError,
    FlowBatch,
    FlowRecord,
    InterfaceNames,
    LossQueue,
    NatEvent,
    NatExporter,
    RunContext,
    Sampling,
    UdpDestination,
    hookimpl,
    records_room,
)

from . import nel, v5, v9
from .config import Config
from .lost import datagram_totals
from .state import ExportState, TemplateMark
from .v5 import Tally

T = TypeVar("T")
_ENCODE_ERRORS = (struct.error, EncodeError, OverflowError, TypeError, ValueError)


@dataclass(slots=True)
class ExporterStats:
    """Instance counters (ipt_NETFLOW's names where it has them)."""

    flows_in: int = 0  # flow records received from the pipeline
    nat_in: int = 0  # NAT events received
    nat_start: int = 0  # "Natevents ... count start"
    nat_stop: int = 0  # "Natevents ... count stop"
    records_encoded: int = 0  # data records put into datagrams (after splits)
    skipped: int = 0  # records the protocol cannot carry (IPv6 in v5)
    split: int = 0  # extra records from splitting counters over 32 bits
    encode_errors: int = 0  # records rejected by the encoder (out-of-range fields): lost
    pdus: int = 0  # datagrams encoded
    sampling_interval: int = 1  # the sampling interval announced to collectors (1 = none)
    if_names: int = 0  # v9: interfaces whose names are announced (interfaceName options)
    if_names_unresolved: int = 0  # v9: look-ups of a noted ifIndex that found no interface
    lost_packets: int = 0  # packets of the flow records lost (all destinations): in lost
    lost_octets: int = 0  # datagrams, or refused by the encoder; their octets


@dataclass(slots=True)
class Carried:
    """What a stopped instance leaves in :attr:`RunContext.handover` for its replacement.

    :param destinations: the collectors that saw the stream.
    :param state: sequence counters, sysUpTime origin, last header time.
    :param sampling: the sampling last announced (``None``: none yet).
    :param sampling_options: v9: the sampling options records sent with the templates
        (non-empty once a sampling was announced: then its end is announced as 1/1).
    :param interval: the ``sampling_interval`` counter.
    """

    destinations: set[str]
    state: ExportState
    sampling: Sampling | None
    sampling_options: list[tuple[v9.Template, bytes]]
    interval: int


class NetflowExporter(NatExporter):
    """One ``[[export.netflow]]`` instance: NetFlow v5 or v9 to one or more collectors.

    :param config: the instance's :class:`~.config.Config`.
    :param name: instance name, e.g. ``export.netflow[0]``.
    """

    stage = "export"
    type_name = "netflow"

    def __init__(self, config: Config, name: str):
        super().__init__(config, name)
        self.stats = ExporterStats()
        self.destinations: list[UdpDestination] = []
        self.context: RunContext | None = None
        self.state = ExportState(boot_ns=0, source_id=config.engine_id,
                                 engine_type=config.engine_type)
        self.templates = v9.flow_templates(config.counters64)
        #: the fewest flow records a full datagram holds (the largest record of any template)
        self.per_datagram = v5.MAX_RECORDS if config.protocol == 5 else (
            (config.mtu - v9.HEADER.size - v9.FLOWSET_HEADER.size - 3)
            // max(t.size for t in self.templates.values()))
        self.policy = v9.RefreshPolicy(
            mtu=config.mtu, refresh_packets=config.refresh_rate,
            refresh_ns=config.timeout_rate * 60 * 1_000_000_000)
        self.sampling: Sampling | None = None
        self.sampling_options: list[tuple[v9.Template, bytes]] = []
        self.interfaces = InterfaceNames()
        self.names_options: list[tuple[v9.Template, bytes]] = []
        self._names_resolved: frozenset[int] = frozenset()  # the indexes last resolved
        self._names_mark: TemplateMark | None = None  # when they were resolved
        #: names resolved since the last scan ended (agent_tick): its later parts reuse them
        self._names_current = False
        #: the datagrams the destinations lost, from any thread; read back into packets and
        #: octets on this one
        self._losses = LossQueue()
        #: per destination: ``[packets, octets]`` of the flow records it lost (in lost
        #: datagrams, and the encoder's refused records, which no destination got)
        self._lost_traffic: list[list[int]] = []

    # --- lifecycle -------------------------------------------------------------------------

    @hookimpl
    def agent_start(self, context: RunContext) -> None:
        """Open one socket per destination; an unconnectable one is retried later. A stream
        left by a replaced instance (a reload) is taken over only once everything started,
        so a failed start leaves it for the rollback."""
        self.context = context
        self.state.boot_ns = context.start_ns
        carried = context.handed_over(self._stream_key(), self.config.endpoints())
        if carried is not None:  # a reload replaced the instance: its stream goes on
            self._take_over(carried)
        for i, endpoint in enumerate(self.config.destination):
            dest = UdpDestination(endpoint, source=self.config.source,
                                  sndbuf=self.config.sndbuf, rate_limit=self.config.rate_limit,
                                  backlog=self.config.backlog, log=self.log,
                                  on_loss=self._losses.on_loss(i))
            dest.connect()
            self.destinations.append(dest)
            self._lost_traffic.append([0, 0])
        if carried is not None:
            context.took(self._stream_key(), carried)
        self.log.info("%s: NetFlow v%d to %s", self.name, self.config.protocol,
                      ", ".join(self.config.destination))

    @hookimpl
    def agent_tick(self, now_ns: int) -> None:
        """Retry unconnected destinations and collect ICMP errors (``cberr``); the next
        scan resolves interface names anew (:meth:`_sync_interface_names`)."""
        self._names_current = False
        for dest in self.destinations:
            dest.poll()
        self._count_losses()

    def _stream_key(self) -> tuple[Any, ...]:
        """What makes a stream for collectors, as the headers carry it (RFC 3954 section 5.1:
        exporter address and Source ID; v5: engine_type and the low 8 bits of engine_id), for
        :attr:`RunContext.handover`. Destinations are left out: a collector whose
        destination stays keeps its stream when mirrors are added, removed or reordered."""
        c = self.config
        if c.protocol == 5:
            return ("export.netflow", 5, c.source, c.engine_type, c.engine_id & 0xFF)
        return ("export.netflow", 9, c.source, c.engine_id)

    def _take_over(self, carried: Carried) -> None:
        """Continue ``carried``'s stream: sequence, sysUpTime origin, header time and the
        sampling announced (so a sampling that stops with this reload is announced 1/1)."""
        old = carried.state
        self.state.packets, self.state.flows = old.packets, old.flows
        self.state.boot_ns, self.state.export_ns = old.boot_ns, old.export_ns
        self.state.sampling_interval = old.sampling_interval
        self.sampling, self.sampling_options = carried.sampling, carried.sampling_options
        self.stats.sampling_interval = carried.interval

    @hookimpl
    def agent_stop(self) -> None:
        """Send the paced backlog (up to 10 s), close the sockets, log what was lost; leave
        the stream's state (sequence, sysUpTime origin, sampling announced) for a
        replacement (a reload)."""
        if self.context is not None:
            self.context.leave(self._stream_key(), Carried(
                self.config.endpoints(), self.state, self.sampling,
                self.sampling_options, self.stats.sampling_interval))
        for i, dest in enumerate(self.destinations):
            dest.poll()
            dest.close()
            self._count_losses()
            packets, octets = self._lost_traffic[i]
            self.log.info("%s: %s: %d datagrams sent, %d records lost (%d packets, %d octets)",
                          self.name, dest.endpoint, dest.stats.packets_ok,
                          dest.stats.lost_records, packets, octets)

    def _count_losses(self) -> None:
        """Read the datagrams the destinations lost into ``lost_packets``/``lost_octets``
        (their records are in the destinations' ``lost_records`` already)."""
        for i, datagram, _records in self._losses.drain():
            packets, octets = datagram_totals(datagram, self.templates)
            self._lost_traffic[i][0] += packets
            self._lost_traffic[i][1] += octets
            self.stats.lost_packets += packets
            self.stats.lost_octets += octets

    def _count_refused(self, refused: Sequence[Any]) -> None:
        """Records the encoder refused reach no destination: count them as lost by each
        (``encode_errors``, in every ``sockN.lost_records``), with their flows' packets and
        octets (NAT events carry none), so traffic = exported + dropped + lost holds."""
        self.stats.encode_errors += len(refused)
        packets = sum(getattr(r, "packets", 0) for r in refused)
        octets = sum(getattr(r, "octets", 0) for r in refused)
        for dest, lost in zip(self.destinations, self._lost_traffic, strict=True):
            dest.count_unencoded(len(refused))
            lost[0] += packets
            lost[1] += octets
            self.stats.lost_packets += packets
            self.stats.lost_octets += octets

    # --- export ----------------------------------------------------------------------------

    @hookimpl
    def agent_export_room(self) -> int | None:
        """Flow records the paced backlogs can take now (the fullest destination's), so the
        core spreads a mass expiry over scans; ``None`` unpaced or for NAT events only."""
        if not self.config.flows:
            return None
        return records_room([dest.backlog_room for dest in self.destinations],
                            self.config.backlog, self.per_datagram)

    @hookimpl
    def agent_export_flows(self, records: FlowBatch | list[FlowRecord]) -> None:
        """Encode and send flow records (unless this instance carries NAT events only)."""
        if not self.config.flows or not records:
            return
        self.stats.flows_in += len(records)
        self._sync_sampling()
        if self.config.protocol == 9:
            self._sync_interface_names(records)
        self._export(records, self._encode_flows)

    @hookimpl
    def agent_export_nat_events(self, events: list[NatEvent]) -> None:
        """Encode and send NAT events when ``natevents`` is on."""
        if not self.config.natevents or not events:
            return
        self.stats.nat_in += len(events)
        starts = sum(1 for e in events if e.event == NAT_START)
        self.stats.nat_start += starts
        self.stats.nat_stop += len(events) - starts
        self._export(events, self._encode_nat)

    def _sync_sampling(self) -> None:
        """Follow the agent's sampling; a change is announced with the next flows."""
        assert self.context is not None, "agent_start was not called"
        sampling = self.context.sampling()
        if sampling == self.sampling:
            return
        self.sampling = sampling
        interval = sampling.interval if sampling else 1
        if self.config.protocol == 5:
            try:
                self.state.sampling_interval = v5.sampling_field(sampling)
            except EncodeError as exc:
                self.state.sampling_interval, interval = 0, 1
                self.log.error("%s: %s: headers say 'not sampled'; use protocol = 9 or "
                               "[[export.ipfix]] to announce it", self.name, exc)
        else:
            # after sampling stops, keep announcing 1/1 so the collector stops scaling
            announce = sampling or (Sampling(1) if self.sampling_options else None)
            self.sampling_options = v9.sampling_options(announce, self.config.engine_id)
            for tpl, _ in self.sampling_options:  # resend at once
                self.state.templates.pop(tpl.template_id, None)
        self.stats.sampling_interval = interval
        self.log.info("%s: announcing sampling %s", self.name, sampling or "off (1/1)")

    def _sync_interface_names(self, records: FlowBatch | Sequence[FlowRecord]) -> None:
        """Resolve names when a new interface shows up (sent at once) or a refresh is due,
        at most once per scan for a refresh: the parts of one scan (a stop's, a mass
        expiry's: 8192 flows each, a refresh due in every one) reuse the names its first
        part resolved (~150 µs each in a namespace), the next scan sees a renamed interface."""
        assert self.context is not None, "agent_start was not called"
        self.interfaces.note_flows(records)
        now = self._now_ns()
        new = not self.interfaces.seen <= self._names_resolved
        if not new and (self._names_current or not v9.refresh_due(
                self.state, self.policy, self._names_mark, now)):
            return
        self._names_current = True
        self._names_resolved = frozenset(self.interfaces.seen)
        self._names_mark = TemplateMark(self.state.packets, now)
        self.names_options = v9.interface_names_options(
            self.interfaces.snapshot(self.context.interface_names))
        self.stats.if_names = len(self.names_options)
        self.stats.if_names_unresolved = self.interfaces.unresolved
        if new:
            self.state.templates.pop(v9.TEMPLATE_INTERFACE_NAMES, None)

    def _now_ns(self) -> int:
        assert self.context is not None, "agent_start was not called"
        return self.context.now_ns()

    def _sync_boot(self) -> None:
        """Until the first packet, follow the core's start time (replay moves it)."""
        assert self.context is not None
        if self.state.packets == 0:
            self.state.boot_ns = self.context.start_ns

    def _encode_flows(self, records: FlowBatch | Sequence[FlowRecord], state: ExportState,
                      now_ns: int, tally: Tally) -> list[bytes]:
        if self.config.protocol == 5:
            return v5.encode_flows(records, state, now_ns, tally)
        return v9.encode_flows(records, state, self.templates, self.policy, now_ns,
                               counters64=self.config.counters64, tally=tally,
                               options=self.sampling_options + self.names_options)

    def _encode_nat(self, events: Sequence[NatEvent], state: ExportState,
                    now_ns: int, tally: Tally) -> list[bytes]:
        if self.config.protocol == 5:
            return nel.encode_v5(events, state, now_ns, tally)
        return nel.encode_v9(events, state, self.policy, now_ns,
                             values=self.config.nat_event_values, tally=tally)

    def _export(self, items: Sequence[T] | FlowBatch,
                encode: Callable[[Any, ExportState, int, Tally], list[bytes]]) -> None:
        self._sync_boot()
        if any(dest.needs_templates for dest in self.destinations):
            self.state.force_templates = True
        now = self._now_ns()
        tally = Tally()
        datagrams = self._encode_guarded(items, encode, now, tally)
        self.stats.records_encoded += sum(tally.records)
        self.stats.skipped += tally.skipped
        self.stats.split += tally.split
        self.stats.pdus += len(datagrams)
        stopping = self.context is not None and self.context.stopping
        for dest in self.destinations:  # the final export may wait for the paced backlog
            dest.send_batch(datagrams, tally.records,
                            wait_s=dest.flush_timeout_s if stopping else 0.0)

    def _encode_guarded(self, items: Sequence[T] | FlowBatch, encode: Callable[..., list[bytes]],
                        now: int, tally: Tally) -> list[bytes]:
        """Encode; if a record has an out-of-range field, drop just that record and count it.

        The encoders pack every record before touching sequence numbers or template marks,
        so a failed attempt leaves the state unchanged (apart from the uptime origin, which
        may only move back).
        """
        try:
            return encode(items, self.state, now, tally)
        except _ENCODE_ERRORS:
            good: list[Any] = []
            refused: list[Any] = []
            for item in items:
                (good if self._encodable(item, encode, now) else refused).append(item)
        self._count_refused(refused)
        self.log.warning("%s: %d record(s) could not be encoded and were dropped (counted "
                         "lost)", self.name, len(refused))
        tally.records.clear()
        tally.skipped = tally.split = 0
        return encode(good, self.state, now, tally) if good else []

    def _encodable(self, item: Any, encode: Callable[..., list[bytes]], now: int) -> bool:
        scratch = replace(self.state, templates=dict(self.state.templates))
        try:
            encode([item], scratch, now, Tally())
        except _ENCODE_ERRORS:
            return False
        return True

    # --- observability ---------------------------------------------------------------------

    def _template_ids(self) -> set[int]:
        """Every v9 template this instance may send now: flows, NEL, options."""
        ids = set(self.templates) if self.config.flows else set()
        if self.config.natevents:
            ids.update((nel.TEMPLATE_NEL4, nel.TEMPLATE_NEL6))
        ids.update(tpl.template_id for tpl, _ in self.sampling_options + self.names_options)
        return ids

    @hookimpl
    def agent_collect_stats(self) -> dict[str, Any]:
        """Instance counters, totals over destinations (``sock:``) and one ``sockN`` each."""
        self._count_losses()
        cfg = self.config
        out: dict[str, Any] = {"protocol": cfg.protocol, "refresh_rate": cfg.refresh_rate,
                               "timeout_rate": cfg.timeout_rate, "natevents": cfg.natevents}
        if cfg.protocol == 9:  # the seed's "(templates N, active N)"; v5 has none
            out["templates"] = len(self._template_ids())
            out["templates_active"] = len(self.state.templates)
        out.update(asdict(self.stats))
        out["sequence"] = self.state.flows if self.config.protocol == 5 else self.state.packets
        totals = {"sock_ok": 0, "sock_fail": 0, "sock_cberr": 0, "sock_bytes": 0,
                  "lost_records": 0, "backlog": 0}
        for i, dest in enumerate(self.destinations):
            snap = dest.snapshot()
            snap["lost_packets"], snap["lost_octets"] = self._lost_traffic[i]
            out[f"sock{i}"] = snap
            for total, key in (("sock_ok", "packets_ok"), ("sock_fail", "fail"),
                               ("sock_cberr", "cberr"), ("sock_bytes", "bytes_ok"),
                               ("lost_records", "lost_records"), ("backlog", "backlog")):
                totals[total] += int(snap.get(key, 0))  # one snapshot: the sums add up
        out.update(totals)
        return out
