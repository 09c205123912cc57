"""Component instances from build to shutdown: build, start, reload, stop.

Instances are registered with pluggy so that its default order (last registered first) is
the core's: exporters, the cache, aggregators, ingests, each in configuration order. Every
call goes through pluggy, so ``tryfirst``/``trylast`` and wrappers apply to lifecycle hooks
too; ``agent_start`` and ``agent_stop`` reach only the instances of the step at hand
(``AgentPluginManager.subset``), never plugin modules.

* start: ``agent_start`` on every instance (exporters are ready before anything is
  emitted); one that raises stops start-up, and what had started is stopped;
* reload: unchanged instances keep running; the cache takes new timeouts in place; a
  removed instance is stopped; per stage, every changed instance is stopped, then the
  replacements are built and started;
* stop: ingests stop, the inbox is drained, every flow is expired (end reason "forced"),
  aggregated and exported, then the other instances stop.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable

from netflow_agent import reloading, schema, state
from netflow_agent.config.model import AgentConfig, Instance
from netflow_agent.discovery import AgentPluginManager
from netflow_agent.fragments import DEFAULT_POLICY, FragmentOptions, FragmentPolicy
from netflow_agent.loop import Loop
from netflow_agent.registry import Component
from netflow_agent.roles import Cache
from netflow_agent.runner import HookFailed
from netflow_agent.runtime import RunContext

log = logging.getLogger("agent.pipeline")
_STAGE_ORDER = {"export": 0, "cache": 1, "aggregate": 2, "ingest": 3}


class StartupError(Exception):
    """A component failed in ``agent_start``; the message names it."""


def fragment_policy(config: AgentConfig) -> FragmentPolicy:
    """The ``[cache]`` fragment options for the packet ingests (defaults for a cache type
    without them)."""
    for inst in config.instances:
        if inst.stage == "cache" and isinstance(inst.config, FragmentOptions):
            return inst.config.fragment_policy()
    return DEFAULT_POLICY


class Lifecycle:
    """The running component instances, and every change to that set.

    :param config: the validated configuration to build from.
    :param pm: the plugin manager instances are registered with (as named plugins).
    :param context: handed to every ``agent_start``.
    :param loop: the pipeline loop (its scans flush flows at shutdown and cache handover).
    :ivar cache: the cache instance (exactly one after :meth:`build`).
    """

    def __init__(self, config: AgentConfig, pm: AgentPluginManager, context: RunContext,
                 loop: Loop):
        self.config = config
        self.pm = pm
        self.context = context
        self.loop = loop
        self.components: dict[str, Component] = {}
        self.cache: Cache | None = None
        self.started: list[str] = []
        self.pending_finite: set[str] = set()
        #: re-reads and validates the configuration for a reload; set by the CLI
        self.reloader: reloading.Reader | None = None
        self.reload_history = reloading.ReloadHistory()
        self.restored_flows = 0
        #: what the start made of ``[agent] state_file`` (restored, rejected, quarantined)
        self.state_restore = state.RestoreOutcome()

    # --- building and starting ---------------------------------------------------------------

    def build(self) -> bool:
        """Instantiate every configured component and register it as a named plugin.

        :return: whether every ingest is a finite replay (the capture clock applies).
        :raises StartupError: an instance does not have its stage's role.
        """
        schema.set_active(self.config.schema)  # before any component sizes a key
        for inst in self.config.instances:
            self.components[inst.path] = self._make(inst)
        for path in reversed(self._call_order()):
            self.pm.register(self.components[path], name=path)
        self.pm.check_pending()
        ingests = [p for p in self.components if p.startswith("ingest.")]
        self.pending_finite = {p for p in ingests if self.components[p].finite}
        return bool(ingests) and len(self.pending_finite) == len(ingests)

    def _make(self, inst: Instance) -> Component:
        """Build one instance and check its role."""
        obj = inst.ctype.factory(inst.config, inst.path)
        if not isinstance(obj, Component):
            raise StartupError(f"{inst.path}: {type(obj).__name__} is not a "
                               "netflow_agent.api.Component")
        if inst.stage == "cache":
            if not isinstance(obj, Cache):
                raise StartupError(f"{inst.path}: {type(obj).__name__} is not a "
                                   "netflow_agent.api.Cache")
            self.cache = obj
        return obj

    def _call_order(self) -> list[str]:
        """Instance names in the core's order: exporters, cache, aggregators, ingests."""
        return [i.path for i in sorted(self.config.instances, key=lambda i: _STAGE_ORDER[i.stage])
                if i.path in self.components]

    def start(self) -> None:
        """Call ``agent_start`` on every component, exporters first, ingests last.

        :raises StartupError: an instance raised; the message names it. What had started is
            stopped again.
        """
        if self.config.agent.state_file and self.cache is not None:
            self.state_restore = state.restore(self.cache, self.config.agent.state_file)
            self.restored_flows = self.state_restore.flows
        order = self._call_order()
        try:
            self.pm.subset("agent_start", order)(context=self.context)
        except HookFailed as exc:
            runners = self.pm.runners
            self.started = [p for p in order if not runners[p].implements("agent_start")
                            or runners[p].succeeded("agent_start")]
            self.stop_started()
            raise StartupError(f"{exc.plugin}: failed to start: {exc.error}") from exc.error
        self.started = order

    def stop_started(self) -> None:
        """Stop whatever was started (used when start-up fails half way)."""
        self._stop(self.started)
        self.started = []

    def _stop(self, paths: list[str]) -> None:
        """``agent_stop`` on ``paths``: ingests first, then the others (isolated: one that
        raises is logged and counted, the others still stop)."""
        ingests = [p for p in paths if p.startswith("ingest.")]
        for group in (ingests, [p for p in paths if p not in ingests]):
            if group:
                self.pm.subset("agent_stop", group)()

    def finite_done(self, source: str) -> None:
        """A finite ingest emitted everything (``ITEM_DONE``)."""
        self.pending_finite.discard(source)

    def all_finite_done(self) -> bool:
        """Whether no finite ingest is still emitting."""
        return not self.pending_finite

    # --- reload ------------------------------------------------------------------------------

    def reload_requested(self, reply: Callable[[reloading.ReloadOutcome], None] | None
                         ) -> None:
        """Handle ``ITEM_RELOAD``: re-read, switch (:mod:`agent.reloading` logs, counts and
        rolls back), and answer ``reply`` with the outcome.

        Refused while stopping: :meth:`shutdown` drains the inbox after the ingests stopped,
        and a reload applied then would start components (a changed ingest) that nothing
        stops any more. A :class:`~agent.reloading.ReloadRequest` its asker withdrew (it
        stopped waiting and answered "not applied") is not applied, only counted as failed
        (:func:`agent.reloading.withdrawn`)."""
        if isinstance(reply, reloading.ReloadRequest) and not reply.start():
            reloading.withdrawn(self, reply)
            return
        if self.context.stopping:
            outcome = reloading.refuse(self, "the agent is stopping")
        else:
            outcome = reloading.reload(self, self.reloader)
        if reply is not None:
            reply(outcome)

    def reload(self, new: AgentConfig) -> None:
        """Switch to ``new`` without losing flows.

        Unchanged instances keep running; the cache keeps its flows and takes new timeouts and
        maxflows in place; changed instances are replaced stage by stage, exporters first:
        every changed instance of the stage stops (an exporter sends what it holds, an
        NFLOG group is released) before any of their replacements starts (which may take
        over what the old ones left in ``context.handover``). When a component fails to
        start this raises, with ``self.config`` describing what runs then: reloading the
        previous configuration restores it (:mod:`agent.reloading` does).
        """
        old_by_path = {i.path: i for i in self.config.instances}
        new_by_path = {i.path: i for i in new.instances}
        running = dict(old_by_path)  # what runs, should a component fail to start
        try:
            for path in [p for p in old_by_path if p not in new_by_path]:
                self._retire(path)
                del running[path]
            for stage in sorted(_STAGE_ORDER, key=_STAGE_ORDER.__getitem__):
                self._reload_stage([i for i in new.instances if i.stage == stage],
                                   old_by_path, running)
        except Exception:
            # describe what really runs, so that reloading the previous config restores it;
            # [flow] and the schema stay what the agent started with (read at start only)
            self.config = dataclasses.replace(self.config, instances=[
                i for i in running.values() if i.path in self.components])
            self.pm.call_order(self._call_order())
            raise
        self.config = new
        # what the replaced instances left and no replacement took (a removed exporter, one
        # whose destinations all changed) has no taker any more
        self.context.handover.clear()
        self.pm.call_order(self._call_order())
        self.loop.scan_ns = new.agent.scan_interval_ms * 1_000_000
        self.context.debug = new.agent.debug
        self.context.use_snmp_rules(new.agent.snmp_rules)  # a fresh map: names resolved anew
        self.context.fragments = fragment_policy(new)

    def _reload_stage(self, instances: list[Instance], old_by_path: dict[str, Instance],
                      running: dict[str, Instance]) -> None:
        """Switch one stage's instances: every changed one stops before any replacement
        starts, so configurations that move between instances (``[0]`` and ``[1]``
        swapped) never run twice at once (one stream, one NFLOG group, one source port)."""
        changed = []
        for inst in instances:
            old = old_by_path.get(inst.path)
            if old is not None and old.type_name == inst.type_name \
                    and old.config == inst.config:
                continue
            if old is not None and inst.stage == "cache" \
                    and old.type_name == inst.type_name and self.cache is not None:
                self.cache.reconfigure(inst.config)
                running[inst.path] = inst
                continue
            changed.append((old, inst))
        for old, inst in changed:
            if old is not None and inst.stage != "cache":  # the cache hands over in _replace
                running.pop(old.path, None)
                self._retire(old.path)
        for old, inst in changed:
            running.pop(inst.path, None)
            self._replace(old if inst.stage == "cache" else None, inst)
            running[inst.path] = inst

    def _replace(self, old: Instance | None, inst: Instance) -> None:
        """Stop ``old`` (if any), then build, register and start ``inst``."""
        if old is not None and inst.stage == "cache":  # a different cache type: hand over
            self.loop.scan(self.loop.clock.now_ns(), force=True)
        if old is not None:
            self._retire(old.path)
        obj = self._make(inst)
        self.pm.register(obj, name=inst.path)
        self.components[inst.path] = obj
        try:
            self.pm.subset("agent_start", [inst.path])(context=self.context)
        except HookFailed as exc:
            self._unregister(inst.path)
            self._forget_declarations(inst.path, at_once=True)  # declared before it failed
            raise StartupError(f"{inst.path}: failed to start: {exc.error}") from exc.error
        self.started.append(inst.path)
        if inst.stage == "ingest" and obj.finite:
            self.pending_finite.add(inst.path)

    def _unregister(self, path: str) -> Component:
        obj = self.components.pop(path)
        self.pm.unregister(name=path)
        return obj

    def _retire(self, path: str) -> None:
        """Stop a removed or changed instance and forget it."""
        self._stop([path])
        self._unregister(path)
        self._forget_declarations(path)
        self.loop.forget_source(path)
        if path in self.started:
            self.started.remove(path)
        self.pending_finite.discard(path)

    def _forget_declarations(self, path: str, at_once: bool = False) -> None:
        """Drop what an instance declared to the context (sampling, delivery lag, netns); a
        retired ingest's lag lasts one more lag (its last packets are still queued) unless
        ``at_once`` (it failed to start)."""
        self.context.forget_sampling(path)
        self.context.forget_delivery_lag(path, at_once=at_once)
        self.context.forget_netns(path)

    # --- stopping ----------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop ingests, drain, export every flow, stop the rest.

        The stopped instances stay registered, so their last counters (``agent_collect_stats``,
        hook counters) can still be read.
        """
        self.context.stopping = True  # exporters may now wait for room rather than drop
        self._stop([p for p in self.started if p.startswith("ingest.")])
        self.loop.drain()
        now = self.loop.clock.now_ns
        if self.loop.stopping and self.config.agent.state_file and self.cache is not None:
            self.loop.scan(now() or time.time_ns())  # export what is due; save the rest
            state.save(self.cache, self.config.agent.state_file)
        self.loop.scan(now() or time.time_ns(), force=True)
        self._stop([p for p in self.started if not p.startswith("ingest.")])
        self.started = []
