"""The loss queue between a UDP destination's ``on_loss`` and the exporter that counts it."""

from __future__ import annotations

import threading

from netflow_agent.transport.losses import LossQueue
from netflow_agent.transport.udp import UdpDestination


def test_losses_of_several_destinations_come_back_in_order_each_once():
    queue = LossQueue()
    first, second = queue.on_loss(0), queue.on_loss(1)
    first(b"a", 3)
    second(b"b", 1)
    first(b"c", 0)
    assert list(queue.drain()) == [(0, b"a", 3), (1, b"b", 1), (0, b"c", 0)]
    assert list(queue.drain()) == []


def test_losses_noted_on_other_threads_are_all_read_back():
    queue = LossQueue()
    note = queue.on_loss(2)
    threads = [threading.Thread(target=lambda: [note(b"x", 1) for _ in range(5000)])
               for _ in range(4)]
    got = 0
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        got += sum(records for _i, _d, records in queue.drain())
    got += sum(records for _i, _d, records in queue.drain())
    assert got == 20_000


def test_a_destination_reports_what_it_could_not_send():
    """An unconnectable destination loses every datagram: each one comes back with its
    records, tagged with the destination's index."""
    queue = LossQueue()
    dest = UdpDestination("192.0.2.1:2055", source="198.51.100.7", on_loss=queue.on_loss(4))
    assert not dest.connect()  # the source address is not this host's
    dest.send_batch([b"one", b"two"], [2, 5])
    assert list(queue.drain()) == [(4, b"one", 2), (4, b"two", 5)]
    assert dest.stats.lost_records == 7
