"""The plugin manager: entry-point discovery, blocking, tracing, and the component registry.

Built-in plugins are ordinary entries of this distribution's ``agent.plugins`` entry-point
group, so they load exactly like third-party ones. Environment switches:

* ``AGENT_DISABLE_PLUGIN_AUTOLOAD=1``: load only this distribution's own plugins;
* ``AGENT_TRACE_HOOKS=1``: log every hook call and result at DEBUG (pluggy monitoring).

Every plugin is registered through a :class:`~agent.runner.HookRunner`
(:class:`AgentPluginManager`), so each hook implementation is isolated and counted while
pluggy keeps its documented call order, ``tryfirst``/``trylast`` and wrappers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pluggy

from netflow_agent import hookspecs
from netflow_agent.entrypoints import EntryPoint, entry_points, normalize
from netflow_agent.registry import ComponentRegistry
from netflow_agent.runner import ErrorLog, HookRunner

GROUP = "agent.plugins"
OWN_DISTRIBUTION = "netflow-agent"
log = logging.getLogger("agent.plugins")


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One loaded plugin module, for ``agent plugins``."""

    name: str
    module: str
    distribution: str
    version: str
    builtin: bool


def _entry_points() -> list[EntryPoint]:
    """The group's entry points by name (:mod:`agent.entrypoints`: no importlib.metadata)."""
    return sorted(entry_points(GROUP), key=lambda ep: ep.name)


@dataclass(frozen=True, slots=True)
class LoadFailure:
    """A plugin whose module could not be imported or registered."""

    name: str
    error: str


class AgentPluginManager(pluggy.PluginManager):
    """pluggy's plugin manager for the project ``agent``, with one runner per plugin.

    :meth:`register` wraps the plugin in a :class:`~agent.runner.HookRunner` and registers
    the runner: pluggy orders and calls the runner's functions exactly as it would the
    plugin's own implementations (same options), and the runner isolates and counts them.
    ``get_plugin(name)`` therefore returns the runner; :meth:`target` the plugin itself.

    :ivar errors: implementations that raised, per plugin name (kept across reloads).
    :ivar runners: registered name -> runner.
    """

    def __init__(self) -> None:
        super().__init__("agent")
        self.add_hookspecs(hookspecs)
        self.errors = ErrorLog()
        self.runners: dict[str, HookRunner] = {}
        #: plugins that failed to import (``agent plugins`` lists them)
        self.load_failures: list[LoadFailure] = []

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        """Register ``plugin`` (through its runner) under ``name``; see pluggy."""
        if plugin is None:
            return None
        if any(r.target is plugin for r in self.runners.values()):
            raise ValueError(f"plugin already registered: {plugin!r}")
        name = name or self.get_canonical_name(plugin)
        impls = {attr: opts for attr in dir(plugin)
                 if (opts := self.parse_hookimpl_opts(plugin, attr)) is not None}
        runner = HookRunner(plugin, name, impls, self.errors)  # type: ignore[arg-type]
        registered = super().register(runner, name)
        if registered is not None:
            self.runners[registered] = runner
        return registered

    def unregister(self, plugin: Any = None, name: str | None = None) -> Any:
        """Unregister a plugin, given as the object :meth:`register` got, or by name.

        :return: the plugin object, or ``None`` when it was not registered.
        """
        if name is None:
            name = next((n for n, r in self.runners.items() if plugin in (r, r.target)), None)
            if name is None:
                return None
        runner = super().unregister(name=name)
        self.runners.pop(name, None)
        return runner.target if isinstance(runner, HookRunner) else runner

    def target(self, name: str) -> Any:
        """The plugin registered under ``name`` (not its runner), or ``None``."""
        runner = self.runners.get(name)
        return runner.target if runner is not None else None

    def call_order(self, names: Sequence[str]) -> None:
        """Re-register ``names`` so that pluggy calls them in this order (before every plugin
        registered earlier, as pluggy calls the last registered first)."""
        runners = [self.runners[n] for n in names]
        for runner in runners:
            super().unregister(name=runner.name)
        for runner in reversed(runners):
            super().register(runner, runner.name)

    def subset(self, hook: str, names: Iterable[str]) -> Any:
        """A caller of ``hook`` that reaches only the plugins ``names`` (pluggy
        ``subset_hook_caller``: their order, ``tryfirst``/``trylast`` and wrappers apply)."""
        keep = set(names)
        return self.subset_hook_caller(
            hook, remove_plugins=[r for n, r in self.runners.items() if n not in keep])

    def stats(self) -> dict[str, dict[str, dict[str, float]]]:
        """Plugin name -> hook name -> calls, errors and seconds."""
        return {name: runner.stats() for name, runner in self.runners.items()
                if runner.counters}


def make_manager(disabled: list[str] | tuple[str, ...] = ()) -> tuple[
        AgentPluginManager, list[PluginInfo]]:
    """Create the plugin manager and load every enabled plugin module.

    A plugin that fails to import is logged and listed in ``pm.load_failures``; its
    components are then unknown, which dry-run reports where the config uses them.

    :param disabled: entry-point names to skip (``[agent] disabled_plugins``).
    """
    pm = AgentPluginManager()
    autoload = os.environ.get("AGENT_DISABLE_PLUGIN_AUTOLOAD", "") not in ("1", "true", "yes")
    loaded = []
    failures: list[LoadFailure] = []
    for ep in _entry_points():
        dist, version = ep.dist, ep.version
        builtin = normalize(dist) == normalize(OWN_DISTRIBUTION)
        if ep.name in disabled or (not builtin and not autoload):
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        try:
            pm.register(ep.load(), name=ep.name)
        except Exception as exc:  # noqa: BLE001 - any import error of a plugin is reported
            log.error("plugin %s (%s) failed to load: %s", ep.name, ep.value, exc)
            failures.append(LoadFailure(ep.name, f"{type(exc).__name__}: {exc}"))
            continue
        loaded.append(PluginInfo(ep.name, ep.value, dist, version, builtin))
    pm.load_failures = failures
    pm.call_order([p.name for p in loaded])  # module hooks run in entry-point name order
    pm.check_pending()
    if os.environ.get("AGENT_TRACE_HOOKS", "") in ("1", "true", "yes"):
        _install_tracing(pm)
    log.debug("registered %d plugins: %s", len(loaded),
              ", ".join(f"{p.name}-{p.version}" for p in loaded))
    return pm, loaded


def _install_tracing(pm: pluggy.PluginManager) -> None:
    tracer = logging.getLogger("agent.hooks")

    def before(hook_name: str, impls: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        tracer.debug("call %s(%s) -> %d impls", hook_name, ", ".join(kwargs), len(impls))

    def after(outcome: Any, hook_name: str, impls: Sequence[Any],
              kwargs: Mapping[str, Any]) -> None:
        tracer.debug("done %s", hook_name)

    pm.add_hookcall_monitoring(before, after)


def build_registry(pm: pluggy.PluginManager) -> ComponentRegistry:
    """Ask every plugin module to register its component types (``registry.add`` records
    which plugin added each type)."""
    registry = ComponentRegistry()
    pm.hook.agent_register_components(registry=registry)
    return registry
