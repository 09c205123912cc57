"""netflow-agent example plugin: registers ``[[export.counter]]`` (per-protocol totals as JSON).

Loaded by the agent through the ``agent.plugins`` entry point ``example_counter``; this module
holds only the registration hook, as every plugin module should. Like every plugin it uses
the core only through ``netflow_agent.api``, and it checks the plugin API's major version first.
"""

from __future__ import annotations

from importlib.resources import files

from netflow_agent.api import API_VERSION, ComponentRegistry, hookimpl

#: the plugin API major version this plugin is written for
API_MAJOR = 3


@hookimpl
def agent_register_components(registry: ComponentRegistry) -> None:
    """Register ``[[export.counter]]``.

    :raises RuntimeError: the agent offers another major version of the plugin API.
    """
    if API_VERSION[0] != API_MAJOR:
        raise RuntimeError(f"nfa_example_plugin needs plugin API {API_MAJOR}.x, the agent "
                           f"offers {API_VERSION[0]}.{API_VERSION[1]}")
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
