"""agent.entrypoints: the plugin entry points, read without importlib.metadata, are the ones
importlib.metadata finds (same names, values, distributions, versions)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from netflow_agent.entrypoints import EntryPoint, entry_points, normalize


def _importlib(group: str) -> set[tuple[str, str, str, str]]:
    return {(ep.name, ep.value, normalize(ep.dist.metadata["Name"]) if ep.dist else "",
             ep.dist.version if ep.dist else "") for ep in metadata.entry_points(group=group)}


@pytest.mark.parametrize("group", ["agent.plugins", "console_scripts", "pytest11"])
def test_the_installed_entry_points_are_importlibs(group: str) -> None:
    ours = {(ep.name, ep.value, normalize(ep.dist), ep.version) for ep in entry_points(group)}
    assert ours == _importlib(group)
    if group == "agent.plugins":  # every built-in plugin is found
        assert {"ingest_ebpf", "ingest_nflog", "export_netflow"} <= {e[0] for e in ours}


def _dist(root: Path, dirname: str, name: str, version: str, entry_points_txt: str) -> None:
    info = root / dirname
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                   "\nName: not-a-header\n")
    (info / "entry_points.txt").write_text(entry_points_txt)


def test_first_distribution_of_a_name_wins_and_the_file_is_parsed_as_ini(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    _dist(first, "my_plug-1.0.dist-info", "My.Plug", "1.0",
          "# comment\n[agent.plugins]\none = json.decoder:JSONDecoder.decode [extra]\n"
          "; another comment\ntwo=json\n[other]\nthree = os:path\n")
    _dist(second, "my_plug-2.0.dist-info", "my-plug", "2.0", "[agent.plugins]\nold = os\n")
    _dist(second, "other.egg-info", "other", "0.1", "[agent.plugins]\nfour = os.path:join\n")
    found = entry_points("agent.plugins", [str(first), str(tmp_path / "missing"), str(second)])
    assert found == [
        EntryPoint("one", "json.decoder:JSONDecoder.decode [extra]", "agent.plugins",
                   "My.Plug", "1.0"),
        EntryPoint("two", "json", "agent.plugins", "My.Plug", "1.0"),
        EntryPoint("four", "os.path:join", "agent.plugins", "other", "0.1")]
    import json
    import os.path
    assert found[0].load() is json.decoder.JSONDecoder.decode
    assert found[1].load() is json
    assert found[2].load() is os.path.join
    with pytest.raises(ValueError, match="not module"):
        EntryPoint("bad", "no module!", "g", "d", "1").load()


def test_metadata_directory_suffixes_match_in_any_case(tmp_path: Path) -> None:
    """importlib.metadata matches ``.dist-info``/``.egg-info`` without regard to case."""
    _dist(tmp_path, "Shouty-1.0.DIST-INFO", "Shouty", "1.0", "[agent.plugins]\nloud = os\n")
    assert [ep.name for ep in entry_points("agent.plugins", [str(tmp_path)])] == ["loud"]
