"""``[[export.ipfix]]``: IPFIX (RFC 7011) over UDP or TCP, NEL, options records, IPFIX files."""

from __future__ import annotations

from pathlib import Path

from netflow_agent import hookimpl
from netflow_agent.registry import ComponentRegistry


@hookimpl
def agent_register_components(registry: ComponentRegistry) -> None:
    """Register ``[[export.ipfix]]``."""
    from .component import IpfixExporter
    from .config import Config

    registry.add("export", "ipfix", IpfixExporter, Config,
                 sample=(Path(__file__).parent / "sample.toml").read_text(),
                 doc="IPFIX export over UDP/TCP (RFC 7011) with NEL, options records, files")
