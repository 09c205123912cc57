"""``[[export.netflow]]``: NetFlow v5 and v9 (RFC 3954) export, with NAT events (NEL).

Encoders: :mod:`.v5`, :mod:`.v9`, :mod:`.nel` (pure); sockets and timers:
:mod:`.component`; options: :mod:`.config` (ipt_NETFLOW's option names).
"""

from __future__ import annotations

from pathlib import Path

from agent import hookimpl
from agent.registry import ComponentRegistry


@hookimpl
def agent_register_components(registry: ComponentRegistry) -> None:
    """Register ``[[export.netflow]]``."""
    from .component import NetflowExporter
    from .config import Config

    registry.add("export", "netflow", NetflowExporter, Config,
                 sample=(Path(__file__).parent / "sample.toml").read_text(),
                 doc="NetFlow v5/v9 exporter (flows and NAT events) over UDP")
