"""Record real NFLOG receive buffers on this machine into ``data/`` (run as root, by hand).

``python3 -m tests.ingest_nflog.record_buffers`` builds client -- router -- server, logs
FORWARD, INPUT and OUTPUT to one group with nft ``log group`` rules, sends UDP, TCP, ICMP,
IPv4 and IPv6 (some fragmented) traffic, and stores every datagram the socket received as
``data/router.nflog`` (each datagram: u32 little-endian length, then the bytes) plus
``data/router.json`` (interface indexes and the traffic sent). The unit tests decode these
files; nothing here runs in the test suite.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

from netflow_agent.plugins.ingest_nflog.netlink import NflogSocket
from tests.support.netns import (
    routed_topology,
    send_icmp_echo,
    send_udp,
    set_offloads,
    tcp_connections,
)

DATA = Path(__file__).parent / "data"
GROUP = 3


def main() -> None:
    DATA.mkdir(exist_ok=True)
    with routed_topology() as topo:
        for end in (topo.client, topo.router_client, topo.router_server, topo.server):
            set_offloads(end, False)
        rules = ["table inet rec {"]
        for hook in ("input", "forward", "output"):
            rules += [f"  chain {hook} {{ type filter hook {hook} priority 0;",
                      f"    log group {GROUP} snaplen 128 queue-threshold 8", "  }"]
        topo.router_ns.run(["nft", "-f", "-"], input="\n".join(rules + ["}"]) + "\n")
        sock = NflogSocket(GROUP, topo.router_ns.name, 4 << 20)
        pending = sock.bind(128, 8, 16384, 5)
        c, s, srv = topo.client_ns, topo.server_ns, topo.server
        sent = [send_udp(c, srv.addr, 5001, 12, 100, peer=s).truth,
                send_udp(c, srv.addr6, 5002, 5, 300, peer=s).truth,
                send_icmp_echo(c, srv.addr, 3).truth,
                send_icmp_echo(c, srv.addr6, 2).truth,
                send_icmp_echo(c, topo.router_client.addr, 2).truth]
        send_udp(c, srv.addr, 5003, 2, 3000, peer=s)  # fragments
        send_udp(c, srv.addr6, 5004, 2, 2500, peer=s)
        tcp_connections(c, s, srv.addr, 6001, 1, 3000, capture=(topo.router_ns, "rc"))
        time.sleep(0.3)
        datagrams = list(pending) + _drain(sock)
        sock.close()
        meta = {"group": GROUP, "snaplen": 128,
                "ifindex": {"rc": topo.router_client.ifindex, "rs": topo.router_server.ifindex},
                "client": [topo.client.addr, topo.client.addr6],
                "server": [srv.addr, srv.addr6], "router": [topo.router_client.addr],
                "sent": [[list(fid), c.packets, c.bytes] for t in sent
                         for fid, c in t.flows.items()]}
    with open(DATA / "router.nflog", "wb") as f:
        for d in datagrams:
            f.write(struct.pack("<I", len(d)) + d)
    (DATA / "router.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{len(datagrams)} datagrams, {sum(map(len, datagrams))} bytes")


def _drain(sock: NflogSocket) -> list[bytes]:
    sock.sock.settimeout(0.5)
    out = []
    buf = bytearray(1 << 18)
    while True:
        try:
            n = sock.sock.recv_into(buf)
        except TimeoutError:
            return out
        out.append(bytes(buf[:n]))


if __name__ == "__main__":
    main()
