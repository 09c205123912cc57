"""The plugin manager: entry-point discovery, blocking, tracing, and the component registry.

Built-in plugins are ordinary entries of this distribution's ``agent.plugins`` entry-point
group, so they load exactly like third-party ones. Environment switches:

* ``AGENT_DISABLE_PLUGIN_AUTOLOAD=1``: load only this distribution's own plugins;
* ``AGENT_TRACE_HOOKS=1``: log every hook call and result at DEBUG (pluggy monitoring).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from netflow_agent import hookspecs
from netflow_agent.registry import ComponentRegistry

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


def _entry_points() -> list[metadata.EntryPoint]:
    return sorted(metadata.entry_points(group=GROUP), key=lambda ep: ep.name)


def _distribution(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = ep.dist
    if dist is None:
        return "", ""
    return dist.metadata["Name"] or "", dist.version or ""


@dataclass(frozen=True, slots=True)
class LoadFailure:
    """A plugin whose module could not be imported or registered."""

    name: str
    error: str


def make_manager(disabled: list[str] | tuple[str, ...] = ()) -> tuple[
        pluggy.PluginManager, list[PluginInfo]]:
    """Create the plugin manager and load every enabled plugin module.

    A plugin that fails to import is logged and listed in ``pm.load_failures``; its
    components are then unknown, which dry-run reports where the config uses them.

    :param disabled: entry-point names to skip (``[agent] disabled_plugins``).
    """
    pm = pluggy.PluginManager("agent")
    pm.add_hookspecs(hookspecs)
    autoload = os.environ.get("AGENT_DISABLE_PLUGIN_AUTOLOAD", "") not in ("1", "true", "yes")
    loaded = []
    failures: list[LoadFailure] = []
    for ep in _entry_points():
        dist, version = _distribution(ep)
        builtin = _normalize(dist) == _normalize(OWN_DISTRIBUTION)
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
    pm.load_failures = failures  # type: ignore[attr-defined]
    pm.check_pending()
    if os.environ.get("AGENT_TRACE_HOOKS", "") in ("1", "true", "yes"):
        _install_tracing(pm)
    log.debug("registered %d plugins: %s", len(loaded),
              ", ".join(f"{p.name}-{p.version}" for p in loaded))
    return pm, loaded


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-")


def _install_tracing(pm: pluggy.PluginManager) -> None:
    tracer = logging.getLogger("agent.hooks")

    def before(hook_name: str, impls: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        tracer.debug("call %s(%s) -> %d impls", hook_name, ", ".join(kwargs), len(impls))

    def after(outcome: Any, hook_name: str, impls: Sequence[Any],
              kwargs: Mapping[str, Any]) -> None:
        tracer.debug("done %s", hook_name)

    pm.add_hookcall_monitoring(before, after)


def build_registry(pm: pluggy.PluginManager) -> ComponentRegistry:
    """Ask every plugin module to register its component types."""
    registry = ComponentRegistry()
    for name, plugin in pm.list_name_plugin():
        impl = getattr(plugin, "agent_register_components", None)
        if impl is None:
            continue
        registry.current_plugin = name
        impl(registry=registry)
    registry.current_plugin = ""
    return registry
