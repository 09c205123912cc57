"""``[[ingest.conntrack]]``: NAT translation events from conntrack (ipt_NETFLOW ``natevents``).

Registers the component type; the work is in :mod:`.component`, :mod:`.ctnetlink`,
:mod:`.events` and :mod:`.resync`.
"""

from __future__ import annotations

from pathlib import Path

from agent import hookimpl


@hookimpl
def agent_register_components(registry):  # type: ignore[no-untyped-def]
    """Register ``ingest.conntrack``."""
    from .component import ConntrackIngest
    from .config import Config

    registry.add(
        "ingest",
        "conntrack",
        ConntrackIngest,
        Config,
        sample=(Path(__file__).parent / "sample.toml").read_text(),
        doc="NAT translation start/stop events from conntrack (NEL, natevents)",
    )
