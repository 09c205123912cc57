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
from tests.support.netns import Capture, RoutedTopology, send_icmp_echo, send_udp
from tests.support.pcapgen import FlowSpec, PcapBuilder, link_header
from tests.support.truth import GroundTruth

pytestmark = pytest.mark.netns

_SEND_FRAMES = r"""
import socket, sys
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((sys.argv[1], 0))
for frame in sys.argv[2:]:
    s.send(bytes.fromhex(frame))
print(len(sys.argv) - 2, flush=True)
"""


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
    frames = [(dst + src + link_header(1, ip)[12:] + ip).hex() for _ts, ip in b.packets]
    out = topo.client_ns.python(_SEND_FRAMES, c.ifname, *frames)
    return int(out.split()[-1])


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


def _vxlan_overlay(topo: RoutedTopology) -> tuple[str, str, str, str]:
    """A quiet VXLAN link vx0 between client and server; returns the overlay addresses."""
    ends = ((topo.client, topo.server, "192.168.77.1", "fd77::1"),
            (topo.server, topo.client, "192.168.77.2", "fd77::2"))
    for local, remote, addr, addr6 in ends:
        ns = local.ns
        ns.run(["ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "remote", remote.addr,
                "local", local.addr, "dstport", "4789", "dev", local.ifname])
        ns.run(["ip", "link", "set", "vx0", "arp", "off"])
        # the MLD reports of the new address leave at once, before the agent starts
        ns.sysctl({"net.ipv6.conf.vx0.mldv2_unsolicited_report_interval": "1",
                   "net.ipv6.conf.vx0.mldv1_unsolicited_report_interval": "1"})
        ns.run(["ip", "addr", "add", f"{addr}/24", "dev", "vx0"])
        ns.run(["ip", "addr", "add", f"{addr6}/64", "dev", "vx0", "nodad"])
    macs = {end.ns.name: end.ns.link("vx0")["address"] for end in (topo.client, topo.server)}
    for (local, remote, _a, _a6), (_l, _r, peer, peer6) in zip(ends, reversed(ends),
                                                               strict=True):
        for addr in (peer, peer6):
            local.ns.run(["ip", "neigh", "replace", addr, "lladdr", macs[remote.ns.name],
                          "dev", "vx0", "nud", "permanent"])
        local.ns.run(["ip", "link", "set", "vx0", "up"])
    return "192.168.77.1", "192.168.77.2", "fd77::1", "fd77::2"


@pytest.mark.parametrize("keep_outer", [False, True], ids=["inner", "keep-outer"])
@pytest.mark.parametrize("decoder", DECODERS)
def test_vxlan_underlay_gives_the_inner_flows(topo: RoutedTopology, tmp_path: Path,
                                              decoder: str, keep_outer: bool) -> None:
    if decoder == "c" and c_extension() is None:
        pytest.skip("C decoder not built")
    _add_rules(topo, "iptables", ("forward",))
    _a4, b4, _a6, b6 = _vxlan_overlay(topo)
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
