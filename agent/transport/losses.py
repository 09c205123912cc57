"""The datagrams UDP destinations lost, handed from the thread that lost them to the exporter's.

Owns the hand-over between :class:`~agent.transport.udp.UdpDestination`'s ``on_loss``
callback and an exporter that counts the packets and octets of the lost records (NetFlow's
``lost_packets``/``lost_octets``, IPFIX's notSentPackets/notSentOctets, RFC 7011 section
4.3). ``on_loss`` runs on whichever thread lost the datagram (the pipeline's send, the
pacing thread, :meth:`~agent.transport.udp.UdpDestination.close`), often under the
destination's lock, so it only appends to a deque (appends and pops are thread-safe); the
exporter decodes what was lost on its own thread when it next reads its counters.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable, Iterator

__all__ = ["LossQueue"]


class LossQueue:
    """Lost datagrams, each with its destination's index and its record count, in order."""

    def __init__(self) -> None:
        self._lost: deque[tuple[int, bytes, int]] = deque()

    def on_loss(self, index: int = 0) -> Callable[[bytes, int], None]:
        """The ``on_loss`` callback for destination ``index`` (``f(datagram, records)``)."""
        return functools.partial(self._note, index)

    def _note(self, index: int, datagram: bytes, records: int) -> None:
        self._lost.append((index, datagram, records))

    def drain(self) -> Iterator[tuple[int, bytes, int]]:
        """``(index, datagram, records)`` of every loss noted so far (and while iterating),
        each once, oldest first."""
        while self._lost:
            yield self._lost.popleft()
