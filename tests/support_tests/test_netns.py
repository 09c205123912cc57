"""tests/support/netns.py against the kernel: namespaces, quiet links, exact traffic truth."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import require_tool
from tests.support.netns import (
    Capture,
    Netns,
    NetnsError,
    routed_topology,
    send_icmp_echo,
    send_udp,
    set_offloads,
    tcp_connections,
)
from tests.support.truth import GroundTruth

pytestmark = pytest.mark.netns


def _exists(name: str) -> bool:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return any(line.split()[0] == name for line in out.splitlines() if line.strip())


def test_netns_deleted_and_processes_ended_even_on_failure() -> None:
    with pytest.raises(RuntimeError, match="boom"), Netns() as ns:
        name = ns.name
        proc = ns.popen([sys.executable, "-c", "import time; time.sleep(60)"])
        assert _exists(name) and name.startswith("nfa-")
        raise RuntimeError("boom")
    assert proc.poll() is not None
    assert not _exists(name)


def test_run_reports_failures(netns: Netns) -> None:
    with pytest.raises(NetnsError, match="exited"):
        netns.run(["ip", "link", "show", "dev", "no-such-if"])
    assert netns.run(["ip", "link", "show", "dev", "no-such-if"], check=False).returncode


def test_udp_and_icmp_truth_matches_capture(veth_pair_ns) -> None:
    require_tool("tcpdump")
    a, b = veth_pair_ns.a, veth_pair_ns.b
    expected = GroundTruth()
    with Capture(b.ns, b.ifname) as cap:
        for dst, payload in ((b.addr, 100), (b.addr6, 33)):
            sent = send_udp(a.ns, dst, 5000, 10, payload, peer=b.ns)
            assert sent.received == 10
            expected.merge(sent.truth)
        for dst in (b.addr, b.addr6):
            echo = send_icmp_echo(a.ns, dst, 4, 24)
            assert echo.received == 4
            expected.merge(echo.truth)
    # the link is quiet: no ARP, ND or MLD, so the capture holds exactly our packets
    assert cap.truth.table() == expected.table()
    assert expected.packets == 2 * 10 + 2 * 8
    assert cap.truth.bytes == 10 * (20 + 8 + 100) + 10 * (40 + 8 + 33) + 8 * 52 + 8 * 72


def test_tcp_truth_from_capture(veth_pair_ns) -> None:
    require_tool("tcpdump")
    a, b = veth_pair_ns.a, veth_pair_ns.b
    for end in (a, b):
        set_offloads(end, False)
    sent = tcp_connections(a.ns, b.ns, b.addr6, 8080, 2, 3000)
    assert sent.details["bytes_received"] == 6000
    assert len(sent.truth.flows) == 4  # two connections, both directions
    forward = [c for f, c in sent.truth.flows.items() if f.dport == 8080]
    for counts in forward:  # SYN, FIN and data present; payload + headers accounted
        assert counts.tcp_flags & 0x13 == 0x13
        assert counts.bytes >= 3000 + counts.packets * (40 + 20)


def test_routed_topology_forwards_both_families() -> None:
    with routed_topology() as topo:
        assert topo.router_ns.run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"
        for dst in (topo.server.addr, topo.server.addr6):
            echo = send_icmp_echo(topo.client_ns, dst, 2)
            assert echo.received == 2
        names = [ns.name for ns in (topo.client_ns, topo.router_ns, topo.server_ns)]
        assert len(set(names)) == 3
        assert topo.router_client.ifindex != topo.router_server.ifindex
    assert not any(_exists(n) for n in names)
