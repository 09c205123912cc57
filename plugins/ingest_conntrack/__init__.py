"""``[[ingest.conntrack]]``: NAT translation events from conntrack (ipt_NETFLOW ``natevents``).

Registers the component type; the work is in :mod:`.component`, :mod:`.ctnetlink`,
:mod:`.events` and :mod:`.resync`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from netflow_agent.api import ConfigIssue, hookimpl


@hookimpl
def agent_register_components(registry):  # type: ignore[no-untyped-def]
    """Register ``ingest.conntrack``."""
    from .config import Config

    registry.add(
        "ingest",
        "conntrack",
        f"{__name__}.component:ConntrackIngest",
        Config,
        sample=(Path(__file__).parent / "sample.toml").read_text(),
        doc="NAT translation start/stop events from conntrack (NEL, natevents)",
    )


@hookimpl
def agent_check_config(config: Any, check_env: bool) -> list[ConfigIssue]:
    """With ``check_env``: the namespace exists and we may open ctnetlink sockets in it."""
    if not check_env:
        return []
    from netflow_agent.api import netns_path, started_as_root

    issues = []
    for inst in config.by_stage("ingest"):
        if inst.type_name != "conntrack":
            continue
        netns = inst.config.netns
        if netns and not os.path.exists(netns_path(netns)):
            issues.append(
                ConfigIssue(
                    f"{inst.path}.netns",
                    f"network namespace {netns!r} not found ({netns_path(netns)} does not exist)",
                )
            )
        if not started_as_root():  # after the drop (a reload) the sockets are open already
            issues.append(
                ConfigIssue(
                    inst.path,
                    "conntrack events, setns and the sysctls "
                    "need root (CAP_NET_ADMIN and CAP_SYS_ADMIN)",
                )
            )
    return issues
