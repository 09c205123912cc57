"""``[[ingest.conntrack]]`` configuration: checks, resources, dry-run with no packet ingest."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from netflow_agent.plugins.ingest_conntrack.config import Config

AGENT = [sys.executable, "-m", "netflow_agent.cli"]
ONLY_CONNTRACK = """
[[ingest.conntrack]]
netns = "{netns}"

[[export.netflow]]
destination = ["127.0.0.1:2055"]
protocol = 9
flows = false
natevents = true
"""


def test_defaults_follow_the_brief() -> None:
    c = Config()
    assert (c.netns, c.set_sysctls, c.nat_only, c.reliable) == ("", True, True, True)
    assert c.check() == []


def test_bad_netns_name_is_reported() -> None:
    [issue] = Config(netns="a b").check()
    assert issue.path == "netns" and "'a b'" in issue.message
    assert Config(netns="/proc/1/ns/net").check() == []


def test_one_listener_per_namespace() -> None:
    assert Config(netns="r").resources() == Config(netns="r").resources()
    assert Config(netns="r").resources() != Config().resources()


def dry_run(tmp_path: Path, netns: str, *flags: str) -> subprocess.CompletedProcess[str]:
    conf = tmp_path / "agent.toml"
    conf.write_text(ONLY_CONNTRACK.format(netns=netns))
    return subprocess.run(
        [*AGENT, "--dry-run", *flags, "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[2],
    )


def test_conntrack_alone_is_a_valid_agent(tmp_path: Path) -> None:
    assert dry_run(tmp_path, "").returncode == 0


def test_check_env_reports_a_missing_namespace(tmp_path: Path) -> None:
    proc = dry_run(tmp_path, "nfa-no-such-namespace", "--check-env")
    assert proc.returncode == 78
    assert "ingest.conntrack[0].netns: network namespace 'nfa-no-such-namespace' not found" in (
        proc.stdout + proc.stderr
    )
