"""Privileged NFLOG tests on a Linux bridge: MAC addresses, VLAN tags and bridge ports.

Topology: namespace ``br`` holds bridge ``br0`` with ports ``pa`` and ``pb``, veth links to
namespaces ``a`` and ``b``. Namespace ``a`` writes exact Ethernet frames onto its link with an
``AF_PACKET`` socket (built by ``tests.support.pcapgen``: known MACs, 802.1Q tags with
priorities; this kernel has no 8021q module, so tags are put in the frames by the sender and
the receiving veth moves them into ``skb->vlan_tci``); ``br0`` forwards them to ``b``. The
agent reads the NFLOG group of ``br`` and writes JSON flow records (``[[export.log]]``).

* ``chains = ["bridge"]``: the managed ``bridge`` family table; its messages carry
  NFULA_HWHEADER, NFULA_VLAN and the bridge ports, so ``[flow] mac, vlan, physdev =
  "export"`` give every field exactly (JSON records; MACs and VLAN ids also in NetFlow v9
  as nfdump reads it), and a tag splits flows;
* br_netfilter (``bridge-nf-call-iptables``) with an ``inet`` forward chain: the same bridged
  IP packets, MACs from NFULA_HWHEADER, and ``physdev = "override"`` keys them on the ports
  (ipt_NETFLOW's ``--enable-physdev-override``).

Every test runs with both decoders.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.export_netflow.collect import nfcapd
from tests.ingest_nflog.test_nflog_netns import DECODERS, _started
from tests.support.collectors import free_udp_port
from tests.support.netns import Netns, send_frames_on
from tests.support.pcapgen import FlowSpec, PcapBuilder
from tests.support.truth import FlowId

pytestmark = pytest.mark.netns

GROUP = 11
SRC_MAC, DST_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"  # pcapgen's Ethernet addresses


@dataclass
class Bridge:
    br: Netns
    a: Netns
    b: Netns

    def ifindex(self, name: str) -> int:
        return self.br.ifindex(name)


@pytest.fixture
def bridge() -> Iterator[Bridge]:
    """Name: bridge. Scope: function. Depends: root. br0 (ports pa, pb) between a and b."""
    with Netns() as br, Netns() as a, Netns() as b:
        br.run(["ip", "link", "add", "br0", "type", "bridge"])
        for ns, port in ((a, "pa"), (b, "pb")):
            br.run(["ip", "link", "add", port, "type", "veth", "peer", "name", "eth0",
                    "netns", ns.name])
            br.run(["ip", "link", "set", port, "master", "br0", "up"])
            ns.run(["ip", "link", "set", "eth0", "up"])
        br.run(["ip", "link", "set", "br0", "up"])
        yield Bridge(br, a, b)


def send(bridge: Bridge, builder: PcapBuilder) -> None:
    """Write the builder's frames onto a's link (the bridge forwards them to b)."""
    frames = [frame for _ts, frame, _n in builder.frames()]
    assert send_frames_on(bridge.a, "eth0", frames) == len(frames)


def tagged_and_untagged() -> tuple[PcapBuilder, PcapBuilder]:
    """The same UDP 5-tuple tagged (VLAN 42, priority 5) and untagged, and an IPv6 flow."""
    tagged = PcapBuilder(vlans=(42,), vlan_pcps=(5,))
    tagged.add(FlowSpec("udp", "10.9.0.1", "10.9.0.2", 5000, 6000, packets=6, payload=50))
    plain = PcapBuilder()
    plain.add(FlowSpec("udp", "10.9.0.1", "10.9.0.2", 5000, 6000, packets=4, payload=50))
    plain.add(FlowSpec("udp", "fd09::1", "fd09::2", 5001, 6001, packets=3, payload=80))
    return tagged, plain


def config(bridge: Bridge, tmp_path: Path, decoder: str, flow: str, chains: str,
           nfcapd_port: int = 0) -> str:
    v9 = (f'[[export.netflow]]\nprotocol = 9\ndestination = ["127.0.0.1:{nfcapd_port}"]\n'
          if nfcapd_port else "")
    return v9 + (f'[agent]\nscan_interval_ms = 200\ncontrol_socket = "{tmp_path}/agent.sock"\n'
            f"[flow]\n{flow}\n"
            f'[[ingest.nflog]]\ngroup = {GROUP}\nnetns = "{bridge.br.name}"\n'
            f'flush_timeout_ms = 50\ndecoder = "{decoder}"\nmanage_rules = true\n'
            f"chains = {chains}\n"
            f'[[export.log]]\npath = "{tmp_path}/flows.json"\n')


def run(bridge: Bridge, tmp_path: Path, decoder: str, toml: str,
        builders: tuple[PcapBuilder, ...]) -> list[dict]:
    """Start the agent, send the frames, wait until the cache saw them all; the records."""
    total = sum(b.truth.packets for b in builders)
    agent = _started(tmp_path, toml, decoder)
    try:
        for b in builders:
            send(bridge, b)
        agent.wait_for(lambda s: s["cache"]["traffic_packets"] >= total, what="cache counters")
    finally:
        assert agent.stop() == 0, agent.log()
    lines = (tmp_path / "flows.json").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == "flow"]


def table(records: list[dict], *fields: str) -> dict[tuple, tuple[int, int]]:
    """Packets and bytes per 5-tuple and ``fields`` (a flow may be exported in pieces)."""
    out: dict[tuple, tuple[int, int]] = {}
    for r in records:
        k = (FlowId.make(r["protocol"], r["src_addr"], r["dst_addr"], r["src_port"],
                         r["dst_port"]), *(r.get(f, 0) for f in fields))
        p, b = out.get(k, (0, 0))
        out[k] = (p + r["packets"], b + r["octets"])
    return out


@pytest.mark.parametrize("decoder", DECODERS)
def test_bridge_family_gives_macs_vlan_and_ports(bridge: Bridge, tmp_path: Path,
                                                 decoder: str) -> None:
    tagged, plain = tagged_and_untagged()
    port = free_udp_port()
    toml = config(bridge, tmp_path, decoder, 'mac = true\nvlan = true\nphysdev = "export"',
                  '["bridge"]', port)
    with nfcapd(tmp_path / "nfcapd", port) as collector:
        records = run(bridge, tmp_path, decoder, toml, (tagged, plain))
    nfdump = collector.flows("%sa|%sp|%ismc|%idmc|%svln|%pkt|%byt")
    fields = ("src_mac", "dst_mac", "ethernet_type", "vlan_id", "vlan_priority", "in_if",
              "in_physdev", "out_physdev")
    br0, pa, pb = (bridge.ifindex(n) for n in ("br0", "pa", "pb"))
    want = {}
    for builder, vlan in ((tagged, (42, 5)), (plain, (0, 0))):
        for fid, counts in builder.truth.table().items():
            etype = 0x86DD if fid.ip_version == 6 else 0x0800
            want[(fid, SRC_MAC, DST_MAC, etype, *vlan, br0, pa, pb)] = counts
    assert table(records, *fields) == want
    # NetFlow v9 as nfdump reads it: the same MACs, VLAN ids and counts
    assert sorted(nfdump) == sorted(
        [fid.src, str(fid.sport), SRC_MAC, DST_MAC, str(vlan), str(p), str(b)]
        for (fid, _s, _d, _e, vlan, *_rest), (p, b) in want.items())


@pytest.mark.parametrize("decoder", DECODERS)
def test_br_netfilter_with_physdev_override_keys_on_the_ports(bridge: Bridge, tmp_path: Path,
                                                              decoder: str) -> None:
    bridge.br.sysctl({"net.bridge.bridge-nf-call-iptables": "1",
                      "net.bridge.bridge-nf-call-ip6tables": "1"})
    _tagged, plain = tagged_and_untagged()
    toml = config(bridge, tmp_path, decoder, 'mac = true\nphysdev = "override"',
                  '["forward"]')
    records = run(bridge, tmp_path, decoder, toml, (plain,))
    pa, pb = bridge.ifindex("pa"), bridge.ifindex("pb")
    want = {(fid, SRC_MAC, DST_MAC, pa, pb, 0, 0): counts
            for fid, counts in plain.truth.table().items()}
    assert table(records, "src_mac", "dst_mac", "in_if", "out_if", "in_physdev",
                 "out_physdev") == want
