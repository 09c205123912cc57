"""What every agent loads at start: the CLI plus every built-in plugin's registration, in a
fresh interpreter. Heavy packages the default path does not use stay out (their RSS is paid
by every agent: docs/performance.md, "Agent memory")."""

from __future__ import annotations

import json
import os
import subprocess
import sys

#: never imported by an agent that does not use them (pyroute2 alone: ~15 MB of RSS)
HEAVY = ("pyroute2", "sqlite3", "ssl", "asyncio")
#: standard modules plugin discovery used to pull in (importlib.metadata with email, zipfile,
#: csv, importlib.resources: ~3 MB of RSS for the agent's whole run); agent.entrypoints reads
#: the entry points without them
HEAVY_STDLIB = ("importlib.metadata", "email", "zipfile", "csv", "importlib.resources")

PROBE = """
import json, sys
from netflow_agent.cli import _manager_for
_pm, registry, _loaded = _manager_for(None)
print(json.dumps({"types": len(registry.types), "modules": sorted(sys.modules)}))
"""


def test_the_agent_and_its_plugins_load_without_heavy_packages() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, timeout=120)
    loaded = json.loads(out.stdout)
    assert loaded["types"] >= 8  # every built-in ingest and exporter registered
    heavy = {m.split(".")[0] for m in loaded["modules"]} & set(HEAVY)
    assert not heavy, f"imported at start: {sorted(heavy)}"


def test_plugin_discovery_does_not_load_importlib_metadata() -> None:
    """The built-in plugins only: a third-party plugin may use importlib.resources (the
    example plugin installed for the tests does)."""
    env = {**os.environ, "AGENT_DISABLE_PLUGIN_AUTOLOAD": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         check=True, timeout=120, env=env)
    loaded = json.loads(out.stdout)
    assert loaded["types"] >= 8
    assert not set(HEAVY_STDLIB) & set(loaded["modules"]), "imported at start"
