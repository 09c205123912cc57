"""``[[aggregate.route]]`` against a real routing table: the router of a client -- router -- server
topology (tests/support/netns.py), with extra routes behind both neighbours.

* :class:`KernelRoutes` in the router's namespace answers like ``ip route get ADDR fibmatch``
  for gateway, connected, IPv6, multipath, blackhole/unreachable/prohibit and missing routes;
* the real ``agent`` CLI replays a pcap with ``[[aggregate.route]] netns = <router>`` and
  exports NetFlow v9 and v5 to nfcapd: nfdump shows the next hop, both masks and the egress
  interface the kernel would use, also behind ``[aggregate]`` rules (whose masks stay).
  nfdump (1.7.1 and upstream ``Process_v5_v7``) does not store the v5 ``src_mask``/``dst_mask``
  bytes, so the v5 masks are checked with the PyPI ``netflow`` decoder on the same datagrams.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from pathlib import Path

import pytest

from netflow_agent.plugins.aggregate_route.routes import KernelRoutes, Route
from tests.support.collectors import Nfcapd, UdpSink, netflow_decode, netflow_records
from tests.support.netns import RoutedTopology
from tests.support.pcapgen import FlowSpec, PcapBuilder

pytestmark = pytest.mark.netns

AGENT = [sys.executable, "-m", "netflow_agent.cli"]
ROOT = Path(__file__).resolve().parents[2]


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


@pytest.fixture
def router(routed: RoutedTopology) -> RoutedTopology:
    """The routed topology plus routes in the router: remote nets behind server and client."""
    c, s = routed.client, routed.server
    for cmd in (
        ["ip", "route", "add", "10.201.0.0/16", "via", s.addr],
        ["ip", "route", "add", "10.202.0.0/20", "via", c.addr],
        ["ip", "-6", "route", "add", "fd00:201::/48", "via", s.addr6],
        ["ip", "-6", "route", "add", "fd00:202::/56", "via", c.addr6],
        ["ip", "route", "add", "blackhole", "10.203.0.0/16"],
        ["ip", "route", "add", "unreachable", "10.204.0.0/16"],
        ["ip", "route", "add", "prohibit", "10.205.0.0/16"],
        ["ip", "route", "add", "10.206.0.0/16", "nexthop", "via", s.addr, "nexthop", "via",
         c.addr],
    ):
        routed.router_ns.run(cmd)
    return routed


def test_kernel_routes_in_the_router_namespace(router):
    c, rc, rs, s = router.client, router.router_client, router.router_server, router.server
    routes = KernelRoutes(router.router_ns.name)
    try:
        assert routes.lookup(ip("10.201.9.9")) == Route(16, ip(s.addr), rs.ifindex)
        assert routes.lookup(ip("10.202.0.9")) == Route(20, ip(c.addr), rc.ifindex)
        assert routes.lookup(ip(s.addr)) == Route(s.prefixlen, b"", rs.ifindex)
        assert routes.lookup(ip("fd00:201::9")) == Route(48, ip(s.addr6), rs.ifindex)
        assert routes.lookup(ip(c.addr6)) == Route(c.prefixlen6, b"", rc.ifindex)
        for unroutable in ("10.203.0.1", "10.204.0.1", "10.205.0.1", "192.0.2.1", "fd00:999::1"):
            assert routes.lookup(ip(unroutable)) is None, unroutable
        multipath = routes.lookup(ip("10.206.0.1"))  # the path the kernel picks for it
        assert multipath in (Route(16, ip(s.addr), rs.ifindex), Route(16, ip(c.addr), rc.ifindex))
    finally:
        routes.close()


def test_missing_namespace_is_an_error_and_is_not_created():
    with pytest.raises(FileNotFoundError, match="nfa-route-missing"):
        KernelRoutes("nfa-route-missing")
    assert not Path("/run/netns/nfa-route-missing").exists()


def _pcap(tmp_path: Path, topo: RoutedTopology) -> Path:
    c, s = topo.client, topo.server
    builder = PcapBuilder()
    for spec in (
        FlowSpec("udp", "10.202.0.5", "10.201.7.7", 1000, 53, packets=3, payload=40),
        FlowSpec("udp", c.addr, s.addr, 2000, 53, packets=2, payload=10),  # connected
        FlowSpec("udp", "10.202.0.5", "192.0.2.9", 3000, 53, packets=1, payload=10),  # no route
        FlowSpec("udp", s.addr, "10.202.1.1", 4000, 53, packets=1, payload=10),  # towards client
        FlowSpec("udp", "10.202.0.5", "10.201.8.8", 5000, 53, packets=1, payload=10),  # rules
        FlowSpec("tcp", "fd00:202::5", "fd00:201::7", 40000, 443, packets=4, payload=100),
    ):
        builder.add(spec)
    path = tmp_path / "routed.pcap"
    builder.write(path)
    return path


def _config(pcap: Path, router_ns: str, v9_port: int, v5_ports: tuple[int, int]) -> str:
    v5_dest = ", ".join(f'"127.0.0.1:{p}"' for p in v5_ports)
    return (f'[[ingest.pcap]]\npath = "{pcap}"\n\n'
            '[aggregate]\nrules = ["10.201.8.0/24=24"]\n\n'
            f'[[aggregate.route]]\nnetns = "{router_ns}"\n\n'
            f'[[export.netflow]]\nprotocol = 9\ndestination = ["127.0.0.1:{v9_port}"]\n\n'
            f'[[export.netflow]]\nprotocol = 5\ndestination = [{v5_dest}]\n')


def _expected(topo: RoutedTopology, ipv6: bool) -> set[tuple]:
    c, rc, rs, s = topo.client, topo.router_client, topo.router_server, topo.server
    rows = {  # (src, dst, sport, next hop, src mask, dst mask, egress ifindex)
        ("10.202.0.5", "10.201.7.7", 1000, s.addr, 20, 16, rs.ifindex),
        (c.addr, s.addr, 2000, "0.0.0.0", c.prefixlen, s.prefixlen, rs.ifindex),
        ("10.202.0.5", "192.0.2.9", 3000, "0.0.0.0", 20, 0, 0),
        (s.addr, "10.202.1.1", 4000, c.addr, s.prefixlen, 20, rc.ifindex),
        ("10.202.0.5", "10.201.8.0", 5000, s.addr, 20, 24, rs.ifindex),  # rule's /24 kept
    }
    if ipv6:
        rows.add(("fd00:202::5", "fd00:201::7", 40000, s.addr6, 56, 48, rs.ifindex))
    return rows


def _rows(flows: list[dict], masks: bool = True) -> set[tuple]:
    """nfdump records as :func:`_expected` rows (masks as 0 where nfdump drops them)."""
    out = set()
    for f in flows:
        raw = f["raw"]
        hop = raw.get("ip4_next_hop") or raw.get("ip6_next_hop") or "0.0.0.0"
        smask, dmask = (f.get("src_mask", 0), f.get("dst_mask", 0)) if masks else (0, 0)
        out.add((f["src"], f["dst"], f["sport"], hop, smask, dmask, f.get("out_if", 0)))
    return out


def _v5_rows(datagrams: list[bytes]) -> set[tuple]:
    """The v5 datagrams as rows, decoded by the PyPI ``netflow`` package."""
    rows = set()
    for rec in netflow_records(netflow_decode(datagrams)[1]):
        raw = rec["raw"]
        hop = str(ipaddress.IPv4Address(raw["NEXT_HOP"]))
        rows.add((rec["src"], rec["dst"], rec["sport"], hop, raw["SRC_MASK"], raw["DST_MASK"],
                  raw["OUTPUT"]))
    return rows


def test_agent_exports_next_hop_and_masks_from_the_router(router, tmp_path):
    pcap = _pcap(tmp_path, router)
    with Nfcapd(tmp_path / "v9") as v9, Nfcapd(tmp_path / "v5") as v5, UdpSink() as sink5:
        conf = tmp_path / "agent.toml"
        conf.write_text(_config(pcap, router.router_ns.name, v9.port, (v5.port, sink5.port)))
        run = subprocess.run([*AGENT, "-c", str(conf)], capture_output=True, text=True,
                             timeout=60, cwd=ROOT)
        assert run.returncode == 0, run.stderr
        datagrams5 = sink5.wait(1)
        flows9, flows5 = v9.flows(), v5.flows()
    assert _rows(flows9) == _expected(router, ipv6=True)
    v4 = _expected(router, ipv6=False)
    assert _v5_rows(datagrams5) == v4
    assert _rows(flows5, masks=False) == {row[:4] + (0, 0) + row[6:] for row in v4}
