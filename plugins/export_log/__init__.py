"""``[[export.log]]``: flows and NAT events as JSON lines or text, for debugging and pipes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from netflow_agent.api import ComponentRegistry, ConfigIssue, hookimpl, output_issues


@hookimpl
def agent_register_components(registry: ComponentRegistry) -> None:
    """Register ``[[export.log]]``."""
    from .config import Config

    registry.add("export", "log", f"{__name__}.component:LogExporter", Config,
                 sample=(Path(__file__).parent / "sample.toml").read_text(),
                 doc="Flows as JSON lines or text on stdout or a file")


@hookimpl
def agent_check_config(config: Any, check_env: bool) -> list[ConfigIssue]:
    """``--check-env``: the user the agent runs as can write each ``path`` (opened at start,
    before root is dropped: a problem only shows when a reload reopens it, so a warning)."""
    if not check_env:
        return []
    issues = []
    for inst in config.by_stage("export"):
        if inst.type_name == "log":
            issues += output_issues(f"{inst.path}.path", inst.config.path, config.agent,
                                    opened_at_start=True)
    return issues
