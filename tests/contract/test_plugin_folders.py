"""Every built-in plugin folder has the same role files, and its sample validates [Telegraf]."""

from __future__ import annotations

from pathlib import Path

import pytest

from netflow_agent.config.check import validate
from netflow_agent.discovery import build_registry, make_manager

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = sorted(p for p in (ROOT / "plugins").iterdir()
                 if p.is_dir() and (p / "__init__.py").exists())
ROLE_FILES = ("__init__.py", "component.py", "config.py", "sample.toml", "README.md")


@pytest.fixture(scope="module")
def registry():
    pm, _ = make_manager()
    return build_registry(pm), pm


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_role_files(folder):
    missing = [f for f in ROLE_FILES if not (folder / f).exists()]
    assert not missing, f"{folder.name} lacks {missing}"


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_folder_name_matches_table(folder, registry):
    reg, _ = registry
    stage, _, name = folder.name.partition("_")
    ctype = reg.get(stage, name)
    assert ctype is not None, f"plugins/{folder.name} registers no [{stage}.{name}]"
    assert ctype.sample.strip(), "empty sample"


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_sample_validates(folder, registry, tmp_path):
    """The sample, completed with a minimal partner stage, has no errors."""
    reg, pm = registry
    stage, _, name = folder.name.partition("_")
    ctype = reg.get(stage, name)
    if ctype is None or ctype.unavailable_reason():
        pytest.skip(f"[{stage}.{name}] unavailable here")
    sample = (folder / "sample.toml").read_text()
    pcap = tmp_path / "s.pcap"
    pcap.write_bytes(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000"))
    partner = ('[[export.log]]\npath = "-"\n' if stage == "ingest"
               else f'[[ingest.pcap]]\npath = "{pcap}"\n')
    if stage in ("cache", "aggregate"):  # a middle stage needs both ends
        partner += '[[export.log]]\npath = "-"\n'
    cfg = tmp_path / "sample.toml"
    cfg.write_text(sample.replace('"examples/sample.pcap"', f'"{pcap}"') + "\n" + partner)
    _, issues = validate(cfg, reg, pm.hook)
    assert [i.format() for i in issues if i.severity == "error"] == []
