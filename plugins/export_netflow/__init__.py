"""``[[export.netflow]]``: NetFlow v5 and v9 (RFC 3954) export, with NAT events (NEL).

Encoders: :mod:`.v5`, :mod:`.v9`, :mod:`.nel` (pure); sockets and timers:
:mod:`.component`; options: :mod:`.config` (ipt_NETFLOW's option names).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from netflow_agent.api import ComponentRegistry, ConfigIssue, hookimpl

#: the NetFlow v5 header's 14-bit sampling interval limit (same as ``v5.SAMPLING_INTERVAL_MAX``;
#: kept here so that a dry run does not import the encoders)
SAMPLING_INTERVAL_MAX = 0x3FFF


@hookimpl
def agent_register_components(registry: ComponentRegistry) -> None:
    """Register ``[[export.netflow]]``."""
    from .config import Config

    registry.add("export", "netflow", f"{__name__}.component:NetflowExporter", Config,
                 sample=(Path(__file__).parent / "sample.toml").read_text(),
                 doc="NetFlow v5/v9 exporter (flows and NAT events) over UDP")


@hookimpl
def agent_check_config(config: Any, check_env: bool) -> list[ConfigIssue]:
    """Cross-checks of v5 instances against the ingests and of templates against the flow
    schema (see the helpers)."""
    return (_check_v5_ipv6_only(config) + _check_v5_sampling(config)
            + _check_schema_fields(config))


def _check_schema_fields(config: Any) -> list[ConfigIssue]:
    """Warn about flow fields an instance leaves out of its records.

    v5 records have a fixed layout: the ``[flow]`` fields (MAC, VLAN, MPLS, physdev, plugin
    fields) are not exported. v9 has no enterprise bit: a field with a private enterprise
    number is left out of its templates (IPFIX carries it).
    """
    schema = getattr(config, "schema", None)
    fields = schema.export_fields() if schema is not None else ()
    issues = []
    for inst in config.by_stage("export"):
        if inst.type_name != "netflow" or not inst.config.flows:
            continue
        if inst.config.protocol == 5:
            left_out = [f.name for f in fields]
            why, use = "NetFlow v5 records have a fixed layout", "protocol = 9 or [[export.ipfix]]"
        else:
            left_out = [f.name for f in fields if f.enterprise]
            why, use = "NetFlow v9 has no enterprise-specific elements", "[[export.ipfix]]"
        if left_out:
            issues.append(ConfigIssue(
                f"{inst.path}.protocol", f"{why}: flow field(s) {', '.join(left_out)} are not "
                f"exported by this instance; use {use}", severity="warning"))
    return issues


def _check_v5_sampling(config: Any) -> list[ConfigIssue]:
    """Refuse a v5 instance when an ingest samples beyond the v5 header's 14 bits.

    The header holds intervals up to 16383; a clamped value would make collectors scale
    every flow wrongly. Ingests that sample have an integer ``sampling`` key (1 in N).
    """
    worst = max((getattr(inst.config, "sampling", 1) for inst in config.by_stage("ingest")
                 if isinstance(getattr(inst.config, "sampling", 1), int)), default=1)
    if worst <= SAMPLING_INTERVAL_MAX:
        return []
    return [ConfigIssue(f"{inst.path}.protocol", f"an ingest samples 1/{worst} but the NetFlow "
                        f"v5 header holds at most 1/{SAMPLING_INTERVAL_MAX}; use protocol = 9 "
                        "or [[export.ipfix]], or a smaller sampling")
            for inst in config.by_stage("export")
            if inst.type_name == "netflow" and inst.config.protocol == 5 and inst.config.flows]


def _check_v5_ipv6_only(config: Any) -> list[ConfigIssue]:
    """Warn when a v5 instance exports flows but every ingest can only see IPv6.

    NetFlow v5 cannot carry IPv6 (the seed: "use protocol 9 or 10"); such flows would all be
    counted as skipped. An ingest states what it can see with ``Config.ip_versions()``;
    without it, both versions are assumed.
    """
    versions: set[int] = set()
    for inst in config.by_stage("ingest"):
        probe = getattr(inst.config, "ip_versions", None)
        versions |= set(probe()) if callable(probe) else {4, 6}
    if not versions or 4 in versions:
        return []
    return [ConfigIssue(f"{inst.path}.protocol", "NetFlow v5 cannot carry IPv6 and every "
                        "ingest sees only IPv6: all flows would be skipped; use protocol = 9 "
                        "or [[export.ipfix]]", severity="warning")
            for inst in config.by_stage("export")
            if inst.type_name == "netflow" and inst.config.protocol == 5 and inst.config.flows]
