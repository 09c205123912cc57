"""The pipeline: builds component instances, runs the stage loop, shuts down in order.

::

    reader threads (ingest)            pipeline thread (this module)
    ───────────────────────            ─────────────────────────────────────────────────────
    ingest.nflog[0] ─┐                  ┌─▶ agent_cache_packets / agent_cache_flows  (cache)
    ingest.ebpf[0] ──┼─▶ inbox queue ───┤
    ingest.pcap[0] ──┘                  ├─▶ agent_export_nat_events                (export)
    ingest.conntrack[0] (NAT events) ───┘
                                        every scan_interval_ms:
                                          agent_cache_expire ─▶ agent_aggregate_flows (chain)
                                          ─▶ agent_export_flows ─▶ agent_tick (all)

Start order: exporters, cache and aggregation, then ingests (nothing is emitted before
exporters are ready). Stop order: ingests stop, the inbox is drained, every flow is expired
(end reason "forced"), aggregated and exported, then exporters stop.

Stage hooks are called one implementation at a time (:meth:`Pipeline.call`): an
implementation that raises is logged (rate-limited) and counted in ``hook_errors`` and the
others still run. Clock: wall time, except when every ingest is a finite replay, where the
capture's own timestamps drive timeouts, so results do not depend on the machine's speed.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import pluggy

from netflow_agent import state
from netflow_agent.config.model import AgentConfig, Instance
from netflow_agent.model import FlowRecord, PacketBatch
from netflow_agent.runtime import (
    ITEM_CALL,
    ITEM_DONE,
    ITEM_FLOWS,
    ITEM_NAT,
    ITEM_PACKETS,
    ITEM_RELOAD,
    ITEM_STOP,
    RunContext,
)
from netflow_agent.stats import RateMeter

log = logging.getLogger("agent.pipeline")
_TRACE = os.environ.get("AGENT_TRACE_HOOKS", "") in ("1", "true", "yes")
_STAGE_ORDER = {"export": 0, "cache": 1, "aggregate": 2, "ingest": 3}


class StartupError(Exception):
    """A component failed in ``agent_start``; the message names it."""


class Pipeline:
    """One running agent: component instances, the inbox, the clock and the core counters."""

    def __init__(self, config: AgentConfig, pm: pluggy.PluginManager):
        self.config = config
        self.pm = pm
        self.context = RunContext(debug=config.agent.debug, state_dir=config.agent.state_dir,
                                  clock=self.now_ns, core_stats=self.core_stats)
        self.components: dict[str, Any] = {}
        self.hook_errors: Counter[str] = Counter()
        self.rates = RateMeter()
        self.scan_ns = config.agent.scan_interval_ms * 1_000_000
        self.replay = False
        self.capture_ns = 0
        self.pending_finite: set[str] = set()
        self.stopping = False
        self.next_scan_ns = 0
        self.started: list[str] = []
        self.exported_flows = 0
        self.nat_events = 0
        self._error_log_at: dict[str, float] = {}
        #: re-reads and validates the configuration for a reload; set by the CLI
        self.reloader: Callable[[], AgentConfig | None] | None = None
        self.reloads = 0
        self.reload_failures = 0
        #: called once per loop iteration on the pipeline thread (systemd watchdog); set by
        #: agent.ops
        self.heartbeat: Callable[[], None] | None = None
        self.restored_flows = 0
        #: sources that emitted unsampled batches while a sampling was declared (warned once)
        self._unsampled_sources: set[str] = set()

    # --- building and starting ---------------------------------------------------------------

    def build(self) -> None:
        """Instantiate every configured component and register it as a named plugin."""
        for inst in self.config.instances:
            obj = inst.ctype.factory(inst.config, inst.path)
            self.pm.register(obj, name=inst.path)
            self.components[inst.path] = obj
        self.pm.check_pending()
        ingests = [c for p, c in self.components.items() if p.startswith("ingest.")]
        self.pending_finite = {p for p, c in self.components.items()
                               if p.startswith("ingest.") and getattr(c, "finite", False)}
        self.replay = bool(ingests) and len(self.pending_finite) == len(ingests)

    def start(self) -> None:
        """Call ``agent_start`` on every component, exporters first, ingests last."""
        order = sorted(self.config.instances, key=lambda i: _STAGE_ORDER[i.stage])
        cache = self.cache_component()
        if self.config.agent.state_file and hasattr(cache, "restore"):
            self.restored_flows = state.restore(cache, self.config.agent.state_file)
        for inst in order:
            impl = getattr(self.components[inst.path], "agent_start", None)
            try:
                if impl is not None:
                    impl(context=self.context)
            except Exception as exc:
                self.stop_started()
                raise StartupError(f"{inst.path}: failed to start: {exc}") from exc
            self.started.append(inst.path)

    def stop_started(self) -> None:
        """Stop whatever was started (used when start-up fails half way)."""
        for path in reversed(self.started):
            impl = getattr(self.components[path], "agent_stop", None)
            if impl is not None:
                try:
                    impl()
                except Exception:
                    log.exception("%s: error while stopping", path)
        self.started.clear()

    # --- clock -------------------------------------------------------------------------------

    def now_ns(self) -> int:
        """Wall clock, or the capture clock while replaying finite sources only."""
        return self.capture_ns if self.replay else time.time_ns()

    # --- hook calls --------------------------------------------------------------------------

    def call(self, name: str, **kwargs: Any) -> list[Any]:
        """Call every implementation of hook ``name`` separately; isolate failures.

        :return: the non-``None`` results, in registration order.
        """
        results = []
        for impl in getattr(self.pm.hook, name).get_hookimpls():
            res = self._call_one(impl, name, kwargs)
            if res is not None:
                results.append(res)
        return results

    def _call_one(self, impl: Any, name: str, kwargs: dict[str, Any]) -> Any:
        """Call one implementation; a raise is logged and counted and gives ``None``."""
        if _TRACE:
            log.debug("hook %s -> %s", name, impl.plugin_name)
        try:
            return impl.function(*[kwargs[a] for a in impl.argnames])
        except Exception:
            self._hook_failed(name, impl.plugin_name)
            return None

    def _hook_failed(self, hook: str, plugin: str) -> None:
        self.hook_errors[plugin] += 1
        now = time.monotonic()
        if now - self._error_log_at.get(plugin, -1e9) >= 10:  # one traceback per 10 s
            self._error_log_at[plugin] = now
            log.exception("%s raised in %s (error %d; repeats are counted, logged every 10 s)",
                          plugin, hook, self.hook_errors[plugin])

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        """Process the inbox until asked to stop or until every finite ingest is done."""
        inbox = self.context.inbox
        while not self.stopping:
            wait = 0.05
            if not self.replay and self.next_scan_ns:
                wait = min(1.0, max(0.0005, (self.next_scan_ns - self.now_ns()) / 1e9))
            try:
                kind, item = inbox.get(timeout=wait)
            except queue.Empty:
                kind, item = "", None
            if kind:
                self.dispatch(kind, item)
            self._scan_if_due()
            if self.heartbeat is not None:
                self.heartbeat()
            if self.replay and not self.pending_finite and inbox.empty():
                log.info("all finite ingests are done")
                break

    def _scan_if_due(self) -> None:
        now = self.now_ns()
        if not self.next_scan_ns:
            self.next_scan_ns = now + self.scan_ns if now else 0  # replay: wait for a packet
        elif now >= self.next_scan_ns:
            self.scan(now)
            self.next_scan_ns = now + self.scan_ns

    def dispatch(self, kind: str, item: Any) -> None:
        """Route one inbox item to its stage."""
        if kind == ITEM_PACKETS:
            self._packets(item)
        elif kind == ITEM_FLOWS:
            if self.context.samplings:
                self._check_sampled(item.source)
            self.call("agent_cache_flows", batch=item, now_ns=self.now_ns())
        elif kind == ITEM_NAT:
            self.nat_events += len(item)
            self.call("agent_export_nat_events", events=item)
        elif kind == ITEM_DONE:
            self.pending_finite.discard(item)
        elif kind == ITEM_STOP:
            self.stopping = True
        elif kind == ITEM_RELOAD:
            self._reload_requested(item)
        elif kind == ITEM_CALL:
            try:
                item(self)
            except Exception:
                self._hook_failed("pipeline call", getattr(item, "__qualname__", "call"))

    def _check_sampled(self, source: str) -> None:
        """Warn once per source that emits unsampled flows next to a declared sampling."""
        if source in self.context.samplings or source in self._unsampled_sources:
            return
        self._unsampled_sources.add(source)
        log.warning("%s accounts every packet but %s declared sampling %s: exporters announce "
                    "that sampling for all flows, so collectors will scale %s's flows too",
                    source, next(iter(self.context.samplings)), self.context.sampling(), source)

    def _packets(self, batch: PacketBatch) -> None:
        if self.context.samplings:
            self._check_sampled(batch.source)
        if self.replay and batch.packets:
            # expire what the capture's clock reached before this batch's first packet
            self._advance_capture_clock(batch.packets[0][3])
            self._scan_if_due()
        self.call("agent_cache_packets", batch=batch, now_ns=self.now_ns())
        if self.replay:
            self._advance_capture_clock(batch.clock_ns or
                                        (batch.packets[-1][3] if batch.packets else 0))

    def _advance_capture_clock(self, clock: int) -> None:
        if clock > self.capture_ns:
            if not self.capture_ns:  # uptime counts from the capture's first packet
                self.context.start_ns = clock
            self.capture_ns = clock

    def scan(self, now: int, force: bool = False) -> None:
        """Expire, aggregate and export flows, then run every component's timers."""
        records: list[FlowRecord] = []
        for part in self.call("agent_cache_expire", now_ns=now, force=force):
            records.extend(part)
        if records:
            for impl in self.pm.hook.agent_aggregate_flows.get_hookimpls():  # a chain
                out = self._call_one(impl, "agent_aggregate_flows", {"records": records})
                if out is not None:
                    records = cast("list[FlowRecord]", out)
            self.exported_flows += len(records)
            self.call("agent_export_flows", records=records)
        self.rates.update(now, *self._traffic_totals())
        self.call("agent_tick", now_ns=now)

    def _traffic_totals(self) -> tuple[int, int]:
        """Accounted packets and bytes so far, read without building a whole stats report."""
        cache = self.cache_component()
        counters = getattr(cache, "stats", None)
        if counters is not None and hasattr(counters, "traffic_packets"):
            return counters.traffic_packets, counters.traffic_bytes
        stats = self.core_stats()
        return stats.get("traffic_packets", 0), stats.get("traffic_bytes", 0)

    # --- reload ------------------------------------------------------------------------------

    def request_reload(self, reply: Callable[[bool, str], None] | None = None) -> None:
        """Ask the loop to re-read the configuration (signal-handler safe)."""
        self.context.inbox.put((ITEM_RELOAD, reply))

    def _reload_requested(self, reply: Callable[[bool, str], None] | None) -> None:
        ok, message = False, "no configuration source to reload from"
        try:
            new = self.reloader() if self.reloader else None
            if new is not None:
                self.reload(new)
                ok, message = True, f"reloaded ({len(new.instances)} components)"
            elif self.reloader:
                message = "new configuration is invalid; still running the old one"
        except Exception as exc:  # a component failing to start: keep running what we have
            log.exception("reload failed")
            message = f"reload failed: {exc}"
        if ok:
            self.reloads += 1
            log.info("%s", message)
        else:
            self.reload_failures += 1
            log.error("%s", message)
        if reply is not None:
            reply(ok, message)

    def reload(self, new: AgentConfig) -> None:
        """Switch to ``new`` without losing flows.

        Unchanged instances keep running; the cache keeps its flows and takes new timeouts and
        maxflows in place; changed ingests are stopped before their replacement starts (an
        NFLOG group has one listener); changed exporters are replaced, and the old instance
        then stops and sends what it holds.
        """
        old_by_path = {i.path: i for i in self.config.instances}
        new_by_path = {i.path: i for i in new.instances}
        for path in [p for p in old_by_path if p not in new_by_path]:
            self._retire(path)
        for inst in sorted(new.instances, key=lambda i: _STAGE_ORDER[i.stage]):
            old = old_by_path.get(inst.path)
            if old is not None and old.type_name == inst.type_name and old.config == inst.config:
                continue
            if old is not None and inst.stage == "cache" and old.type_name == inst.type_name \
                    and hasattr(self.components[inst.path], "reconfigure"):
                self.components[inst.path].reconfigure(inst.config)
                continue
            self._replace(old, inst)
        self.config = new
        self.scan_ns = new.agent.scan_interval_ms * 1_000_000
        self.context.debug = new.agent.debug

    def _replace(self, old: Instance | None, inst: Instance) -> None:
        if old is not None and inst.stage == "cache":  # a different cache type: hand over
            self.scan(self.now_ns(), force=True)
        if old is not None and inst.stage == "ingest":
            self._retire(old.path)
            old = None
        retired = self._unregister(old.path) if old is not None else None
        obj = inst.ctype.factory(inst.config, inst.path)
        impl = getattr(obj, "agent_start", None)
        if impl is not None:
            impl(context=self.context)
        self.pm.register(obj, name=inst.path)
        self.components[inst.path] = obj
        if inst.path not in self.started:
            self.started.append(inst.path)
        if getattr(obj, "finite", False) and inst.stage == "ingest":
            self.pending_finite.add(inst.path)
        if retired is not None:
            self._stop_object(inst.path, retired)

    def _unregister(self, path: str) -> Any:
        obj = self.components.pop(path)
        self.pm.unregister(name=path)
        return obj

    def _retire(self, path: str) -> None:
        obj = self._unregister(path)
        self.context.forget_sampling(path)
        self.context.forget_netns(path)
        self._unsampled_sources.discard(path)
        if path in self.started:
            self.started.remove(path)
        self.pending_finite.discard(path)
        self._stop_object(path, obj)

    def _stop_object(self, path: str, obj: Any) -> None:
        impl = getattr(obj, "agent_stop", None)
        if impl is None:
            return
        try:
            impl()
        except Exception:
            log.exception("%s: error while stopping", path)

    # --- stopping ----------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask the loop to stop (signal-handler safe: it only enqueues)."""
        self.context.inbox.put((ITEM_STOP, None))

    def shutdown(self) -> None:
        """Stop ingests, drain, export every flow, stop the rest."""
        self.context.stopping = True  # exporters may now wait for room rather than drop
        ingests = [p for p in self.started if p.startswith("ingest.")]
        for path in ingests:
            self._stop_one(path)
        self._drain()
        cache = self.cache_component()
        if self.stopping and self.config.agent.state_file and hasattr(cache, "dump"):
            self.scan(self.now_ns() or time.time_ns())  # export what is due; save the rest
            state.save(cache, self.config.agent.state_file)
        self.scan(self.now_ns() or time.time_ns(), force=True)
        for path in reversed([p for p in self.started if not p.startswith("ingest.")]):
            self._stop_one(path)
        self.started.clear()
        for path in list(self.components):
            self.pm.unregister(name=path)

    def _stop_one(self, path: str) -> None:
        self._stop_object(path, self.components[path])

    def _drain(self) -> None:
        inbox = self.context.inbox
        while True:
            try:
                kind, item = inbox.get_nowait()
            except queue.Empty:
                return
            if kind != ITEM_STOP:
                self.dispatch(kind, item)

    # --- counters ----------------------------------------------------------------------------

    def cache_component(self) -> Any:
        """The cache instance (there is exactly one)."""
        return self.components.get("cache")

    def core_stats(self) -> dict[str, Any]:
        """Cache counters, rates and pipeline counters (flat)."""
        cache = self.cache_component()
        out: dict[str, Any] = {}
        if cache is not None and hasattr(cache, "agent_collect_stats"):
            out.update(cache.agent_collect_stats())
        out.update(self.rates.as_dict())
        sampling = self.context.sampling()
        out.update(exported_flows_total=self.exported_flows, nat_events=self.nat_events,
                   hook_errors=sum(self.hook_errors.values()),
                   sampling_interval=sampling.interval if sampling else 1)
        return out

    def collect_stats(self) -> dict[str, Any]:
        """Every instance's counters, keyed by instance name, plus ``core``."""
        out: dict[str, Any] = {"core": self.core_stats()}
        for path, comp in self.components.items():
            impl = getattr(comp, "agent_collect_stats", None)
            if impl is None:
                continue
            try:
                out[path] = impl()
            except Exception:
                self._hook_failed("agent_collect_stats", path)
        return out

