"""What a running component may use from the core: :class:`RunContext`.

Components receive it in ``agent_start(context)``. Ingest threads may call :meth:`emit`,
:meth:`emit_nat_events` and :meth:`done` from any thread; everything else is for the pipeline
thread.

Packet sampling is a property of an ingest *source*, declared once
(:meth:`RunContext.declare_sampling`) and read by exporters (:meth:`RunContext.sampling`), so
nothing is added per packet or per record. The flow cache merges records of every source and
keeps no source per flow, so one agent carries one sampling: a second source that declares a
different one is refused at its start (run a second agent for it). The cache's flow sampler
(``[cache] sampler``) declares itself the same way, as source ``"cache"`` with ``flows=True``.

How late a live ingest hands packets over is a property of the source too
(:meth:`RunContext.declare_delivery_lag`): the eBPF ingest delivers a packet up to a poll
interval after its kernel timestamp, the NFLOG ingest up to its batching time later. The cache
judges inactivity only up to what every source has surely delivered
(:meth:`RunContext.delivery_lag_ns`), so a flow is not exported as idle while its next packet
is still on its way (which would split it in two records; ipt_NETFLOW, in the kernel, sees
every packet at once).

The network namespace an ingest observes is a property of the source too
(:meth:`RunContext.declare_netns`): ifIndexes in flows are that namespace's, so exporters
resolve interface names there (:meth:`RunContext.interface_names`), never in the agent's own.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from netflow_agent import netns as _netns
from netflow_agent.fragments import DEFAULT_POLICY, FragmentPolicy
from netflow_agent.model import SAMPLING_RANDOM, FlowBatch, NatEvent, PacketBatch, Sampling
from netflow_agent.snmprules import SnmpIndexMap, parse_rules

if TYPE_CHECKING:
    from netflow_agent.clock import ReplayOrder

log = logging.getLogger("agent.runtime")

#: Queue item kinds understood by the pipeline loop.
ITEM_PACKETS = "packets"
ITEM_FLOWS = "flows"
ITEM_NAT = "nat"
ITEM_DONE = "done"
ITEM_STOP = "stop"
ITEM_RELOAD = "reload"
#: a callable run on the pipeline thread with the pipeline as argument (control socket, metrics)
ITEM_CALL = "call"


@dataclass
class RunContext:
    """Services the core offers to component instances.

    :ivar start_ns: wall-clock ns when the agent started; NetFlow sysUpTime is
        ``now_ns() - start_ns``. During a pcap replay it is moved to the capture's first
        packet, so read it when encoding rather than caching it at start.
    :ivar debug: the ``[agent] debug`` level (0 info, 1 debug logging, 2-3 also per-flow
        lines; see :mod:`agent.logutil`); a reload changes it.
    :ivar state_dir: a directory the agent may write to (spools, state), from ``[agent]``.
    :ivar fragments: how packet ingests account non-first IP fragments, from ``[cache]``
        (``fragments``, ``fragment_*``); read it in ``agent_start`` and hand it to the
        :class:`~agent.packet.PacketParser` (a reload changes it for ingests started after).
    """

    start_ns: int = field(default_factory=time.time_ns)
    debug: int = 0
    state_dir: str = ""
    fragments: FragmentPolicy = DEFAULT_POLICY
    inbox: queue.SimpleQueue[tuple[str, Any]] = field(default_factory=queue.SimpleQueue)
    clock: Callable[[], int] = time.time_ns
    core_stats: Callable[[], dict[str, Any]] = dict
    #: sampled sources: instance name -> its sampling (see :meth:`declare_sampling`)
    samplings: dict[str, Sampling] = field(default_factory=dict)
    #: late sources: instance name -> the longest delay, ns, between a packet's timestamp and
    #: its delivery to the pipeline (see :meth:`declare_delivery_lag`)
    delivery_lags: dict[str, int] = field(default_factory=dict)
    #: retired source -> (until ns, its lag): what it emitted at its stop is still queued
    retiring_lags: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: observed namespaces: instance name -> netns ("" = the agent's own), see
    #: :meth:`declare_netns`
    observed_netns: dict[str, str] = field(default_factory=dict)
    #: replay progress display (``agent.progress.Progress.update``), installed by the CLI;
    #: ``None``: nobody shows progress (see :meth:`report_progress`)
    progress: Callable[..., None] | None = None
    #: True once the agent shuts down: ingests are stopped and the final export follows, so an
    #: exporter may wait for room in a paced backlog instead of dropping (nothing else waits)
    stopping: bool = False
    #: ``[agent] snmp_rules``: kernel ifIndex -> exported index, applied by the core to every
    #: exported record; ``None`` = export the kernel's ifIndexes (see :meth:`use_snmp_rules`)
    snmp: SnmpIndexMap | None = None
    #: what an instance leaves for its replacement when a reload changes it (stopped before
    #: the replacement starts; same run only), keyed by what identifies the state, e.g. an
    #: exporter's stream (NetFlow sequence numbers go on across the reload); a reload that
    #: succeeds clears it (one that fails keeps it for the rollback), see :meth:`handed_over`
    handover: dict[Any, Any] = field(default_factory=dict)
    #: several replays' batches in time order (see :meth:`wait_for_turn`); set by the core
    #: when every ingest is a finite replay, else ``None``
    replay_order: ReplayOrder | None = None
    #: problems already logged by :meth:`interface_names` (each is logged once)
    _netns_warned: set[str] = field(default_factory=set, init=False, repr=False)

    def handed_over(self, key: Any, destinations: set[str]) -> Any | None:
        """What a stopped instance left in :attr:`handover` under ``key`` for a replacement
        sending to ``destinations``: the entry (an object with a ``destinations`` set) that
        shares the most of them, the most recently left one on a tie; ``None`` if none
        shares any. The caller removes what it takes."""
        best, shared = None, 0
        for entry in self.handover.get(key, ()):
            n = len(destinations & entry.destinations)
            if n and n >= shared:  # left later: later in the list
                best, shared = entry, n
        return best

    def leave(self, key: Any, entry: Any) -> None:
        """Leave ``entry`` (an object with a ``destinations`` set) in :attr:`handover` under
        ``key`` for a replacement (call it from ``agent_stop``)."""
        self.handover.setdefault(key, []).append(entry)

    def took(self, key: Any, entry: Any) -> None:
        """Remove ``entry``, found by :meth:`handed_over`, once the replacement that takes it
        over has started (a failed start leaves it for the rollback)."""
        self.handover[key].remove(entry)

    def emit(self, batch: PacketBatch | FlowBatch) -> None:
        """Hand a batch of packets or flow deltas to the pipeline (thread-safe, never blocks)."""
        kind = ITEM_PACKETS if isinstance(batch, PacketBatch) else ITEM_FLOWS
        self.inbox.put((kind, batch))

    def emit_nat_events(self, events: list[NatEvent]) -> None:
        """Hand NAT events to the exporters (thread-safe)."""
        self.inbox.put((ITEM_NAT, events))

    def done(self, source: str) -> None:
        """A finite ingest (pcap replay) calls this once when it has emitted everything."""
        # queued before the others may go on: a batch of theirs the loop took first would
        # find the capture clock still waiting for this replay
        self.inbox.put((ITEM_DONE, source))
        if self.replay_order is not None:
            self.replay_order.finish(source)

    def wait_for_turn(self, source: str, first_ns: int,
                      cancel: Callable[[], bool] = lambda: False, emits: bool = True) -> None:
        """A finite reader calls this before it emits a batch whose first packet is at
        ``first_ns``: with several replays it blocks until no other still emitting has an
        earlier batch to hand over (or one that has not said yet), so the pipeline sees the
        captures merged in time order whatever the readers' speeds (a finite ingest that
        never calls it is waited for until it is done). One replay, or a live agent: returns
        at once. ``cancel()`` (the reader's stop) ends the wait.

        While it waits, the capture clock may move up to ``first_ns``: nothing it hands over
        later may be earlier. With ``emits=False`` the reader only says how far it got (a
        stretch of the capture with no packet to hand over, such as ARP only), so the
        others' clock moves on; it must then emit nothing for this call."""
        if self.replay_order is not None:
            self.replay_order.wait_turn(source, first_ns, lambda: cancel() or self.stopping,
                                        emits)

    def report_progress(self, source: str, done: int, total: int, packets: int,
                        finished: bool = False) -> None:
        """A finite reader (pcap replay) says how far it got (thread-safe, cheap; call it per
        batch). Shown on a terminal as one line (:mod:`agent.progress`), else ignored.

        :param source: what is read (a file path).
        :param done: bytes read so far, of ``total``.
        :param packets: packets read so far.
        :param finished: the reader reached the end, or stopped.
        """
        if self.progress is not None:
            self.progress(source, done, total, packets, finished)

    def now_ns(self) -> int:
        """The pipeline clock, wall-clock ns: use it for export times (header timestamps).

        During a replay of finite sources (pcap) it is the capture's clock, so exported
        times match the capture; before the first packet it is 0.
        """
        return self.clock()

    def wait_for_room(self, limit: int = 64) -> None:
        """Block a fast reader while the pipeline has ``limit`` items queued.

        Never waits once the agent is stopping: the pipeline thread is then joining the
        readers and takes their last batches afterwards (waiting would deadlock them).
        """
        while self.inbox.qsize() > limit and not self.stopping:
            time.sleep(0.001)

    def stats(self) -> dict[str, Any]:
        """A snapshot of the core counters (ipt_NETFLOW names: ``traffic_packets``, ...)."""
        return self.core_stats()

    def flow_capacity(self) -> int:
        """The cache's ``maxflows`` (flows it keeps at once), or 0 when unlimited or unknown.

        Ingests that keep flows of their own (the eBPF kernel table) size them from it; the
        cache is started before any ingest, so this is known in ``agent_start``.
        """
        return int(self.core_stats().get("maxflows_limit", 0) or 0)

    def declare_sampling(self, source: str, interval: int,
                         algorithm: int = SAMPLING_RANDOM, flows: bool = False) -> None:
        """Say that ``source`` accounts one packet in ``interval`` and does not scale counters.

        Call it from ``agent_start`` (pipeline thread), before emitting. Exporters then
        announce it (NetFlow v5 header, v9 and IPFIX sampling options) so that collectors
        scale the counts. ``interval`` 1 withdraws a declaration.

        :param source: the ingest instance name (``self.name``), as in its batches.
        :param interval: 1 packet in N is accounted (samplingInterval, IE 34).
        :param algorithm: :data:`~agent.model.SAMPLING_RANDOM` or
            :data:`~agent.model.SAMPLING_DETERMINISTIC` (samplingAlgorithm, IE 35).
        :param flows: whole flows are selected, not packets (the cache's ``sampler``, which
            declares itself with source ``"cache"`` and covers every source).
        :raises ValueError: bad values, or another source declared a different sampling:
            flows of both meet in one cache and no collector could tell them apart.
        """
        sampling = Sampling(interval, algorithm, flows)
        if not sampling.sampled:
            self.samplings.pop(source, None)
            return
        for other, theirs in self.samplings.items():
            if other != source and theirs != sampling:
                raise ValueError(
                    f"{source} samples {sampling} but {other} samples {theirs}: one agent "
                    "exports one sampling (flows of all sources share the cache); use the "
                    "same sampling, or run a second agent for one of them")
        self.samplings[source] = sampling

    def forget_sampling(self, source: str) -> None:
        """Drop ``source``'s declaration (the core calls it when the ingest is retired)."""
        self.samplings.pop(source, None)

    def sampling(self) -> Sampling | None:
        """The sampling of the exported flows, or ``None`` when every packet is accounted."""
        for sampling in self.samplings.values():
            return sampling
        return None

    def declare_delivery_lag(self, source: str, lag_ns: int) -> None:
        """Say that ``source`` emits a packet (or flow delta) up to ``lag_ns`` after the time
        it carries (a kernel timestamp): the drain period of a kernel table, a batching time.

        Call it from ``agent_start`` (pipeline thread). The cache then exports a flow as idle
        only once it has been idle for ``inactive_timeout`` plus the largest declared lag
        (:meth:`delivery_lag_ns`), so that a packet still on its way joins its flow instead of
        starting a second record. Declare the bound, drains that may come earlier included
        (they only shorten the wait); a source that declares nothing delivers at once (a pcap
        replay, whose clock is its packets'). ``0`` withdraws a declaration; the core forgets
        it when the ingest is retired (reload, removal).

        :param source: the ingest instance name (``self.name``).
        :param lag_ns: the longest delay, in ns.
        :raises ValueError: a negative lag.
        """
        if lag_ns < 0:
            raise ValueError(f"{source}: a delivery lag cannot be negative ({lag_ns} ns)")
        if lag_ns:
            self.delivery_lags[source] = int(lag_ns)
        else:
            self.delivery_lags.pop(source, None)

    def forget_delivery_lag(self, source: str, at_once: bool = False) -> None:
        """Drop ``source``'s declaration (the core calls it when the ingest is retired).

        A stopped ingest's last packets (the eBPF tables' final drains, NFLOG's held rows) are
        still queued for the pipeline when it is retired, so its lag keeps counting for one
        more lag from now, unless ``at_once`` (an ingest that never started delivering)."""
        lag = self.delivery_lags.pop(source, None)
        if lag and not at_once:
            self.retiring_lags[source] = (self.now_ns() + lag, lag)

    def delivery_lag_ns(self) -> int:
        """The longest delivery lag the live sources declared, or a retired source's for one
        lag after its retirement, ns (0: none is late)."""
        if self.retiring_lags:
            now = self.now_ns()
            for source in [s for s, (until, _) in self.retiring_lags.items() if until <= now]:
                del self.retiring_lags[source]
        return max(max(self.delivery_lags.values(), default=0),
                   max((lag for _, lag in self.retiring_lags.values()), default=0))

    def declare_netns(self, source: str, netns: str) -> None:
        """Say that the ifIndexes in ``source``'s flows belong to network namespace ``netns``.

        Call it from ``agent_start`` (pipeline thread). Exporters then resolve interface
        names there (:meth:`interface_names`).

        :param source: the ingest instance name (``self.name``).
        :param netns: a name under ``/run/netns``, a path (``/proc/PID/ns/net``), or ``""``
            for the agent's own namespace.
        """
        self.observed_netns[source] = _netns.netns_path(netns) if netns else ""

    def forget_netns(self, source: str) -> None:
        """Drop ``source``'s declaration (the core calls it when the ingest is retired)."""
        self.observed_netns.pop(source, None)

    def interface_netns(self) -> str | None:
        """The namespace the exported ifIndexes belong to: ``""`` for the agent's own (also
        when no ingest declared one), or ``None`` when ingests declared different ones."""
        spaces = set(self.observed_netns.values())
        if len(spaces) > 1:
            return None
        return next(iter(spaces), "")

    def use_snmp_rules(self, rules: Iterable[str]) -> None:
        """Export indexes by ``[agent] snmp_rules`` (:mod:`agent.snmprules`); none = the
        kernel's ifIndexes. Called at start and reload.

        :raises agent.snmprules.SnmpRuleError: a malformed rule (the config check reports it
            before this is reached).
        """
        parsed = parse_rules(rules)
        self.snmp = SnmpIndexMap(parsed, self.kernel_interface_names) if parsed else None

    def interface_names(self, indexes: Iterable[int]) -> dict[int, str]:
        """Exported interface index -> name, for the interface-name options records.

        The indexes are the ones exported flow records carry: the kernel's ifIndexes, or with
        ``snmp_rules`` the mapped indexes, whose map is refreshed here (names resolved anew,
        an index re-used by a new interface re-mapped) so that names and indexes agree.
        """
        if self.snmp is None:
            return self.kernel_interface_names(indexes)
        self.snmp.refresh()
        return self.snmp.names_of(indexes)

    def kernel_interface_names(self, indexes: Iterable[int]) -> dict[int, str]:
        """Kernel ifIndex -> interface name, resolved in the namespace the ingests observe.

        ``if_indextoname(3)`` runs on a short-lived helper thread inside that namespace, so
        the calling thread never changes namespace; one call resolves the whole set, so call
        it once per options round. Indexes that do not resolve (0, interfaces that are gone)
        are left out. Ingests that declared different namespaces make every ifIndex
        ambiguous: nothing is resolved (an empty mapping) and one warning names the sources.
        A namespace that cannot be entered any more resolves nothing either (logged once).
        """
        netns = self.interface_netns()
        if netns is None:
            self._warn_once(
                "ambiguous " + repr(sorted(self.observed_netns.items())),
                "interface names not exported: ifIndexes are ambiguous, ingests observe "
                "different network namespaces (%s); run one agent per namespace",
                ", ".join(f"{src} in {ns or 'the agent netns'}"
                          for src, ns in sorted(self.observed_netns.items())))
            return {}
        try:
            return _netns.interface_names(netns, indexes)
        except OSError as exc:
            self._warn_once(f"enter {netns}",
                            "interface names not exported: cannot enter netns %s: %s",
                            netns, exc)
            return {}

    def _warn_once(self, key: str, message: str, *args: object) -> None:
        if key not in self._netns_warned:
            self._netns_warned.add(key)
            log.warning(message, *args)
