"""``[[export.log]]``: flows and NAT events as JSON lines or text, for debugging and pipes."""

from __future__ import annotations

from pathlib import Path

from netflow_agent import hookimpl
from netflow_agent.registry import ComponentRegistry


@hookimpl
def agent_register_components(registry: ComponentRegistry) -> None:
    """Register ``[[export.log]]``."""
    from .component import LogExporter
    from .config import Config

    registry.add("export", "log", LogExporter, Config,
                 sample=(Path(__file__).parent / "sample.toml").read_text(),
                 doc="Flows as JSON lines or text on stdout or a file")
