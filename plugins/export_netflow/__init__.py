"""``[[export.netflow]]``: NetFlow v5 and v9 (RFC 3954) export, with NAT events (NEL).

Encoders: :mod:`.v5`, :mod:`.v9`, :mod:`.nel` (pure); sockets and timers:
:mod:`.component`; options: :mod:`.config` (ipt_NETFLOW's option names).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent import hookimpl
from agent.errors import ConfigIssue
from agent.registry import ComponentRegistry


@hookimpl
def agent_register_components(registry: ComponentRegistry) -> None:
    """Register ``[[export.netflow]]``."""
    from .component import NetflowExporter
    from .config import Config

    registry.add("export", "netflow", NetflowExporter, Config,
                 sample=(Path(__file__).parent / "sample.toml").read_text(),
                 doc="NetFlow v5/v9 exporter (flows and NAT events) over UDP")


@hookimpl
def agent_check_config(config: Any, check_env: bool) -> list[ConfigIssue]:
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
