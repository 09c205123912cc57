"""The Ansible role packaging/ansible/roles/netflow_agent against this machine.

``ansible-playbook -c local`` (ansible-core from the test extras) runs the role's playbook
with the package built by ``scripts/build-deb``, in direct mode (systemd is not PID 1 here,
so the role starts the agent itself): the first run changes the machine, the second changes
nothing (PLAY RECAP ``changed=0``); a broken variable fails the play at the template's
``validate`` and a configuration the agent's user cannot read fails it in the reload handler,
and in both cases the running agent keeps its configuration (``netflow-agent stats --json``).
The agent reads NFLOG in a namespace of this test, its control socket and pid file have
names of their own; it is stopped by PID. Marked ``netns`` (root; installs a package).
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.packaging import pkg
from tests.support.collectors import UdpSink
from tests.support.netns import Netns

pytestmark = pytest.mark.netns

ANSIBLE_DIR = pkg.REPO / "packaging" / "ansible"
RECAP = re.compile(r"^localhost\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+"
                   r"failed=(\d+)", re.M)


@pytest.fixture
def role_vars(built_deb: Path, clean_machine: None, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Variables for a direct-mode run; stops the agent the role started, by its PID file."""
    socket = f"/run/netflow-agent/ansible-test-{os.getpid()}.sock"
    pidfile = tmp_path / "agent.pid"
    with Netns() as ns, UdpSink() as sink:
        yield {
            "netflow_agent_deb": str(built_deb),
            "netflow_agent_service_manager": "direct",
            "netflow_agent_direct_pidfile": str(pidfile),
            "netflow_agent_direct_log": str(tmp_path / "agent.log"),
            "netflow_agent_config": {
                "agent": {"user": "netflow-agent", "control_socket": socket},
                "cache": {"inactive_timeout": 15, "active_timeout": 1800, "maxflows": 100000},
                "ingest": {"nflog": [{"group": 5, "netns": ns.name}]},
                "export": {"netflow": [{"protocol": 9,
                                        "destination": [f"127.0.0.1:{sink.port}"]}]},
            },
        }
        stop_by_pidfile(pidfile)


def test_role_idempotent_and_refuses_broken_config(role_vars: dict[str, Any],
                                                   tmp_path: Path) -> None:
    first = playbook(role_vars, tmp_path)
    assert first.failed == 0 and first.changed > 0, first.output
    socket = role_vars["netflow_agent_config"]["agent"]["control_socket"]
    before = agent_stats(socket)
    assert before["cache"]["maxflows_limit"] == 100000, before["cache"]

    second = playbook(role_vars, tmp_path)
    assert (second.failed, second.changed) == (0, 0), second.output

    broken = copy.deepcopy(role_vars)  # refused by the template's validate
    broken["netflow_agent_config"]["cache"]["maxflows"] = -1
    refused = playbook(broken, tmp_path)
    assert refused.failed == 1 and refused.returncode != 0, refused.output
    assert "failed to validate" in refused.output and "maxflows" in refused.output

    unreadable = copy.deepcopy(role_vars)  # valid for root, unreadable for the agent's user
    unreadable["netflow_agent_config"]["cache"]["maxflows"] = 200000
    unreadable["netflow_agent_config_group"] = "root"
    not_applied = playbook(unreadable, tmp_path)
    assert not_applied.failed == 1 and not_applied.returncode != 0, not_applied.output
    handler = not_applied.output.split("RUNNING HANDLER [netflow_agent : Reload netflow-agent]")
    assert len(handler) == 2 and "fatal: [localhost]" in handler[1], not_applied.output

    after = agent_stats(socket)
    assert after["agent"]["pid"] == before["agent"]["pid"]
    assert after["cache"]["maxflows_limit"] == 100000, after["cache"]


class PlayResult:
    """``ansible-playbook``'s exit status, output and PLAY RECAP counters for localhost."""

    def __init__(self, proc: subprocess.CompletedProcess[str]):
        self.returncode = proc.returncode
        self.output = proc.stdout + proc.stderr
        recap = RECAP.findall(proc.stdout)
        assert recap, self.output
        self.ok, self.changed, _, self.failed = (int(n) for n in recap[-1])


def playbook(variables: dict[str, Any], tmp_path: Path) -> PlayResult:
    """Run packaging/ansible/playbook.yml against this machine with ``variables``."""
    extra = tmp_path / "vars.json"
    extra.write_text(json.dumps(variables))
    env = dict(os.environ, ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-local"),
               ANSIBLE_REMOTE_TEMP=str(tmp_path / "ansible-remote"),
               ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               # the target's Python: Debian's, which has python3-apt for the apt module
               ANSIBLE_PYTHON_INTERPRETER="/usr/bin/python3")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,",
         "-c", "local", str(ANSIBLE_DIR / "playbook.yml"), "-e", f"@{extra}"],
        capture_output=True, text=True, timeout=300, env=env, cwd=ANSIBLE_DIR, check=False)
    return PlayResult(proc)


def agent_stats(socket: str) -> dict[str, Any]:
    """``netflow-agent stats --json`` from the running agent."""
    proc = pkg.run(["netflow-agent", "stats", "--json", "--socket", socket])
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def stop_by_pidfile(pidfile: Path, timeout: float = 30) -> None:
    """SIGTERM the agent start-stop-daemon started (by the PID it recorded); wait for it."""
    if not pidfile.exists():
        return
    pid = int(pidfile.read_text())
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGKILL)
