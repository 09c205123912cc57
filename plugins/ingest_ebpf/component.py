"""``[[ingest.ebpf]]``: flows aggregated in the kernel, drained into the cache every tick.

The BPF programs (``bpf/flow.bpf.c``) keep per-flow counters in double-buffered per-CPU slots
and hash map; every ``poll_interval_ms`` this component points the programs at the other
table, waits for in-flight programs to leave the old one (an RCU grace period), drains it with
``BPF_MAP_LOOKUP_AND_DELETE_BATCH`` (``_loader.c``, GIL released) in steps of ``drain_chunk``
rows, each written by the loader straight into the columns of a new
:class:`~agent.model.FlowBatch`, and emits each step. It
drains early when the program signals (through a ring buffer the thread waits on) that the
active table reached ``drain_threshold`` percent of ``maxflows`` or lost a packet; every
``PRESSURE_CHECK_S`` it also reads the kernel counters for the same conditions, and consumes
the overflow ring when it fills. The cache applies the
active/inactive timeouts and FIN/RST, exactly as for packet ingests. Interfaces matching the
configured globs are attached at start and whenever a rescan finds new ones: at once on a link
notification (``linkwatch.py``), and every ``rescan_interval_ms`` in any case.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
import weakref
from typing import Any

import numpy as np

from netflow_agent.api import (
    SAMPLING_RANDOM,
    FlowBatch,
    Ingest,
    NetnsScope,
    RunContext,
    flow_schema,
    follow_privileges,
    hookimpl,
)

from .attach import Attacher, matching_links
from .config import Config
from .decode import (
    COUNTER_NAMES,
    KERNEL_FIELDS,
    CounterDelta,
    CounterTracker,
    decode_records,
    kernel_fields,
    monotonic_to_wall_offset,
    record_layout,
)
from .linkwatch import LinkWatch
from .load_error import load_error
from .sizing import MEMORY_SHARE, kernel_sizes, ring_capacity_packets

#: ``decapsulate`` names -> the program's ``decap`` bits (``enum tunnel_kind`` in bpf/flow.h)
TUNNEL_BITS = {"gre": 1, "vxlan": 2, "geneve": 4, "ipip": 8}

#: kernel counters shown under the names the packet ingests use (not ``kernel_*``), and when
FRAGMENT_COUNTERS = ("frag_tracked", "frag_unmatched")
TUNNEL_COUNTERS = ("decapsulated", "decap_failed")

#: when the kernel cannot wait for an RCU grace period (nohz_full): time for programs that read
#: the old table index to finish (they run for microseconds with bottom halves off); a
#: straggler later than this lands in the idle table and is drained next time (such a drain
#: never marks the kernel quiet, so the timer keeps draining: _mark_quiet).
FLIP_GRACE_S = 0.005

#: what the delivery lag this ingest declares adds to ``poll_interval_ms``: a packet reaches the
#: cache up to a poll interval after its kernel timestamp, plus the drain's own time (the flip's
#: grace period, ~0.12 s to walk and emit a 200k-flow table) and the pipeline's taking the
#: batches; early drains only come sooner. The cache waits this much longer before it calls a
#: flow idle (RunContext.declare_delivery_lag), so a packet still in the kernel table joins
#: its flow instead of starting a second record.
DELIVERY_MARGIN_S = 0.5

#: how often the drain thread reads the kernel counters for an early drain or ring consume
#: (a fallback: the program signals a filling table at once through the fill_signal ring);
#: while checks see no new packet the interval doubles, up to the poll interval, and it is
#: back to this at the first check that sees one (an idle agent wakes ~2 times a second)
PRESSURE_CHECK_S = 0.1

#: every this many drain_begin calls of a table (counted per table, whether the drain then
#: completes or raises), its drain walks the hash even when no CPU marked it (the stop's two
#: drains always do). The marks are exact only after a real grace period: where synchronize()
#: is not one (PREEMPT_RT with one CPU online: membarrier's GLOBAL command skips
#: synchronize_rcu() with one CPU online, and only an RT kernel runs tc/XDP preemptibly) a
#: straggler inserting behind a walk, its CPU's mark already set, could have the mark cleared
#: with the others, and its flow's later packets mark nothing: every skipping drain would
#: leave that flow in the kernel. A straggler's slot write after its window was read can lose
#: that window's touched mark there too, and nothing forces a slot window: such hosts should
#: set cpu_slots = 0 (the plugin README). On nohz_full, where synchronize() fails, no walk is
#: clean and no mark is ever cleared, so every drain walks the hash. The walk of an empty
#: hash costs ~0.4 ms of CPU at 524,288 entries (median; ~0.7 ms at p90:
#: bench/ebpf/forced_walk.py). The drains alternate the
#: tables, so at the 1 s poll each table is drained every 2 s and forced every 16 s: one
#: forced walk per 8 s for both tables, ~0.05 ms/s (~0.09 ms/s at 0.7 ms a walk)
FORCED_WALK_EVERY = 8


#: drain-step record arrays a drain keeps for reuse (drain_chunk x the record size each: 400 KB
#: at the defaults); the main thread merges one step while the next is drained
STEP_BUFFERS = 3
#: with all of them still queued or being merged, a drain waits for the cache to let one go
#: before it takes a new array, up to this long in all per drain (then new arrays, as before):
#: a drain that outruns the merge (W2's 200k flows at the flood's end, the main thread short
#: of CPU) otherwise queued a fresh 400 KB array per step, up to 32 of them, 3-6 MB of peak
#: RSS that only waited for the main thread (issue 14, seventh stop). The kernel rows stay in
#: the idle table meanwhile, so waiting loses nothing; the bound keeps a stalled main thread
#: from delaying the next flip by more than this (the active table fills meanwhile). A stop
#: ends a wait at once (agent_stop wakes it: the main thread merges only after the join).
#: Waits show in drain_wait_ms_last / _total, and in drain_ms (a drain's wall time)
STEP_WAIT_S = 0.25
#: after a wake that finds no array free yet, how soon the wait looks again (doubling up to
#: RECHECK_MAX_S): a release wakes it a moment early (NumPy runs the finalizer before the view
#: drops its hold on the array), and a consumer that kept a slice of a batch frees the array
#: only when it drops the slice, which wakes nothing
RECHECK_S = 0.001
RECHECK_MAX_S = 0.016


class StepBuffers:
    """Record arrays for drain steps, reused once the pipeline has let go of them.

    A new array per step is a fresh ``mmap`` (the agent caps glibc's mmap threshold at 128 KB):
    faulted in page by page while the loader writes it, unmapped when the cache is done (a TLB
    flush on every CPU the agent runs on); perf put the drain thread's page faults at 7 % of
    its time in W3. An array in the pool is handed out again only when nothing but the pool
    refers to it: a batch still queued or being merged keeps its step's array (and a view of
    it keeps it too), so no emitted flow is ever overwritten. CPython's reference count makes
    that check exact under the GIL. How many references a free array shows is measured once
    (:data:`FREE_REFS`): interpreters differ in the references a call takes (CPython 3.14
    borrows where 3.11 counts), and where a held array cannot be told from a free one (or
    without a GIL) every step gets a new array. The pool (``pool``) is the ingest's, kept
    across drains (up to :data:`STEP_BUFFERS` arrays, ~1.2 MB at the default chunk, idle or
    not): a pool per drain made every drain's arrays fresh blocks, which a drain inside a
    mass expiry's heap reuse window (agent/heap.py) took from the heap and left there.
    Its wait budget and counts are this drain's.
    """

    __slots__ = ("_rows", "_dtype", "_pool", "_wait_s", "_stop", "_let_go", "waited", "fresh",
                 "waited_s")

    def __init__(self, rows: int, dtype: np.dtype, wait_s: float = 0.0,
                 stop: threading.Event | None = None, pool: list[np.ndarray] | None = None):
        """:param wait_s: how long :meth:`take` may wait in all, over this pool's life, for a
            held array to be let go once the pool is full (0: never wait).
        :param stop: once set, :meth:`take` waits no more (:meth:`wake` ends a wait in
            progress): the agent is stopping and nothing merges until the drain is over.
        :param pool: the arrays kept from earlier drains (of ``rows`` rows of ``dtype``),
            which this one uses and adds to; one drain at a time (their owner's drains are
            serial). A new list if not given."""
        self._rows = rows
        self._dtype = dtype
        self._pool: list[np.ndarray] = pool if pool is not None else []
        self._wait_s = wait_s
        self._stop = stop if stop is not None else threading.Event()
        #: set when a step's batch rows handed out by :meth:`lend` are let go (or by wake())
        self._let_go = threading.Event()
        #: takes that waited for a pooled array / got a new one beyond the pool (all held)
        self.waited = 0
        self.fresh = 0
        #: seconds :meth:`take` spent waiting, in all
        self.waited_s = 0.0

    def take(self) -> np.ndarray:
        """A ``rows``-row array of ``dtype``, contents undefined: a pooled one nothing else
        holds, else (pool full, wait budget left, not stopping) the first one let go, else a
        new one."""
        buf = self._free()
        if buf is None and FREE_REFS and len(self._pool) >= STEP_BUFFERS and self._wait_s > 0:
            buf = self._wait()
        if buf is not None:
            return buf
        buf = np.empty(self._rows, self._dtype)
        if FREE_REFS and len(self._pool) < STEP_BUFFERS:
            self._pool.append(buf)
        else:
            self.fresh += 1
        return buf

    def wake(self) -> None:
        """End a :meth:`take` waiting now (call it after setting ``stop``)."""
        self._let_go.set()

    def _wait(self) -> np.ndarray | None:
        """The first pooled array let go within what is left of the budget, or ``None`` (the
        budget is out, or stop is set). It sleeps until rows from :meth:`lend` are let go
        (the main thread's merge keeps the GIL and the CPU); only after a wake that finds
        nothing free yet does it look again every few ms, for the rest of this take."""
        start = time.monotonic()
        recheck = 0.0  # 0: sleep until woken; else look again this soon
        try:
            while True:
                self._let_go.clear()  # before the checks: a release or stop after them wakes
                buf = self._free()
                if buf is not None:
                    self.waited += 1
                    return buf
                left = self._wait_s - (time.monotonic() - start)
                if left <= 0 or self._stop.is_set():
                    return None
                woke = self._let_go.wait(min(left, recheck) if recheck else left)
                if recheck:
                    recheck = min(2 * recheck, RECHECK_MAX_S)
                elif woke:
                    recheck = RECHECK_S
        finally:
            elapsed = time.monotonic() - start
            self.waited_s += elapsed
            self._wait_s = max(0.0, self._wait_s - elapsed)

    def lend(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` (a view of a taken array, about to be emitted), watched: once the pipeline
        lets go of this view, a :meth:`take` waiting for a pooled array looks again. The wake
        is tied to the view, not the array: it comes a moment before the array is free (NumPy
        runs the finalizer while the view still holds its base), or while a slice the
        consumer kept still holds it; :meth:`_wait` then looks again every few ms."""
        if self._wait_s > 0:
            weakref.finalize(rows, self._let_go.set).atexit = False
        return rows

    def _free(self) -> np.ndarray | None:
        """A pooled array nothing else refers to, or ``None``."""
        if FREE_REFS:
            for buf, refs in zip(self._pool, _refcounts(self._pool), strict=True):
                if refs <= FREE_REFS:
                    return buf
        return None


def _refcounts(pool: list[np.ndarray]) -> list[int]:
    """Each pooled array's reference count as this function sees it (the pool's own reference
    and those of the call included): StepBuffers.take and the calibration both use it."""
    return [sys.getrefcount(buf) for buf in pool]


def _free_refs() -> int:
    """What :func:`_refcounts` shows for an array only the pool holds, once a view of it is
    seen to add exactly one; 0 (no reuse) otherwise, or when the GIL is off."""
    if not getattr(sys, "_is_gil_enabled", lambda: True)():
        return 0
    pool = [np.empty(1)]
    free = _refcounts(pool)[0]
    view = pool[0][:]
    held = _refcounts(pool)[0]
    del view
    return free if held == free + 1 and _refcounts(pool)[0] == free else 0


#: StepBuffers' count of a free array on this interpreter (0: step arrays are not reused)
FREE_REFS = _free_refs()


class EbpfIngest(Ingest):
    """``[[ingest.ebpf]]``: loads and attaches the flow programs, drains the flow table."""

    stage = "ingest"
    type_name = "ebpf"
    #: the [flow] optional key fields the program fills (decode.KERNEL_FIELDS): MACs, both
    #: VLAN tags, MPLS label stack entries, the tunnel id; not the bridge ports (physdev)
    observable_fields = KERNEL_FIELDS

    def __init__(self, config: Config, name: str):
        super().__init__(config, name)
        self.loader: Any = None
        self.attacher: Attacher | None = None
        self.context: RunContext | None = None
        self.active = 0
        self.tracker = CounterTracker()
        self.kernel_counters: dict[str, int] = {}
        self.maxflows = 0  # the kernel table size in use (set at start)
        self.cpu_slots = 0  # the per-CPU slots in use (set at start)
        self.tracking = False  # fragments = "track" at start
        self.stats = {"drains": 0, "early_drains": 0, "ring_consumes": 0, "drain_errors": 0,
                      "pressure_checks": 0, "quiet_skips": 0,
                      "flows_drained": 0, "overflow_flows": 0, "drain_ms_last": 0.0,
                      "drain_ms_max": 0.0, "drain_steps_waited": 0, "drain_steps_unpooled": 0,
                      "drain_wait_ms_last": 0.0, "drain_wait_ms_total": 0.0,
                      "table_peak": 0, "maxflows": 0,
                      "attach_errors": 0, "interfaces": 0, "cpu_slots": 0,
                      "slot_windows_scanned": 0, "hash_walks": 0, "hash_walks_skipped": 0,
                      "hash_mark_clear_errors": 0, "slots_read": 0, "tag_map_errors": 0,
                      "kernel_memory_bytes": 0}
        # counter values at the last flip / ring consume: early-drain triggers (pressure)
        self._fill_base = self._lost_base = self._ring_base = 0
        # the last drain emptied its table after a real grace period (see _drain's marks)
        self._last_drain_clean = False
        self._last_drain_packets = -1  # the kernel's packet count before that drain's flip
        self._quiet_mark: int | None = None  # the packet count when both tables were empty
        self._fill_limit = self._ring_limit = 0
        # the pressure check's interval now, after a check that saw packets, and at most
        self._check_s = self._check_min_s = self._check_max_s = PRESSURE_CHECK_S
        self._checked_packets = -1  # the kernel's packet count at the last pressure check
        self._stop = threading.Event()
        self._begins = [0, 0]  # drain_begin calls per table: FORCED_WALK_EVERY's count
        self._tag_map_warned = False  # the tag_map_errors warning was logged
        self._wake = -1  # eventfd that ends the drain thread's wait at stop
        self._last_rescan_error = ""
        self._thread: threading.Thread | None = None
        self._buffers: StepBuffers | None = None  # the step arrays of the drain in progress
        # the drain steps' record arrays, kept across drains (StepBuffers); only a drain
        # (the drain thread, then agent_stop's after the join) touches the list
        self._step_pool: list[np.ndarray] = []
        self._layout: bytes | None = None  # the loader's layout of a FlowBatch row
        self._record_dtype: np.dtype = np.dtype([])  # the rows that layout writes

    # --- lifecycle ---------------------------------------------------------------------------

    @hookimpl
    def agent_start(self, context: RunContext) -> None:
        """Load the programs, attach to the matching interfaces, start the drain thread."""
        from ._loader import Loader  # only here: dry-run works without the extension

        cfg = self.config
        self.context = context
        # the kernel keeps 1 packet in N at random (bpf_get_prandom_u32() % N) and counts
        # unscaled: exporters announce it to collectors (raises on a conflicting declaration)
        context.declare_sampling(self.name, cfg.sampling, SAMPLING_RANDOM)
        context.declare_netns(self.name, cfg.netns)  # exporters resolve ifIndexes there
        # a packet waits in the kernel table up to a poll interval: the cache's idle cutoff
        # waits that long too (plus the drain's own time), so no flow is split by the wait
        context.declare_delivery_lag(
            self.name, cfg.poll_interval_ms * 1_000_000 + round(DELIVERY_MARGIN_S * 1e9))
        percpu = cfg.map_type == "percpu"
        l2_fields, mpls_labels = kernel_fields(flow_schema())  # [flow]: what the key holds
        key_fields = bool(l2_fields or mpls_labels)
        precise = cfg.timestamps == "precise"
        sizes = kernel_sizes(cfg.maxflows, cfg.cpu_slots, context.flow_capacity(), percpu,
                             key_fields, precise)
        self.maxflows, self.cpu_slots, ncpu = sizes.maxflows, sizes.cpu_slots, sizes.ncpu
        self.stats["maxflows"], self.stats["cpu_slots"] = self.maxflows, self.cpu_slots
        self.stats["kernel_memory_bytes"] = sizes.total_bytes
        if sizes.over_share():
            self.log.warning("%s: %s take more than 1/%d of this host's %d MiB of memory "
                             "(kernel memory, never swapped; derived sizes stay within it "
                             "above their minimums): lower [[ingest.ebpf]] cpu_slots / "
                             "maxflows or [cache] maxflows", self.name, sizes.describe(),
                             MEMORY_SHARE, sizes.mem_bytes >> 20)
        if cfg.drain_threshold < 100:
            self._fill_limit = max(1, self.maxflows * cfg.drain_threshold // 100)
            self._ring_limit = max(1, ring_capacity_packets(cfg.overflow_ring_kb)
                                   * cfg.drain_threshold // 100)
        fragments = context.fragments  # [cache] fragments: "track" keeps a kernel table
        self.tracking = fragments.tracking
        try:
            self.loader = Loader(maxflows=self.maxflows, sampling=cfg.sampling,
                                 percpu=percpu,
                                 overflow_ring_bytes=cfg.overflow_ring_kb * 1024,
                                 precise_clock=precise, slots=self.cpu_slots,
                                 prealloc=cfg.prealloc, fill_threshold=self._fill_limit,
                                 frag_table=fragments.table if self.tracking else 0,
                                 frag_timeout=fragments.timeout,
                                 decap=sum(TUNNEL_BITS[t] for t in set(cfg.decapsulate)),
                                 keep_outer=cfg.keep_outer, l2_fields=l2_fields,
                                 mpls_labels=mpls_labels, chunk_rows=cfg.drain_chunk)
        except OSError as exc:
            error = load_error(exc, sizes)
            if error is exc:
                raise
            raise error from exc
        self.loader.set_active(self.active)
        if not self.loader.synchronize() and self.cpu_slots:
            self.log.warning("%s: this kernel refuses membarrier(MEMBARRIER_CMD_GLOBAL) "
                             "(nohz_full?): drains wait 5 ms instead of an RCU grace period, "
                             "and a program later than that can lose packets in a slot (and a "
                             "line slot's times, written after the drain read its clock, come "
                             "back as the drain's time); set cpu_slots = 0 for exact "
                             "accounting", self.name)
        self.log.info("%s: loaded BPF programs %s (maxflows %d, %s map, %s %d MiB, %d slots "
                      "per CPU on %d CPUs %d MiB, sampling 1/%d, fragments %s, decapsulate "
                      "%s%s)", self.name,
                      self.loader.prog_ids(), self.maxflows, cfg.map_type,
                      "preallocated" if cfg.prealloc else "at most",
                      sizes.table_bytes >> 20, self.cpu_slots, ncpu, sizes.slot_bytes >> 20,
                      cfg.sampling, fragments.mode, list(cfg.decapsulate) or "off",
                      " keeping the outer flows" if cfg.keep_outer else "")
        self.attacher = Attacher(self.loader, cfg.mode, cfg.direction, cfg.promisc, self.name)
        try:
            self._rescan(initial=True)
        except BaseException:
            self._release()
            raise
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    @hookimpl
    def agent_stop(self) -> None:
        """Detach everything, emit what the tables still hold, unload. Both tables are
        drained whatever the quiet mark says: a packet whose program started before a
        drain's flip can sit in the active table while the count equals the mark (skipping
        here saved ~2.5 ms of CPU once per process and could lose it; docs/performance.md)."""
        self._stop.set()
        buffers = self._buffers  # a drain waiting for a merge: none follows until it is over
        if buffers is not None:
            buffers.wake()
        if self._thread is not None:
            os.eventfd_write(self._wake, 1)
            self._thread.join()
            self._thread = None
        if self._wake >= 0:
            os.close(self._wake)
            self._wake = -1
        if self.loader is None:
            return
        self._detach_everything()
        self._drain()  # the active table: flip and drain it
        self._drain()  # the other one: stragglers of the previous flip
        self._release()

    def _detach_everything(self) -> None:
        """Detach from every interface; a vanished netns took everything with it."""
        attacher = self.attacher
        if attacher is None or not attacher.attached:
            return
        try:
            with NetnsScope(self.config.netns):
                attacher.detach_all()
        except OSError as exc:
            self.log.warning("%s: cannot enter netns %r to detach (%s); its interfaces and "
                             "filters are gone with it", self.name, self.config.netns, exc)
            attacher.forget_all()
        self.stats["interfaces"] = 0

    def _release(self) -> None:
        self._detach_everything()
        if self.loader is not None:
            self.loader.close()
        self.loader = None
        self._step_pool.clear()  # the batches still queued keep their arrays

    # --- drain thread ------------------------------------------------------------------------

    def _run(self) -> None:
        """Drain every ``poll_interval_ms`` (earlier under pressure); rescan on link events and
        every rescan interval."""
        poll_s = self.config.poll_interval_ms / 1000
        rescan_every = self.config.rescan_interval_ms / 1000
        self._check_s = self._check_min_s = PRESSURE_CHECK_S if self._fill_limit else poll_s
        self._check_max_s = max(self._check_min_s, poll_s)
        links = self._watch_links()
        poller = select.poll()
        poller.register(self._wake, select.POLLIN)
        signals = self.loader.signal_fd()  # the program asks for an early drain
        poller.register(signals, select.POLLIN)
        if links is not None:
            poller.register(links.fileno(), select.POLLIN)
        next_drain = time.monotonic() + poll_s
        next_rescan = time.monotonic() + rescan_every
        next_check = time.monotonic() + self._check_s
        try:
            while True:
                wait_s = max(0.0, min(next_drain, next_rescan, next_check) - time.monotonic())
                poller.poll(wait_s * 1000)
                if self._stop.is_set():
                    return
                follow_privileges()  # this thread gives up root's capabilities after the drop
                link_event = links is not None and links.pending()
                now = time.monotonic()
                early = self._logged(self.loader.take_signals, "signal read")
                if early:  # a table is filling: check often again from now on
                    self._check_s = self._check_min_s
                    next_check = min(next_check, now + self._check_s)
                if now >= next_check:
                    early = self._logged(self._under_pressure, "check") or early
                    next_check = now + self._check_s
                early = early and now < next_drain
                if now >= next_drain or early:
                    next_drain = now + poll_s if early else max(next_drain + poll_s, now)
                    self.stats["early_drains"] += early
                    if early or not self._logged(self._quiet, "quiet check"):
                        self._logged(self._drain, "drain")
                    else:
                        self.stats["quiet_skips"] += 1
                if link_event or now >= next_rescan:
                    next_rescan = now + rescan_every
                    self._rescan_logged()
        finally:
            if links is not None:
                links.close()

    def _watch_links(self) -> LinkWatch | None:
        """Subscribe to link events in the observed netns; ``None``: rescan by timer only."""
        try:
            return LinkWatch(self.config.netns)
        except OSError as exc:
            self.log.warning("%s: no link notifications (%s); rescanning every %d ms", self.name,
                             exc, self.config.rescan_interval_ms)
            return None

    def _logged(self, step: Any, what: str) -> bool:
        """Run a drain-thread step; log and go on when it fails (the next tick retries)."""
        try:
            return bool(step())
        except Exception:  # keep draining: a lost tick must not stop accounting
            self.log.exception("%s: %s failed", self.name, what)
            return False

    def _rescan_logged(self) -> None:
        try:
            self._rescan()
            self._last_rescan_error = ""
        except OSError as exc:  # e.g. the netns is gone: say so once, keep trying
            if str(exc) != self._last_rescan_error:
                self.log.warning("%s: interface rescan failed: %s", self.name, exc)
            self._last_rescan_error = str(exc)

    def _quiet(self) -> bool:
        """No packet reached the programs since both tables were known empty
        (:meth:`_mark_quiet`): a drain would only flip, wait for a grace period and find
        nothing (its hash unmarked, no slot window touched), the drain thread's wake-up and
        syscalls for nothing."""
        return self._quiet_mark is not None and self._counters()["packets"] == self._quiet_mark

    def _counters(self) -> dict[str, int]:
        """The kernel's cumulative counters by name (one syscall)."""
        return dict(zip(COUNTER_NAMES, self.loader.counters(), strict=True))

    def _under_pressure(self) -> bool:
        """Whether the active table needs a drain now: it passed ``drain_threshold`` percent of
        ``maxflows`` since the last flip, or a packet was lost since. Consumes the overflow
        ring on the spot when it passed ``drain_threshold`` percent of its size. Sets the
        interval to the next check: :data:`PRESSURE_CHECK_S` when a packet arrived since the
        last check, else twice the last interval, at most the poll interval (the signal
        ring wakes the thread at once for a filling table, whatever this interval)."""
        cnt = self._counters()
        self.stats["pressure_checks"] += 1
        moved = cnt["packets"] != self._checked_packets
        self._checked_packets = cnt["packets"]
        self._check_s = (self._check_min_s if moved
                         else min(2 * self._check_s, self._check_max_s))
        if cnt["full_packets"] + cnt["update_errors"] > self._lost_base:
            return True
        if cnt["hash_new"] - self._fill_base >= self._fill_limit:
            return True
        if self._ring_limit and cnt["ring_packets"] - self._ring_base >= self._ring_limit:
            self._ring_base = cnt["ring_packets"]
            overflow = self._take_ring(monotonic_to_wall_offset())
            self.stats["ring_consumes"] += 1
            if len(overflow):
                self.context.emit(FlowBatch(source=self.name, flows=overflow))  # type: ignore[union-attr]
        return False

    def _take_ring(self, offset: int) -> np.ndarray:
        """The overflow ring's events as flow rows (one per packet; the cache sums them)."""
        rows, err = self.loader.consume()
        if err:  # what was consumed is in rows; the rest stays in the ring for next time
            self.stats["drain_errors"] += 1
            self.log.warning("%s: overflow ring read stopped early: %s", self.name,
                             os.strerror(err))
        overflow = decode_records(rows, offset)
        if len(overflow):  # np.unique's first call imports numpy.ma: 10 ms of CPU, at every start
            self.stats["overflow_flows"] += len(np.unique(flow_schema().keys_of(overflow)))
        return overflow

    def _drain(self) -> None:
        """Flip the tables, drain the idle one step by step, emit its flows and the counters.

        Each step's rows (at most ``drain_chunk``, deleted from the kernel) are decoded and
        emitted as one FlowBatch before the next step, so the drain's memory does not grow
        with the table; once the kernel deleted rows they are emitted whatever fails after
        that (the counters then follow with the next drain: they are cumulative)."""
        started = time.perf_counter()
        # whatever fails from here, neither this drain nor the last counts as clean after it
        self._quiet_mark = None
        prev_clean, self._last_drain_clean = self._last_drain_clean, False
        before = self._counters()  # read before the flip: what the old table got is in it
        old, new = self.active, 1 - self.active
        self.loader.set_active(new)
        self.active = new  # only once the kernel flipped too
        synced = self.loader.synchronize()  # an RCU grace period: no program still in `old`
        if not synced:
            time.sleep(FLIP_GRACE_S)
        offset = monotonic_to_wall_offset()
        ring: np.ndarray = flow_schema().empty()
        cnt: CounterDelta | None = None
        drained = 0
        errors = self.stats["drain_errors"]
        try:
            drained = self._drain_table(old, offset)
            self.loader.reset_fill(old)
            self._fill_base = before["hash_new"]
            self._lost_base = before["full_packets"] + before["update_errors"]
            self._ring_base = before["ring_packets"]
            ring = self._take_ring(offset)
            cnt = self.tracker.delta(self.loader.counters())
            for name, value in cnt.values.items():
                self.kernel_counters[name] = self.kernel_counters.get(name, 0) + value
            self._mark_quiet(prev_clean, synced and self.stats["drain_errors"] == errors,
                             before["packets"])
        finally:
            self._emit(ring, cnt)
        elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
        self.stats["drains"] += 1
        info = self.loader.slot_info()
        self.stats["slot_windows_scanned"] = info["windows_scanned"]
        self.stats["hash_walks"] = info["hash_walks"]
        self.stats["hash_walks_skipped"] = info["hash_walks_skipped"]
        self.stats["hash_mark_clear_errors"] = info["mark_clear_errors"]
        self.stats["slots_read"] = info["slots_read"]
        if info["tag_map_errors"] > self.stats["tag_map_errors"] and not self._tag_map_warned:
            self._tag_map_warned = True  # once a run: the count shows the rest
            self.log.warning("%s: %d slot window(s) read whole: their tags could not be "
                             "mapped (exact, but each such window costs a read of every "
                             "slot); tag_map_errors counts them", self.name,
                             info["tag_map_errors"])
        self.stats["tag_map_errors"] = info["tag_map_errors"]
        self.stats["flows_drained"] += drained
        self.stats["table_peak"] = max(self.stats["table_peak"], drained)
        self.stats["drain_ms_last"] = elapsed_ms
        self.stats["drain_ms_max"] = max(self.stats["drain_ms_max"], elapsed_ms)

    def _mark_quiet(self, prev_clean: bool, clean: bool, packets: int) -> None:
        """After a drain that completed: whether both tables are known to be empty at kernel
        packet count ``packets`` (read before this drain's flip), so that timer drains are
        skipped while the count stays there (:meth:`_quiet`).

        Known only when this drain and the one before emptied their tables after a real
        grace period (``clean``: no drain error, synchronize() said every program returned)
        and no packet was counted between the two counts read before their flips. A program
        counts its packet at its start but picks its table later: one counted just before
        this flip can write into the table now active after the flip. With the count unchanged
        since the previous drain's read, every program counted started before the previous
        flip and returned within the previous drain's grace period, so none is left to write
        into the active table; a program counted later moves the count past the mark."""
        if prev_clean and clean and packets == self._last_drain_packets:
            self._quiet_mark = packets
        self._last_drain_clean = clean
        self._last_drain_packets = packets

    def _drain_table(self, index: int, offset: int) -> int:
        """Empty flow table ``index`` (and its slots) in steps of ``drain_chunk`` rows, each
        written by the loader straight into a new FlowBatch record array (the layout of
        :func:`~.decode.record_layout`, times in wall-clock ns) and emitted at once; returns
        the rows emitted."""
        if self._layout is None:  # the [flow] schema is fixed for the run: so is the layout
            schema = flow_schema()  # the rows and the layout from one schema
            self._layout, self._record_dtype = record_layout(schema), schema.record_dtype
        chunk = self.config.drain_chunk
        # the ingest's arrays, this drain's wait; it waits for the merge only on the drain
        # thread: at stop the caller merges after the drain (agent_stop wakes a wait through
        # self._buffers)
        pool = self._step_pool
        if pool and (len(pool[0]) != chunk or pool[0].dtype != self._record_dtype):
            pool.clear()  # (the chunk and the layout are fixed for a run: not expected)
        buffers = StepBuffers(chunk, self._record_dtype,
                              0.0 if self._stop.is_set() else STEP_WAIT_S, self._stop, pool)
        assert self.context is not None
        self._buffers = buffers
        # the stop's drains and every FORCED_WALK_EVERY-th of this table walk the hash,
        # marked or not; counted per table at the begin, so a drain that raises later still
        # counts and neither table can drift out of the cadence
        self._begins[index] += 1
        force = self._stop.is_set() or self._begins[index] % FORCED_WALK_EVERY == 0
        self.loader.drain_begin(index, force=force)
        drained, more = 0, True
        try:
            while more:
                flows = buffers.take()  # the loader writes every byte of its rows
                rows, err, more = self.loader.drain_next(flows, self._layout, offset)
                if err:  # the rows it deleted are in `flows`; the rest is drained next time
                    self.stats["drain_errors"] += 1
                    self.log.warning("%s: drain of table %d stopped part way: %s; the rest "
                                     "follows at a later drain", self.name, index,
                                     os.strerror(err))
                if rows:  # a short last step keeps only its rows' memory
                    flows = (buffers.lend(flows[:rows]) if rows > chunk // 4
                             else flows[:rows].copy())
                    self.context.emit(FlowBatch(source=self.name, flows=flows))
                    drained += rows
        finally:  # a drain that raised part way counts what it did too
            self._buffers = None
            self._count_steps(buffers)
        tag_err = self.loader.slot_info()["tag_errno"]
        if tag_err:  # every row is out; the windows stay marked, so the next drain retries
            self.stats["drain_errors"] += 1
            self.log.warning("%s: clearing slot tags of table %d failed: %s; they are "
                             "cleared again at its next drain", self.name, index,
                             os.strerror(tag_err))
        return drained

    def _count_steps(self, buffers: StepBuffers) -> None:
        """Add one drain's step-array figures to the stats."""
        self.stats["drain_steps_waited"] += buffers.waited
        self.stats["drain_steps_unpooled"] += buffers.fresh
        wait_ms = round(buffers.waited_s * 1000, 3)
        self.stats["drain_wait_ms_last"] = wait_ms
        self.stats["drain_wait_ms_total"] = round(self.stats["drain_wait_ms_total"] + wait_ms, 3)

    def _emit(self, flows: np.ndarray, cnt: CounterDelta | None) -> None:
        """One FlowBatch after the table's: the overflow ring's flows (if it was read) and,
        once the counters were read, what the kernel saw but could not account (full table,
        failed inserts, truncated headers: as the NFLOG ingest does for FlowBatch, since the
        cache adds trunc to drop only for PacketBatch)."""
        if cnt is None:
            if len(flows):
                self.context.emit(FlowBatch(source=self.name, flows=flows))  # type: ignore[union-attr]
            return
        dropped = cnt["full_packets"] + cnt["update_errors"] + cnt["trunc"]
        if len(flows) or dropped or cnt["frag"]:
            self.context.emit(FlowBatch(  # type: ignore[union-attr]
                source=self.name, flows=flows, dropped_packets=dropped,
                dropped_bytes=cnt["full_bytes"] + cnt["update_error_bytes"] + cnt["trunc_bytes"],
                trunc=cnt["trunc"], frag=cnt["frag"]))

    def _rescan(self, initial: bool = False) -> None:
        """Attach to matching interfaces not attached yet; forget vanished ones."""
        attacher = self.attacher
        assert attacher is not None
        with NetnsScope(self.config.netns):
            links = matching_links(self.config.interfaces)
            for ifindex in set(attacher.attached) - set(links):
                self.log.info("%s: interface %d is gone", self.name, ifindex)
                attacher.detach(ifindex)
            for ifindex, ifname in sorted(links.items()):
                if ifindex in attacher.attached:
                    continue
                try:
                    atts = attacher.attach(ifindex, ifname)
                except OSError as exc:
                    if initial:
                        raise OSError(exc.errno, f"attach to {ifname}: {exc}") from exc
                    self.stats["attach_errors"] += 1
                    self.log.warning("%s: attach to %s failed: %s", self.name, ifname, exc)
                    continue
                self.log.info("%s: attached %s to %s (%s%s)", self.name,
                              atts[0].kind, ifname, self.config.direction,
                              ", promiscuous" if self.config.promisc else "")
        if initial and not links:
            self.log.warning("%s: no interface matches %s yet; rescanning every %d ms",
                             self.name, self.config.interfaces, self.config.rescan_interval_ms)
        self.stats["interfaces"] = len(attacher.attached)

    # --- observability -----------------------------------------------------------------------

    @hookimpl
    def agent_collect_stats(self) -> dict[str, Any]:
        """Drain statistics and the kernel's counters (cumulative)."""
        out: dict[str, Any] = dict(self.stats)
        out["mode"] = self.attacher.mode if self.attacher else self.config.mode
        shown = (FRAGMENT_COUNTERS if self.tracking else ()) + (
            TUNNEL_COUNTERS if self.config.decapsulate else ())
        for name, value in self.kernel_counters.items():
            if name in shown:  # the packet ingests' names (agent/fragments.py, tunnels.py)
                out[name] = value
            elif name not in FRAGMENT_COUNTERS + TUNNEL_COUNTERS:
                out[f"kernel_{name}"] = value
        return out
