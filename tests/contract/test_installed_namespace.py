"""The installed import name: netflow-agent lives under ``netflow_agent`` only.

The repository keeps its folders ``agent/`` and ``plugins/``, but the wheel installs them as
``netflow_agent`` and ``netflow_agent.plugins`` (setup.py). Generic top-level names would let
any other distribution that ships an ``agent`` or ``plugins`` package overwrite ours in
site-packages, silently. This test builds the wheel, installs it into a fresh virtualenv beside
a dummy distribution that ships exactly those two top-level packages (in both install orders),
and checks that both keep working: the dummy's modules import as themselves, and the agent
runs the README's sample replay with every built-in plugin and its compiled extensions.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.support import source_tree_build

ROOT = Path(__file__).resolve().parents[2]
DEPENDENCIES = ["pluggy", "pyroute2", "msgpack", "toml", "numpy", "prometheus-client"]


def run(*cmd: str | Path, cwd: Path = ROOT, timeout: float = 600) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def build_wheel(source: Path, out: Path, name: str) -> Path:
    """A wheel of ``source``, built offline with this interpreter's setuptools."""
    with source_tree_build():  # one build in this source tree at a time (xdist workers)
        run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
            "-w", out, source)
    (built,) = out.glob(f"{name}-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel."""
    return build_wheel(ROOT, tmp_path_factory.mktemp("wheel"), "netflow_agent")


@pytest.fixture(scope="module")
def squatter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel with top-level ``agent`` and ``plugins`` packages, as other projects ship them."""
    where = tmp_path_factory.mktemp("squatter")
    for package in ("agent", "plugins"):
        (where / package).mkdir(parents=True)
        (where / package / "__init__.py").write_text(f'OWNER = "squatter-{package}"\n')
    (where / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "squatter"\nversion = "1.0"\n'
        '[tool.setuptools]\npackages = ["agent", "plugins"]\n')
    return build_wheel(where, where / "dist", "squatter")


def test_wheel_holds_only_the_netflow_agent_namespace(wheel: Path) -> None:
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    packages = {t for t in tops if not t.endswith((".dist-info", ".data"))}
    assert packages == {"netflow_agent"}, packages


@pytest.mark.parametrize("order", ["squatter-first", "agent-first"])
def test_installed_beside_a_squatter(wheel: Path, squatter: Path, tmp_path: Path,
                                     order: str) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    run(py, "-m", "pip", "install", "-q", *DEPENDENCIES)
    installs = [squatter, wheel] if order == "squatter-first" else [wheel, squatter]
    for target in installs:
        run(py, "-m", "pip", "install", "-q", "--no-deps", target)

    owners = run(py, "-c", "import agent, plugins; print(agent.OWNER, plugins.OWNER)",
                 cwd=tmp_path)
    assert owners.split() == ["squatter-agent", "squatter-plugins"]

    listing = run(env_dir / "bin" / "netflow-agent", "plugins", cwd=tmp_path)
    for builtin in ("ingest.pcap", "ingest.nflog", "ingest.ebpf", "export.netflow",
                    "export.ipfix"):
        assert builtin in listing, listing
    run(py, "-c", "import netflow_agent.plugins.ingest_nflog._nflog, "
        "netflow_agent.plugins.ingest_ebpf._loader", cwd=tmp_path)

    config = tmp_path / "quickstart.toml"
    config.write_text((ROOT / "examples" / "quickstart.toml").read_text()
                      .replace("examples/sample.pcap", str(ROOT / "examples" / "sample.pcap")))
    flows = run(env_dir / "bin" / "netflow-agent", "-c", config, cwd=tmp_path)
    assert sum(line.startswith(("TCP ", "UDP ", "ICMP")) for line in flows.splitlines()) == 10
