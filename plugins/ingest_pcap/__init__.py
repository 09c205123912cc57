"""``[[ingest.pcap]]``: replay pcap/pcapng captures through the pipeline.

pcap (both byte orders, us/ns, modified) and pcapng; link types Ethernet (VLAN, QinQ, MPLS,
PPPoE behind it), raw IP, Linux cooked v1/v2, BSD/OpenBSD loopback, PPP, Cisco HDLC and NFLOG
(README.md). The packets' own timestamps drive the flow timeouts, so results do not depend
on replay speed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from netflow_agent.api import ComponentRegistry, ConfigIssue, hookimpl


@hookimpl
def agent_register_components(registry: ComponentRegistry) -> None:
    """Register ``[[ingest.pcap]]``."""
    from .config import Config

    registry.add("ingest", "pcap", f"{__name__}.component:PcapIngest", Config,
                 sample=(Path(__file__).parent / "sample.toml").read_text(),
                 doc="Replay pcap/pcapng files (Ethernet, VLAN, MPLS, PPPoE, SLL, SLL2, "
                     "raw IP, loopback, PPP)")


@hookimpl
def agent_check_config(config: Any, check_env: bool) -> list[ConfigIssue]:
    """Every capture file must exist and be readable."""
    issues = []
    for inst in config.by_stage("ingest"):
        if inst.type_name == "pcap" and not os.access(inst.config.path, os.R_OK):
            issues.append(ConfigIssue(f"{inst.path}.path",
                                      f"cannot read capture file '{inst.config.path}'"))
    return issues
