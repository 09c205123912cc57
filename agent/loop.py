"""The pipeline loop: takes inbox items to their stage, and scans on time.

::

    reader threads (ingest)            pipeline thread (this module)
    ───────────────────────            ─────────────────────────────────────────────────────
    ingest.nflog[0] ─┐                  ┌─▶ agent_cache_packets / agent_cache_flows  (cache)
    ingest.ebpf[0] ──┼─▶ inbox queue ───┤
    ingest.pcap[0] ──┘                  ├─▶ agent_export_nat_events                (export)
    ingest.conntrack[0] (NAT events) ───┘
                                        every scan_interval_ms:
                                          agent_export_room (at most what the exporters
                                          can take now; the rest waits for later scans)
                                          agent_cache_expire ─▶ in parts of at most
                                          EXPORT_ROWS records: agent_aggregate_flows (chain)
                                          ─▶ agent_export_flows ─▶ agent_tick (all)

Every stage call goes through pluggy (``pm.hook``), whose runners isolate and count each
implementation (:mod:`agent.runner`). Items that are not data (a finite ingest's end, a
reload request, a call from the control socket) go to the handler the owner registered in
:attr:`Loop.handlers`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
from collections.abc import Callable
from typing import Any

from netflow_agent import heap, logutil
from netflow_agent.clock import Clock
from netflow_agent.model import FlowBatch, FlowRecord, NatEvent, PacketBatch, concat
from netflow_agent.runtime import ITEM_FLOWS, ITEM_NAT, ITEM_PACKETS, ITEM_STOP, RunContext
from netflow_agent.stats import RateMeter

log = logging.getLogger("agent.pipeline")
#: flows aggregated and exported per step of a scan: the encoders' temporaries (record
#: copies per template, packed records, datagrams) stay a few MB when a forced scan at stop,
#: or a wave of expiries, hands over 100k+ flows at once (~40 MB of peak RSS per 200k flows).
#: 8192 rather than 16384: the stop's copies of a part (cache hand-off, batch, encoder
#: temporaries) are ~3 MB instead of ~6 MB, and v9 encodes as fast (docs/performance-history.md,
#: "Agent memory at 100k concurrent flows: the stop's backlog, smaller steps, discovery")
EXPORT_ROWS = 8192
#: ``agent_cache_expire``'s ``limit`` on a scan when an exporter has no room at all
NO_ROOM = -1


class Loop:
    """Inbox dispatch and scans, on the pipeline thread.

    :param context: the run context whose inbox the ingests fill.
    :param clock: the pipeline clock (advanced by replayed packets).
    :param hook: the plugin manager's hook relay (``pm.hook``).
    :param scan_ns: the scan interval (``[agent] scan_interval_ms``), in ns.
    """

    def __init__(self, context: RunContext, clock: Clock, hook: Any, scan_ns: int):
        self.context = context
        self.clock = clock
        self.hook = hook
        self.scan_ns = scan_ns
        self.next_scan_ns = 0
        self.stopping = False
        self.exported_flows = 0
        self.nat_events = 0
        self.rates = RateMeter()
        #: called once per iteration (systemd watchdog); set by agent.ops
        self.heartbeat: Callable[[], None] | None = None
        #: ``True`` once every finite ingest is done (set by the owner)
        self.finished: Callable[[], bool] = lambda: False
        #: accounted packets and bytes so far, for the rates (set by the owner)
        self.traffic_totals: Callable[[], tuple[int, int]] = lambda: (0, 0)
        #: inbox item kind -> handler
        self.handlers: dict[str, Callable[[Any], None]] = {
            ITEM_PACKETS: self._packets, ITEM_FLOWS: self._flows, ITEM_NAT: self._nat,
            ITEM_STOP: self._stop}
        #: sources that emitted unsampled batches while a sampling was declared (warned once)
        self._unsampled_sources: set[str] = set()

    def run(self) -> None:
        """Process the inbox until asked to stop or until every finite ingest is done."""
        inbox = self.context.inbox
        while not self.stopping:
            wait = 0.05
            if not self.clock.replay and self.next_scan_ns:
                wait = min(1.0, max(0.0005, (self.next_scan_ns - self.clock.now_ns()) / 1e9))
            try:
                kind, item = inbox.get(timeout=wait)
            except queue.Empty:
                kind, item = "", None
            if kind:
                self.dispatch(kind, item)
                item = None  # a batch is freed now, not once the next item came (its buffer
                # can then be reused by its ingest: the NFLOG reader's row buffers)
            self._scan_if_due()
            if self.heartbeat is not None:
                self.heartbeat()
            if self.clock.replay and self.finished() and inbox.empty():
                log.info("all finite ingests are done")
                break

    def _scan_if_due(self) -> None:
        now = self.clock.now_ns()
        if not self.next_scan_ns:
            self.next_scan_ns = now + self.scan_ns if now else 0  # replay: wait for a packet
        elif now >= self.next_scan_ns:
            self.scan(now)
            self.next_scan_ns = now + self.scan_ns

    def dispatch(self, kind: str, item: Any) -> None:
        """Route one inbox item to its stage or handler (unknown kinds are ignored)."""
        handler = self.handlers.get(kind)
        if handler is not None:
            handler(item)

    def drain(self) -> None:
        """Dispatch everything queued, except stop requests (used at shutdown)."""
        inbox = self.context.inbox
        while True:
            try:
                kind, item = inbox.get_nowait()
            except queue.Empty:
                return
            if kind != ITEM_STOP:
                self.dispatch(kind, item)

    def forget_source(self, source: str) -> None:
        """Forget what was noted about a retired ingest."""
        self._unsampled_sources.discard(source)

    # --- data items ---------------------------------------------------------------------------

    def _stop(self, _item: Any) -> None:
        self.stopping = True

    def _nat(self, events: list[NatEvent]) -> None:
        self.nat_events += len(events)
        self.hook.agent_export_nat_events(events=events)

    def _flows(self, batch: FlowBatch) -> None:
        if self.context.samplings:
            self._check_sampled(batch.source)
        self.hook.agent_cache_flows(batch=batch, now_ns=self.clock.now_ns())

    def _check_sampled(self, source: str) -> None:
        """Warn once per source that emits unsampled flows next to a declared sampling."""
        if (source in self.context.samplings or source in self._unsampled_sources
                or "cache" in self.context.samplings):  # the cache samples every source
            return
        self._unsampled_sources.add(source)
        log.warning("%s accounts every packet but %s declared sampling %s: exporters announce "
                    "that sampling for all flows, so collectors will scale %s's flows too",
                    source, next(iter(self.context.samplings)), self.context.sampling(), source)

    def _packets(self, batch: PacketBatch) -> None:
        if self.context.samplings:
            self._check_sampled(batch.source)
        replay = self.clock.replay
        if replay and batch.packets:
            # expire what the capture's clock reached before this batch's first packet
            self._advance_clock(self.clock.advance(batch.packets[0][3], batch.source))
            self._scan_if_due()
        self.hook.agent_cache_packets(batch=batch, now_ns=self.clock.now_ns())
        if replay:
            self.clock.taken(batch.source)
            self._advance_clock(self.clock.advance(
                batch.clock_ns or (batch.packets[-1][3] if batch.packets else 0), batch.source))

    def finite_done(self, source: str) -> None:
        """A replay emitted everything: the capture clock no longer waits for it."""
        if self.clock.replay:
            self._advance_clock(self.clock.source_done(source))
            self._scan_if_due()

    def _advance_clock(self, first: bool) -> None:
        if first:  # uptime counts from the capture's first packet
            self.context.start_ns = self.clock.capture_ns

    # --- scans --------------------------------------------------------------------------------

    def scan(self, now: int, force: bool = False) -> None:
        """Expire, aggregate and export flows, then run every component's timers.

        A forced scan (stop, cache hand-over) takes the table out :data:`EXPORT_ROWS` flows
        at a time, so the cache's copies of a 200k-flow table are never all alive at once.
        A timed scan takes at most :meth:`export_room` flows; the cache keeps the rest due.
        """
        if force:
            with self._part_reuse():
                while self._expire(now, True) == EXPORT_ROWS:
                    pass  # exactly the limit: more may remain (more: a cache without limits)
        else:
            self._expire(now, False)
        self.rates.update(now, *self.traffic_totals())
        self.hook.agent_tick(now_ns=now)

    def _part_reuse(self) -> contextlib.AbstractContextManager[None]:
        """The stop's forced scan reuses heap blocks part after part (agent.heap); the process
        exits next, so nothing is trimmed. Not a cache hand-over: the ingests keep running
        then, and their batches, heap blocks while the window is open, would be freed after
        it and kept by glibc."""
        if self.context.stopping:
            return heap.reuse_parts(release=False)
        return contextlib.nullcontext()

    def _expire(self, now: int, force: bool) -> int:
        """One expiry call and the export of what it returned; the most flows one cache
        returned (a forced scan calls again while that is exactly its limit)."""
        parts = [_as_batch(p) for p in self.hook.agent_cache_expire(
            now_ns=now, force=force, limit=EXPORT_ROWS if force else self.export_room()) if p]
        records = concat(parts, "cache")
        if records:
            log.debug("scan: %d flow records to export", len(records))
        slices = export_parts(records, EXPORT_ROWS)
        with self._slice_reuse(len(slices)):
            for part in slices:
                self._export(part)
        return max((len(p) for p in parts), default=0)

    def _slice_reuse(self, slices: int) -> contextlib.AbstractContextManager[None]:
        """A scan that exports several slices (a timed scan's mass expiry: up to the
        exporters' room, 10k-100k+ flows) encodes them in the heap reuse window
        (agent.heap.reuse_parts), as the stop's parts are: each slice's encoder arrays
        (packed records, template groups, datagrams: ~0.6 MB, fresh mappings otherwise,
        faulted in and unmapped slice after slice) reuse the blocks the previous slice
        freed. The window closes with the export, before the inbox is read again, and gives
        the free heap back (``malloc_trim``, once per such scan), except while stopping (the
        scan before the state is saved: the process exits after the final scan); inside
        the stop's window it changes nothing."""
        if slices > 1:
            return heap.reuse_parts(release=not self.context.stopping)
        return contextlib.nullcontext()

    def export_room(self) -> int:
        """The most records a scan may hand the exporters now: the smallest room any reports
        (``agent_export_room``: a paced backlog's free space), so a mass expiry is spread
        over scans instead of overflowing it; 0 = no limit, :data:`NO_ROOM` = none.

        No limit while stopping: the exporters then wait for room instead (the scan that
        exports what is due before ``[agent] state_file`` saves the rest, and the final one).
        """
        if self.context.stopping:
            return 0
        rooms = self.hook.agent_export_room()
        if not rooms:
            return 0
        return max(0, min(rooms)) or NO_ROOM

    def _export(self, records: FlowBatch) -> None:
        """Aggregate, then export one slice of a scan's records."""
        self.hook.agent_aggregate_flows(records=records)  # a chain on this list
        if self.context.snmp is not None:  # [agent] snmp_rules: exported interface indexes
            self.context.snmp.apply(records)
        self.exported_flows += len(records)
        if self.context.debug >= logutil.FLOW_DEBUG:
            logutil.log_exported(records)
        self.hook.agent_export_flows(records=records)


def export_parts(records: FlowBatch, rows: int = EXPORT_ROWS) -> list[FlowBatch]:
    """``records`` as consecutive batches of at most ``rows`` (views, no copy), in order.

    Aggregation and the exporters get a big expiry (the final export of a full cache: a
    million flows) in parts, so the encoders' per-batch arrays stay a few MB and are reused
    from the heap instead of being faulted in afresh (at 1M rows in one batch the page faults
    doubled the encoding CPU). Each part ends in its own datagram; the records and their
    order are the same.
    """
    if len(records) <= rows:
        return [records] if records else []
    flows = records.flows
    return [FlowBatch(records.source, flows[i:i + rows], schema=records.schema)
            for i in range(0, len(flows), rows)]


def _as_batch(part: FlowBatch | list[FlowRecord]) -> FlowBatch:
    """A third-party cache may still return a list of records."""
    return part if isinstance(part, FlowBatch) else FlowBatch.from_records(part, "cache")
