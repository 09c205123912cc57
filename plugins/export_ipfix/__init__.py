"""``[[export.ipfix]]``: IPFIX (RFC 7011) over UDP or TCP, NEL, options records, IPFIX files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from netflow_agent.api import ComponentRegistry, ConfigIssue, hookimpl, output_issues


@hookimpl
def agent_register_components(registry: ComponentRegistry) -> None:
    """Register ``[[export.ipfix]]``."""
    from .config import Config

    registry.add("export", "ipfix", f"{__name__}.component:IpfixExporter", Config,
                 sample=(Path(__file__).parent / "sample.toml").read_text(),
                 doc="IPFIX export over UDP/TCP (RFC 7011) with NEL, options records, files")


@hookimpl
def agent_check_config(config: Any, check_env: bool) -> list[ConfigIssue]:
    """``--check-env``: the user the agent runs as can create, write and rotate each IPFIX
    file (it is opened at the first export, after root was dropped)."""
    if not check_env:
        return []
    issues = []
    for inst in config.by_stage("export"):
        cfg = inst.config
        if inst.type_name == "ipfix" and cfg.path:
            issues += output_issues(f"{inst.path}.path", cfg.path, config.agent,
                                    opened_at_start=False,
                                    rotated=bool(cfg.rotate_size_bytes or cfg.rotate_interval_s))
    return issues
