"""bench/export/cberr_probe.py: how many of a refusing collector's ICMP errors ``cberr`` sees.

Sends ``--parts`` batches of ``--batch`` datagrams (unpaced ``send_batch``: one ``sendmmsg``
each, GSO off) from :class:`agent.transport.udp.UdpDestination` to a closed port on
loopback, and reads the ICMP port unreachables that came back from the socket's error queue
(``IP_RECVERR``, ip(7): one entry per ICMP error, as ipt_NETFLOW's ``sk_error_report`` counts
them) at the end, next to the destination's ``cberr`` (``ECONNREFUSED`` from
``send``/``SO_ERROR``). The queue is read only after the last send and ``poll``: reading it
clears the pending error that the next send would report.

Once as is, once with a ``poll`` after each batch (the exporter's 1 s timer reads
``SO_ERROR``), once so and paced (``--rate``). Then, with single sends, how many of them
the error queue holds at ``--rcvbuf`` (0: the socket's default): it is bounded by
``SO_RCVBUF``.

Run: ``python3 bench/export/cberr_probe.py [--parts 20] [--batch 10] [--rcvbuf 0]
[--rate 1000]``.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from netflow_agent.transport.udp import UdpDestination  # noqa: E402
from tests.support.collectors import free_udp_port, icmp_errors  # noqa: E402

IP_RECVERR = 11  # linux/in.h


def batches(parts: int, batch: int, poll: bool, rate: int = 0) -> str:
    UdpDestination.use_gso = False
    dest = UdpDestination(f"127.0.0.1:{free_udp_port()}", rate_limit=rate)
    dest.connect()
    sock = dest._sock
    assert sock is not None
    sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)  # up to rmem_max
    for _ in range(parts):
        dest.send_batch([b"x" * 200] * batch, [1] * batch)
        time.sleep(0.002 + batch / rate if rate else 0.002)  # paced: its bursts go first
        if poll:  # the exporter's timer: SO_ERROR takes the pending error (counted)
            dest.poll()
    time.sleep(0.05)
    dest.poll()
    icmp = icmp_errors(sock)
    dest.close()
    return (f"batches{f' paced at {rate}/s' if rate else ''}"
            f"{' with a poll after each' if poll else ''}: {parts} x {batch} "
            f"datagrams: sent {dest.stats.packets_ok}, lost "
            f"{dest.stats.fail}, ICMP errors received {icmp}, cberr {dest.stats.cberr}")


def queue_bound(count: int, rcvbuf: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        sock.connect(("127.0.0.1", free_udp_port()))
        sent = refused = 0
        for _ in range(count):
            try:
                sock.send(b"x" * 1400)
                sent += 1
            except ConnectionRefusedError:
                refused += 1
        time.sleep(0.1)
        size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        return (f"error queue: {count} sends of 1400 bytes: sent {sent}, refused {refused}, "
                f"queued ICMP errors {icmp_errors(sock)} (SO_RCVBUF {size})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=20)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--sends", type=int, default=3000)
    parser.add_argument("--rcvbuf", type=int, default=0)
    parser.add_argument("--rate", type=int, default=1000, help="paced run's rate_limit")
    args = parser.parse_args()
    print(batches(args.parts, args.batch, poll=False))
    print(batches(args.parts, args.batch, poll=True))
    print(batches(args.parts, args.batch, poll=True, rate=args.rate))
    print(queue_bound(args.sends, args.rcvbuf))


if __name__ == "__main__":
    main()
