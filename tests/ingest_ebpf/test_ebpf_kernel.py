"""Privileged tests: known traffic through a veth observed by the eBPF ingest (component level).

Each test builds two fresh namespaces joined by a quiet veth (``tests.support.netns``), attaches
the ingest to the receiving end inside its namespace (``netns =``) and compares what the
kernel accounted with ground truth: exact packets and IP bytes per flow.
"""

from __future__ import annotations

import os
import sys
import time

import pytest

from netflow_agent.fragments import FragmentPolicy
from tests.ingest_ebpf.observe import ebpf_ingest
from tests.support.netns import (
    Capture,
    Netns,
    send_icmp_echo,
    send_udp,
    set_offloads,
    tcp_connections,
    veth_pair,
)
from tests.support.truth import PROTO_UDP, FlowId

pytestmark = pytest.mark.bpf


@pytest.fixture
def pair(veth_pair_ns):
    """Name: pair. Scope: function. The shared quiet veth pair (tests/support/netns.py)."""
    return veth_pair_ns


@pytest.mark.parametrize("mode", ["tcx", "tc"])
def test_udp_icmp_tcp_both_directions_exact(pair, mode):
    a, b = pair.a, pair.b
    set_offloads(a, False)  # wire-sized TCP segments, so the capture truth is per segment
    set_offloads(b, False)
    with ebpf_ingest(interfaces=[b.ifname], netns=b.ns.name, mode=mode,
                     poll_interval_ms=100) as seen:
        truth = send_udp(a.ns, b.addr, 9000, 10, 100, peer=b.ns, tos=0x20).truth
        truth.merge(send_udp(a.ns, b.addr6, 9001, 7, 300, peer=b.ns).truth)
        truth.merge(send_icmp_echo(a.ns, b.addr, 4).truth)
        truth.merge(send_icmp_echo(a.ns, b.addr6, 3).truth)
        truth.merge(tcp_connections(a.ns, b.ns, b.addr, 7000, 2, 20000).truth)
    assert seen.table() == truth.table()
    assert seen.stats["mode"] == mode
    assert seen.dropped_packets == seen.trunc == seen.frag == 0
    # ingress at b: a -> b flows; egress at b: b -> a flows
    for fid, dirs in seen.directions.items():
        assert dirs == ({0} if fid.src == a.addr or fid.src == a.addr6 else {1}), fid
    tcp = [f for f in seen.flows.items() if f[0].proto == 6]
    assert all(flags & 0x02 and flags & 0x01 for _, (_, _, flags) in tcp)  # SYN and FIN seen
    assert b.ns.run(["tc", "filter", "show", "dev", b.ifname, "ingress"]).stdout.strip() == ""
    assert "clsact" not in b.ns.run(["tc", "qdisc", "show", "dev", b.ifname]).stdout


def test_xdp_ingress(pair):
    a, b = pair.a, pair.b
    with ebpf_ingest(interfaces=["v*"], netns=b.ns.name, mode="xdp",
                     direction="ingress", poll_interval_ms=100) as seen:
        truth = send_udp(a.ns, b.addr6, 9000, 5, 64, peer=b.ns).truth
    assert seen.table() == truth.table()
    assert "xdp" not in b.ns.run(["ip", "link", "show", b.ifname]).stdout


_RAW_SEND = r"""
import socket, struct, sys
ifname, dst_mac, src_mac = sys.argv[1], bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3])
def csum(b):
    b += b"\0" * (len(b) % 2)
    t = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while t >> 16: t = (t & 0xFFFF) + (t >> 16)
    return ~t & 0xFFFF
def ipv4_udp(src, dst, sport, dport, payload):
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    return hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:] + udp
def ipv6_udp(src, dst, sport, dport, payload):
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64,
                       socket.inet_pton(socket.AF_INET6, src),
                       socket.inet_pton(socket.AF_INET6, dst)) + udp
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
eth = dst_mac + src_mac
one_tag = struct.pack("!HH", 0x8100, 100)           # 802.1Q, VLAN 100
two_tags = struct.pack("!HHHH", 0x88A8, 200, 0x8100, 300)  # 802.1ad outer, 802.1Q inner
IP4, IP6 = struct.pack("!H", 0x0800), struct.pack("!H", 0x86DD)
for _ in range(5):
    s.send(eth + one_tag + IP4 + ipv4_udp("10.250.0.1", "10.250.0.2", 1111, 2222, bytes(50)))
for _ in range(4):
    s.send(eth + two_tags + IP6 + ipv6_udp("fd00:250::1", "fd00:250::2", 3333, 4444, bytes(70)))
for _ in range(3):
    s.send(eth + two_tags + IP4 + ipv4_udp("10.250.0.3", "10.250.0.4", 5555, 6666, bytes(10)))
s.send(eth + struct.pack("!H", 0x0806) + bytes(28))  # ARP-like: not IP
s.send(eth + struct.pack("!H", 0x0800) + bytes(10))  # IPv4 ethertype, truncated header
print("sent", flush=True)
"""


@pytest.mark.parametrize("mode", ["tcx", "xdp"])
def test_vlan_tagged_frames(pair, mode):
    """Hand-crafted 802.1Q and QinQ frames (this kernel has no 8021q module)."""
    a, b = pair.a, pair.b
    with ebpf_ingest(interfaces=[b.ifname], netns=b.ns.name, mode=mode, direction="ingress",
                     poll_interval_ms=100) as seen:
        a.ns.python(_RAW_SEND, a.ifname, b.mac.replace(":", ""), a.mac.replace(":", ""))
    expected = {
        FlowId.make(PROTO_UDP, "10.250.0.1", "10.250.0.2", 1111, 2222): (5, 5 * 78),
        FlowId.make(PROTO_UDP, "fd00:250::1", "fd00:250::2", 3333, 4444): (4, 4 * 118),
        FlowId.make(PROTO_UDP, "10.250.0.3", "10.250.0.4", 5555, 6666): (3, 3 * 38),
    }
    assert seen.table() == expected
    assert seen.trunc == 1
    assert seen.dropped_packets == 1  # the truncated IPv4 packet is a counted loss
    assert seen.stats["kernel_non_ip"] == 1


@pytest.mark.parametrize("mode", ["track", "ports0"])
@pytest.mark.parametrize("dst_attr", ["addr", "addr6"])
def test_fragments(pair, dst_attr, mode):
    """Datagrams above the MTU: every fragment accounted; "track" gives non-first ones the
    ports of their first fragment (one flow), "ports0" leaves them a ports-0 flow."""
    a, b = pair.a, pair.b
    dst = getattr(b, dst_attr)
    with ebpf_ingest(FragmentPolicy(mode), interfaces=[b.ifname], netns=b.ns.name,
                     direction="ingress", poll_interval_ms=100) as seen:
        with Capture(a.ns, a.ifname, direction="out", fragments=mode) as cap:
            sent = send_udp(a.ns, dst, 9100, 3, 3000, peer=b.ns)
    assert sent.received == 3
    assert seen.table() == cap.truth.table()
    assert seen.frag == cap.truth.frag == 3 * 3
    ports0 = [fid for fid in seen.flows if fid.sport == 0 and fid.dport == 0]
    if mode == "track":
        assert len(seen.flows) == 1 and not ports0
        assert (seen.stats["frag_tracked"], seen.stats["frag_unmatched"]) == (3 * 2, 0)
    else:
        assert len(ports0) == 1 and "frag_tracked" not in seen.stats


def test_full_map_counts_what_it_cannot_account(pair):
    """maxflows = 16, no slots, no overflow ring, no early drain, 40 flows in one table:
    accounted + drops = sent."""
    a, b = pair.a, pair.b
    flows, per_flow, payload = 40, 3, 20
    with ebpf_ingest(interfaces=[b.ifname], netns=b.ns.name, direction="ingress", cpu_slots=0,
                     maxflows=16, overflow_ring_kb=0, poll_interval_ms=60000,
                     drain_threshold=100) as seen:
        for i in range(flows):
            send_udp(a.ns, b.addr, 9200, per_flow, payload, sport=20000 + i)
    size = 20 + 8 + payload
    assert len(seen.flows) == 16
    assert seen.dropped_packets == (flows - 16) * per_flow
    assert seen.packets + seen.dropped_packets == flows * per_flow
    assert seen.bytes + seen.dropped_bytes == flows * per_flow * size


def test_full_map_overflow_ring_accounts_everything(pair):
    """maxflows = 16, no slots, no early drain, the overflow ring: every packet of all 40 flows
    is accounted."""
    a, b = pair.a, pair.b
    truth = None
    with ebpf_ingest(interfaces=[b.ifname], netns=b.ns.name, direction="ingress", cpu_slots=0,
                     maxflows=16, poll_interval_ms=60000, drain_threshold=100) as seen:
        for i in range(40):
            sent = send_udp(a.ns, b.addr, 9250, 3, 20, sport=21000 + i).truth
            truth = sent if truth is None else truth.merge(sent)
    assert seen.table() == truth.table()
    assert seen.dropped_packets == 0
    assert seen.stats["kernel_ring_packets"] == 24 * 3
    assert seen.stats["overflow_flows"] == 24


def test_slots_hash_and_ring_together_account_every_packet(pair):
    """16 slots per CPU, a 16-flow hash and the ring, 120 flows: slots collide, the hash fills,
    the ring takes the rest, and per flow the packets and bytes are still exactly the truth."""
    a, b = pair.a, pair.b
    truth = None
    with ebpf_ingest(interfaces=[b.ifname], netns=b.ns.name, direction="ingress", cpu_slots=16,
                     maxflows=16, poll_interval_ms=60000, drain_threshold=100) as seen:
        for i in range(120):
            sent = send_udp(a.ns, b.addr, 9260, 2, 10 + i % 7, sport=22000 + i).truth
            truth = sent if truth is None else truth.merge(sent)
    assert seen.table() == truth.table()
    assert seen.dropped_packets == 0
    slot, ring = seen.stats["kernel_slot_packets"], seen.stats["kernel_ring_packets"]
    assert 0 < slot <= 16 * 2 * 2  # at most 16 slots per CPU, 2 packets per flow
    assert ring > 0
    assert slot + ring <= 120 * 2


def test_slots_keep_the_drain_exact_across_flips(pair):
    """Flows that live in slots over many drains (poll 50 ms): nothing lost or counted twice."""
    a, b = pair.a, pair.b
    truth = None
    with ebpf_ingest(interfaces=[b.ifname], netns=b.ns.name, direction="ingress",
                     poll_interval_ms=50) as seen:
        for _ in range(8):  # one flow (fixed ports) over several drains
            sent = send_udp(a.ns, b.addr, 9270, 300, 30, sport=23000)
            truth = sent.truth if truth is None else truth.merge(sent.truth)
            time.sleep(0.06)
    assert seen.table() == truth.table()
    assert seen.stats["kernel_slot_packets"] == 8 * 300
    assert seen.stats["drains"] > 8


@pytest.mark.parametrize("timestamps", ["tick", "precise"])
def test_flow_times_bracket_the_traffic(pair, timestamps):
    """First and last packet times fall within the wall-clock windows of the first and last
    burst, to a jiffy (4 ms at HZ=250) for "tick", plus conversion slack."""
    a, b = pair.a, pair.b
    slack_ns = 20_000_000
    with ebpf_ingest(interfaces=[b.ifname], netns=b.ns.name, direction="ingress",
                     timestamps=timestamps, poll_interval_ms=100) as seen:
        t0 = time.time_ns()
        first = send_udp(a.ns, b.addr, 9280, 20, 10, sport=24000).truth
        t1 = time.time_ns()
        time.sleep(0.4)
        t2 = time.time_ns()
        last = send_udp(a.ns, b.addr, 9280, 20, 10, sport=24000).truth
        t3 = time.time_ns()
    fid = next(iter(first.table()))
    assert seen.table() == first.merge(last).table()
    start, end = seen.times[fid]
    assert t0 - slack_ns <= start <= t1, (start - t0, t1 - start)
    assert t2 - slack_ns <= end <= t3, (end - t2, t3 - end)


def test_gso_counts_wire_segments(pair):
    """With TSO/GSO on, packets are wire segments: equal to TCP's own segment counters.

    Linux counts new segments in OutSegs and retransmitted ones only in RetransSegs
    (RFC 4022 tcpOutSegs excludes them); retransmissions are real wire packets, so the truth
    is the sum (a loaded machine does retransmit here)."""
    a, b = pair.a, pair.b
    set_offloads(a, True)
    set_offloads(b, True)

    def out_segs(ns: Netns) -> int:
        lines = [ln.split() for ln in open_snmp(ns) if ln.startswith("Tcp:")]
        return sum(int(lines[1][lines[0].index(name)]) for name in ("OutSegs", "RetransSegs"))

    before = out_segs(a.ns), out_segs(b.ns)
    with ebpf_ingest(interfaces=[b.ifname], netns=b.ns.name, poll_interval_ms=100) as seen:
        server = b.ns.popen([sys.executable, "-c", _TCP_SINK, b.addr, "7100"])
        assert server.stdout.readline().strip() == "ready"
        a.ns.python(_TCP_BULK, b.addr, "7100", str(2_000_000))
        assert int(server.communicate(timeout=20)[0]) == 2_000_000
    sent_a, sent_b = out_segs(a.ns) - before[0], out_segs(b.ns) - before[1]
    to_b = sum(p for fid, (p, _) in seen.table().items() if fid.dst == b.addr)
    to_a = sum(p for fid, (p, _) in seen.table().items() if fid.dst == a.addr)
    assert (to_b, to_a) == (sent_a, sent_b)
    assert to_b > 2_000_000 // 65536  # more than one packet per GSO skb


_TCP_SINK = r"""
import socket, sys
srv = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
c, _ = srv.accept()
total = 0
while data := c.recv(1 << 20):
    total += len(data)
c.close()
print(total, flush=True)
"""

_TCP_BULK = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c.sendall(bytes(int(sys.argv[3])))
c.shutdown(socket.SHUT_WR)
while c.recv(65536):
    pass
c.close()
"""


def open_snmp(ns: Netns) -> list[str]:
    return ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()


_RAW_L4 = r"""
import socket, struct, sys
ifname, dst_mac, src_mac = sys.argv[1], bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3])
S6, D6 = (socket.inet_pton(socket.AF_INET6, a) for a in ("fd00:251::1", "fd00:251::2"))
def ipv6(nh, payload, plen=None):
    plen = len(payload) if plen is None else plen
    head = struct.pack("!IHBB", (6 << 28) | (0x2E << 20), plen, nh, 64)
    return head + S6 + D6 + payload
def ext(nh, units):  # hop-by-hop / routing / destination options: (units + 1) * 8 bytes
    return struct.pack("!BB", nh, units) + bytes(6 + 8 * units)
tcp = struct.pack("!HHIIBBHHH", 4000, 80, 1, 0, 5 << 4, 0x12, 1024, 0, 0) + bytes(10)
sctp = struct.pack("!HHII", 5000, 6000, 0, 0) + bytes(16)
icmp6 = struct.pack("!BBH", 1, 4, 0) + bytes(20)  # destination unreachable, port unreachable
ah = struct.pack("!BBH", 6, 4, 0) + bytes(20)  # AH: (4 + 2) * 4 = 24 bytes, then TCP
mh = struct.pack("!BBBB", 59, 0, 5, 0) + bytes(4)  # Mobility Header (binding update), 8 bytes
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
eth = dst_mac + src_mac + struct.pack("!H", 0x86DD)
frames = [
    ipv6(0, ext(60, 0) + ext(43, 1) + ext(6, 0) + tcp),  # HBH, DSTOPTS, ROUTING, TCP SYN+ACK
    ipv6(51, ah + tcp),
    ipv6(132, sctp),
    ipv6(58, icmp6),
    ipv6(135, mh),  # the upper layer: protocol 135, not its Payload Proto 59
    ipv6(0, ext(6, 40)),  # hop-by-hop header longer than the packet: truncated
]
for f in frames:
    s.send(eth + f)
print("sent", flush=True)
"""


def test_ipv6_extension_headers_sctp_icmp6(pair):
    a, b = pair.a, pair.b
    with ebpf_ingest(interfaces=[b.ifname], netns=b.ns.name, direction="ingress",
                     poll_interval_ms=100) as seen:
        a.ns.python(_RAW_L4, a.ifname, b.mac.replace(":", ""), a.mac.replace(":", ""))
    src, dst = "fd00:251::1", "fd00:251::2"
    tcp_len = 40 + 8 + 16 + 8 + 30  # IPv6, HBH, DSTOPTS, routing (16), TCP + 10
    assert seen.table() == {
        FlowId.make(6, src, dst, 4000, 80): (2, tcp_len + (40 + 24 + 30)),
        FlowId.make(132, src, dst, 5000, 6000): (1, 40 + 28),
        FlowId.make(58, src, dst, 0, 1 << 8 | 4): (1, 40 + 24),
        FlowId.make(135, src, dst, 0, 0): (1, 40 + 8),
    }
    assert seen.flows[FlowId.make(6, src, dst, 4000, 80)][2] == 0x12
    assert seen.trunc == 1


_RAW_ZERO_LENGTH = r"""
import socket, struct, sys
ifname, dst_mac, src_mac = sys.argv[1], bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3])
S6, D6 = (socket.inet_pton(socket.AF_INET6, a) for a in ("fd00:252::1", "fd00:252::2"))
S4, D4 = socket.inet_aton("10.252.0.1"), socket.inet_aton("10.252.0.2")
def tcp(sport, size):
    return struct.pack("!HHIIBBHHH", sport, 80, 1, 0, 5 << 4, 0x10, 1024, 0, 0) + bytes(size)
def ipv4(total, payload):
    return struct.pack("!BBHHHBBH", 0x45, 0, total, 1, 0, 64, 6, 0) + S4 + D4 + payload
def ipv6(nh, plen, payload):
    return struct.pack("!IHBB", 6 << 28, plen, nh, 64) + S6 + D6 + payload
jumbo = struct.pack("!BBBBI", 6, 0, 0xC2, 4, 8 + 20 + 1200)  # RFC 2675 hop-by-hop option
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
e4, e6 = dst_mac + src_mac + b"\x08\x00", dst_mac + src_mac + b"\x86\xdd"
for f in (e4 + ipv4(0, tcp(4001, 1200)),  # total length 0: a BIG TCP packet
          e6 + ipv6(6, 0, tcp(4002, 1200)),  # payload length 0: IPv6 BIG TCP
          e6 + ipv6(0, 0, jumbo + tcp(4003, 1200)),  # a jumbogram
          e6 + ipv6(59, 0, b""),  # no next header: 40 bytes
          # IHL 15 (60 bytes), total length 0, 34 IP bytes: truncated, as pcap and NFLOG
          e4 + struct.pack("!BBHHHBBH", 0x4F, 0, 0, 1, 0, 64, 253, 0) + S4 + D4 + bytes(14)):
    s.send(f)
print("sent", flush=True)
"""


def test_a_length_field_of_0_counts_the_frame_bytes(pair):
    """IPv4 total length 0 (GRO/GSO BIG TCP over 64 KiB) and IPv6 payload length 0 with a
    payload (BIG TCP, jumbograms) are accounted with the frame's bytes from the IP header on,
    as packet.py does with a pcap record's original length: tc counted them in kernel_trunc,
    one per skb, and the flow lost them."""
    a, b = pair.a, pair.b
    with ebpf_ingest(interfaces=[b.ifname], netns=b.ns.name, direction="ingress",
                     poll_interval_ms=100) as seen:
        a.ns.python(_RAW_ZERO_LENGTH, a.ifname, b.mac.replace(":", ""),
                    a.mac.replace(":", ""))
    s4, d4, s6, d6 = "10.252.0.1", "10.252.0.2", "fd00:252::1", "fd00:252::2"
    assert seen.table() == {
        FlowId.make(6, s4, d4, 4001, 80): (1, 20 + 1220),
        FlowId.make(6, s6, d6, 4002, 80): (1, 40 + 1220),
        FlowId.make(6, s6, d6, 4003, 80): (1, 40 + 8 + 1220),
        FlowId.make(59, s6, d6, 0, 0): (1, 40),
    }
    assert seen.trunc == 1 and seen.stats["kernel_trunc"] == 1


@pytest.mark.parametrize("map_type", ["percpu", "shared"])
def test_sampling_and_map_types(pair, map_type):
    """sampling = 4: the kernel sees every packet, accounts about 1 in 4, counts the rest."""
    a, b = pair.a, pair.b
    sent = 2000
    with ebpf_ingest(interfaces=[b.ifname], netns=b.ns.name, direction="ingress",
                     sampling=4, map_type=map_type, poll_interval_ms=100) as seen:
        send_udp(a.ns, b.addr, 9300, sent, 10, peer=b.ns)
    assert seen.stats["kernel_packets"] == sent
    assert seen.packets + seen.stats["kernel_sampled_out"] == sent
    assert 300 < seen.packets < 700  # binomial(2000, 1/4): 500 +- 5 sigma


@pytest.mark.parametrize("rescan_ms", [600_000, 100])
def test_interfaces_that_appear_later_are_attached(pair, rescan_ms):
    """A matching interface created later is attached: at once on its RTM_NEWLINK (the timer is
    10 min away), or by the timer alone (100 ms)."""
    a, b = pair.a, pair.b
    with ebpf_ingest(interfaces=["late*"], netns=b.ns.name, poll_interval_ms=100,
                     rescan_interval_ms=rescan_ms) as seen:
        assert seen.component.stats["interfaces"] == 0
        late = veth_pair(a.ns, b.ns, name_a="latea", name_b="lateb")
        deadline = time.monotonic() + 3
        while seen.component.stats["interfaces"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert seen.component.stats["interfaces"] == 1
        truth = send_udp(a.ns, late.b.addr, 9400, 5, 30, peer=b.ns).truth
    assert seen.table() == truth.table()


def test_stop_after_the_netns_vanished():
    """The observed namespace is deleted under the agent: stop still succeeds."""
    with Netns() as a:
        b = Netns().create()
        try:
            pair = veth_pair(a, b)
            with ebpf_ingest(interfaces=[pair.b.ifname], netns=b.name,
                             poll_interval_ms=100) as seen:
                truth = send_udp(a, pair.b.addr, 9500, 2, 10, peer=b).truth
                b.delete()
            assert seen.table() == truth.table()
        finally:
            b.delete()


_TCP_SINK6 = _TCP_SINK.replace("socket.create_server((sys.argv[1], int(sys.argv[2])))",
                               "socket.create_server((sys.argv[1], int(sys.argv[2])), "
                               "family=socket.AF_INET6)")

#: gso_ipv4_max_size and gro_ipv4_max_size (IFLA_GSO/GRO_IPV4_MAX_SIZE, Linux 6.3) of a link,
#: by rtnetlink: iproute2 before 6.3 has no words for them
_SET_IPV4_BIG_TCP = r"""
import socket, struct, sys
index, size = socket.if_nametoindex(sys.argv[1]), int(sys.argv[2])
attrs = b"".join(struct.pack("=HHI", 8, kind, size) for kind in (63, 64))
body = struct.pack("=BxHiII", 0, 0, index, 0, 0) + attrs
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
s.send(struct.pack("=IHHII", 16 + len(body), 16, 1 | 4, 1, 0) + body)  # RTM_NEWLINK, ACK
sys.exit(-struct.unpack_from("=i", s.recv(4096), 16)[0])
"""


@pytest.mark.parametrize("version", [4, 6])
def test_big_tcp_skbs_over_64k_are_accounted(pair, version):
    """BIG TCP (gso/gro max size 185000 on both veth ends): skbs over 64 KiB reach tc ingress
    with an IPv4 total length (IPv6 payload length) of 0. Their wire segments and bytes are
    accounted like any GSO skb's; IPv4 ones were counted in kernel_trunc, one per skb, and
    the flow lost them."""
    a, b = pair.a, pair.b
    set_offloads(a, True)
    set_offloads(b, True)
    for end in (a, b):
        if version == 4:
            end.ns.python(_SET_IPV4_BIG_TCP, end.ifname, "185000")
        else:
            end.ns.run(["ip", "link", "set", "dev", end.ifname, "gso_max_size", "185000",
                        "gro_max_size", "185000"])
    if tuple(int(x) for x in os.uname().release.split(".")[:2]) < (6, 3):
        pytest.skip("BIG TCP for IPv4 (and skbs over 64 KiB on veth) need Linux 6.3")
    dst = b.addr if version == 4 else b.addr6
    sent = -_tcp_out_segs(a.ns)
    with ebpf_ingest(interfaces=[b.ifname], netns=b.ns.name, direction="ingress",
                     poll_interval_ms=100) as seen:
        server = b.ns.popen([sys.executable, "-c", _TCP_SINK if version == 4 else _TCP_SINK6,
                             dst, "7101"])
        assert server.stdout.readline().strip() == "ready"
        retrans = int(a.ns.python(_TCP_BULK_RETRANS, dst, "7101", str(4_000_000)))
        assert int(server.communicate(timeout=20)[0]) == 4_000_000
    sent += _tcp_out_segs(a.ns)
    assert _veth_drops(a) == _veth_drops(b) == 0
    assert seen.trunc == 0 and seen.stats["kernel_trunc"] == 0
    [(packets, octets)] = [v for fid, v in seen.table().items() if fid.dst == dst]
    assert packets == sent
    assert octets > 65_535 * seen.stats["kernel_packets"]  # the average skb is over 64 KiB
    # each segment: its share of the data (retransmitted bytes twice), 20/40 bytes of IP
    # header, 32 of TCP (timestamps); the SYN's options 8 more. Linux < 7.0's Jumbo
    # hop-by-hop header in IPv6 skbs over 64 KiB (8 bytes a segment) is on no wire.
    ip = 20 if version == 4 else 40
    assert octets == 4_000_000 + retrans + packets * (ip + 32) + 8


#: _TCP_BULK printing the sender's tcpi_bytes_retrans (struct tcp_info offset 208, Linux 4.19)
_TCP_BULK_RETRANS = _TCP_BULK.replace(
    "c.close()",
    "info = c.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)\n"
    "print(struct.unpack_from('=Q', info, 208)[0])\n"
    "c.close()").replace("import socket, sys", "import socket, struct, sys")


def _veth_drops(end) -> int:
    """rx_dropped + tx_dropped of a veth end (0 unless veth or its peer's backlog dropped)."""
    stats = "/sys/class/net/{}/statistics/{}_dropped"
    return sum(int(end.ns.run(["cat", stats.format(end.ifname, d)]).stdout) for d in ("rx", "tx"))


def _tcp_out_segs(ns: Netns) -> int:
    """Tcp: OutSegs + RetransSegs of /proc/net/snmp (IPv4 and IPv6 TCP alike)."""
    lines = [ln.split() for ln in open_snmp(ns) if ln.startswith("Tcp:")]
    return sum(int(lines[1][lines[0].index(name)]) for name in ("OutSegs", "RetransSegs"))
