"""Component instances from build to shutdown: build, start, reload, stop.

Start order: exporters, cache and aggregation, then ingests (nothing is emitted before
exporters are ready). Stop order: ingests stop, the inbox is drained, every flow is expired
(end reason "forced"), aggregated and exported, then exporters stop. A reload keeps unchanged
instances, reconfigures the cache in place and replaces what changed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pluggy

from agent import state
from agent.config.model import AgentConfig, Instance
from agent.loop import Loop
from agent.runtime import RunContext

log = logging.getLogger("agent.pipeline")
_STAGE_ORDER = {"export": 0, "cache": 1, "aggregate": 2, "ingest": 3}


class StartupError(Exception):
    """A component failed in ``agent_start``; the message names it."""


class Lifecycle:
    """The running component instances, and every change to that set.

    :param config: the validated configuration to build from.
    :param pm: the plugin manager instances are registered with (as named plugins).
    :param context: handed to every ``agent_start``.
    :param loop: the pipeline loop (its scans flush flows at shutdown and cache handover).
    """

    def __init__(self, config: AgentConfig, pm: pluggy.PluginManager, context: RunContext,
                 loop: Loop):
        self.config = config
        self.pm = pm
        self.context = context
        self.loop = loop
        self.components: dict[str, Any] = {}
        self.started: list[str] = []
        self.pending_finite: set[str] = set()
        #: re-reads and validates the configuration for a reload; set by the CLI
        self.reloader: Callable[[], AgentConfig | None] | None = None
        self.reloads = 0
        self.reload_failures = 0
        self.restored_flows = 0

    # --- building and starting ---------------------------------------------------------------

    def build(self) -> bool:
        """Instantiate every configured component and register it as a named plugin.

        :return: whether every ingest is a finite replay (the capture clock applies).
        """
        for inst in self.config.instances:
            obj = inst.ctype.factory(inst.config, inst.path)
            self.pm.register(obj, name=inst.path)
            self.components[inst.path] = obj
        self.pm.check_pending()
        ingests = [c for p, c in self.components.items() if p.startswith("ingest.")]
        self.pending_finite = {p for p, c in self.components.items()
                               if p.startswith("ingest.") and getattr(c, "finite", False)}
        return bool(ingests) and len(self.pending_finite) == len(ingests)

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

    def finite_done(self, source: str) -> None:
        """A finite ingest emitted everything (``ITEM_DONE``)."""
        self.pending_finite.discard(source)

    def all_finite_done(self) -> bool:
        """Whether no finite ingest is still emitting."""
        return not self.pending_finite

    def cache_component(self) -> Any:
        """The cache instance (there is exactly one)."""
        return self.components.get("cache")

    # --- reload ------------------------------------------------------------------------------

    def reload_requested(self, reply: Callable[[bool, str], None] | None) -> None:
        """Handle ``ITEM_RELOAD``: re-read, switch, count, and answer ``reply``."""
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
        self.loop.scan_ns = new.agent.scan_interval_ms * 1_000_000
        self.context.debug = new.agent.debug

    def _replace(self, old: Instance | None, inst: Instance) -> None:
        if old is not None and inst.stage == "cache":  # a different cache type: hand over
            self.loop.scan(self.loop.clock.now_ns(), force=True)
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
        self.loop.forget_source(path)
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

    def shutdown(self) -> None:
        """Stop ingests, drain, export every flow, stop the rest."""
        ingests = [p for p in self.started if p.startswith("ingest.")]
        for path in ingests:
            self._stop_one(path)
        self.loop.drain()
        cache = self.cache_component()
        now = self.loop.clock.now_ns
        if self.loop.stopping and self.config.agent.state_file and hasattr(cache, "dump"):
            self.loop.scan(now() or time.time_ns())  # export what is due; save the rest
            state.save(cache, self.config.agent.state_file)
        self.loop.scan(now() or time.time_ns(), force=True)
        for path in reversed([p for p in self.started if not p.startswith("ingest.")]):
            self._stop_one(path)
        self.started.clear()
        for path in list(self.components):
            self.pm.unregister(name=path)

    def _stop_one(self, path: str) -> None:
        self._stop_object(path, self.components[path])
