"""pluggy's documented semantics hold for every hook a plugin may implement.

For each hook: implementations run in the core's order (configuration order for component
instances, last registered first for plugin modules), ``tryfirst``/``trylast`` move an
implementation, and a ``wrapper=True`` implementation wraps all the others. Stage hooks are
isolated: one instance that raises is logged and counted for that instance and hook, and the
others still run. pluggy's hook call monitoring sees the stage calls.
"""

from __future__ import annotations

import socket
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from netflow_agent import hookimpl, hookspecs
from netflow_agent.model import FlowBatch, FlowDelta, NatEvent, make_key
from netflow_agent.registry import Component
from netflow_agent.report import build_snapshot
from netflow_agent.runner import ISOLATED, RAISING

S = 1_000_000_000
T0 = 1_700_000_000 * S
BASE = "[cache]\ninactive_timeout = 15\n[[ingest.fake]]\n[[export.collect]]\n"
MODULE_HOOKS = ("agent_register_components", "agent_check_config")
HOOKS = sorted(n for n in dir(hookspecs) if n.startswith("agent_"))


def pkt(sport: int, ts: int = T0) -> tuple[bytes, int, int, int, int]:
    key = make_key(4, 17, socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2"), sport, 53)
    return (key, 100, 0, ts, 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class NoConfig:
    """A component without keys."""


def _method(hook: str, log: list[str], opts: dict[str, Any], raises: bool = False) -> Any:
    """A hook implementation method taking no argument (pluggy's opt-in arguments) that logs
    its instance's name."""
    if opts.get("wrapper"):
        def wrap(self: Component) -> Any:
            log.append(f"{self.name}-before")
            result = yield
            log.append(f"{self.name}-after")
            return result
        impl: Callable[..., Any] = wrap
    else:
        def plain(self: Component) -> None:
            log.append(self.name)
            if raises:
                raise RuntimeError(f"{self.name} fails in {hook}")
        impl = plain
    return hookimpl(**opts)(impl)


def probe_component(hook: str, tag: str, log: list[str], raises: bool = False,
                    **opts: Any) -> types.SimpleNamespace:
    """A plugin module registering ``[[export.probe_<tag>]]``, whose instances implement
    ``hook`` with ``opts`` and log their name when called."""
    cls = type(f"Probe_{tag}", (Component,), {
        "stage": "export", "type_name": f"probe_{tag}", hook: _method(hook, log, opts, raises)})

    def register(registry: Any) -> None:
        registry.add("export", f"probe_{tag}", cls, NoConfig)

    return types.SimpleNamespace(agent_register_components=hookimpl(register))


def probe_module(hook: str, tag: str, log: list[str], **opts: Any) -> types.SimpleNamespace:
    """A plugin module implementing ``hook`` with ``opts``; it logs ``tag``."""
    if opts.get("wrapper"):
        def call() -> Any:
            log.append(f"{tag}-before")
            result = yield
            log.append(f"{tag}-after")
            return result
    else:
        def call() -> None:
            log.append(tag)
    return types.SimpleNamespace(**{hook: hookimpl(**opts)(call)})


def trigger(hook: str, agent: Any) -> None:
    """Make the running agent call ``hook`` (start-up already called the module hooks and
    ``agent_start``)."""
    if hook in ("agent_cache_packets", "agent_aggregate_flows", "agent_export_flows"):
        agent.feed([pkt(1)])
        agent.scan(T0 + 60 * S)
    elif hook == "agent_cache_flows":
        delta = FlowDelta(pkt(7)[0], packets=1, octets=100, start_ns=T0, end_ns=T0)
        agent.pipeline.context.emit(FlowBatch("ingest.fake[0]", [delta]))
        agent.process()
    elif hook in ("agent_cache_expire", "agent_export_room", "agent_tick"):
        agent.scan(T0)
    elif hook == "agent_stop":
        agent.finish()
    elif hook == "agent_export_nat_events":
        agent["ingest.fake[0]"].push_nat([NatEvent(1, T0, 4, 6, bytes(4), bytes(4), 1, 2,
                                                   bytes(4), bytes(4), 3, 4, snat=True)])
        agent.process()
    elif hook == "agent_collect_stats":
        agent.pipeline.collect_stats()


def test_every_hook_is_covered() -> None:
    assert set(HOOKS) == ISOLATED | RAISING
    assert set(MODULE_HOOKS) | {"agent_start"} == RAISING


@pytest.mark.parametrize("hook", [h for h in HOOKS if h not in MODULE_HOOKS])
def test_instance_hooks_follow_pluggy_order_and_wrappers(make_agent, collecting_plugin, hook):
    log: list[str] = []
    plugins = [collecting_plugin,
               probe_component(hook, "last", log, trylast=True),
               probe_component(hook, "plain", log),
               probe_component(hook, "wrap", log, wrapper=True),
               probe_component(hook, "first", log, tryfirst=True)]
    # configuration order: trylast first, tryfirst last, the wrapper in between
    agent = make_agent(BASE + "[[export.probe_last]]\n[[export.probe_plain]]\n"
                       "[[export.probe_wrap]]\n[[export.probe_plain]]\n"
                       "[[export.probe_first]]\n", plugins)
    if hook != "agent_start":
        log.clear()
        trigger(hook, agent)
    assert log == ["export.probe_wrap[0]-before", "export.probe_first[0]",
                   "export.probe_plain[0]", "export.probe_plain[1]", "export.probe_last[0]",
                   "export.probe_wrap[0]-after"]


@pytest.mark.parametrize("hook", MODULE_HOOKS)
def test_module_hooks_follow_pluggy_order_and_wrappers(make_agent, collecting_plugin, hook):
    log: list[str] = []
    modules = [probe_module(hook, "last", log, trylast=True),
               probe_module(hook, "plain-b", log),
               probe_module(hook, "plain-a", log),  # registered last: called first
               probe_module(hook, "wrap", log, wrapper=True),
               probe_module(hook, "first", log, tryfirst=True)]
    make_agent(BASE, [collecting_plugin, *modules])
    assert log == ["wrap-before", "first", "plain-a", "plain-b", "last", "wrap-after"]


@pytest.mark.parametrize("hook", sorted(ISOLATED))
def test_a_raising_instance_is_isolated_and_counted(make_agent, collecting_plugin, hook):
    log: list[str] = []
    plugins = [collecting_plugin, probe_component(hook, "bad", log, raises=True),
               probe_component(hook, "good", log)]
    agent = make_agent(BASE + "[[export.probe_bad]]\n[[export.probe_bad]]\n"
                       "[[export.probe_good]]\n", plugins)
    log.clear()
    trigger(hook, agent)
    assert log == ["export.probe_bad[0]", "export.probe_bad[1]", "export.probe_good[0]"]
    errors = agent.pipeline.hook_errors
    assert (errors["export.probe_bad[0]"], errors["export.probe_bad[1]"]) == (1, 1)
    assert "export.probe_good[0]" not in errors
    stats = agent.pipeline.hook_stats()
    for name in ("export.probe_bad[0]", "export.probe_bad[1]"):
        assert (stats[name][hook]["calls"], stats[name][hook]["errors"]) == (1, 1)
    assert (stats["export.probe_good[0]"][hook]["calls"],
            stats["export.probe_good[0]"][hook]["errors"]) == (1, 0)


def test_a_wrapper_that_raises_is_isolated(make_agent, collecting_plugin):
    class BadWrapper(Component):
        stage, type_name = "export", "badwrap"

        @hookimpl(wrapper=True)
        def agent_export_flows(self, records):
            raise RuntimeError("before its yield")
            yield  # pragma: no cover

    def register(registry):
        registry.add("export", "badwrap", BadWrapper, NoConfig)

    agent = make_agent(BASE + "[[export.badwrap]]\n",
                       [collecting_plugin, types.SimpleNamespace(
                           agent_register_components=hookimpl(register))])
    agent.feed([pkt(1)])
    agent.finish()
    assert len(agent["export.collect[0]"].flows) == 1
    assert agent.pipeline.hook_errors["export.badwrap[0]"] == 1


def test_opt_in_and_defaulted_arguments_reach_the_implementation(make_agent,
                                                                   collecting_plugin):
    """pluggy passes an argument with a default as a keyword; the runner passes it on."""
    seen: list[tuple[int, bool]] = []

    class Expirer(Component):
        stage, type_name = "export", "expirer"

        @hookimpl
        def agent_cache_expire(self, now_ns, force=False):
            seen.append((now_ns, force))

    def register(registry):
        registry.add("export", "expirer", Expirer, NoConfig)

    agent = make_agent(BASE + "[[export.expirer]]\n", [collecting_plugin, types.SimpleNamespace(
        agent_register_components=hookimpl(register))])
    agent.scan(T0)
    assert seen == [(T0, False)]


def test_aggregate_chain_sees_the_previous_result(make_agent, collecting_plugin):
    """A list returned by one aggregator is what the next one and the exporters get."""
    seen: list[int] = []

    class Halve(Component):
        stage, type_name = "aggregate", "halve"

        @hookimpl
        def agent_aggregate_flows(self, records):
            seen.append(len(records))
            return records[: len(records) // 2]

    def register(registry):
        registry.add("aggregate", "halve", Halve, NoConfig)

    agent = make_agent(BASE + "[[aggregate.halve]]\n[[aggregate.halve]]\n",
                       [collecting_plugin, types.SimpleNamespace(
                           agent_register_components=hookimpl(register))])
    agent.feed([pkt(p) for p in range(1, 9)])
    agent.finish()
    assert seen == [8, 4] and len(agent["export.collect[0]"].flows) == 2


def test_hook_call_monitoring_sees_stage_calls(make_agent, collecting_plugin):
    agent = make_agent(BASE, [collecting_plugin])
    calls: list[tuple[str, list[str]]] = []
    agent.pipeline.pm.add_hookcall_monitoring(
        lambda name, impls, kwargs: calls.append((name, [i.plugin_name for i in impls])),
        lambda outcome, name, impls, kwargs: None)
    agent.feed([pkt(1)])
    agent.finish()
    names = [n for n, _ in calls]
    for hook in ("agent_cache_packets", "agent_cache_expire", "agent_aggregate_flows",
                 "agent_export_flows", "agent_stop"):
        assert hook in names
    export_impls = dict(calls)["agent_export_flows"]
    assert "export.collect[0]" in export_impls


def test_hook_counters_are_in_the_snapshot(make_agent, collecting_plugin):
    agent = make_agent(BASE, [collecting_plugin])
    agent.feed([pkt(1)])
    agent.feed([pkt(2)])
    hooks = build_snapshot(agent.pipeline)["hooks"]
    assert hooks["cache"]["agent_cache_packets"]["calls"] == 2
    assert hooks["cache"]["agent_cache_packets"]["errors"] == 0
    assert hooks["cache"]["agent_cache_packets"]["seconds"] > 0
    assert hooks["ingest.fake[0]"]["agent_start"]["calls"] == 1
    from netflow_agent.metrics import metric_families

    samples = {(f.name, s.labels["component"], s.labels["hook"]): s.value
               for f in metric_families(build_snapshot(agent.pipeline))
               if f.name.startswith("netflow_agent_hook_") for s in f.samples}
    assert samples[("netflow_agent_hook_calls", "cache", "agent_cache_packets")] == 2
    assert samples[("netflow_agent_hook_call_errors", "cache", "agent_cache_packets")] == 0
    assert samples[("netflow_agent_hook_seconds", "cache", "agent_cache_packets")] > 0
