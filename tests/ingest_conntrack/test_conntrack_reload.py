"""A reload after ``[agent] user`` dropped root keeps an ``[[ingest.conntrack]]`` instance.

The reload re-runs the environment checks in a process that is no longer root; the conntrack
(and NFLOG) checks must not then refuse what the agent opened as root at start (a reload used
to fail with "conntrack events, setns and the sysctls need root").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.agentproc import Agent, run_agent
from tests.support.netns import Netns

pytestmark = pytest.mark.netns

CONFIG = """
[agent]
control_socket = "{sock}"
user = "nobody"

[cache]
inactive_timeout = {inactive}

[[ingest.conntrack]]
netns = "{netns}"

[[export.log]]
path = "/dev/null"
"""


def test_reload_after_the_drop_keeps_conntrack(readable_dir: Path) -> None:
    sock = readable_dir / "agent.sock"
    conf = readable_dir / "agent.toml"
    with Netns() as ns:
        conf.write_text(CONFIG.format(sock=sock, netns=ns.name, inactive=15))
        with Agent(conf, sock) as agent:
            agent.start(ready="running with")
            assert agent.stats()["agent"]["uid"] == 65534
            conf.write_text(CONFIG.format(sock=sock, netns=ns.name, inactive=7))
            proc = run_agent("reload", "--socket", str(sock))
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert "generation 2 applied" in proc.stdout
            assert agent.stats()["cache"]["inactive_timeout"] == 7
            assert "need root" not in agent.log()
