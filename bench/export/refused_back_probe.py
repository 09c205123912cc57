"""What a collector that is back costs the sender: unpaced 280-datagram batches of 1,400
bytes to a listening loopback socket, sent whole (one ``sendmmsg``, GSO runs where the
socket takes them: what a collector that answers gets since s32-hfix) or one datagram per
call (what ``UdpDestination.send_batch`` does after a batch met ``ECONNREFUSED``; before
s32-hfix, for REFUSED_HOLD_NS = 3 s after the last refusal, collector back or not).

Reports the sender's CPU time (``time.process_time`` around ``send_batch`` only) per
datagram, 300 batches per case, the cases alternating over 5 rounds: median and range.
Run: ``.venv/bin/python bench/export/refused_back_probe.py``.
"""

from __future__ import annotations

import socket
import statistics
import time

from netflow_agent.transport.udp import UdpDestination

BATCH, SIZE, BATCHES, ROUNDS = 280, 1400, 300, 5


def drain(rx: socket.socket) -> None:
    try:
        while True:
            rx.recv(2048)
    except BlockingIOError:
        pass


def main() -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 26)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    port = rx.getsockname()[1]
    datagrams, records = [b"x" * SIZE] * BATCH, [30] * BATCH
    ns: dict[tuple[bool, str], list[float]] = {}
    for _ in range(ROUNDS):
        for gso in (True, False):
            UdpDestination.use_gso = gso
            dest = UdpDestination(f"127.0.0.1:{port}", sndbuf=1 << 24)
            dest.connect()
            for label, single in (("whole", False), ("one per call", True)):
                cpu = 0.0
                for _ in range(BATCHES):
                    dest._met_refusal = single  # as after a batch that met a refusal
                    t0 = time.process_time()
                    dest.send_batch(datagrams, records)
                    cpu += time.process_time() - t0
                    drain(rx)
                ns.setdefault((gso, label), []).append(cpu / (BATCHES * BATCH) * 1e9)
            assert dest.stats.fail == 0, "datagrams lost: the figures would not compare"
            dest.close()
    for (gso, label), v in ns.items():
        print(f"gso={'on' if gso else 'off'} {label}: median {statistics.median(v):.0f} ns CPU "
              f"per datagram, range {min(v):.0f}-{max(v):.0f} ({ROUNDS} rounds)")


if __name__ == "__main__":
    main()
