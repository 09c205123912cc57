"""netflow-agent example plugin: registers ``[[export.counter]]`` (per-protocol totals as JSON).

Loaded by the agent through the ``agent.plugins`` entry point ``example_counter``; this module
holds only the registration hook, as every plugin module should. Like every plugin it uses
the core only through ``netflow_agent.api``, and it checks the plugin API's major version first.
"""

from __future__ import annotations

from pathlib import Path

from netflow_agent.api import API_VERSION, ComponentRegistry, hookimpl

#: the plugin API version this plugin is written for: major 3, at least 3.3 (a factory
#: given by name to ``registry.add``)
API_MAJOR, API_MINOR = 3, 3


@hookimpl
def agent_register_components(registry: ComponentRegistry) -> None:
    """Register ``[[export.counter]]``.

    :raises RuntimeError: the agent offers another major version of the plugin API, or an
        older minor one.
    """
    if API_VERSION[0] != API_MAJOR or API_VERSION[1] < API_MINOR:
        raise RuntimeError(f"nfa_example_plugin needs plugin API {API_MAJOR}.{API_MINOR} or a "
                           f"later {API_MAJOR}.x, the agent offers "
                           f"{API_VERSION[0]}.{API_VERSION[1]}")
    from .config import Config

    registry.add(
        "export",
        "counter",
        f"{__name__}.component:CounterExporter",  # imported only if a config uses it
        Config,
        sample=(Path(__file__).parent / "sample.toml").read_text(encoding="utf-8"),
        doc="Per-protocol flow, packet and byte totals written as a JSON file",
    )
