"""Privileged end-to-end tests of the eBPF program's fragments and tunnels (issue 16, items
3 and 4): the real ``agent`` with ``[[ingest.ebpf]]``, NetFlow v9 / IPFIX to nfcapd, and the
export clock of every datagram checked on a tap (tests/support/exportclock.py).

* Fragments: a veth with MTU 1280 (IPv6's minimum: below it the kernel drops the link's IPv6
  addresses); UDP datagrams of 3,000 bytes over IPv4 and IPv6 leave the sender in three
  fragments each, in order. With ``[cache] fragments = "track"`` (the
  default) nfdump must show one flow per 5-tuple with every fragment as a packet; with
  ``"ports0"`` the non-first fragments form their own ports-0 flow, as in ipt_NETFLOW. Truth:
  tcpdump on the receiver, accounting fragments the same way, and the fragment count the MTU
  gives.
* VXLAN: client -- router -- server with a VXLAN link (VNI 42) between client and server;
  the agent observes the router's underlay interface, where only tunnel packets pass. With
  ``decapsulate = ["vxlan"]`` nfdump must show exactly the inner flows the traffic helpers
  sent over the overlay (truth: what they sent and counted), and the ingest's
  ``decapsulated`` counter must equal the tunnel packets tcpdump saw on the underlay.
* Every other tunnel kind (this kernel has no GRE or Geneve links): crafted frames
  (tests/support/pcapgen.py, the pcap ingest's tunnel flows) written onto a veth, on TCX and
  XDP, with ``keep_outer``, and VXLAN inside GRE; and fragments that come before their first
  one (ports 0, counted unmatched: the kernel holds nothing).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_pcap_encapsulations import flows_of
from tests.ingest_ebpf.observe import ebpf_ingest
from tests.ingest_ebpf.test_ebpf_agent import stop_agent
from tests.support.agentproc import Agent
from tests.support.collectors import Nfcapd, flow_table
from tests.support.exportclock import clock_tap
from tests.support.netns import (
    Capture,
    RoutedTopology,
    VethPair,
    send_frames,
    send_icmp_echo,
    send_udp,
    vxlan_overlay,
)
from tests.support.pcapgen import FlowSpec, PcapBuilder, encapsulate, link_header
from tests.support.truth import GroundTruth

pytestmark = pytest.mark.bpf

INGEST = "ingest.ebpf[0]"
MTU = 1280
PAYLOAD = 3000  # three fragments at MTU 1280, over IPv4 and IPv6


def _config(tmp: Path, ns: str, ifname: str, export: str, fragments: str = "track",
            decapsulate: tuple[str, ...] = ()) -> Path:
    conf = tmp / "agent.toml"
    tunnels = ", ".join(f'"{t}"' for t in decapsulate)
    conf.write_text(f"""
[agent]
control_socket = "{tmp / 'agent.sock'}"

[cache]
inactive_timeout = 60
fragments = "{fragments}"

[[ingest.ebpf]]
interfaces = ["{ifname}"]
netns = "{ns}"
poll_interval_ms = 100
decapsulate = [{tunnels}]

{export}
""")
    return conf


def _export(port: int, tap: str, ipfix: bool = False) -> str:
    """NetFlow v9 (``[[export.netflow]]``) or IPFIX to nfcapd and to the clock tap."""
    dests = f'destination = ["127.0.0.1:{port}", "{tap}"]'
    if ipfix:
        return f"[[export.ipfix]]\n{dests}\n"
    return f"[[export.netflow]]\n{dests}\nprotocol = 9\n"


def _expected(truth: GroundTruth) -> dict[tuple, tuple[int, int]]:
    return {fid[1:]: counts for fid, counts in truth.table().items()}


def _started(tmp: Path, conf: Path) -> Agent:
    """The agent on ``conf`` once attached, with its control socket (for its statistics)."""
    return Agent(conf, socket=tmp / "agent.sock", log_path=tmp / "agent.log").start(
        ready="attached")


def _ingest_stats(agent: Agent, done: object) -> dict:
    """The ingest's counters once ``done(counters)`` holds (drains run every 100 ms)."""
    snap = agent.wait_for(lambda s: done(s["components"][INGEST]),  # type: ignore[operator]
                          what="the ingest's counters")
    return dict(snap["components"][INGEST])


@pytest.mark.parametrize("mode", ["track", "ports0"])
def test_fragmented_udp_is_one_flow_per_5tuple(veth_pair_ns: VethPair, tmp_path: Path,
                                               mode: str) -> None:
    a, b = veth_pair_ns.a, veth_pair_ns.b
    for end in (a, b):
        end.ns.run(["ip", "link", "set", end.ifname, "mtu", str(MTU)])
    with Nfcapd(tmp_path / "flows") as cap, clock_tap() as tap:
        conf = _config(tmp_path, b.ns.name, b.ifname, _export(cap.port, tap.endpoint), mode)
        agent = _started(tmp_path, conf)
        try:
            with Capture(b.ns, b.ifname, direction="in", fragments=mode) as seen:
                v4 = send_udp(a.ns, b.addr, 9300, 5, PAYLOAD, peer=b.ns)
                v6 = send_udp(a.ns, b.addr6, 9301, 4, PAYLOAD, peer=b.ns)
            later = (5 + 4) * 2  # two non-first fragments per datagram
            stats = _ingest_stats(agent, lambda c: c.get("kernel_frag", 0) >= 3 * (5 + 4))
        finally:
            stop_agent(agent)
        records = cap.flows()
    assert (v4.received, v6.received) == (5, 4)
    truth = seen.truth
    assert truth.frag == 3 * (5 + 4) and truth.packets == 3 * (5 + 4)
    assert truth.bytes == 5 * (PAYLOAD + 8 + 3 * 20) + 4 * (PAYLOAD + 8 + 3 * (40 + 8))
    table = flow_table(records)
    assert table == _expected(truth), agent.log()
    ports0 = [key for key in table if key[3:] == (0, 0)]
    if mode == "track":
        assert set(table) == set(_expected(v4.truth)) | set(_expected(v6.truth))
        assert sorted(packets for packets, _ in table.values()) == [3 * 4, 3 * 5]
        assert (stats["frag_tracked"], stats["frag_unmatched"]) == (later, 0)
    else:
        assert len(ports0) == 2 and sum(table[k][0] for k in ports0) == later
        assert "frag_tracked" not in stats
    assert stats["kernel_frag"] == 3 * (5 + 4)


def _tunnel_traffic(topo: RoutedTopology) -> GroundTruth:
    """UDP over IPv4 and IPv6 and ICMP echo through the overlay (set up by the caller)."""
    c, s = topo.client_ns, topo.server_ns
    inner = GroundTruth()
    inner.merge(send_udp(c, "192.168.77.2", 5001, 12, 100, peer=s).truth)
    inner.merge(send_udp(c, "fd77::2", 5002, 7, 300, peer=s).truth)
    inner.merge(send_icmp_echo(c, "192.168.77.2", 3).truth)
    return inner


def _link_unicast(table: dict[tuple, tuple[int, int]]) -> dict[tuple, tuple[int, int]]:
    """Without the overlay's IPv6 link-scope multicast (MLD reports of its addresses)."""
    return {fid: counts for fid, counts in table.items() if not fid[2].startswith("ff02:")}


def test_vxlan_underlay_gives_the_inner_flows(routed: RoutedTopology, tmp_path: Path) -> None:
    vxlan_overlay(routed.client, routed.server)
    rc = routed.router_client
    with Nfcapd(tmp_path / "flows") as cap, clock_tap() as tap:
        conf = _config(tmp_path, routed.router_ns.name, rc.ifname,
                       _export(cap.port, tap.endpoint, ipfix=True), decapsulate=("vxlan",))
        agent = _started(tmp_path, conf)
        try:
            with Capture(routed.router_ns, rc.ifname) as underlay:
                inner = _tunnel_traffic(routed)
            outer = underlay.truth
            stats = _ingest_stats(agent, lambda c: c.get("kernel_packets", 0) >= outer.packets)
        finally:
            stop_agent(agent)
        records = cap.flows()
    tunnelled = sum(packets for fid, (packets, _) in outer.table().items() if fid.dport == 4789)
    assert tunnelled >= inner.packets, ("every overlay packet crossed the router", outer.table())
    assert _link_unicast(flow_table(records)) == _expected(inner), (outer.table(), agent.log())
    assert (stats["decapsulated"], stats["decap_failed"]) == (tunnelled, 0), outer.table()


#: pcapgen tunnel -> the decapsulate option that takes it apart (as the pcap ingest's tests)
TUNNELS = {
    "gre": ["gre"],
    "gre-key": ["gre"],
    "gre-teb": ["gre"],
    "erspan2": ["gre"],
    "erspan3": ["gre"],
    "vxlan": ["vxlan"],
    "geneve": ["geneve", "vxlan"],
    "ipip": ["ipip"],
}


def _crafted_tunnel_flows(pair: VethPair, tunnel: str, outer: tuple[str, str],
                          mode: str = "tcx", keep_outer: bool = False) -> None:
    """The pcap ingest's tunnel flows written onto ``pair``: the program must account exactly
    the inner flows the pcap ingest does (and the outer ones with ``keep_outer``), every
    tunnel packet decapsulated."""
    a, b = pair.a, pair.b
    built = flows_of(PcapBuilder(fragments="track", tunnel=tunnel, tunnel_id=42,
                                 tunnel_outer=outer, vlans=(5,)))
    with ebpf_ingest(interfaces=[b.ifname], netns=b.ns.name, direction="ingress", mode=mode,
                     poll_interval_ms=100, decapsulate=TUNNELS[tunnel],
                     keep_outer=keep_outer) as seen:
        sent = send_frames(a, (frame for _ts, frame, _len in built.frames()))
    assert sent == built.outer_truth.packets
    want = GroundTruth().merge(built.truth)
    if keep_outer:
        want.merge(built.outer_truth)
    assert seen.table() == want.table()
    assert (seen.stats["decapsulated"], seen.stats["decap_failed"]) == (sent, 0)
    assert seen.stats["frag_unmatched"] == 0 and seen.stats["frag_tracked"] > 0


@pytest.mark.parametrize("outer", [("192.0.2.1", "192.0.2.2"), ("2001:db8::1", "2001:db8::2")],
                         ids=["outer4", "outer6"])
@pytest.mark.parametrize("tunnel", TUNNELS)
def test_crafted_tunnels_give_their_inner_flows(veth_pair_ns: VethPair, tunnel: str,
                                                outer: tuple[str, str]) -> None:
    """Every tunnel kind the option names (this kernel has no GRE or Geneve links), with an
    outer VLAN tag and inner fragments, on tc (TCX)."""
    _crafted_tunnel_flows(veth_pair_ns, tunnel, outer)


@pytest.mark.parametrize("tunnel", ["vxlan", "gre-teb", "ipip"])
def test_crafted_tunnels_on_xdp(veth_pair_ns: VethPair, tunnel: str) -> None:
    """The XDP program takes tunnels apart with its own global function."""
    _crafted_tunnel_flows(veth_pair_ns, tunnel, ("2001:db8::1", "2001:db8::2"), mode="xdp")


@pytest.mark.parametrize("mode", ["tcx", "xdp"])
@pytest.mark.parametrize("tunnel", ["vxlan", "erspan3"])
def test_keep_outer_accounts_both(veth_pair_ns: VethPair, tunnel: str, mode: str) -> None:
    _crafted_tunnel_flows(veth_pair_ns, tunnel, ("192.0.2.1", "192.0.2.2"), mode=mode,
                          keep_outer=True)


@pytest.mark.parametrize("keep_outer", [False, True], ids=["inner", "keep-outer"])
def test_tunnel_in_tunnel(veth_pair_ns: VethPair, keep_outer: bool) -> None:
    """VXLAN inside GRE: two levels taken apart, and with keep_outer both outer flows (the
    GRE endpoints' and the VXLAN endpoints') accounted too, as agent/tunnels.py does."""
    a, b = veth_pair_ns.a, veth_pair_ns.b
    built = flows_of(PcapBuilder(fragments="track", tunnel="vxlan", tunnel_id=7))
    gre_truth = GroundTruth()
    frames = []
    for _ts, vxlan in built.packets:
        gre = encapsulate(vxlan, "gre-key", 9, "198.51.100.1", "198.51.100.2")
        gre_truth.add_ip_packet(gre)
        frames.append(link_header(1, gre) + gre)
    with ebpf_ingest(interfaces=[b.ifname], netns=b.ns.name, direction="ingress",
                     poll_interval_ms=100, decapsulate=["gre", "vxlan"],
                     keep_outer=keep_outer) as seen:
        sent = send_frames(a, frames)
    want = GroundTruth().merge(built.truth)
    if keep_outer:
        want.merge(built.outer_truth).merge(gre_truth)
    assert seen.table() == want.table()
    assert (seen.stats["decapsulated"], seen.stats["decap_failed"]) == (2 * sent, 0)


def test_fragments_before_their_first_keep_ports_0(veth_pair_ns: VethPair) -> None:
    """Out of order (last fragment first): the kernel holds nothing, so every non-first
    fragment that comes before its first one is a ports-0 packet, counted unmatched."""
    a, b = veth_pair_ns.a, veth_pair_ns.b
    built = PcapBuilder(fragments="ports0")  # what "track" gives when every first is late
    built.add(FlowSpec("udp", "10.9.0.1", "10.9.0.2", 4000, 9, packets=3, payload=3000,
                       fragment=1200, reorder=True))
    built.add(FlowSpec("udp", "fd09::1", "fd09::2", 4001, 9, packets=2, payload=2500,
                       fragment=1000, reorder=True))
    with ebpf_ingest(interfaces=[b.ifname], netns=b.ns.name, direction="ingress",
                     poll_interval_ms=100) as seen:
        sent = send_frames(a, (frame for _ts, frame, _len in built.frames()))
    assert sent == 3 * 3 + 2 * 3
    assert seen.table() == built.truth.table()
    assert (seen.stats["frag_tracked"], seen.stats["frag_unmatched"]) == (0, 3 * 2 + 2 * 2)


def test_without_decapsulate_the_tunnel_is_one_outer_flow(routed: RoutedTopology,
                                                          tmp_path: Path) -> None:
    """The default: the VXLAN packets are accounted as they are (the underlay's truth)."""
    vxlan_overlay(routed.client, routed.server)
    rc = routed.router_client
    with Nfcapd(tmp_path / "flows") as cap, clock_tap() as tap:
        conf = _config(tmp_path, routed.router_ns.name, rc.ifname,
                       _export(cap.port, tap.endpoint, ipfix=True))
        agent = _started(tmp_path, conf)
        try:
            with Capture(routed.router_ns, rc.ifname) as underlay:
                _tunnel_traffic(routed)
            stats = _ingest_stats(agent, lambda c: c.get("kernel_packets", 0)
                                  >= underlay.truth.packets)
        finally:
            stop_agent(agent)
        records = cap.flows()
    # the link's own MLD reports are sent when its addresses come up: before or after the
    # capture starts, so they are no part of the tunnel's truth
    assert (_link_unicast(flow_table(records))
            == _link_unicast(_expected(underlay.truth))), agent.log()
    assert {key[4] for key in flow_table(records) if key[0] == 17} == {4789}  # VXLAN only
    assert "decapsulated" not in stats
