"""Privileged end-to-end NAT event tests: the real ``agent`` with ``[[ingest.conntrack]]``.

A client - NAT router - server topology (``tests.support.netns.routed_topology``) with
MASQUERADE and a DNAT port forward (IPv4 and IPv6) in the router. The test opens known TCP and
UDP connections through the NAT, ends them with ``conntrack -D`` (no waiting for timeouts),
and checks what independent decoders see:

* NetFlow v9 NEL in ``nfcapd``/``nfdump``: one start and one stop per connection with the
  right pre- and post-NAT addresses and ports;
* IPFIX NEL decoded by ``tshark`` (nothing malformed) and by the PyPI ``netflow`` package;
* NetFlow v5 pseudo-flows, field by field against the seed's natevents table.

The overrun test runs the component in-process with a tiny socket buffer and hundreds of
short-lived translations: every one still yields its start and stop exactly once.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from netflow_agent.model import NAT_START, NAT_STOP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN
from netflow_agent.plugins.ingest_conntrack.component import ConntrackIngest
from netflow_agent.plugins.ingest_conntrack.config import Config
from netflow_agent.runtime import RunContext
from tests.support import require_tool
from tests.support.agentproc import Agent
from tests.support.collectors import Nfcapd, UdpSink, netflow_decode, tshark_decode
from tests.support.exportclock import assert_export_clock
from tests.support.netns import routed_topology

pytestmark = pytest.mark.netns

DNAT_PORT, INSIDE_PORT = 8080, 8000


@dataclass(frozen=True)
class Conn:
    """One connection through the NAT and its expected translation (the ground truth)."""

    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    post_src: str
    post_dst: str
    post_sport: int
    post_dport: int

    @property
    def snat(self) -> bool:
        return (self.src, self.sport) != (self.post_src, self.post_sport)


@pytest.fixture
def nat():
    """Name: nat. Scope: function. Depends: root, iptables, ip6tables, conntrack, socat.

    A routed topology whose router masquerades towards the server and forwards its public
    port ``DNAT_PORT`` (TCP and UDP) to ``client:INSIDE_PORT``.
    """
    for tool in ("iptables", "ip6tables", "conntrack", "socat"):
        require_tool(tool)
    with routed_topology() as topo:
        r, out = topo.router_ns, topo.router_server.ifname
        for tool, inside in (
            ("iptables", topo.client.addr),
            ("ip6tables", f"[{topo.client.addr6}]"),
        ):
            r.run([tool, "-t", "nat", "-A", "POSTROUTING", "-o", out, "-j", "MASQUERADE"])
            for proto in ("tcp", "udp"):
                r.run(
                    [
                        tool,
                        "-t",
                        "nat",
                        "-A",
                        "PREROUTING",
                        "-i",
                        out,
                        "-p",
                        proto,
                        "--dport",
                        str(DNAT_PORT),
                        "-j",
                        "DNAT",
                        "--to-destination",
                        f"{inside}:{INSIDE_PORT}",
                    ]
                )
        yield topo


def _connect(ns, proto: str, host: str, port: int, sport: int) -> None:  # type: ignore[no-untyped-def]
    """One short connection with a fixed source port (socat; TCP needs a listener)."""
    addr = f"[{host}]" if ":" in host else host
    kind = {"tcp": "TCP", "udp": "UDP"}[proto] + ("6" if ":" in host else "")
    ns.run(["sh", "-c", f"echo hi | socat -u - {kind}:{addr}:{port},sourceport={sport}"])


def _wait_listening(ns, port: int, listeners: int, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    """Until ``listeners`` TCP sockets listen on ``port`` in ``ns`` (socat has bound)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(ns.run(["ss", "-Hltn", f"sport = :{port}"]).stdout.splitlines()) >= listeners:
            return
        time.sleep(0.02)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


def open_connections(topo) -> list[Conn]:  # type: ignore[no-untyped-def]
    """Masqueraded TCP/UDP over v4 and v6, and a DNAT port forward per family."""
    c, s, rs = topo.client, topo.server, topo.router_server
    for ns, kind in (
        (topo.server_ns, "TCP-LISTEN:9000"),
        (topo.server_ns, "TCP6-LISTEN:9000"),
        (topo.client_ns, f"TCP-LISTEN:{INSIDE_PORT}"),
    ):
        ns.popen(
            [
                "socat",
                "-u",
                f"{kind},reuseaddr,fork,ipv6only=1"
                if "6" in kind.split(":")[0]
                else f"{kind},reuseaddr,fork",
                "/dev/null",
            ]
        )
    _wait_listening(topo.server_ns, 9000, listeners=2)
    _wait_listening(topo.client_ns, INSIDE_PORT, listeners=1)
    conns = [
        Conn(6, c.addr, s.addr, 41000, 9000, rs.addr, s.addr, 41000, 9000),
        Conn(17, c.addr, s.addr, 41001, 9001, rs.addr, s.addr, 41001, 9001),
        Conn(6, c.addr6, s.addr6, 41002, 9000, rs.addr6, s.addr6, 41002, 9000),
        Conn(17, c.addr6, s.addr6, 41003, 9001, rs.addr6, s.addr6, 41003, 9001),
        Conn(6, s.addr, rs.addr, 42000, DNAT_PORT, s.addr, c.addr, 42000, INSIDE_PORT),
        Conn(17, s.addr6, rs.addr6, 42001, DNAT_PORT, s.addr6, c.addr6, 42001, INSIDE_PORT),
    ]
    for conn in conns:
        ns = topo.client_ns if conn.src in (c.addr, c.addr6) else topo.server_ns
        _connect(ns, "tcp" if conn.proto == 6 else "udp", conn.dst, conn.dport, conn.sport)
    return conns


def end_connections(topo) -> None:  # type: ignore[no-untyped-def]
    """Delete every conntrack entry in the router: the DESTROY events come at once."""
    for family in ("ipv4", "ipv6"):
        topo.router_ns.run(["conntrack", "-f", family, "-D"], check=False)


def write_config(tmp: Path, router: str, nf9: int, nf5: int, ipfix: int, v9_tap: int) -> Path:
    conf = tmp / "agent.toml"
    conf.write_text(f"""
[agent]
control_socket = "{tmp / 'agent.sock'}"

[[ingest.conntrack]]
netns = "{router}"
resync_interval = 0

[[export.netflow]]
destination = ["127.0.0.1:{nf9}", "127.0.0.1:{v9_tap}"]
protocol = 9
flows = false
natevents = true

[[export.netflow]]
destination = ["127.0.0.1:{nf5}"]
protocol = 5
flows = false
natevents = true

[[export.ipfix]]
destination = ["127.0.0.1:{ipfix}"]
flows = false
natevents = true
nat_event_values = "rfc8158"
""")
    return conf


def _tuple(conn: Conn) -> tuple:
    return (
        conn.proto,
        conn.src,
        conn.dst,
        conn.sport,
        conn.dport,
        conn.post_src,
        conn.post_dst,
        conn.post_sport,
        conn.post_dport,
    )


def test_agent_exports_every_nat_start_and_stop(nat, tmp_path):
    nf9 = Nfcapd(tmp_path / "nfcapd").start()
    with UdpSink() as v5_sink, UdpSink() as ipfix_sink, UdpSink() as v9_sink:
        conf = write_config(tmp_path, nat.router_ns.name, nf9.port, v5_sink.port, ipfix_sink.port,
                            v9_sink.port)
        log = tmp_path / "agent.log"
        agent = Agent(conf, log_path=log).start(ready="natevents enabled")  # listener is up
        try:
            conns = open_connections(nat)
            end_connections(nat)
            # every start and stop reached the exporters (v5: one datagram per event batch)
            v5_sink.wait_for(lambda pdus: _v5_records(pdus) >= 2 * _v4(conns), timeout=20)
        finally:
            assert agent.stop() == 0, agent.log()
        v5, ipfix, v9 = v5_sink.collect(), ipfix_sink.collect(), v9_sink.collect()
    for stream in (v5, ipfix, v9):  # times, and the RFC invariants of every datagram
        assert_export_clock(stream)
    text = log.read_text()
    assert "set net.netfilter.nf_conntrack_events=1" in text, text
    check_nfdump(nf9.flows(), conns)
    check_v5(v5, [c for c in conns if ":" not in c.src])
    check_ipfix(ipfix, ipfix_sink.port, conns)


def _v4(conns: list[Conn]) -> int:
    """IPv4 connections: v5 carries one pseudo-flow per event of each (one side translated)."""
    return len([c for c in conns if ":" not in c.src])


def _v5_records(pdus: list[bytes]) -> int:
    return sum(struct.unpack_from("!H", p, 2)[0] for p in pdus)


def check_nfdump(records, conns: list[Conn]) -> None:
    """v9 NEL: exactly one ADD and one DELETE per connection, pre and post tuples right."""
    got: dict[tuple, list[str]] = {}
    for r in records:
        key = (
            r["proto"],
            r["src"],
            r["dst"],
            r["sport"],
            r["dport"],
            r["nat_src"],
            r["nat_dst"],
            r["nat_sport"],
            r["nat_dport"],
        )
        got.setdefault(key, []).append(r["nat_event"])
        when = datetime.fromisoformat(r["raw"]["t_event"]).replace(tzinfo=UTC).timestamp()
        assert abs(when - time.time()) < 300, r["raw"]  # the event time, never 1970
    assert set(got) == {_tuple(c) for c in conns}, records
    for key, events in got.items():  # legacy values 1/2, as nfdump names them
        assert sorted(events) == ["NAT translation create", "NAT translation delete"], key


def check_v5(pdus: list[bytes], conns: list[Conn]) -> None:
    """The seed's pseudo-flow table, field by field, for the IPv4 connections."""
    _packets, recs = netflow_decode(pdus)
    assert len(recs) == 2 * len(conns)
    for conn in conns:
        mine = [r for r in recs if r["SRC_PORT"] == conn.sport and r["PROTO"] == conn.proto]
        assert sorted(r["TCP_FLAGS"] for r in mine) == sorted(
            [TCP_SYN | TCP_ACK, TCP_RST | TCP_FIN]
        )
        for r in mine:
            assert _ip(r["IPV4_SRC_ADDR"]) == conn.src  # pre-NAT source
            assert _ip(r["IPV4_DST_ADDR"]) == conn.post_dst  # post-NAT destination
            assert r["DST_PORT"] == conn.post_dport
            assert r["IN_PACKETS"] == r["IN_OCTETS"] == 0
            assert r["FIRST_SWITCHED"] == r["LAST_SWITCHED"]
            if conn.snat:  # next hop / src AS = post-NAT source
                assert (_ip(r["NEXT_HOP"]), r["SRC_AS"], r["DST_AS"]) == (
                    conn.post_src,
                    conn.post_sport,
                    0,
                )
            else:  # DNAT: next hop / dst AS = pre-NAT destination
                assert (_ip(r["NEXT_HOP"]), r["SRC_AS"], r["DST_AS"]) == (conn.dst, 0, conn.dport)


def check_ipfix(pdus: list[bytes], port: int, conns: list[Conn]) -> None:
    """IPFIX NEL: tshark finds nothing malformed; the netflow package sees every event."""
    assert tshark_decode(pdus, port)
    _packets, recs = netflow_decode(pdus)
    recs = [r for r in recs if "natEvent" in r]  # options records (exporter stats) aside
    got: dict[tuple, list[int]] = {}
    for r in recs:
        v6 = "sourceIPv6Address" in r
        pre = (
            ("sourceIPv6Address", "destinationIPv6Address")
            if v6
            else ("sourceIPv4Address", "destinationIPv4Address")
        )
        post = (
            ("postNATSourceIPv6Address", "postNATDestinationIPv6Address")
            if v6
            else ("postNATSourceIPv4Address", "postNATDestinationIPv4Address")
        )
        key = (
            r["protocolIdentifier"],
            _ip(r[pre[0]]),
            _ip(r[pre[1]]),
            r["sourceTransportPort"],
            r["destinationTransportPort"],
            _ip(r[post[0]]),
            _ip(r[post[1]]),
            r["postNAPTSourceTransportPort"],
            r["postNAPTDestinationTransportPort"],
        )
        got.setdefault(key, []).append(r["natEvent"])
        assert abs(r["observationTimeMilliseconds"] / 1000 - time.time()) < 300  # never 1970
    assert set(got) == {_tuple(c) for c in conns}, recs
    assert all(sorted(v) == [4, 5] for v in got.values()), got  # rfc8158 NAT44 session


def _ip(value: int | str) -> str:
    """A decoder's address (an int from the netflow package) as text."""
    return str(ipaddress.ip_address(value))


def test_overrun_every_translation_starts_and_stops_once(nat):
    """A 4 KiB socket and 400 translations born and deleted in a burst: no loss, no repeats."""
    n, base = 400, 20000
    ctx = RunContext()
    comp = ConntrackIngest(
        Config(netns=nat.router_ns.name, rcvbuf=4096, resync_interval=0), "ingest.conntrack[0]"
    )
    comp.agent_start(ctx)
    try:
        nat.client_ns.python(f"""
import socket
for port in range({base}, {base + n}):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", port))
        s.sendto(b"x", ("{nat.server.addr}", 9001))
""")
        end_connections(nat)
        deadline = time.monotonic() + 20
        while comp.tracker.stops < n and time.monotonic() < deadline:
            time.sleep(0.1)
        stats = comp.agent_collect_stats()
    finally:
        comp.agent_stop()
    starts: dict[int, int] = {}
    stops: dict[int, int] = {}
    while not ctx.inbox.empty():
        _kind, events = ctx.inbox.get()
        for e in events:
            assert _ip_bytes(e.post_src_addr) == nat.router_server.addr
            side = starts if e.event == NAT_START else stops
            assert e.event in (NAT_START, NAT_STOP)
            side[e.src_port] = side.get(e.src_port, 0) + 1
    assert stats["overruns"] > 0, stats  # the test really overran the socket
    assert starts == dict.fromkeys(range(base, base + n), 1), stats
    assert stops == dict.fromkeys(range(base, base + n), 1), stats
    assert (stats["natevents_start"], stats["natevents_stop"]) == (n, n)


def _ip_bytes(packed: bytes) -> str:
    return str(ipaddress.ip_address(packed))
