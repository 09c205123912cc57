"""``[[ingest.nflog]]``: account packets that netfilter rules send to NFLOG groups.

The userspace replacement for ipt_NETFLOW's ``iptables -j NETFLOW``: point iptables, ip6tables
or nftables ``log group`` rules at a group (or let the agent install them, ``manage_rules``)
and every logged packet is accounted. See README.md in this folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from netflow_agent.api import ComponentRegistry, ConfigIssue, hookimpl


@hookimpl
def agent_register_components(registry: ComponentRegistry) -> None:
    """Register ``[[ingest.nflog]]``."""
    from .config import Config

    registry.add("ingest", "nflog", f"{__name__}.component:NflogIngest", Config,
                 sample=(Path(__file__).parent / "sample.toml").read_text(),
                 doc="Packets from netfilter NFLOG groups (iptables NFLOG, nft 'log group')")


@hookimpl
def agent_check_config(config: Any, check_env: bool) -> list[ConfigIssue]:
    """``decoder = "c"`` needs the built extension; with ``check_env`` also: namespace
    exists, privileges, ``nft`` present, groups free."""
    instances = [inst for inst in config.by_stage("ingest") if inst.type_name == "nflog"]
    if not instances:  # the internals load only for an agent that has an NFLOG ingest
        return []
    from .decoders import c_unavailable_reason
    from .environment import check_instance

    issues: list[ConfigIssue] = []
    for inst in instances:
        if inst.config.decoder == "c" and (reason := c_unavailable_reason()) is not None:
            issues.append(ConfigIssue(f"{inst.path}.decoder", reason))
        if check_env:
            issues += check_instance(inst.path, inst.config)
    return issues
