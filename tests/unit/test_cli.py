"""The ``agent`` command line: plugins, samples, version, run on the quickstart config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from netflow_agent import __version__
from netflow_agent.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert __version__ in capsys.readouterr().out


def test_plugins_lists_builtins_with_version_and_origin(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for name, table in [("ingest_pcap", "ingest.pcap"), ("export_log", "export.log"),
                        ("core_stages", "cache.memory")]:
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert __version__ in line and "builtin" in line and table in line


def test_config_sample_of_one_component(capsys):
    assert main(["config", "sample", "pcap"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[[ingest.pcap]]") and "## " in out
    assert main(["config", "sample", "ingest.pcap"]) == 0


def test_config_sample_unknown_component(capsys):
    assert main(["config", "sample", "nope"]) == 2
    assert "unknown component 'nope'; known:" in capsys.readouterr().err


def test_full_sample_validates(tmp_path, capsys):
    assert main(["config", "sample"]) == 0
    sample = capsys.readouterr().out
    assert "[agent]" in sample and "[cache]" in sample and "[[ingest.pcap]]" in sample


def test_quickstart_prints_the_sample_capture_flows():
    proc = subprocess.run([sys.executable, "-m", "netflow_agent.cli", "-c", "examples/quickstart.toml"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines and all("pkts=" in line for line in lines)
    assert any("->" in line and "[" in line for line in lines)  # an IPv6 flow is printed


def test_a_finished_replay_logs_its_totals():
    """The last log line of a finite run sums what was exported (replays end before anyone
    can ask ``agent stats``)."""
    proc = subprocess.run([sys.executable, "-m", "netflow_agent.cli", "-c", "examples/quickstart.toml"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    flows = [dict(f.split("=") for f in line.split() if "=" in f)
             for line in proc.stdout.splitlines()]
    packets = sum(int(f["pkts"]) for f in flows)
    octets = sum(int(f["bytes"]) for f in flows)
    last = proc.stderr.strip().splitlines()[-1]
    assert f"stopped; {len(flows)} flows exported; traffic {packets} packets, {octets} bytes; " \
           "dropped 0 packets, 0 bytes" in last, last
