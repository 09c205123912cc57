"""Promiscuous mode for the attached interfaces, held by the kernel's reference count.

``[[ingest.ebpf]] promisc = true`` puts every interface the ingest attaches to in promiscuous
mode for as long as it is attached, so frames not addressed to the host (a SPAN/mirror port)
get past the NIC's MAC filter and reach the tc/TCX/XDP hook.

How: one ``AF_PACKET`` socket per interface with a ``PACKET_ADD_MEMBERSHIP`` of type
``PACKET_MR_PROMISC`` (packet(7)). The kernel counts promiscuity per device
(``dev_set_promiscuity(dev, +1)``; ``ip -d link show`` prints it as ``promiscuity N``): our
membership adds one reference and leaves whatever tcpdump, a bridge or an operator hold
untouched. Closing the socket drops the reference (``packet_release``), and so does the death
of the process, SIGKILL included, and the interface's removal (``packet_notifier``). Not
chosen: ``ip link set promisc on`` (``IFLA_PROMISCUITY``/``IFF_PROMISC`` through rtnetlink,
what pyroute2 offers) is a flag, not a reference: it cannot tell whether someone else wanted
promiscuous mode before us, so turning it off at stop could break them, and a crashed agent
would leave it on for good.

The socket is opened with protocol 0: it is bound to no protocol, so the kernel hands it no
packet (no copy per frame, no receive queue); it exists only to hold the membership. Creating
it needs ``CAP_NET_RAW`` in the namespace that owns the interfaces; the socket is created in
the calling thread's netns, so the caller enters the observed netns first
(``NetnsScope``), and the membership's ifindex is resolved there.
"""

from __future__ import annotations

import socket
import struct

SOL_PACKET = 263  # linux/socket.h
PACKET_ADD_MEMBERSHIP = 1  # linux/if_packet.h
PACKET_MR_PROMISC = 1


def _membership(ifindex: int) -> bytes:
    """A ``struct packet_mreq`` asking promiscuous mode on ``ifindex``."""
    return struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")


class PromiscHolds:
    """One promiscuity reference per interface, owned by an open packet socket."""

    def __init__(self) -> None:
        self.sockets: dict[int, socket.socket] = {}

    def hold(self, ifindex: int) -> None:
        """Add our promiscuity reference to ``ifindex`` (in the current thread's netns);
        idempotent. Raises ``OSError`` (``EPERM`` without ``CAP_NET_RAW``, ``ENODEV``)."""
        if ifindex in self.sockets:
            return
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        try:
            sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, _membership(ifindex))
        except OSError:
            sock.close()
            raise
        self.sockets[ifindex] = sock

    def release(self, ifindex: int) -> None:
        """Drop our reference to ``ifindex`` (nothing if we hold none; works after the
        interface or its netns is gone)."""
        sock = self.sockets.pop(ifindex, None)
        if sock is not None:
            sock.close()

    def release_all(self) -> None:
        """Drop every reference we hold."""
        for ifindex in list(self.sockets):
            self.release(ifindex)
