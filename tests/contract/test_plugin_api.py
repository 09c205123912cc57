"""The plugin API boundary and the core's layers, read from the source with ``ast``.

* built-in plugins and the example plugin import from the core only through ``netflow_agent.api``,
  so a third party can do everything a built-in plugin does with the same names;
* ``netflow_agent.api`` exports what it lists, with an ``API_VERSION``;
* the configuration layer never imports operations (ops, control, report, metrics) or the
  running pipeline;
* the core calls component roles directly: no ``hasattr``/``getattr`` probing in the modules
  that run the pipeline.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from netflow_agent import api, roles

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_FILES = sorted((ROOT / "plugins").rglob("*.py")) + sorted(
    (ROOT / "examples" / "plugin-example" / "src").rglob("*.py"))
CORE_RUNNING = ("pipeline.py", "lifecycle.py", "loop.py", "clock.py", "report.py", "runtime.py")
UPPER_LAYERS = tuple(f"netflow_agent.{m}" for m in (
    "ops", "control", "report", "metrics", "cli", "pipeline", "lifecycle", "loop"))


def core_imports(path: Path) -> list[str]:
    """Every core module (``netflow_agent``, ``netflow_agent.x``; not the plugins package)
    ``path`` imports, anywhere in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        elif isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        else:
            continue
        found += [m for m in modules if (m == "netflow_agent" or m.startswith("netflow_agent."))
                  and not m.startswith("netflow_agent.plugins")]
    return found


@pytest.mark.parametrize("path", PLUGIN_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_plugins_import_the_core_only_through_agent_api(path: Path) -> None:
    others = [m for m in core_imports(path) if m != "netflow_agent.api"]
    assert not others, f"{path.relative_to(ROOT)} imports {others}; use netflow_agent.api"


def test_api_exports_what_it_lists() -> None:
    assert api.API_VERSION == (3, 11)
    missing = [name for name in api.__all__ if name not in vars(api)]
    assert not missing
    for role in (api.Ingest, api.Cache, api.Aggregator, api.Exporter, api.NatExporter):
        assert issubclass(role, api.Component)


def test_builtin_components_have_their_stage_role() -> None:
    from netflow_agent.discovery import build_registry, make_manager

    registry = build_registry(make_manager()[0])
    role_of = {"ingest": roles.Ingest, "cache": roles.Cache, "aggregate": roles.Aggregator,
               "export": roles.Exporter}
    for ctype in registry.types.values():
        if ctype.plugin in ("example_counter",):  # a third party may stay a plain Component
            continue
        assert isinstance(ctype.factory, type) and issubclass(ctype.factory, role_of[ctype.stage])


@pytest.mark.parametrize("path", sorted((ROOT / "agent" / "config").glob("*.py")),
                         ids=lambda p: p.name)
def test_config_never_imports_operations(path: Path) -> None:
    upper = [m for m in core_imports(path) if m.startswith(UPPER_LAYERS)]
    assert not upper, f"agent/config/{path.name} imports {upper}"


@pytest.mark.parametrize("name", CORE_RUNNING)
def test_the_running_core_does_not_probe_components(name: str) -> None:
    calls = [node.func.id for node in ast.walk(ast.parse((ROOT / "agent" / name).read_text()))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
             and node.func.id in ("hasattr", "getattr")]
    assert not calls, f"agent/{name} calls {calls}"
