"""Privileged NFLOG tests of fragments out of order and of a real VXLAN underlay.

Topology as in ``test_nflog_netns.py``: client -- router -- server, the agent reads the
router's FORWARD NFLOG group and exports NetFlow v9 to nfcapd. Every test runs with both
decoders.

* Out-of-order fragments: the client writes pre-fragmented UDP datagrams (IPv4 and IPv6,
  last fragment first) straight onto its link with an ``AF_PACKET`` socket; the router
  forwards the fragments as they come (no conntrack, so no reassembly) and its NFLOG rule
  sees every non-first fragment before its first one. Truth: tcpdump on the router, with
  fragments tracked to their first fragment.
* VXLAN: the client and server have a VXLAN link (VNI 42, UDP 4789) over their underlay
  addresses; the router forwards only the outer UDP packets. With ``decapsulate = ["vxlan"]``
  nfdump must show the inner flows exactly (truth: what the traffic helpers sent over the
  overlay), and with ``keep_outer`` the outer ones too (truth: tcpdump on the router).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from netflow_agent.plugins.ingest_nflog.decoders import c_extension
from tests.ingest_nflog.test_nflog_netns import (
    DECODERS,
    _add_rules,
    _config,
    _expected,
    _link_unicast,
    _started,
    _truth_of,
)
from tests.support.agentproc import nflog_counters
from tests.support.collectors import Nfcapd, flow_table
from tests.support.netns import (
    Capture,
    RoutedTopology,
    send_frames,
    send_icmp_echo,
    send_udp,
    vxlan_overlay,
)
from tests.support.pcapgen import FlowSpec, PcapBuilder, link_header
from tests.support.truth import GroundTruth

pytestmark = pytest.mark.netns

def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _send_reordered_fragments(topo: RoutedTopology) -> int:
    """UDP datagrams client -> server, fragments last first, written onto the client's link."""
    c, s = topo.client, topo.server
    b = PcapBuilder()
    b.add(FlowSpec("udp", c.addr, s.addr, 4000, 9, packets=3, payload=3000, fragment=1200,
                   reorder=True))
    b.add(FlowSpec("udp", c.addr6, s.addr6, 4001, 9, packets=2, payload=2500, fragment=1000,
                   reorder=True))
    dst, src = _mac(topo.router_client.mac), _mac(c.mac)
    frames = [dst + src + link_header(1, ip)[12:] + ip for _ts, ip in b.packets]
    return send_frames(c, frames)


@pytest.mark.parametrize("decoder", DECODERS)
def test_out_of_order_fragments_are_one_flow_per_datagram_5tuple(
        topo: RoutedTopology, tmp_path: Path, decoder: str) -> None:
    _add_rules(topo, "iptables", ("forward",))
    sock = tmp_path / "agent.sock"
    with Nfcapd(tmp_path / "flows") as cap:
        agent = _started(tmp_path, _config(topo, cap.port, decoder, sock), decoder)
        try:
            captures = [Capture(topo.router_ns, "rc", direction="in", fragments="track").start(),
                        Capture(topo.router_ns, "rs", direction="in", fragments="track").start()]
            sent = _send_reordered_fragments(topo)
            truth = _truth_of(captures)
        finally:
            agent.stop()
        records = cap.flows()
    counters = nflog_counters(agent.log())
    assert sent == 3 * 3 + 2 * 3
    assert flow_table(records) == _expected(truth), agent.log()
    later = 3 * 2 + 2 * 2
    assert counters["frag_held"] == later and counters["frag_tracked"] >= later, counters
    assert counters["frag_unmatched"] == 0 and counters["frag_waiting"] == 0


@pytest.mark.parametrize("keep_outer", [False, True], ids=["inner", "keep-outer"])
@pytest.mark.parametrize("decoder", DECODERS)
def test_vxlan_underlay_gives_the_inner_flows(topo: RoutedTopology, tmp_path: Path,
                                              decoder: str, keep_outer: bool) -> None:
    if decoder == "c" and c_extension() is None:
        pytest.skip("C decoder not built")
    _add_rules(topo, "iptables", ("forward",))
    _a4, b4, _a6, b6 = vxlan_overlay(topo.client, topo.server)
    c, s = topo.client_ns, topo.server_ns
    extra: dict[str, object] = {"decapsulate": ["vxlan"], "keep_outer": keep_outer}
    with Nfcapd(tmp_path / "flows") as cap:
        agent = _started(tmp_path, _config(topo, cap.port, decoder, tmp_path / "agent.sock",
                                           **extra), decoder)
        try:
            captures = [Capture(topo.router_ns, "rc", direction="in").start(),
                        Capture(topo.router_ns, "rs", direction="in").start()]
            inner = GroundTruth()
            inner.merge(send_udp(c, b4, 5001, 12, 100, peer=s).truth)
            inner.merge(send_udp(c, b6, 5002, 7, 300, peer=s).truth)
            inner.merge(send_icmp_echo(c, b4, 3).truth)
            outer = _truth_of(captures)
        finally:
            agent.stop()
        records = cap.flows()
    counters = nflog_counters(agent.log())
    want = _expected(inner)
    if keep_outer:
        want.update(_expected(outer))
    assert _link_unicast(flow_table(records)) == _link_unicast(want), agent.log()
    assert outer.packets >= inner.packets, "every overlay packet crossed the router"
    assert counters["decapsulated"] == outer.packets and counters["decap_failed"] == 0
