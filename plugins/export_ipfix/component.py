"""The ``[[export.ipfix]]`` component: hooks, destinations, timers, counters.

This module owns the I/O side of IPFIX export; the encoders (``ipfix.py``, ``nel.py``,
``options.py``) stay pure. Per instance:

* **UDP** (RFC 7011 section 10.3): one :class:`~agent.transport.udp.UdpDestination` per
  destination; messages are encoded once, with one shared :class:`~.ipfix.Session`, and sent
  to every destination (mirroring: each destination sees the same stream, so the sequence
  numbers are right for each). The messages of one export part go to each destination as
  one batch (``send_batch``: one ``sendmmsg``, or one put into the paced backlog), as for
  NetFlow v9. Templates are refreshed by time and by message count, and at once when a
  destination becomes reachable again. Never any template withdrawal.
* **TCP** (section 10.4): one :class:`~.tcp.TcpDestination` per destination with its own
  session, spool and reconnect backoff.
* **File** (RFC 5655): :class:`~.file.IpfixFile` when ``path`` is set.
* Every ``options_interval_s``: the statistics Options Data Records and the interface names,
  and, while an ingest samples (``RunContext.sampling``), the sampling records; these are
  also sent at once when the sampling changes (before the flows it applies to) and on every
  new TCP connection before the spool. While the cache's flow sampler is on, the sampling
  records include the Flow Selection Process (selector parameters), each options round a
  selector statistics record (from the cache counters, ``RunContext.stats``), and the flow
  records carry its selectorId (the selector flow templates).

Reload: a replaced instance leaves the sampling it announced (a replacement announces 1
when the sampling stopped) and its UDP session's sequence and Export Time in
``RunContext.handover``; the sequence goes on only when ``source`` fixes the port (the
same 5-tuple: the same transport session for a collector whose destination stays).

Lost records (send errors, broken TCP connections, full spool, encode errors) are counted
with their packets and octets; they feed ``notSent*`` in the exporting reliability record.

Clock: every time this instance writes (Export Time, NAT event times without their own,
the statistics window) comes from the pipeline clock (``RunContext.now_ns``: the capture's
clock in a replay, as for NetFlow). Export Time follows :mod:`agent.exportclock`: never
before the latest record time handed to this instance, rounded up to a whole second, never
going back, on UDP, TCP and in files alike.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from netflow_agent.api import (
    NS_PER_S,
    FlowBatch,
    FlowRecord,
    InterfaceNames,
    LossQueue,
    NatEvent,
    NatExporter,
    RunContext,
    Sampling,
    UdpDestination,
    address_family,
    export_stamp,
    hookimpl,
    names_here,
    parse_endpoint,
    records_room,
)

from .config import Config

# The encoders and transports are imported by the methods that use them, for types only here:
# every agent registers this class, only one with [[export.ipfix]] runs them (~0.5 MB less
# for the others: docs/performance-history.md, "Agent memory: a smaller flow index and lazy
# imports").
if TYPE_CHECKING:
    from .file import IpfixFile
    from .ipfix import DataGroup, Template
    from .options import Statistics
    from .spool import Item
    from .tcp import TcpDestination


def _packets(records: FlowBatch | list[FlowRecord]) -> int:
    """The packets of the flows (a batch's column, or the records)."""
    if isinstance(records, FlowBatch):
        return int(records.flows["packets"].sum())
    return sum(r.packets for r in records)


def _latest_time(records: FlowBatch | list[FlowRecord]) -> int:
    """The latest start or end of the flows (columns of a batch, or the records)."""
    if isinstance(records, FlowBatch):
        flows = records.flows
        return max(int(flows["start_ns"].max()), int(flows["end_ns"].max()))
    return max(max(r.start_ns, r.end_ns) for r in records)


@dataclass(slots=True)
class Carried:
    """What a stopped instance leaves in :attr:`RunContext.handover` for its replacement.

    :param destinations: the collectors that saw it, and ``file:<path>`` for its file.
    :param sequence: the UDP session's sequence (continued only with a fixed source port:
        the same 5-tuple and Observation Domain are the same transport session).
    :param export_ns: the last Export Time (ns): it never goes back in one session.
    :param sampling: the sampling last announced, and its records (non-empty once one was
        announced: then its end is announced as 1/1).
    """

    destinations: set[str]
    sequence: int
    export_ns: int
    sampling: Sampling | None
    sampling_records: list[DataGroup] = field(default_factory=list)


class IpfixExporter(NatExporter):
    """IPFIX exporter instance (``export.ipfix[N]``)."""

    stage = "export"
    type_name = "ipfix"

    def __init__(self, config: Config, name: str):
        from .ipfix import Session, flow_layouts

        super().__init__(config, name)
        self.cfg = config
        self.context: RunContext | None = None
        self.udp: list[UdpDestination] = []
        #: the messages the UDP destinations lost (refused, backlog full, unconnected, left
        #: in the backlog at close), from any thread: counted on this one
        self._udp_losses = LossQueue()
        self.tcp: list[TcpDestination] = []
        self.file: IpfixFile | None = None
        self.session = Session(config.domain_id, config.refresh_rate,
                               int(config.template_refresh_s * 1e9))
        self.interfaces = InterfaceNames()
        self.layouts = flow_layouts(config.timestamps == "us")
        self.templates: dict[int, Template] = self._all_templates()
        self.max_udp_message = 0
        self.sampling: Sampling | None = None
        self.sampling_records: list[DataGroup] = []
        self._sampling_carried = False  # announce the agent's sampling at the first export
        #: packets of the flows handed to this instance while the flow sampler is on
        #: (selectorIdTotalPktsSelected for deterministic/random)
        self.selected_packets = 0
        self._next_options_ns = 0
        #: the latest record time handed to this instance, and the last Export Time (ns)
        self._latest_ns = 0
        self._export_ns = 0
        self.counters: dict[str, int] = dict.fromkeys(
            ("flows_in", "nat_events_in", "encode_errors", "lost_records", "lost_packets",
             "lost_octets", "nat_time_fixed", "udp_messages", "udp_records", "udp_octets",
             "options_rounds"), 0)
        self.counters["sampling_interval"] = 1  # announced to collectors (1 = none)

    def _encode_flows(self, records: FlowBatch | Iterable[FlowRecord]) -> list[DataGroup]:
        """Flow records as data groups in this exporter's layouts (``timestamps``)."""
        from .ipfix import encode_flow_groups

        return encode_flow_groups(records, self._encode_failed, self.layouts)

    def _all_templates(self) -> dict[int, Template]:
        from .nel import NEL_LAYOUTS
        from .options import OPTIONS_TEMPLATES

        out: dict[int, Template] = {}
        if self.cfg.flows:
            out.update((tid, layout.template) for tid, layout in self.layouts.items())
        if self.cfg.natevents:
            out.update((tid, tpl) for tid, (tpl, _) in NEL_LAYOUTS.items())
        if self.cfg.options_interval_s:
            out.update((t.template_id, t) for t in OPTIONS_TEMPLATES)
        return out

    def template_list(self) -> list[Template]:
        """Every template this instance may use (sent on each new TCP connection and file)."""
        return list(self.templates.values())

    # --- lifecycle -------------------------------------------------------------------------

    @hookimpl
    def agent_start(self, context: RunContext) -> None:
        """Open the destinations (UDP connect, TCP connect attempt) and the file."""
        from .file import IpfixFile

        self.context = context
        cfg = self.cfg
        endpoints = cfg.endpoints()
        carried = context.handed_over(self._stream_key(), self._destinations())
        if cfg.transport == "udp":
            self.udp = [UdpDestination(e, source=cfg.source, sndbuf=cfg.sndbuf,
                                       rate_limit=cfg.rate_limit, backlog=cfg.backlog,
                                       flush_timeout_s=cfg.flush_timeout_s,
                                       on_loss=self._udp_losses.on_loss(), log=self.log)
                        for e in endpoints]
            for d in self.udp:
                d.connect()
            self.max_udp_message = cfg.mtu - max(
                (28 if address_family(d.host) == 2 else 48 for d in self.udp), default=28)
        else:
            self.tcp = [self._tcp_destination(e, context) for e in endpoints]
            for t in self.tcp:
                t.poll()
        if cfg.path:
            self.file = IpfixFile(cfg.path, observation_domain_id=cfg.domain_id,
                                  templates=self.template_list,
                                  rotate_size_bytes=cfg.rotate_size_bytes,
                                  rotate_interval_s=cfg.rotate_interval_s, log=self.log,
                                  wall=self._export_seconds)
        self._next_options_ns = time.monotonic_ns()
        if carried is not None:  # taken only now: a failed start leaves it for the rollback
            self._take_over(carried)
            context.took(self._stream_key(), carried)
        self.log.info("%s: %s export to %s%s", self.name, cfg.transport,
                      ", ".join(endpoints) or "(none)", f", file {cfg.path}" if cfg.path else "")

    def _stream_key(self) -> tuple[Any, ...]:
        """Where a replacement finds what this instance left (:meth:`agent_stop`)."""
        return ("export.ipfix", self.cfg.transport, self.cfg.source, self.cfg.domain_id)

    def _destinations(self) -> set[str]:
        """Where this instance's records go, as :class:`Carried` names them: the collectors
        (normalised) and ``file:<path>`` (a replacement appends to the same file)."""
        out = set(self.cfg.endpoints())
        if self.cfg.path:
            out.add(f"file:{os.path.abspath(self.cfg.path)}")
        return out

    def _take_over(self, carried: Carried) -> None:
        """Continue the sampling announced and, over UDP from a fixed source port (the same
        transport session for a collector that stays), the session's sequence and clock."""
        self.sampling, self.sampling_records = carried.sampling, carried.sampling_records
        # only a stream that announced a sampling needs its replacement to announce again
        self._sampling_carried = bool(carried.sampling_records)
        if self.cfg.transport == "udp" and self.cfg.source \
                and parse_endpoint(self.cfg.source, 0)[1]:
            self.session.sequence = carried.sequence
            self._export_ns = carried.export_ns

    def _tcp_destination(self, endpoint: str, context: RunContext) -> TcpDestination:
        from .spool import Spool
        from .tcp import TcpDestination

        cfg = self.cfg
        return TcpDestination(
            endpoint,
            observation_domain_id=cfg.domain_id,
            spool=Spool(cfg.spool_max_records, cfg.spool_memory_records,
                        self._spool_path(endpoint, context), log=self.log),
            encode=self._encode_items,
            templates=self.template_list,
            connect_records=self._sampling_copy,
            totals=self._message_totals,
            max_message=cfg.mtu,
            source=cfg.source,
            sndbuf=cfg.sndbuf,
            reconnect_min_ns=int(cfg.reconnect_interval_s * 1e9),
            reconnect_max_ns=int(cfg.reconnect_max_interval_s * 1e9),
            log=self.log,
            wall=self._export_seconds,
        )

    def _spool_path(self, endpoint: str, context: RunContext) -> str:
        directory = self.cfg.spool_dir or (
            os.path.join(context.state_dir, "spool") if context.state_dir else "")
        if not directory:
            return ""
        os.makedirs(directory, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.name}-{endpoint}")
        return os.path.join(directory, f"{safe}.msgpack")

    @hookimpl
    def agent_stop(self) -> None:
        """Send final statistics; TCP: flush spool, withdraw templates, close. Leave the UDP
        session's sequence and the sampling announced for a replacement (a reload)."""
        self._send_options()
        if self.context is not None:
            self.context.leave(self._stream_key(), Carried(
                self._destinations(), self.session.sequence, self._export_ns,
                self.sampling, self.sampling_records))
        for d in self.tcp:
            left = d.close(self.cfg.flush_timeout_s, persist=bool(d.spool.path))
            self.counters["lost_records"] += left
        for u in self.udp:
            u.close()
        self._count_udp_losses()  # what the backlogs still held at close: no stats read follows
        for u in self.udp:
            if u.stats.lost_records:
                self.log.info("%s: %s: %d messages sent, %d records lost", self.name, u.endpoint,
                              u.stats.packets_ok, u.stats.lost_records)
        if self.file is not None:
            self.file.close()

    # --- export ----------------------------------------------------------------------------

    @hookimpl
    def agent_export_room(self) -> int | None:
        """UDP with ``rate_limit``: the flow records the paced backlogs can take now (the
        fullest destination's), so the core spreads a mass expiry over scans; ``None``
        otherwise (unpaced, TCP with its spool, NAT events only)."""
        from .ipfix import HEADER, SET_HEADER

        if not self.cfg.flows or not self.udp:
            return None
        largest = max(layout.template.record_length for layout in self.layouts.values())
        per_message = (self.max_udp_message - HEADER.size - SET_HEADER.size) // largest
        return records_room([d.backlog_room for d in self.udp], self.cfg.backlog, per_message)

    @hookimpl
    def agent_export_flows(self, records: FlowBatch | list[FlowRecord]) -> None:
        """Encode and send flow records (or spool them on TCP)."""
        from .options import flow_selector
        from .spool import KIND_FLOW

        if not self.cfg.flows or not records:
            return
        self.counters["flows_in"] += len(records)
        self._note_time(_latest_time(records))
        self._sync_sampling()
        if flow_selector(self.sampling) is not None:
            self.selected_packets += _packets(records)
        if self.cfg.options_interval_s:
            self.interfaces.note_flows(records)
        if self.tcp:
            for d in self.tcp:
                self._count_refused(d.submit(KIND_FLOW, records))
        groups = None
        if self.udp:
            groups = self._encode_flows(records)
            self._send_udp(groups)
        if self.file is not None:
            # the UDP part's groups, even none (every flow refused, counted once already)
            self.file.write(groups if groups is not None else self._encode_flows(records))
        self._timers()

    @hookimpl
    def agent_export_nat_events(self, events: list[NatEvent]) -> None:
        """Encode and send NAT events as NEL records (when ``natevents`` is on)."""
        from .spool import KIND_NAT

        if not self.cfg.natevents or not events:
            return
        self.counters["nat_events_in"] += len(events)
        self._note_time(max(e.time_ns for e in events))
        for d in self.tcp:
            self._count_refused(d.submit(KIND_NAT, events))
        if self.udp or self.file is not None:
            groups = self._encode_nat(events)
            if self.udp:
                self._send_udp(groups)
            if self.file is not None:
                self.file.write(groups)

    @hookimpl
    def agent_tick(self, now_ns: int) -> None:
        """Reconnects, template refresh bookkeeping, options records, file rotation."""
        self._timers()

    def _timers(self) -> None:
        for u in self.udp:
            u.poll()
        for d in self.tcp:
            d.poll()
        if self.file is not None:
            self.file.maybe_rotate()
        if self.cfg.options_interval_s and time.monotonic_ns() >= self._next_options_ns:
            self._next_options_ns = time.monotonic_ns() + int(self.cfg.options_interval_s * 1e9)
            self._send_options()

    def _sync_sampling(self) -> None:
        """Follow the agent's sampling; announce a change before the flows it applies to."""
        from .options import SAMPLING_TEMPLATES, sampling_groups, selector_groups

        sampling = self.context.sampling() if self.context is not None else None
        if sampling == self.sampling and not self._sampling_carried:
            return
        self.sampling, self._sampling_carried = sampling, False
        # after sampling stops, keep announcing 1/1 so that collectors stop scaling
        announce = sampling or (Sampling(1) if self.sampling_records else None)
        selector = selector_groups(sampling, self.cfg.domain_id)
        self.sampling_records = sampling_groups(announce, self.cfg.domain_id) + selector
        self._use_selector(sampling)
        if self.sampling_records:
            self.templates.update((t.template_id, t) for t in SAMPLING_TEMPLATES)
            self.templates.update((g.template.template_id, g.template) for g in selector)
            self._send_groups(self._sampling_copy())
        self.counters["sampling_interval"] = sampling.interval if sampling else 1
        self.log.info("%s: announcing sampling %s", self.name, sampling or "off (1/1)")

    def _use_selector(self, sampling: Sampling | None) -> None:
        """Flow records carry selectorId while the flow sampler is on (own template IDs)."""
        from .ipfix import flow_layouts
        from .options import flow_selector, selector_id

        selector = flow_selector(sampling)
        micro = self.cfg.timestamps == "us"
        self.layouts = flow_layouts(micro, selector_id=selector_id(selector) if selector else 0)
        if self.cfg.flows:
            self.templates.update(
                (tid, layout.template) for tid, layout in self.layouts.items())

    def _selector_stats(self, window: Statistics) -> list[DataGroup]:
        """The selector statistics record while the flow sampler is on, else nothing.

        :param window: this round's statistics, whose time window it shares.
        """
        from .options import flow_selector, selector_statistics, selector_stats_group

        selector = flow_selector(self.sampling)
        if selector is None or self.context is None:
            return []
        stats = selector_statistics(selector, self.context.stats(), self.selected_packets,
                                    window.start_ms, window.end_ms)
        return [selector_stats_group(selector, stats)]

    def _sampling_copy(self) -> list[DataGroup]:
        return list(self.sampling_records)

    # --- clock -----------------------------------------------------------------------------

    def _now_ns(self) -> int:
        """The pipeline clock (the capture's in a replay; 0 before a replay's first packet)."""
        return self.context.now_ns() if self.context is not None else time.time_ns()

    def _note_time(self, ns: int) -> None:
        """Remember a time this instance was given to export (Export Time must not precede it)."""
        self._latest_ns = max(self._latest_ns, ns)

    def _export_seconds(self) -> int:
        """Export Time for a message sent now (UDP, TCP and file; see the module docstring).

        Every record handed to this instance so far is covered, so a message sent later (TCP
        spool, file) never carries a record after its Export Time. A replay that has no
        packet yet has no time: its template-only messages say the agent's start.
        """
        now = self._now_ns()
        if not now and not self._latest_ns:
            start = self.context.start_ns if self.context is not None else time.time_ns()
            return start // NS_PER_S
        self._export_ns = export_stamp(now, self._latest_ns, self._export_ns, NS_PER_S)
        return self._export_ns // NS_PER_S

    # --- encoding helpers ------------------------------------------------------------------

    def _encode_nat(self, events: list[NatEvent]) -> list[DataGroup]:
        from .nel import encode_nat_groups

        return encode_nat_groups(events, self.cfg.nat_event_values,
                                 self._now_ns() or time.time_ns(), self._nat_time_fixed)

    def _encode_items(self, items: list[Item]) -> list[DataGroup]:
        """Spool items -> data groups, keeping runs of the same kind in order."""
        groups: list[DataGroup] = []
        run: list[Any] = []
        kind = None
        for k, record in items:
            if k != kind and run:
                groups.extend(self._encode_run(kind, run))
                run = []
            kind = k
            run.append(record)
        if run:
            groups.extend(self._encode_run(kind, run))
        return groups

    def _encode_run(self, kind: int | None, run: list[Any]) -> list[DataGroup]:
        from .spool import KIND_NAT

        if kind == KIND_NAT:
            return self._encode_nat(run)
        return self._encode_flows(run)

    def _encode_failed(self, record: FlowRecord, exc: Exception) -> None:
        self.counters["encode_errors"] += 1
        self._refuse(1, record.packets, record.octets)
        self.log.debug("%s: cannot encode %s: %s", self.name, record, exc)

    def _nat_time_fixed(self, event: NatEvent) -> None:
        self.counters["nat_time_fixed"] += 1

    def _message_totals(self, data: bytes) -> tuple[int, int, int]:
        from .ipfix import message_totals

        return message_totals(data, self.templates)

    def _refuse(self, records: int, packets: int, octets: int) -> None:
        """Records the encoder refused: lost by every UDP destination, as a lost message is
        counted for the destination that lost it (each collector's session accounts its own
        notSent*, RFC 7011 section 4.3), so each destination's records handed = sent + its
        lost; once without UDP (a file; each TCP destination encodes its own spool)."""
        for dest in self.udp:
            dest.count_unencoded(records)
        for _ in range(max(len(self.udp), 1)):
            self._lose(records, packets, octets)

    def _lose(self, records: int, packets: int, octets: int) -> None:
        c = self.counters
        c["lost_records"] += records
        c["lost_packets"] += packets
        c["lost_octets"] += octets

    def _count_udp_losses(self) -> None:
        """Count the messages the UDP destinations lost (:class:`LossQueue`): lost with their
        records' packets and octets, and no longer in the ``udp_*`` counters, which counted
        them when they were handed over."""
        from .ipfix import message_totals

        c = self.counters
        for _index, data, records in self._udp_losses.drain():
            # the destination's record count (it counted them when handed over), so that a
            # lost options message with a record of no registered template balances too
            _records, packets, octets = message_totals(data, self.templates)
            self._lose(records, packets, octets)
            c["udp_messages"] -= 1
            c["udp_records"] -= records
            c["udp_octets"] -= len(data)

    def _count_refused(self, refused: list[Any]) -> None:
        if not refused:
            return
        packets = sum(getattr(r, "packets", 0) for r in refused)
        octets = sum(getattr(r, "octets", 0) for r in refused)
        self._lose(len(refused), packets, octets)
        self.log.warning("%s: spool full, %d records lost", self.name, len(refused))

    # --- UDP -------------------------------------------------------------------------------

    def _send_udp(self, groups: list[DataGroup]) -> None:
        """Encode ``groups`` into messages and hand them to every destination as one batch
        (one ``sendmmsg`` unpaced, one backlog ``put`` paced), as NetFlow v9 does. Every
        message is counted in ``udp_*`` here; one a destination loses, now or later from its
        backlog, comes back through its ``on_loss`` (:class:`LossQueue`) and is moved to
        ``lost_*`` by :meth:`_count_udp_losses`. The sequence numbers were set by the
        encoding, whatever the sends do: a lost message's records still count, as in
        ipt_NETFLOW (the collector sees the gap)."""
        from .ipfix import encode_messages, group_totals

        if any(d.needs_templates for d in self.udp):
            self.session.force_templates = True
        refused: list[DataGroup] = []
        messages = encode_messages(self.session, groups, export_time=self._export_seconds(),
                                   max_length=self.max_udp_message, now_ns=time.monotonic_ns(),
                                   refused=refused)
        for group in refused:  # no destination gets these records: lost, with their traffic
            self.counters["encode_errors"] += 1
            self._refuse(*group_totals(group))
            self.log.warning("%s: template %d: a record or the template does not fit into "
                             "%d octets: %d records lost", self.name,
                             group.template.template_id, self.max_udp_message,
                             len(group.records))
        datagrams = [m.data for m in messages]
        records = [m.records for m in messages]
        c = self.counters
        wait_s = self.cfg.flush_timeout_s if self.context and self.context.stopping else 0.0
        for d in self.udp:  # the final export may wait for room in the paced backlog
            c["udp_messages"] += len(datagrams)
            c["udp_records"] += sum(records)
            c["udp_octets"] += sum(map(len, datagrams))
            d.send_batch(datagrams, records, wait_s)
        self._count_udp_losses()

    # --- options ---------------------------------------------------------------------------

    def statistics(self) -> Statistics:
        """The numbers for the statistics options records, now."""
        from .options import Statistics

        core = self.context.stats() if self.context is not None else {}
        c = self.counters
        self._count_udp_losses()
        messages, records, octets = c["udp_messages"], c["udp_records"], c["udp_octets"]
        lost, lost_p, lost_o = c["lost_records"], c["lost_packets"], c["lost_octets"]
        for d in self.tcp:
            messages, records, octets = (messages + d.stats.messages, records + d.stats.records,
                                         octets + d.stats.octets)
            lost += d.stats.lost_in_flight
            lost_p += d.stats.lost_packets
            lost_o += d.stats.lost_octets
        if self.file is not None:
            messages, records = messages + self.file.messages, records + self.file.records
        start_ns = self.context.start_ns if self.context is not None else 0
        now = self._now_ns()  # 0 in a replay before its first packet: no time yet
        end_ns = max(now, start_ns)
        if now:
            self._note_time(end_ns)
        return Statistics(
            messages=messages, records=records, octets=octets,
            observed_flows=int(core.get("new", 0)),
            ignored_packets=int(core.get("drop_packets", 0)),
            ignored_octets=int(core.get("drop_bytes", 0)),
            lost_records=lost, lost_packets=lost_p, lost_octets=lost_o,
            start_ms=start_ns // 1_000_000, end_ms=end_ns // 1_000_000)

    def options_groups(self) -> list[list[DataGroup]]:
        """Statistics records (with the sampling and selector records while sampling), then
        interface names, each list to be sent as its own message.

        Interface names travel in a message of their own: they are the only variable-length
        records, which some decoders (the PyPI ``netflow`` package) cannot parse, and a
        decoder that drops them then loses nothing else.
        """
        from .options import interface_names_group, statistics_groups

        odid = self.cfg.domain_id
        stats = self.statistics()
        out = [statistics_groups(stats, odid, odid) + self.sampling_records
               + self._selector_stats(stats)]
        resolve = self.context.interface_names if self.context is not None else names_here
        names = interface_names_group(self.interfaces.snapshot(resolve), odid)
        if names is not None:
            out.append([names])
        return out

    def _send_options(self) -> None:
        if not self.cfg.options_interval_s:
            return
        self.counters["options_rounds"] += 1
        for groups in self.options_groups():
            self._send_groups(groups)

    def _send_groups(self, groups: list[DataGroup]) -> None:
        """Send options records now to every destination (not spooled) and the file."""
        if self.udp:
            self._send_udp(groups)
        for d in self.tcp:
            d.send_now(groups)
        if self.file is not None:
            self.file.write(groups)

    # --- stats -----------------------------------------------------------------------------

    def _announced_ids(self) -> set[int]:
        """Template ids sent in at least one live session (UDP, a TCP connection, the file)."""
        sessions = [self.session] + [d.session for d in self.tcp if d.session is not None]
        if self.file is not None:
            sessions.append(self.file.session)
        return {tid for s in sessions for tid in s.announced}

    @hookimpl
    def agent_collect_stats(self) -> dict[str, Any]:
        """Instance counters plus one mapping per destination."""
        self._count_udp_losses()
        refresh_min = self.cfg.template_refresh_s / 60
        out: dict[str, Any] = {"protocol": 10, "refresh_rate": self.config.refresh_rate,
                               "timeout_rate": int(refresh_min) if refresh_min.is_integer()
                               else round(refresh_min, 2),
                               "natevents": self.config.natevents,
                               "templates": len(self.templates),
                               "templates_active": len(self._announced_ids())}
        out.update(self.counters)
        out["sequence"] = self.session.sequence
        dests = [d.snapshot() for d in self.udp] + [d.snapshot() for d in self.tcp]
        out["destinations"] = {str(d["destination"]): d for d in dests}
        if self.file is not None:
            out["file"] = {"path": self.file.path, "messages": self.file.messages,
                           "records": self.file.records, "rotations": self.file.rotations,
                           "errors": self.file.errors}
        return out
