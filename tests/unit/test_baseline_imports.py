"""What every agent loads at start: the CLI plus every built-in plugin's registration, in a
fresh interpreter. Heavy packages the default path does not use stay out (their RSS is paid
by every agent: docs/performance-history.md, "Agent memory: baseline, flow table, stop")."""

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
    """The built-in plugins only, and with the third-party ones installed (the example
    plugin installed for the tests reads its sample through its path, not
    importlib.resources: ~0.8 MB of RSS with zipfile and tempfile)."""
    for env in ({**os.environ, "AGENT_DISABLE_PLUGIN_AUTOLOAD": "1"}, None):
        out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                             check=True, timeout=120, env=env)
        loaded = json.loads(out.stdout)
        assert loaded["types"] >= 8
        assert not set(HEAVY_STDLIB) & set(loaded["modules"]), "imported at start"


#: loaded only by an agent that uses them (docs/performance-history.md, "Agent memory: a smaller
#: flow index and lazy imports"): the NFLOG ingest's socket, decoder and rule code (~0.7 MB for an
#: agent without [[ingest.nflog]]), the IPFIX encoders and transports (~0.3 MB without
#: [[export.ipfix]]), difflib (a configuration typo's suggestion, ~0.2 MB)
LAZY = tuple(f"netflow_agent.plugins.ingest_nflog.{m}" for m in ("netlink", "rules", "decoders")
             ) + tuple(f"netflow_agent.plugins.export_ipfix.{m}"
                       for m in ("ipfix", "options", "nel", "file", "spool", "tcp")) + ("difflib",)

STARTED = """
import json, sys
import numpy as np
from netflow_agent.cli import _manager_for
from netflow_agent.ifnames import InterfaceNames
from netflow_agent.model import FlowBatch
import netflow_agent.loop, netflow_agent.pipeline, netflow_agent.stages.cache
_pm, registry, _loaded = _manager_for(None)
batch = FlowBatch("probe")
batch.flows = np.resize(batch.flows, 3)
batch.flows["in_if"], batch.flows["out_if"] = [2, 3, 2], [0, 4, 4]
names = InterfaceNames()
names.note_flows(batch)  # what every NetFlow v9 / IPFIX export does
print(json.dumps({"seen": sorted(names.seen), "modules": sorted(sys.modules)}))
"""


#: every plugin's component module: registered by name, imported for an instance only
#: (issue 14, sixth stop: ~0.7 MB of RSS for the plugins a run does not configure)
COMPONENTS = {("ingest", "pcap"): "netflow_agent.plugins.ingest_pcap.component",
              ("ingest", "ebpf"): "netflow_agent.plugins.ingest_ebpf.component",
              ("ingest", "nflog"): "netflow_agent.plugins.ingest_nflog.component",
              ("ingest", "conntrack"): "netflow_agent.plugins.ingest_conntrack.component",
              ("export", "log"): "netflow_agent.plugins.export_log.component",
              ("export", "netflow"): "netflow_agent.plugins.export_netflow.component",
              ("export", "ipfix"): "netflow_agent.plugins.export_ipfix.component",
              ("aggregate", "route"): "netflow_agent.plugins.aggregate_route.component"}

FACTORIES = PROBE.replace("print(", """before = sorted(sys.modules)
factories = {f"{s}.{n}": (t.factory.__module__, t.factory.__name__)
             for (s, n), t in registry.types.items()}
print(json.dumps({"before": before, "factories": factories}))
print(""", 1)


def test_components_load_what_only_their_instances_need_lazily() -> None:
    """Registering every built-in type (what every agent does) leaves every plugin's component
    module, the NFLOG ingest's and the IPFIX exporter's internals and difflib out; asked for,
    each type's factory is still its component class (imported then)."""
    out = subprocess.run([sys.executable, "-c", FACTORIES], capture_output=True, text=True,
                         check=True, timeout=120)
    loaded = json.loads(out.stdout.splitlines()[0])
    modules = set(loaded["before"])
    assert not set(LAZY) & modules, "imported at start"
    assert not set(COMPONENTS.values()) & modules, "imported at start"
    assert "nfa_example_plugin.component" not in modules
    for (stage, name), module in COMPONENTS.items():
        assert loaded["factories"][f"{stage}.{name}"][0] == module
    assert loaded["factories"]["ingest.nflog"][1] == "NflogIngest"


VALIDATED = """
import json, sys
from netflow_agent.cli import _manager_for
from netflow_agent.config.check import validate
pm, registry, _ = _manager_for(sys.argv[1])
config, issues = validate(sys.argv[1], registry, pm.hook, check_env=True)
print(json.dumps({"ok": config is not None, "modules": sorted(sys.modules)}))
"""


def test_validating_a_config_without_them_leaves_them_unloaded(tmp_path) -> None:
    """What `agent run`, `--dry-run` and reload do first (every plugin's config check, with
    the environment's) loads no NFLOG or IPFIX internals for a config that has neither."""
    conf = tmp_path / "agent.toml"
    conf.write_text('[[ingest.pcap]]\npath = "/dev/null"\n'
                    '[[export.netflow]]\ndestination = ["127.0.0.1:2055"]\n')
    out = subprocess.run([sys.executable, "-c", VALIDATED, str(conf)], capture_output=True,
                         text=True, check=True, timeout=120)
    loaded = json.loads(out.stdout)
    assert loaded["ok"]
    assert not set(LAZY) & set(loaded["modules"]), "imported by validation"


def test_noting_an_exports_interfaces_does_not_load_numpy_ma() -> None:
    """NumPy >= 2.3's ``np.unique`` imports ``numpy.ma`` (~0.6 MB) to check for a masked
    array; the exporters' interface bookkeeping finds distinct values without it."""
    out = subprocess.run([sys.executable, "-c", STARTED], capture_output=True, text=True,
                         check=True, timeout=120)
    loaded = json.loads(out.stdout)
    assert loaded["seen"] == [0, 2, 3, 4]
    assert "numpy.ma" not in loaded["modules"]


RESOLVED = """
import json, socket, sys
from netflow_agent.transport.udp import UdpDestination
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 0))
dest = UdpDestination(f"127.0.0.1:{rx.getsockname()[1]}")
ok = dest.maybe_reconnect()
dest.send(b"x")
print(json.dumps({"ok": ok, "got": rx.recv(16).decode(), "modules": sorted(sys.modules)}))
"""


def test_an_exporter_to_an_address_does_not_load_idna() -> None:
    """A destination given as an address is resolved without the IDNA codec (a ``str`` host
    would be IDNA-encoded first: encodings.idna, stringprep and unicodedata, ~0.3 MB)."""
    out = subprocess.run([sys.executable, "-c", RESOLVED], capture_output=True, text=True,
                         check=True, timeout=120)
    loaded = json.loads(out.stdout)
    assert loaded["ok"] and loaded["got"] == "x"
    assert not {"encodings.idna", "unicodedata"} & set(loaded["modules"])
