"""Privileged test: the NFLOG ingest at scale, with exact accounting (issue 14).

Issue 14's 200k-flow workload (half IPv4, half IPv6, 600k packets, 100k flows at once) as
raw frames from a client namespace through a router namespace at the sender's top rate; the
agent logs the router's forward chain (its own managed rule) and is stopped the moment the
flood ends, while its reader is still behind the kernel. Whatever the timing: every packet
the router received is in an exported flow or in a counted loss (NFLOG sequence gaps, the
kernel's drops before the hook), exactly. Before the stop drain followed the reader's
progress (2 s, then the rest was left in the socket) and before readers stopped waiting for
room in the inbox at stop, a stop right after a flood lost datagrams without counting them.
"""

from __future__ import annotations

import json
import re

import pytest

from tests.support.agentproc import Agent
from tests.support.flowgen import Flood, build, rx_dropped
from tests.support.truth import record_table

pytestmark = pytest.mark.netns

WORKLOAD = Flood(flows=200_000, per_flow=3, concurrent=100_000)
#: the agent's last log line: "... traffic N packets, B bytes; dropped M packets ..."
SUMMARY = re.compile(r"stopped; .*traffic (\d+) packets.*dropped (\d+) packets")


@pytest.fixture(scope="module")
def flowgen(tmp_path_factory) -> str:
    """Name: flowgen. Scope: module. The compiled ``bench/ebpf/flowgen.c``."""
    return build(tmp_path_factory.mktemp("flowgen"))


@pytest.mark.parametrize("decoder", ["c", "python"])
def test_stop_right_after_a_flood_accounts_every_packet(routed, flowgen, tmp_path, decoder):
    """The Python decoder is several seconds behind such a flood when the agent stops."""
    router_in = routed.router_client
    out = tmp_path / "flows.jsonl"
    conf = tmp_path / "agent.toml"
    conf.write_text(f"""
[agent]
control_socket = ""
[cache]
inactive_timeout = 60
[[ingest.nflog]]
group = 7
netns = "{router_in.ns.name}"
manage_rules = true
chains = ["forward"]
decoder = "{decoder}"
rcvbuf = 268435456
[[export.log]]
path = "{out}"
format = "json"
""")
    log = tmp_path / "agent.log"
    dropped_before = rx_dropped(router_in)
    agent = Agent(conf, log_path=log).start(ready="reading NFLOG group")
    try:
        sent = WORKLOAD.send(flowgen, routed.client, router_in.mac, routed.server.addr,
                             routed.server.addr6)
    finally:
        assert agent.stop(timeout=180) == 0, agent.log()
    before_hook = rx_dropped(router_in) - dropped_before
    text = log.read_text()
    totals = SUMMARY.search(text)
    assert totals, text
    traffic, dropped = map(int, totals.groups())
    assert sent == WORKLOAD.packets
    assert "not accounted" not in text
    assert traffic + dropped == sent - before_hook, text[-2000:]
    records = (json.loads(line) for line in out.read_text().splitlines())
    table = record_table(r for r in records if r.get("type") == "flow")
    assert sum(p for p, _ in table.values()) == traffic
    if not (before_hook or dropped):
        assert table == WORKLOAD.truth(routed.server.addr, routed.server.addr6)
