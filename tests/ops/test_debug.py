"""``[agent] debug`` has ipt_NETFLOW's meaning and a reload applies it at once (issue 18 item 14).

0 logs at info level, 1 adds debug logging, 2 and more add one ``agent.flows`` line per flow
created and per flow exported (docs/operations.md "Logging").
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.ops.helpers import cli, exported, steady_capture
from tests.support.agentproc import Agent
from tests.support.pcapgen import MIXED_FLOWS, PcapBuilder

DEBUG_LINE = re.compile(r" DEBUG ")


def _replay_log(tmp_path: Path, debug: int) -> str:
    builder = PcapBuilder()
    for spec in MIXED_FLOWS:
        builder.add(spec)
    builder.write(tmp_path / "mixed.pcap")
    conf = tmp_path / "agent.toml"
    conf.write_text(f'[agent]\ndebug = {debug}\ncontrol_socket = "{tmp_path / "a.sock"}"\n'
                    f'[[ingest.pcap]]\npath = "{tmp_path / "mixed.pcap"}"\n'
                    f'[[export.log]]\npath = "{tmp_path / "flows.jsonl"}"\n')
    proc = cli("-c", str(conf))
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


@pytest.mark.parametrize("debug", [0, 1, 2, 3])
def test_each_debug_level_logs_what_the_docs_say(tmp_path, debug):
    log = _replay_log(tmp_path, debug)
    created = log.count("agent.flows: flow created: ")
    exported_lines = log.count("agent.flows: flow exported: ")
    if debug == 0:
        assert not DEBUG_LINE.search(log), log
    else:
        assert DEBUG_LINE.search(log), log  # 1: debug logging (the same as 2 before the fix)
    if debug >= 2:  # one line per flow: each created once, each exported once
        assert created == exported_lines == len(MIXED_FLOWS), log
        assert "flow exported: UDP 10.0.0.9:5000 -> 10.0.0.2:5001 pkts=40" in log
    else:
        assert created == exported_lines == 0, log


CONFIG = """
[agent]
debug = {debug}
control_socket = "{sock}"
scan_interval_ms = 50
[cache]
inactive_timeout = 1
active_timeout = 1
[[ingest.pcap]]
path = "{capture}"
speed = "recorded"
[[export.log]]
path = "{out}"
"""


def test_reload_applies_a_new_debug_level_at_once(tmp_path):
    capture, out, sock = tmp_path / "steady.pcap", tmp_path / "flows.jsonl", tmp_path / "a.sock"
    steady_capture(capture, seconds=30.0)
    conf = tmp_path / "agent.toml"
    conf.write_text(CONFIG.format(debug=0, sock=sock, capture=capture, out=out))
    agent = Agent(conf, sock, log_level=None).start()  # the level comes from [agent] debug
    try:
        agent.wait_for(lambda s: len(exported(out)) > 0, what="flows exported at debug 0")
        assert "flow exported" not in agent.log() and " DEBUG " not in agent.log()
        conf.write_text(CONFIG.format(debug=2, sock=sock, capture=capture, out=out))
        assert cli("reload", "--socket", str(sock)).returncode == 0
        agent.wait_for(lambda s: "agent.flows: flow exported: UDP 10.7.0." in agent.log(),
                       what="per-flow lines after the reload to debug 2")
        conf.write_text(CONFIG.format(debug=0, sock=sock, capture=capture, out=out))
        assert cli("reload", "--socket", str(sock)).returncode == 0
        lines, done = agent.log().count("flow exported"), len(exported(out))
        agent.wait_for(lambda s: len(exported(out)) > done + 4,
                       what="more flows exported at debug 0 again")
        assert agent.log().count("flow exported") <= lines + 4  # at most the in-flight scan
    finally:
        agent.stop()
