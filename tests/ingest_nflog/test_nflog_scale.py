"""Privileged test: the NFLOG ingest at scale, with exact accounting (issue 14).

Issue 14's 200k-flow workload (half IPv4, half IPv6, 600k packets, 100k flows at once) as
raw frames from a client namespace through a router namespace at the sender's top rate; the
agent logs the router's forward chain (its own managed rule) and is stopped the moment the
router has forwarded the flood, while its reader is still behind the kernel. Whatever the
timing: every packet the router received is in an exported flow or in a counted loss (NFLOG
sequence gaps, the kernel's drops before the hook), exactly. Before the stop drain followed
the reader's progress (2 s, then the rest was left in the socket) and before readers stopped
waiting for room in the inbox at stop, a stop right after a flood lost datagrams without
counting them. With the C decoder, the batches' rows are written into reused buffers once
the pipeline has merged the batch before (``row_buffers_reused``). Whether the reader
switches to append mode here depends on how many packets one ``batch_ms`` delivers on a
loaded host, so this flood only asserts the exactness, in either mode; the switch itself is
test_append_mode.py's.
"""

from __future__ import annotations

import pytest

from tests.support.agentproc import nflog_counters
from tests.support.flowgen import Flood, agent_through_flood, build

pytestmark = pytest.mark.netns

WORKLOAD = Flood(flows=200_000, per_flow=3, concurrent=100_000)


@pytest.fixture(scope="module")
def flowgen(tmp_path_factory) -> str:
    """Name: flowgen. Scope: module. The compiled ``bench/ebpf/flowgen.c``."""
    return build(tmp_path_factory.mktemp("flowgen"))


@pytest.mark.parametrize("decoder", ["c", "python"])
def test_stop_right_after_a_flood_accounts_every_packet(routed, flowgen, tmp_path, decoder):
    """The Python decoder is several seconds behind such a flood when the agent stops."""
    ingest = (f'[[ingest.nflog]]\ngroup = 7\nnetns = "{routed.router_client.ns.name}"\n'
              f'manage_rules = true\nchains = ["forward"]\ndecoder = "{decoder}"\n'
              "rcvbuf = 268435456\n")
    run = agent_through_flood(routed, flowgen, WORKLOAD, ingest, "reading NFLOG group",
                              tmp_path)
    assert run.sent == WORKLOAD.packets
    assert "not accounted" not in run.log
    assert run.traffic + run.dropped == run.sent - run.before_hook, run.log[-2000:]
    assert sum(p for p, _ in run.table.values()) == run.traffic
    if not (run.before_hook or run.dropped):
        assert run.table == WORKLOAD.truth(routed.server.addr, routed.server.addr6)
    if decoder == "c":  # its batches' rows went through reused buffers, not fresh pages
        counters = nflog_counters(run.log)
        assert counters["row_buffers_reused"] > 0, counters
