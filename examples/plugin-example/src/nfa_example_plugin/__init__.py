"""netflow-agent example plugin: registers ``[[export.counter]]`` (per-protocol totals as JSON).

Loaded by the agent through the ``agent.plugins`` entry point ``example_counter``; this module
holds only the registration hook, as every plugin module should.
"""

from __future__ import annotations

from importlib.resources import files

from netflow_agent import hookimpl
from netflow_agent.registry import ComponentRegistry


@hookimpl
def agent_register_components(registry: ComponentRegistry) -> None:
    """Register ``[[export.counter]]``."""
    from .component import CounterExporter
    from .config import Config

    registry.add(
        "export",
        "counter",
        CounterExporter,
        Config,
        sample=files(__name__).joinpath("sample.toml").read_text(encoding="utf-8"),
        doc="Per-protocol flow, packet and byte totals written as a JSON file",
    )
