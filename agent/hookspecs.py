"""Hook specifications: the whole plugin API between the agent core and its plugins.

Two kinds of objects implement these hooks (see ``docs/hooks.md``):

* a **plugin module** (built in, or found through the ``agent.plugins`` entry-point group)
  implements the registration hooks, once per start;
* a **component instance**, built by the core from one TOML table such as
  ``[[export.netflow]]``, is registered as a named plugin (``export.netflow[0]``); its methods
  implement the lifecycle and stage hooks, so every instance sees every call.

Every hook is called through pluggy on the single pipeline thread, always with keyword
arguments: components need no locks. pluggy's semantics hold (last registered first, with
instances registered so that exporters, the cache, aggregators and ingests come in that
order; ``tryfirst``/``trylast``; wrappers). Each implementation is called through its plugin's
runner (:mod:`agent.runner`): in a stage hook one that raises is logged and counted and the
others still run; in ``agent_start``, ``agent_register_components`` and
``agent_check_config`` a raise stops the caller. Plugins import what they need from
:mod:`netflow_agent.api`. Per hook: ``docs/hooks.md`` (*Threads, and what happens when a hook
raises*).

Data flow::

    ingest ──PacketBatch/FlowBatch──▶ cache ──FlowRecord──▶ aggregate ──▶ export
    ingest.conntrack ──NatEvent──────────────────────────────────────────▶ export
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from netflow_agent.config.model import AgentConfig
    from netflow_agent.errors import ConfigIssue
    from netflow_agent.model import FlowBatch, FlowRecord, NatEvent, PacketBatch
    from netflow_agent.registry import ComponentRegistry
    from netflow_agent.runtime import RunContext

hookspec = pluggy.HookspecMarker("agent")

# --- registration and configuration: plugin modules, once per start, in this order ---------


@hookspec
def agent_register_components(registry: ComponentRegistry) -> None:
    """Register the component types this plugin provides.

    :param registry: call ``registry.add(stage, name, factory, config_class, ...)`` once per
        component type; ``stage`` is ``"ingest"``, ``"cache"``, ``"aggregate"`` or ``"export"``
        and ``name`` is the TOML table name (``[[export.netflow]]`` has stage ``export``, name
        ``netflow``).
    """


@hookspec
def agent_check_config(config: AgentConfig, check_env: bool) -> list[ConfigIssue] | None:
    """Check the whole, converted configuration beyond one section's own ``check()``.

    Called by ``--dry-run`` and at every start and reload, after every section converted.

    :param config: the converted configuration (all sections, all instances).
    :param check_env: ``True`` under ``--dry-run --check-env`` and at real start: the hook may
        probe the machine (capabilities, interfaces, kernel features) but must never attach,
        bind or send. ``False`` means a pure check (config management validation).
    :return: a list of :class:`~agent.errors.ConfigIssue`, or ``None`` for none.
    """


# --- lifecycle: component instances ---------------------------------------------------------


@hookspec
def agent_start(context: RunContext) -> None:
    """Open sockets, attach programs, start reader threads.

    Ingest components keep ``context`` and call ``context.emit(batch)`` from any thread.
    Raising here stops start-up with the component's name and the error (at reload: the
    reload fails). Called on the instances of one lifecycle step only, never on plugin
    modules.

    :param context: the running agent's services (emit, clock, start time, stats).
    """


@hookspec
def agent_tick(now_ns: int) -> None:
    """Periodic timer work (template refresh, reconnects, option records); about once a second.

    :param now_ns: the pipeline clock, wall-clock ns (the capture clock during pcap replay).
    """


@hookspec
def agent_stop() -> None:
    """Stop. Ingest components stop producing; exporters send what they hold and close.

    The core calls it on ingests first, then drains the cache through aggregation and export,
    then on the other instances; at reload, on a changed or removed instance before its
    replacement starts. Isolated: a raise is logged and counted, the others still stop.
    """


# --- ingest -> cache ------------------------------------------------------------------------


@hookspec
def agent_cache_packets(batch: PacketBatch, now_ns: int) -> None:
    """Account a batch of packet observations (the cache stage implements this).

    :param batch: packets from one ingest instance, with its parse counters.
    :param now_ns: the pipeline clock when the batch is handled.
    """


@hookspec
def agent_cache_flows(batch: FlowBatch, now_ns: int) -> None:
    """Account flow deltas that were aggregated before the agent saw them (eBPF maps).

    :param batch: flow deltas from one ingest instance.
    :param now_ns: the pipeline clock.
    """


@hookspec
def agent_cache_expire(now_ns: int, force: bool, limit: int) -> list[FlowRecord] | None:
    """Return the flows that are due for export and forget (or reset) them.

    :param now_ns: the pipeline clock; inactive and active timeouts are measured against it.
    :param force: ``True`` at shutdown: return every flow, with end reason "forced end".
    :param limit: return at most this many flows per call (0: no limit). With ``force``,
        the core calls again while a call returns ``limit`` flows, so a large table leaves in
        steps (bounded memory). On a scan it is what the exporters can take without loss
        (:func:`agent_export_room`): due flows beyond it stay in the table for the next scans,
        the most overdue leave first; < 0: none this scan. A cache may ignore it and return
        everything at once.
    :return: expired flow records (counters are deltas since their last export).
    """


# --- cache -> aggregate ---------------------------------------------------------------------


@hookspec
def agent_aggregate_flows(records: list[FlowRecord]) -> list[FlowRecord] | None:
    """Transform expired records before export; implementations run as a chain.

    All implementations get the same list, in pluggy order: edit it in place, or return a new
    list, which replaces the list's content for the next implementation and the exporters.

    :param records: the records leaving the cache (as the previous implementation left them).
    :return: the records to pass on, or ``None`` to pass ``records`` on unchanged.
    """


# --- aggregate -> export --------------------------------------------------------------------


@hookspec
def agent_export_flows(records: list[FlowRecord]) -> None:
    """Export flow records (every exporter instance gets every record).

    :param records: records to export; treat them as read-only, they are shared.
    """


@hookspec
def agent_export_nat_events(events: list[NatEvent]) -> None:
    """Export NAT translation events (exporters with ``natevents`` enabled).

    :param events: start and stop events from conntrack; read-only, shared.
    """


@hookspec
def agent_export_room() -> int | None:
    """How many flow records this exporter can take now without losing any.

    Asked before every scan (not at stop): the scan hands the exporters at most the smallest
    answer, and due flows beyond it wait in the cache for the next scans (ipt_NETFLOW's
    expiry spread over scans), so a mass expiry never overflows a paced backlog.

    :return: records (e.g. a paced UDP backlog's free datagrams times the records one holds,
        less a margin), ``0`` when full now, or ``None``: no limit (unpaced, TCP, files).
    """


# --- observability --------------------------------------------------------------------------


@hookspec
def agent_collect_stats() -> dict[str, Any] | None:
    """Report this instance's counters for ``agent stats`` and metrics.

    :return: a flat mapping of counter name to number (or a nested mapping per destination),
        or ``None``.
    """
