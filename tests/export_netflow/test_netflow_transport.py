"""The shared UDP destination: cberr, drops on a full buffer, connect retries, reachability."""

from __future__ import annotations

import socket
import time

import pytest

from netflow_agent.transport.udp import EndpointError, UdpDestination, parse_endpoint
from tests.export_netflow.collect import UdpSink, full_socket
from tests.support.collectors import free_udp_port, icmp_errors
from tests.support.sendcalls import count_send_calls


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000_000_000

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:2055", ("127.0.0.1", 2055)),
    ("[::1]:2055", ("::1", 2055)),
    ("collector.example:9995", ("collector.example", 9995)),
])
def test_parse_endpoint(text, expected):
    assert parse_endpoint(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", "[::1", ":2055", "host:99999", "[::1]x"])
def test_parse_endpoint_errors(text):
    with pytest.raises(EndpointError):
        parse_endpoint(text)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_send_counts_packets_and_bytes(family):
    sink = UdpSink(family)
    dest = UdpDestination(sink.endpoint, sndbuf=65536)
    assert dest.connect()
    assert dest.send_batch([b"a" * 100, b"b" * 50], [3, 1]) == 2
    assert sink.drain(expect=2) == [b"a" * 100, b"b" * 50]
    s = dest.stats
    assert (s.packets_ok, s.bytes_ok, s.fail, s.cberr) == (2, 150, 0, 0)
    assert s.sndbuf >= 65536  # the kernel doubles the request
    dest.close()
    sink.close()


def test_closed_port_counts_cberr_and_never_raises():
    dest = UdpDestination(f"127.0.0.1:{free_udp_port()}")
    dest.connect()
    for _ in range(5):
        dest.send(b"x" * 64, 2)
        time.sleep(0.01)
    dest.poll()
    assert dest.stats.cberr == 5  # one ICMP port unreachable per datagram on loopback
    assert dest.refused and dest.needs_templates
    dest.close()


def test_full_send_buffer_drops_and_counts_lost_records():
    dest = UdpDestination("127.0.0.1:9")
    dest.connect()
    dest._sock.close()
    dest._sock, peer = full_socket()
    assert dest.send_batch([b"x", b"y"], [30, 7]) == 0
    s = dest.stats
    assert (s.fail, s.err_sndbuf, s.lost_records, s.packets_ok) == (2, 2, 37, 0)
    dest.close()
    peer.close()


@pytest.mark.parametrize("gso", [False, True])
def test_a_batch_to_a_closed_port_counts_cberr_and_sends_every_datagram(gso, monkeypatch):
    """One sendmmsg per batch: each datagram's ICMP unreachable stops it short, the rest go
    one per call, so the refusals are still seen (all but the one sendmmsg swallowed). With
    UDP GSO the six equal datagrams are one send: loopback answers it with one ICMP."""
    monkeypatch.setattr(UdpDestination, "use_gso", gso)
    dest = UdpDestination(f"127.0.0.1:{free_udp_port()}")
    dest.connect()
    assert dest.send_batch([b"x" * 64] * 6, [2] * 6) == 6  # a refusal is retried, and sent
    dest.poll()
    assert dest.stats.packets_ok == 6 and dest.stats.fail == 0
    # separate sends: 6 (one per datagram on loopback); one GSO send: 1
    assert dest.stats.cberr in ((1,) if gso else (5, 6))
    assert dest.refused and dest.needs_templates
    dest.close()


def test_refused_batches_after_the_timer_count_every_icmp_error(monkeypatch):
    """The exporter's timer (poll) takes the pending refusal, so the next batch starts clean
    and the kernel swallowed the ICMP error that stopped its sendmmsg short: one per batch
    went uncounted. While the destination is refused its batches go one datagram per call:
    ``cberr`` misses only the refusal met by the first batch (ipt_NETFLOW counts every ICMP
    error the socket receives: read here from its error queue)."""
    monkeypatch.setattr(UdpDestination, "use_gso", False)
    dest = UdpDestination(f"127.0.0.1:{free_udp_port()}")
    dest.connect()
    dest._sock.setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR: queue each ICMP error
    dest._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    for _ in range(10):
        assert dest.send_batch([b"x" * 64] * 8, [1] * 8) == 8
        time.sleep(0.002)
        dest.poll()
    received = icmp_errors(dest._sock)
    assert received >= 10 and dest.stats.fail == 0
    assert received - 1 <= dest.stats.cberr <= received  # before: received - 10
    dest.close()


def test_a_collector_that_is_back_gets_whole_batches_again(monkeypatch):
    """After a refusal the next batch goes one datagram per call (every ICMP error seen);
    once a batch meets no refusal the collector is back, and the batch after it is one
    ``sendmmsg`` again. Before: one datagram per call for REFUSED_HOLD_NS (3 s) after the
    last refusal, 280 calls for a batch the collector took whole."""
    monkeypatch.setattr(UdpDestination, "use_gso", False)
    calls = count_send_calls(monkeypatch)
    port = free_udp_port()
    dest = UdpDestination(f"127.0.0.1:{port}")
    dest.connect()
    dest.send_batch([b"x" * 64] * 8, [1] * 8)
    time.sleep(0.01)
    dest.poll()
    assert dest.stats.cberr > 0 and dest.refused
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        rx.bind(("127.0.0.1", port))  # the collector is back
        rx.settimeout(2)
        assert dest.send_batch([b"x" * 64] * 8, [1] * 8) == 8  # one per call: refused last
        calls.clear()
        assert dest.send_batch([b"y" * 64] * 280, [1] * 280) == 280
        got = [rx.recv(2048) for _ in range(288)]
    assert len(calls) <= 2 and dest.refused  # within REFUSED_HOLD_NS, yet batched
    assert got[-1] == b"y" * 64 and dest.stats.fail == 0
    dest.close()


def test_an_empty_batch_does_not_end_a_refusal_episode(monkeypatch):
    """An exporter whose every record was refused hands over no datagram: that says nothing
    of the collector, so the next batch still goes one per call (each refusal counted)."""
    monkeypatch.setattr(UdpDestination, "use_gso", False)
    calls = count_send_calls(monkeypatch)
    dest = UdpDestination(f"127.0.0.1:{free_udp_port()}")
    dest.connect()
    dest.send_batch([b"x" * 64] * 8, [1] * 8)
    time.sleep(0.01)
    dest.poll()
    assert dest.stats.cberr > 0
    assert dest.send_batch([], []) == 0
    calls.clear()
    dest.send_batch([b"x" * 64] * 8, [1] * 8)
    assert calls and max(calls) == 1
    dest.close()


def test_unconnectable_destination_is_retried_and_attempts_counted():
    clock = FakeClock()
    # 192.0.2.0/24 (TEST-NET-1) is not configured here: bind fails with EADDRNOTAVAIL
    dest = UdpDestination("127.0.0.1:2055", source="192.0.2.77", clock=clock)
    assert not dest.connect()
    assert not dest.send(b"x", 4)  # within the retry interval: no new attempt
    assert (dest.stats.connect_attempts, dest.stats.err_connect) == (1, 1)
    assert (dest.stats.fail, dest.stats.lost_records) == (1, 4)
    clock.advance(1.5)
    dest.poll()
    assert dest.stats.connect_attempts == 2 and not dest.connected
    dest.source = ("127.0.0.1", 0)  # the address appears (as when an interface comes up)
    clock.advance(1.5)
    dest.poll()
    assert dest.connected and dest.stats.connect_attempts == 3
    assert dest.take_reachable_again() and not dest.take_reachable_again()
    dest.close()


def test_reachable_again_after_refusals_stop():
    clock = FakeClock()
    port = free_udp_port()
    dest = UdpDestination(f"127.0.0.1:{port}", clock=clock)
    dest.connect()
    dest.send(b"x")
    time.sleep(0.02)
    dest.poll()
    assert dest.refused
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", port))
    dest.send(b"y")
    clock.advance(3.5)
    dest.poll()
    assert not dest.refused
    assert dest.take_reachable_again()
    assert not dest.needs_templates
    sink.close()
    dest.close()
