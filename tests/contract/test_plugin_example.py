"""The third-party plugin example (examples/plugin-example) through the public CLI.

It is a separate distribution with an ``agent.plugins`` entry point; once installed into this
interpreter's environment (scripts/setup.sh does it for the venv; this module installs it
offline when missing), the agent must list it with its version, validate its
``[[export.counter]]`` table in ``--dry-run`` like any built-in one, and run it end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from tests.support.pcapgen import truth_from_file

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "plugin-example"
DISTRIBUTION = "netflow-agent-example-plugin"
EX_CONFIG = 78


def example_version() -> str:
    return tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]["version"]


@pytest.fixture(scope="module", autouse=True)
def installed_example() -> str:
    """Name: installed_example. Scope: module. Depends: pip in this interpreter.

    Make sure the example distribution, at the version in its pyproject.toml, is installed
    into the running interpreter's environment (offline: no build isolation, no deps).
    """
    want = example_version()
    try:
        have = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        have = ""
    if have != want:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-build-isolation",
            "--no-deps",
            str(EXAMPLE),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"installing the example failed:\n{proc.stderr}"
    return want


def agent(*args: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the agent CLI with this interpreter (a fresh process: entry points re-read)."""
    code = "import sys; from netflow_agent.cli import main; sys.exit(main())"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


def write_config(tmp_path: Path, counter_table: str) -> Path:
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'[[ingest.pcap]]\npath = "{ROOT / "examples" / "sample.pcap"}"\nspeed = "max"\n\n'
        f"{counter_table}\n"
    )
    return cfg


def test_listed_with_its_version(installed_example: str) -> None:
    proc = agent("plugins")
    assert proc.returncode == 0, proc.stderr
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("example_counter")), "")
    assert installed_example in line.split(), proc.stdout
    assert DISTRIBUTION in line and "export.counter" in line


def test_sample_is_printed_and_validates(tmp_path: Path) -> None:
    proc = agent("config", "sample", "counter")
    assert proc.returncode == 0, proc.stderr
    assert "[[export.counter]]" in proc.stdout
    cfg = write_config(tmp_path, proc.stdout)
    assert agent("--dry-run", "-c", str(cfg)).returncode == 0


def test_dry_run_accepts_a_valid_section(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, f'[[export.counter]]\npath = "{tmp_path / "c.json"}"\nevery_s = 5')
    proc = agent("--dry-run", "-c", str(cfg))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (tmp_path / "c.json").exists()  # dry-run starts nothing


@pytest.mark.parametrize(
    ("table", "path", "words"),
    [
        ('pathh = "/tmp/x.json"', "export.counter[0].pathh", ["unknown key", "'path'"]),
        ('path = "/tmp/x.json"\nevery_s = 0', "export.counter[0].every_s", ["minimum 1"]),
        ('path = "/tmp/x.json"\nevery_s = "often"', "export.counter[0].every_s", []),
        ("every_s = 10", "export.counter[0].path", ["required"]),
        ('path = "/tmp/dir/"', "export.counter[0].path", ["directory"]),
    ],
)
def test_dry_run_rejects_a_bad_section(
    tmp_path: Path, table: str, path: str, words: list[str]
) -> None:
    cfg = write_config(tmp_path, f"[[export.counter]]\n{table}")
    proc = agent("--dry-run", "-c", str(cfg))
    assert proc.returncode == EX_CONFIG, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    line = next((ln for ln in out.splitlines() if f": {path}: " in ln), "")
    assert line.startswith(f"{cfg}: "), out
    for word in words:
        assert word in line, line


def test_counts_the_sample_capture_exactly(tmp_path: Path) -> None:
    summary = tmp_path / "out" / "counter.json"
    cfg = write_config(tmp_path, f'[[export.counter]]\npath = "{summary}"')
    proc = agent("-c", str(cfg), "--log-level", "warning", timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(summary.read_text())
    truth = truth_from_file(ROOT / "examples" / "sample.pcap")
    assert (got["flows"], got["packets"], got["bytes"]) == (
        len(truth.flows),
        truth.packets,
        truth.bytes,
    )
    for proto in {f.proto for f in truth.flows}:
        flows = {f: c for f, c in truth.flows.items() if f.proto == proto}
        assert got["by_protocol"][str(proto)] == {
            "flows": len(flows),
            "packets": sum(c.packets for c in flows.values()),
            "bytes": sum(c.bytes for c in flows.values()),
        }


def test_periodic_write_follows_the_agent_clock(tmp_path: Path) -> None:
    from nfa_example_plugin.component import CounterExporter
    from nfa_example_plugin.config import Config

    from netflow_agent.api import FlowBatch, FlowRecord, RunContext

    clock = [10**18]
    out = tmp_path / "c.json"
    exporter = CounterExporter(Config(path=str(out), every_s=5), "export.counter[0]")
    exporter.agent_start(context=RunContext(clock=lambda: clock[0]))
    rec = FlowRecord(4, 17, bytes(4), bytes(4), packets=3, octets=120)
    exporter.agent_export_flows(records=FlowBatch.from_records([rec]))
    exporter.agent_tick(now_ns=clock[0] + 4 * 10**9)
    assert not out.exists()
    exporter.agent_tick(now_ns=clock[0] + 5 * 10**9)
    assert json.loads(out.read_text())["by_protocol"] == {
        "17": {"flows": 1, "packets": 3, "bytes": 120}
    }
    exporter.agent_export_flows(records=FlowBatch.from_records([rec]))
    exporter.agent_stop()
    assert json.loads(out.read_text())["packets"] == 6
    assert exporter.agent_collect_stats() == {"writes": 2, "write_errors": 0, "flows": 2}
