"""Validate a whole configuration: the engine behind ``agent --dry-run`` and every start.

Order (every step runs, every issue is collected): load and merge TOML -> who may change
those files (:mod:`agent.config.files`) -> resolve table
names to registered components -> convert each table (types, bounds, ``Config.check()``) ->
availability of each component -> ``[aggregate] rules`` handed to the cache's
``aggregation`` -> topology (at least one ingest and one export) -> resource conflicts
(one NFLOG group or interface hook per instance) -> plugins' ``agent_check_config``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from netflow_agent.config.convert import convert
from netflow_agent.config.files import config_permission_issues
from netflow_agent.config.load import RawConfig, load
from netflow_agent.config.model import AgentConfig, AgentSection, FlowSection, Instance
from netflow_agent.errors import ConfigIssue
from netflow_agent.keyrules import rule_issues, split_rules
from netflow_agent.registry import ComponentRegistry
from netflow_agent.roles import Ingest
from netflow_agent.schema import OPTIONAL_KEY, FlowSchema

TOP_LEVEL = ("agent", "flow", "cache", "aggregate", "ingest", "export")
DEFAULT_CACHE = "memory"
DEFAULT_AGGREGATE = "rules"


def validate(
    path: str | Path, registry: ComponentRegistry, hook: Any = None, check_env: bool = False
) -> tuple[AgentConfig | None, list[ConfigIssue]]:
    """Load, convert and check the configuration at ``path``.

    :param hook: the plugin manager's ``pm.hook`` (for ``agent_check_config``), or ``None``.
    :return: the configuration (``None`` when there are errors) and all issues, each with its
        file filled in.
    """
    raw, issues = load(path)
    issues += config_permission_issues(path, raw.files)
    if not raw.data and _has_errors(issues):
        return None, issues
    config, more = build(raw, registry)
    issues += more
    if config is not None and hook is not None and not _has_errors(issues):
        for result in hook.agent_check_config(config=config, check_env=check_env):
            issues += result or []
    issues = [_with_file(i, raw) for i in issues]
    return (None if _has_errors(issues) else config), issues


def _has_errors(issues: list[ConfigIssue]) -> bool:
    return any(i.severity == "error" for i in issues)


def _with_file(issue: ConfigIssue, raw: RawConfig) -> ConfigIssue:
    if issue.file:
        return issue
    return dataclasses.replace(issue, file=raw.origin(issue.path))


def build(raw: RawConfig,
          registry: ComponentRegistry) -> tuple[AgentConfig | None, list[ConfigIssue]]:
    """Convert merged TOML data into an :class:`AgentConfig`, collecting issues."""
    issues: list[ConfigIssue] = []
    data = raw.data
    for key in data:
        if key not in TOP_LEVEL:
            issues.append(ConfigIssue(key, "unknown table" + _hint(key, TOP_LEVEL)
                                      + f"; known: {', '.join(TOP_LEVEL)}"))
    agent, agent_issues = convert(AgentSection, data.get("agent", {}), "agent")
    issues += agent_issues
    flow, flow_issues = convert(FlowSection, data.get("flow", {}), "flow")
    issues += flow_issues
    instances = _cache_instance(data.get("cache", {}), registry, issues)
    instances += _aggregate_instances(data.get("aggregate", {}), registry, issues)
    instances = _fold_aggregate_rules(instances, issues)
    for stage in ("ingest", "export"):
        instances += _stage_instances(stage, data.get(stage, {}), registry, issues)
    _check_topology(instances, data, issues)
    _check_resources(instances, issues)
    _check_sampling(instances, issues)
    if flow is not None:
        _check_flow_fields(flow, registry, issues)
    if agent is None or flow is None or _has_errors(issues):
        return None, issues
    schema = registry.flow_schema(flow.options())
    issues += unobservable_fields(schema, instances)
    return AgentConfig(agent=agent, instances=instances, raw=raw, flow=flow,
                       schema=schema), issues


def _check_flow_fields(flow: FlowSection, registry: ComponentRegistry,
                       issues: list[ConfigIssue]) -> None:
    """``[flow] fields`` must name fields a loaded plugin declared."""
    for n, name in enumerate(flow.fields):
        if name not in registry.flow_fields:
            known = ", ".join(sorted(registry.flow_fields)) or "none"
            issues.append(ConfigIssue(f"flow.fields[{n}]", f"no loaded plugin declares a flow "
                                      f"field {name!r}" + _hint(name, registry.flow_fields)
                                      + f"; declared: {known}"))


#: the ``[flow]`` option that turns each optional built-in field on
_OPTION_OF = {"src_mac": "mac", "dst_mac": "mac", "vlan_id": "vlan", "vlan_priority": "vlan",
              "inner_vlan_id": "vlan", "inner_vlan_priority": "vlan",
              "in_physdev": "physdev", "out_physdev": "physdev", "tunnel_id": "tunnel_id",
              **{f"mpls_label_{n}": "mpls_labels" for n in range(1, 11)}}
_BUILTIN_OPTIONAL = frozenset(f.name for f in OPTIONAL_KEY)


def unobservable_fields(schema: FlowSchema, instances: list[Instance]) -> list[ConfigIssue]:
    """Warnings for ``[flow]`` fields a configured ingest cannot see (they stay 0 in its
    flows), one per ingest and option, naming both (:attr:`Ingest.observable_fields`)."""
    wanted = [n for n in schema.ext_names if n in _BUILTIN_OPTIONAL and n != "ethernet_type"]
    if schema.options.physdev == "override":
        wanted += ["in_physdev", "out_physdev"]  # they replace the interfaces instead
    issues = []
    for inst in instances:
        factory = inst.ctype.factory
        if inst.stage != "ingest" or not (isinstance(factory, type)
                                          and issubclass(factory, Ingest)
                                          and factory.emits_flows):
            continue
        missing: dict[str, list[str]] = {}
        for name in wanted:
            if name not in factory.observable_fields:
                missing.setdefault(_OPTION_OF[name], []).append(name)
        for option_name, names in missing.items():
            value = schema.options.physdev if option_name == "physdev" else None
            what = f"physdev = \"{value}\"" if value else option_name
            issues.append(ConfigIssue(
                f"flow.{option_name}", f"{inst.path} cannot see "
                f"{', '.join(names)}: {what} leaves them 0 in its flows", "warning"))
    return issues


def _check_sampling(instances: list[Instance], issues: list[ConfigIssue]) -> None:
    """Refuse ``[cache] sampler`` (flow sampling) next to an ingest's packet sampling.

    Collectors get one sampling interval per exporter; flows sampled twice would need the
    product announced and no collector reads a two-stage description, so the combination
    is refused rather than composed.
    """
    cache = next((i for i in instances if i.stage == "cache"), None)
    sampler = getattr(cache.config, "sampler", "") if cache is not None else ""
    if not sampler:
        return
    for inst in instances:
        packet = getattr(inst.config, "sampling", 1)
        if inst.stage == "ingest" and isinstance(packet, int) and packet > 1:
            issues.append(ConfigIssue(
                "cache.sampler", f"flow sampling {sampler!r} cannot be combined with "
                f"{inst.path}'s packet sampling 1/{packet}: collectors are told one sampling; "
                f"use one of them (remove [cache] sampler or set {inst.path}.sampling = 1)"))


def _hint(word: str, choices: Any) -> str:
    import difflib  # only for a typo: not loaded by every agent

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _instance(stage: str, name: str, path: str, table: Any, registry: ComponentRegistry,
              issues: list[ConfigIssue]) -> Instance | None:
    ctype = registry.get(stage, name)
    if ctype is None:
        known = registry.names(stage)
        issues.append(ConfigIssue(path.partition("[")[0], f"unknown {stage} plugin '{name}'"
                                  + _hint(name, known) + f"; known: {', '.join(known) or 'none'}"))
        return None
    config, found = convert(ctype.config_class, table, path)
    issues += found
    reason = ctype.unavailable_reason()
    if reason:
        issues.append(ConfigIssue(path, f"{ctype.table} is unavailable on this machine: {reason}"))
    if config is None:
        return None
    return Instance(stage, name, path, config, ctype)


def _cache_instance(table: Any, registry: ComponentRegistry,
                    issues: list[ConfigIssue]) -> list[Instance]:
    if not isinstance(table, dict):
        issues.append(ConfigIssue("cache", "must be a table ([cache])"))
        return []
    table = dict(table)
    name = table.pop("type", DEFAULT_CACHE)
    if not isinstance(name, str):
        issues.append(ConfigIssue("cache.type", "expected a string"))
        return []
    inst = _instance("cache", name, "cache", table, registry, issues)
    return [inst] if inst else []


def _aggregate_instances(table: Any, registry: ComponentRegistry,
                         issues: list[ConfigIssue]) -> list[Instance]:
    """``[aggregate]`` keys configure the built-in rules; ``[[aggregate.X]]`` adds plugins."""
    if not isinstance(table, dict):
        issues.append(ConfigIssue("aggregate", "must be a table ([aggregate])"))
        return []
    builtin = {k: v for k, v in table.items() if not _is_table_array(v)}
    plugins = {k: v for k, v in table.items() if _is_table_array(v)}
    out = []
    if builtin:
        inst = _instance("aggregate", DEFAULT_AGGREGATE, "aggregate", builtin, registry, issues)
        out += [inst] if inst else []
    for name, entries in plugins.items():
        for i, entry in enumerate(entries):
            inst = _instance("aggregate", name, f"aggregate.{name}[{i}]", entry, registry, issues)
            out += [inst] if inst else []
    return out


def _fold_aggregate_rules(instances: list[Instance],
                          issues: list[ConfigIssue]) -> list[Instance]:
    """Hand ``[aggregate] rules`` to the cache's ``aggregation`` (where they run, per packet)
    and drop the ``[aggregate]`` instance, with a note saying so; refuse rules in both places.
    """
    builtin = next((i for i in instances if i.path == "aggregate"), None)
    if builtin is None:
        return instances
    instances = [i for i in instances if i is not builtin]
    rules = split_rules(builtin.config.rules)
    cache = next((i for i in instances if i.stage == "cache"), None)
    if not rules or cache is None or rule_issues(rules):  # bad rules: already reported
        return instances
    if not hasattr(cache.config, "aggregation"):
        issues.append(ConfigIssue("aggregate.rules", f"cache type '{cache.type_name}' does "
                                  "not apply aggregation rules; use the built-in cache"))
    elif split_rules(cache.config.aggregation):
        issues.append(ConfigIssue("aggregate.rules", "aggregation rules are set twice; keep "
                                  "[cache] aggregation (ipt_NETFLOW's aggregation=) and remove "
                                  "[aggregate] rules"))
    else:
        issues.append(ConfigIssue(
            "aggregate.rules", "applied per packet in the cache before the flow lookup, "
            "exactly as [cache] aggregation (ipt_NETFLOW's aggregation=); maxflows and the "
            "statistics count aggregated flows", severity="note"))
        folded = dataclasses.replace(cache.config, aggregation=rules)
        instances = [dataclasses.replace(i, config=folded) if i is cache else i
                     for i in instances]
    return instances


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _stage_instances(stage: str, table: Any, registry: ComponentRegistry,
                     issues: list[ConfigIssue]) -> list[Instance]:
    if not isinstance(table, dict):
        issues.append(ConfigIssue(stage, f"must contain tables like [[{stage}.NAME]]"))
        return []
    out = []
    for name, entries in table.items():
        if isinstance(entries, dict):
            issues.append(ConfigIssue(f"{stage}.{name}", f"write [[{stage}.{name}]] (an array "
                                      f"of tables), not [{stage}.{name}]"))
            continue
        if not _is_table_array(entries):
            issues.append(ConfigIssue(f"{stage}.{name}", f"expected [[{stage}.{name}]] tables"))
            continue
        for i, entry in enumerate(entries):
            inst = _instance(stage, name, f"{stage}.{name}[{i}]", entry, registry, issues)
            out += [inst] if inst else []
    return out


def _check_topology(instances: list[Instance], data: dict[str, Any],
                    issues: list[ConfigIssue]) -> None:
    for stage, example in (("ingest", "[[ingest.pcap]] or [[ingest.nflog]]"),
                           ("export", "[[export.netflow]] or [[export.log]]")):
        if not data.get(stage):
            issues.append(ConfigIssue(stage, f"no {stage} configured; add at least one, "
                                      f"e.g. {example}"))


def _check_resources(instances: list[Instance], issues: list[ConfigIssue]) -> None:
    owners: dict[Any, str] = {}
    for inst in instances:
        resources = getattr(inst.config, "resources", None)
        for res in (resources() if callable(resources) else []) or []:
            if res in owners:
                issues.append(ConfigIssue(inst.path, f"{res.kind} {res.ident} is already "
                                          f"claimed by {owners[res]}"))
            else:
                owners[res] = inst.path
