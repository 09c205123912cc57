"""The pipeline: one running agent, put together from its three parts.

::

    Pipeline (this module: the facade, the core counters)
    ├── Lifecycle  agent/lifecycle.py  build, start, reload, stop: the component instances
    ├── Loop       agent/loop.py       inbox dispatch and scans, on the pipeline thread
    └── Clock      agent/clock.py      wall time, or the capture's time in a replay

Every hook is called through pluggy; the plugin manager registers each plugin through a
runner (:mod:`agent.runner`) that isolates and counts its implementations: one that raises
in a stage hook is logged (rate-limited) and counted in ``hook_errors`` and the others still
run. Per instance and hook, calls, errors and seconds are in :meth:`Pipeline.hook_stats`.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable
from typing import Any

from netflow_agent import reloading, state
from netflow_agent.clock import Clock, ReplayOrder
from netflow_agent.config.model import AgentConfig
from netflow_agent.discovery import AgentPluginManager
from netflow_agent.lifecycle import Lifecycle, StartupError, fragment_policy
from netflow_agent.loop import Loop
from netflow_agent.roles import Cache
from netflow_agent.runtime import ITEM_CALL, ITEM_DONE, ITEM_RELOAD, ITEM_STOP, RunContext

__all__ = ["Pipeline", "StartupError"]


class Pipeline:
    """One running agent: component instances, the inbox, the clock and the core counters."""

    def __init__(self, config: AgentConfig, pm: AgentPluginManager):
        self.pm = pm
        self.clock = Clock()
        self.context = RunContext(debug=config.agent.debug, state_dir=config.agent.state_dir,
                                  clock=self.clock.now_ns, core_stats=self.core_stats,
                                  fragments=fragment_policy(config))
        self.context.use_snmp_rules(config.agent.snmp_rules)
        self.loop = Loop(self.context, self.clock, pm.hook,
                         config.agent.scan_interval_ms * 1_000_000)
        self.lifecycle = Lifecycle(config, pm, self.context, self.loop)
        self.loop.finished = self.lifecycle.all_finite_done
        self.loop.traffic_totals = self._traffic_totals
        self.clock.pending = lambda: self.lifecycle.pending_finite
        self.loop.handlers.update({ITEM_DONE: self._finite_done,
                                   ITEM_RELOAD: self.lifecycle.reload_requested,
                                   ITEM_CALL: self._call})

    # --- lifecycle ---------------------------------------------------------------------------

    def build(self) -> None:
        """Instantiate every configured component and register it as a named plugin."""
        self.clock.replay = self.lifecycle.build()
        if self.clock.replay:  # several captures: their batches in time order
            self.context.replay_order = self.clock.order = ReplayOrder(self.clock.pending)

    def start(self) -> None:
        """Call ``agent_start`` on every component, exporters first, ingests last."""
        self.lifecycle.start()

    def stop_started(self) -> None:
        """Stop whatever was started (used when start-up fails half way)."""
        self.lifecycle.stop_started()

    def reload(self, new: AgentConfig) -> None:
        """Switch to ``new`` without losing flows (see :meth:`Lifecycle.reload`)."""
        self.lifecycle.reload(new)

    def shutdown(self) -> None:
        """Stop ingests, drain, export every flow, stop the rest."""
        self.lifecycle.shutdown()

    def _retire(self, path: str) -> None:
        self.lifecycle._retire(path)

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        """Process the inbox until asked to stop or until every finite ingest is done."""
        self.loop.run()

    def dispatch(self, kind: str, item: Any) -> None:
        """Route one inbox item to its stage."""
        self.loop.dispatch(kind, item)

    def scan(self, now: int, force: bool = False) -> None:
        """Expire, aggregate and export flows, then run every component's timers."""
        self.loop.scan(now, force)

    def now_ns(self) -> int:
        """Wall clock, or the capture clock while replaying finite sources only."""
        return self.clock.now_ns()

    def request_stop(self) -> None:
        """Ask the loop to stop (signal-handler safe: it only enqueues)."""
        self.context.inbox.put((ITEM_STOP, None))

    def request_reload(self, reply: Callable[[reloading.ReloadOutcome], None] | None = None
                       ) -> None:
        """Ask the loop to re-read the configuration (signal-handler safe)."""
        self.context.inbox.put((ITEM_RELOAD, reply))

    def _finite_done(self, source: str) -> None:
        """``ITEM_DONE``: a replay emitted everything; the capture clock stops waiting for it."""
        self.lifecycle.finite_done(source)
        self.loop.finite_done(source)

    def _call(self, item: Callable[[Pipeline], Any]) -> None:
        """``ITEM_CALL``: run a callable on the pipeline thread (control socket, metrics)."""
        try:
            item(self)
        except Exception:
            name = item.__qualname__ if inspect.isroutine(item) else type(item).__qualname__
            self.pm.errors.failed("pipeline call", name)

    # --- state, read by operations and tests ---------------------------------------------------

    @property
    def config(self) -> AgentConfig:
        """The configuration running now (a reload replaces it)."""
        return self.lifecycle.config

    @property
    def components(self) -> dict[str, Any]:
        """Instance name -> component instance."""
        return self.lifecycle.components

    @property
    def started(self) -> list[str]:
        """Names of the started instances."""
        return self.lifecycle.started

    @property
    def replay(self) -> bool:
        """Whether the capture clock drives the pipeline."""
        return self.clock.replay

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested."""
        return self.loop.stopping

    @property
    def heartbeat(self) -> Callable[[], None] | None:
        """Called once per loop iteration on the pipeline thread (systemd watchdog)."""
        return self.loop.heartbeat

    @heartbeat.setter
    def heartbeat(self, beat: Callable[[], None] | None) -> None:
        self.loop.heartbeat = beat

    @property
    def reloader(self) -> reloading.Reader | None:
        """Re-reads and validates the configuration for a reload; set by the CLI."""
        return self.lifecycle.reloader

    @reloader.setter
    def reloader(self, reloader: reloading.Reader | None) -> None:
        self.lifecycle.reloader = reloader

    @property
    def reload_history(self) -> reloading.ReloadHistory:
        """Every reload's outcome so far (counts, the last one, the generation)."""
        return self.lifecycle.reload_history

    @property
    def state_restore(self) -> state.RestoreOutcome:
        """What the start made of ``[agent] state_file``."""
        return self.lifecycle.state_restore

    @property
    def restored_flows(self) -> int:
        """Flows restored from the state file at start."""
        return self.lifecycle.restored_flows

    @property
    def exported_flows(self) -> int:
        """Flow records handed to exporters."""
        return self.loop.exported_flows

    @property
    def nat_events(self) -> int:
        """NAT events handed to exporters."""
        return self.loop.nat_events

    @property
    def hook_errors(self) -> Counter[str]:
        """Plugin name -> hook implementations of it that raised."""
        return self.pm.errors.errors

    def hook_stats(self) -> dict[str, dict[str, dict[str, float]]]:
        """Plugin or instance name -> hook name -> calls, errors and seconds."""
        return self.pm.stats()

    # --- counters ----------------------------------------------------------------------------

    def cache_component(self) -> Cache | None:
        """The cache instance (there is exactly one)."""
        return self.lifecycle.cache

    def _traffic_totals(self) -> tuple[int, int]:
        """Accounted packets and bytes so far, read without building a whole stats report."""
        cache = self.lifecycle.cache
        return (cache.stats.traffic_packets, cache.stats.traffic_bytes) if cache else (0, 0)

    def core_stats(self) -> dict[str, Any]:
        """Cache counters, rates and pipeline counters (flat)."""
        cache = self.lifecycle.cache
        out: dict[str, Any] = cache.counters() if cache is not None else {}
        out.update(self.loop.rates.as_dict())
        sampling = self.context.sampling()
        out.update(exported_flows_total=self.exported_flows, nat_events=self.nat_events,
                   hook_errors=sum(self.hook_errors.values()),
                   sampling_interval=sampling.interval if sampling else 1)
        return out

    def collect_stats(self) -> dict[str, Any]:
        """Every instance's counters (``agent_collect_stats`` through pluggy), keyed by
        instance name, plus ``core``."""
        out: dict[str, Any] = {"core": self.core_stats()}
        runners = self.pm.runners
        for path in self.components:
            runners[path].results.pop("agent_collect_stats", None)
        self.pm.hook.agent_collect_stats()
        for path in self.components:
            result = runners[path].results.get("agent_collect_stats")
            if result is not None:
                out[path] = result
        return out
