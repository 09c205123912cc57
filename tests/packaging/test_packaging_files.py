"""Fast checks of the files the Debian package installs, without building it.

The man page renders without groff warnings; the packaged default configuration and the
replay example are valid for the agent of this source tree; the sysusers.d entry creates the
user the configuration names. (``test_deb.py`` checks the installed package as a whole.)
"""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

from tests.packaging.pkg import REPO, SAMPLE_FLOWS, flow_lines
from tests.support import require_tool
from tests.support.agentproc import run_agent

PACKAGING = REPO / "packaging"


def test_man_page_renders_without_warnings() -> None:
    groff = require_tool("groff")
    proc = subprocess.run([groff, "-man", "-ww", "-z", str(PACKAGING / "man/netflow-agent.8")],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_default_config_is_valid_and_names_the_packaged_user() -> None:
    conf = PACKAGING / "config/netflow-agent.toml"
    proc = run_agent("--dry-run", "-c", str(conf))
    assert proc.returncode == 0, proc.stderr
    user = tomllib.loads(conf.read_text())["agent"]["user"]
    sysusers = (PACKAGING / "systemd/netflow-agent.sysusers").read_text()
    assert f"\nu {user} " in f"\n{sysusers}"


def test_replay_example_reads_the_installed_capture(tmp_path: Path) -> None:
    """replay.toml names the path debian/rules installs sample.pcap to; with that path
    pointed at the source tree's copy it prints the capture's flows."""
    replay = (PACKAGING / "config/replay.toml").read_text()
    installed = "/usr/share/netflow-agent/examples/sample.pcap"
    assert installed in replay and installed in (PACKAGING / "debian/rules").read_text()
    conf = tmp_path / "replay.toml"
    conf.write_text(replay.replace(installed, str(REPO / "examples/sample.pcap")))
    proc = run_agent("-c", str(conf))
    assert proc.returncode == 0, proc.stderr
    assert len(flow_lines(proc.stdout)) == SAMPLE_FLOWS, proc.stdout
