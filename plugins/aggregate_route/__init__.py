"""``[[aggregate.route]]``: next hop, source/destination prefix lengths and egress interface
from the kernel routing table (rtnetlink ``RTM_GETROUTE`` with ``RTM_F_FIB_MATCH``).

Registers the component type and, with ``check_env``, checks that the namespace exists; the
work is in :mod:`.component` and :mod:`.routes`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from netflow_agent.api import ComponentRegistry, ConfigIssue, hookimpl


@hookimpl
def agent_register_components(registry: ComponentRegistry) -> None:
    """Register ``[[aggregate.route]]``."""
    from .config import Config

    registry.add("aggregate", "route", f"{__name__}.component:RouteAggregator", Config,
                 sample=(Path(__file__).parent / "sample.toml").read_text(),
                 doc="Next hop, prefix lengths and egress interface from the routing table")


@hookimpl
def agent_check_config(config: Any, check_env: bool) -> list[ConfigIssue]:
    """With ``check_env``: every configured namespace exists (it is never created)."""
    if not check_env:
        return []
    from netflow_agent.api import netns_path

    issues = []
    for inst in config.by_stage("aggregate"):
        netns = getattr(inst.config, "netns", "") if inst.type_name == "route" else ""
        if netns and not os.path.exists(netns_path(netns)):
            issues.append(ConfigIssue(
                f"{inst.path}.netns",
                f"network namespace {netns!r} not found ({netns_path(netns)} does not exist)"))
    return issues
