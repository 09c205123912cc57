"""``[agent] user``: the agent sets up NFLOG (socket, managed nft rules) as root, then runs as
the configured user with only the kept capabilities (in every thread, the readers started as
root included), keeps accounting traffic, answers ``agent stats``, and removes its rules at
exit (which needs the kept CAP_NET_ADMIN)."""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from netflow_agent.privileges import CAPABILITIES
from tests.ops.helpers import RunningAgent, exported, table
from tests.support.netns import VethPair, send_udp

USER = "nfa-test"
GROUP = 23


@pytest.fixture
def system_user() -> Iterator[pwd.struct_passwd]:
    created = False
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", USER], check=True)
        created = True
        entry = pwd.getpwnam(USER)
    yield entry
    if created:
        subprocess.run(["userdel", USER], check=True)


def proc_status(pid: int, tid: str = "") -> dict[str, str]:
    """``/proc/PID/status`` (or one thread's) as a dict."""
    path = Path(f"/proc/{pid}/task/{tid}/status" if tid else f"/proc/{pid}/status")
    lines = path.read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


@pytest.mark.netns
def test_agent_drops_root_and_keeps_working(veth_pair_ns: VethPair, tmp_path: Path,
                                            system_user: pwd.struct_passwd) -> None:
    pair = veth_pair_ns
    sock, out = tmp_path / "agent.sock", tmp_path / "flows.jsonl"
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
user = "{USER}"
control_socket = "{sock}"
scan_interval_ms = 100
[[ingest.nflog]]
group = {GROUP}
netns = "{pair.b.ns.name}"
manage_rules = true
chains = ["input"]
[[export.log]]
path = "{out}"
""")
    agent = RunningAgent(config, sock)
    try:
        agent.wait_ready()
        status = proc_status(agent.proc.pid)
        uid, gid = system_user.pw_uid, system_user.pw_gid
        assert status["Uid"].split() == [str(uid)] * 4, status["Uid"]
        assert status["Gid"].split() == [str(gid)] * 4, status["Gid"]
        effective = int(status["CapEff"], 16)
        kept = {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_BPF", "CAP_SYS_ADMIN"}  # SYS_ADMIN: netns
        assert effective == sum(1 << CAPABILITIES[c] for c in kept), hex(effective)
        assert int(status["CapAmb"], 16) == effective
        assert agent.stats()["agent"]["uid"] == uid
        assert os.stat(sock).st_uid == uid
        traffic = send_udp(pair.a.ns, pair.b.addr, 5001, 12, 64, peer=pair.b.ns)
        expected = traffic.truth.table()
        agent.wait_for(lambda s: s["cache"]["traffic_packets"] >= 12, what="UDP accounted")
        for task in Path(f"/proc/{agent.proc.pid}/task").iterdir():
            thread = proc_status(agent.proc.pid, task.name)
            # never more than the kept set (a thread that held none at the switch has none)
            assert int(thread["CapPrm"], 16) & ~effective == 0, (task.name, thread["CapPrm"])
            assert int(thread["CapEff"], 16) & ~effective == 0, (task.name, thread["CapEff"])
    finally:
        code = agent.stop()
    assert code == 0, agent.log()
    got = {fid: counts for fid, counts in table(exported(out)).items() if fid in expected}
    assert got == expected, agent.log()
    tables = pair.b.ns.run(["nft", "list", "tables"]).stdout
    assert "netflow_agent" not in tables, "rules must be removed at exit, after the drop"
