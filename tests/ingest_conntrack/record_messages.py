"""Record real ctnetlink messages for the parser tests (run by hand, as root).

``python3 -m tests.ingest_conntrack.record_messages`` builds the NAT topology
(:mod:`.nattopo`), subscribes to conntrack NEW/DESTROY in the router namespace, opens known
connections (MASQUERADE TCP/UDP/ICMP over IPv4 and IPv6, a DNAT port forward for each family,
and one untranslated connection to the router itself), deletes them with ``conntrack -D``,
dumps the table once while they are alive, and writes:

* ``data/events.hex``: one received datagram per line, ``<label> <hex>``;
* ``data/dump.hex``: the dump answer datagrams, same format;
* ``data/meta.json``: the topology addresses and ports, the ground truth for the tests.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

from netflow_agent.netns import run_in_netns
from netflow_agent.plugins.ingest_conntrack import ctnetlink
from netflow_agent.plugins.ingest_conntrack.component import WANTED_SYSCTLS, apply_sysctls

from .nattopo import CLIENT_PORT, DNAT_PORT, NatTopology

DATA = Path(__file__).parent / "data"


def _connections(t: NatTopology) -> list[tuple[str, list[str]]]:
    """``(namespace, command)`` per connection; source ports are fixed for the ground truth."""
    return [
        (t.client, ["sh", "-c", f"echo hi | socat -u - TCP:{t.server4}:9000,sourceport=41000"]),
        (t.client, ["sh", "-c", f"echo hi | socat -u - UDP:{t.server4}:9001,sourceport=41001"]),
        (t.client, ["sh", "-c", f"echo hi | socat -u - TCP6:[{t.server6}]:9000,sourceport=41002"]),
        (t.client, ["sh", "-c", f"echo hi | socat -u - UDP6:[{t.server6}]:9001,sourceport=41003"]),
        (
            t.server,
            ["sh", "-c", f"echo hi | socat -u - TCP:{t.router_out4}:{DNAT_PORT},sourceport=42000"],
        ),
        (
            t.server,
            [
                "sh",
                "-c",
                f"echo hi | socat -u - UDP6:[{t.router_out6}]:{DNAT_PORT},sourceport=42001",
            ],
        ),
        (t.client, ["ping", "-c1", "-W1", t.server4]),
        (t.client, ["sh", "-c", f"echo hi | socat -u - UDP:{t.router_in4}:9999,sourceport=43000"]),
    ]


def _drain(sock: socket.socket, label: str, out: list[str]) -> None:
    sock.settimeout(0.5)
    while True:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return
        out.append(f"{label} {data.hex()}")


def record(t: NatTopology) -> None:
    """Run the connections in ``t`` and write the recordings."""
    run_in_netns(
        t.router,
        lambda: apply_sysctls({name: value for name, (value, _why) in WANTED_SYSCTLS.items()}),
    )
    events = run_in_netns(t.router, lambda: ctnetlink.open_event_socket(1 << 20))
    dump = run_in_netns(t.router, lambda: ctnetlink.open_dump_socket(1 << 20))
    servers = [
        t.popen(t.server, "socat", "-u", "TCP-LISTEN:9000,reuseaddr", "/dev/null"),
        t.popen(t.server, "socat", "-u", "TCP6-LISTEN:9000,reuseaddr,ipv6only=1", "/dev/null"),
        t.popen(t.client, "socat", "-u", f"TCP-LISTEN:{CLIENT_PORT},reuseaddr", "/dev/null"),
    ]
    time.sleep(0.5)
    lines: list[str] = []
    dumped: list[str] = []
    try:
        for ns, cmd in _connections(t):
            t.ns(ns, *cmd, check=False)
        _drain(events, "new", lines)
        dump.send(ctnetlink.dump_request(1))
        _drain(dump, "dump", dumped)
        t.conntrack("-D")
        t.conntrack("-f", "ipv6", "-D")
        _drain(events, "destroy", lines)
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait()
        events.close()
        dump.close()
    DATA.mkdir(exist_ok=True)
    (DATA / "events.hex").write_text("\n".join(lines) + "\n")
    (DATA / "dump.hex").write_text("\n".join(dumped) + "\n")
    meta = {
        k: getattr(t, k)
        for k in (
            "client4",
            "router_in4",
            "router_out4",
            "server4",
            "client6",
            "router_in6",
            "router_out6",
            "server6",
        )
    }
    meta.update(dnat_port=DNAT_PORT, client_port=CLIENT_PORT)
    (DATA / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def main() -> None:
    """Build a topology, record, tear down."""
    t = NatTopology().up()
    try:
        record(t)
    finally:
        t.down()


if __name__ == "__main__":
    main()
