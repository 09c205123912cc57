"""netflow_agent._udpsend and the UDP destination's burst send: what sendmmsg(2) reports for
each datagram (all sent, stopped short, refused), and that a destination counts every
datagram's outcome as separate sends did (lost records, the loss callbacks, paced or not)."""

from __future__ import annotations

import errno
import socket
import threading

import pytest

from netflow_agent._udpsend import CHUNK, send_burst
from netflow_agent.plugins.export_netflow.component import NetflowExporter
from netflow_agent.plugins.export_netflow.config import Config
from netflow_agent.transport.udp import IP_MTU, IPV6_MTU, UdpDestination
from tests.export_netflow.collect import UdpSink, full_socket
from tests.export_netflow.test_netflow_component import flows
from tests.export_netflow.test_netflow_pacing import export_to_nfcapd
from tests.support.collectors import free_udp_port

#: socket(7): SO_RCVBUF beyond net.core.rmem_max (not in Python's socket module)
SO_RCVBUFFORCE = 33
#: larger than any UDP payload over IPv4: the kernel refuses it with EMSGSIZE
TOO_BIG = b"B" * 70_000


@pytest.fixture
def sink():
    s = UdpSink()
    s.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 4 << 20)  # root: past rmem_max
    yield s
    s.close()


def connected_to(endpoint: tuple[str, int]) -> socket.socket:
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(endpoint)
    return tx


def test_a_burst_bigger_than_a_chunk_is_sent_whole_and_in_order(sink):
    data = [i.to_bytes(4, "big") for i in range(CHUNK * 2 + 7)]
    with connected_to(sink.sock.getsockname()) as tx:
        assert send_burst(tx.fileno(), data, 0, len(data)) == (len(data), 0, 0)
        assert send_burst(tx.fileno(), data, 5, 3) == (3, 0, 0)
    assert sink.drain(expect=len(data) + 3) == data + data[5:8]


def test_a_refused_datagram_stops_the_call_and_is_named_by_the_next(sink):
    """sendmmsg drops the error of a call that sent something: the call says how far it got
    (errno 0), a call from the refused datagram on says why."""
    data = [b"a", b"b", TOO_BIG, b"c"]
    with connected_to(sink.sock.getsockname()) as tx:
        assert send_burst(tx.fileno(), data, 0, 4) == (2, 0, 0)
        assert send_burst(tx.fileno(), data, 2, 2) == (0, errno.EMSGSIZE, 0)
        assert send_burst(tx.fileno(), data, 3, 1) == (1, 0, 0)
    assert sink.drain(expect=3) == [b"a", b"b", b"c"]


def test_a_full_send_buffer_stops_short_then_refuses_with_eagain():
    sock, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with sock, peer:
        data = [b"d" * 512] * 5000
        sent, err, _ = send_burst(sock.fileno(), data, 0, len(data))
        assert 0 < sent < len(data) and err == 0
        assert send_burst(sock.fileno(), data, sent, len(data) - sent) == (0, errno.EAGAIN, 0)
        peer.setblocking(False)
        got = 0
        while True:
            try:
                peer.recv(1024)
            except BlockingIOError:
                break
            got += 1
        assert got == sent  # what it said it sent, exactly


def test_a_closed_port_refuses_with_econnrefused():
    with connected_to(("127.0.0.1", free_udp_port())) as tx:
        answers = [send_burst(tx.fileno(), [b"x"] * 3, 0, 3) for _ in range(3)]
    assert (0, errno.ECONNREFUSED, 0) in answers or all(a == (1, 0, 0) for a in answers)
    assert all(sent < 3 for sent, _, _ in answers)  # loopback's ICMP unreachable stops each call


def test_bad_arguments_raise_without_sending(sink):
    with connected_to(sink.sock.getsockname()) as tx:
        with pytest.raises(TypeError, match="datagram 1 is str, not a bytes-like object"):
            send_burst(tx.fileno(), [b"a", "b"], 0, 2)
        with pytest.raises(IndexError):
            send_burst(tx.fileno(), [b"a"], 1, 1)
        with pytest.raises(IndexError):
            send_burst(tx.fileno(), [b"a"], -1, 1)
        assert send_burst(tx.fileno(), [b"a"], 1, 0) == (0, 0, 0)
        assert send_burst(-1, [b"a"], 0, 1) == (0, errno.EBADF, 0)
    assert sink.drain(timeout=0.1) == []


def test_any_bytes_like_datagram_is_sent_as_its_bytes(sink):
    data = [b"a", bytearray(b"bc"), memoryview(b"xdefx")[1:4]]
    with connected_to(sink.sock.getsockname()) as tx:
        assert send_burst(tx.fileno(), data, 0, 3) == (3, 0, 0)
    assert sink.drain(expect=3) == [b"a", b"bc", b"def"]


@pytest.mark.parametrize("paced", [False, True])
def test_a_datagram_that_is_not_bytes_like_is_counted_lost_alone(sink, paced):
    """A third-party encoder's bad datagram: lost and counted, the others sent (paced, the
    pacing thread goes on and sends what comes later)."""
    late: list[int] = []
    lost: list[int] = []
    dest = UdpDestination(sink.endpoint, rate_limit=10_000 if paced else 0, backlog=100,
                          on_loss=lambda d, r: lost.append(r),
                          on_late_loss=lambda d, r: late.append(r))
    dest.connect()
    data = [b"a", bytearray(b"b"), "not bytes", b"c"]
    dest.send_batch(data, [1, 2, 30, 4])  # type: ignore[list-item]
    dest.send_batch([b"d"], [5])
    dest.close()  # paced: sends the backlog first
    s = dest.stats
    assert (s.packets_ok, s.fail, s.lost_records) == (4, 1, 30) and lost == [30]
    assert late == ([30] if paced else [])
    assert sink.drain(expect=4) == [b"a", b"b", b"c", b"d"]


@pytest.mark.parametrize("paced", [False, True])
def test_a_non_contiguous_view_is_lost_alone(sink, paced):
    """A memoryview with a stride is bytes-like to Python but not a buffer sendmmsg can take:
    it alone is lost and counted, the 99 around it are sent (paced: not the whole chunk)."""
    dest = UdpDestination(sink.endpoint, rate_limit=20_000 if paced else 0, backlog=1000)
    dest.connect()
    data: list = [i.to_bytes(4, "big") for i in range(100)]
    data[50] = memoryview(b"xxxxxxxx")[::2]
    assert dest.send_batch(data, [1] * 100) == (100 if paced else 99)
    dest.close()
    s = dest.stats
    assert (s.packets_ok, s.fail, s.lost_records) == (99, 1, 1)
    assert sink.drain(expect=99) == data[:50] + data[51:]


def test_a_destination_counts_exactly_the_datagram_the_kernel_refused(sink):
    lost: list[tuple[bytes, int]] = []
    dest = UdpDestination(sink.endpoint, on_loss=lambda d, r: lost.append((d, r)))
    dest.connect()
    data = [b"a", b"b", TOO_BIG, b"c", b"d"]
    assert dest.send_batch(data, [1, 2, 30, 4, 5]) == 4
    s = dest.stats
    assert (s.packets_ok, s.fail, s.err_other, s.err_sndbuf, s.lost_records) == (4, 1, 1, 0, 30)
    assert s.bytes_ok == 4 and lost == [(TOO_BIG, 30)]
    assert sink.drain(expect=4) == [b"a", b"b", b"c", b"d"]
    dest.close()


def test_a_full_buffer_loses_every_datagram_it_refuses_and_sends_the_rest():
    """Room for some: the kernel takes those, the call stops short, and each later datagram
    is tried on its own and counted (err_sndbuf), none twice, none missed."""
    lost: list[int] = []
    dest = UdpDestination("127.0.0.1:9", on_loss=lambda d, r: lost.append(r))
    dest.connect()
    dest._sock.close()
    dest._sock, peer = full_socket()
    dest.gso_max = 0  # an AF_UNIX socket: no UDP GSO (it would join the datagrams)
    peer.recv(1024)  # room for about one more
    peer.recv(1024)
    n = 50
    sent = dest.send_batch([b"x" * 512] * n, list(range(n)))
    s = dest.stats
    assert 0 < sent < n and s.packets_ok == sent
    assert s.fail == s.err_sndbuf == len(lost) == n - sent
    assert lost == list(range(sent, n)) and s.lost_records == sum(lost)
    dest.close()
    peer.close()


def test_a_paced_burst_reports_its_lost_datagram_late_and_sends_the_rest(sink):
    late: list[tuple[bytes, int]] = []
    done = threading.Event()

    def on_late(datagram: bytes, records: int) -> None:
        late.append((datagram, records))
        done.set()

    dest = UdpDestination(sink.endpoint, rate_limit=10_000, backlog=100, on_late_loss=on_late)
    dest.connect()
    data = [b"1", TOO_BIG, b"2", b"3"]
    assert dest.send_batch(data, [1, 7, 1, 1]) == 4  # queued: the loss comes later
    assert done.wait(30)
    dest.close()
    assert late == [(TOO_BIG, 7)] and dest.late_lost_records == 7
    assert dest.stats.lost_records == 7 and dest.stats.packets_ok == 3
    assert sink.drain(expect=3) == [b"1", b"2", b"3"]


# --- UDP GSO (UDP_SEGMENT): the receiver sees the very datagrams plain sends would deliver ---

#: socket(7) SO_NO_CHECK: UDP without checksums, which the kernel refuses for GSO sends
SO_NO_CHECK = 11


def numbered(sizes: list[int]) -> list[bytes]:
    """One datagram per size, each told apart by its index in its first bytes."""
    return [(i.to_bytes(4, "big") * (size // 4 + 1))[:size] for i, size in enumerate(sizes)]


#: runs of 1, a run longer than GSO_SEGMENTS, a run cut by GSO_BYTES, shorter tails
GSO_MIX = ([100] + [1388] * 150 + [1384, 1384, 1000] + [9000] * 10 + [700] + [512] * 3
           + [5, 64, 64] + [1400] * 64)


@pytest.mark.parametrize("gso_max", [0, 1400, 65507])
def test_gso_runs_deliver_the_same_datagrams_in_order(sink, gso_max):
    """With GSO or without, and with datagrams over gso_max sent plain: the same bytes, one
    datagram each, in order."""
    data = numbered(GSO_MIX)
    with connected_to(sink.sock.getsockname()) as tx:
        assert send_burst(tx.fileno(), data, 0, len(data), gso_max) == (len(data), 0, 0)
        assert send_burst(tx.fileno(), data, 3, 70, gso_max) == (70, 0, 0)
    assert sink.drain(expect=len(data) + 70) == data + data[3:73]


def test_a_socket_refusing_gso_gets_the_datagrams_plain_and_says_so(sink):
    data = numbered([800] * 100 + [90, 90])
    with connected_to(sink.sock.getsockname()) as tx:
        tx.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
        assert send_burst(tx.fileno(), data, 0, len(data), 65507) == (102, 0, errno.EINVAL)
    assert sink.drain(expect=len(data)) == data


def test_a_destination_uses_gso_within_the_path_mtu(sink):
    dest = UdpDestination(sink.endpoint)
    dest.connect()
    assert dest._sock is not None  # the path MTU less the IPv4 and UDP headers
    assert dest.gso_max == dest._sock.getsockopt(socket.IPPROTO_IP, IP_MTU) - 28 > 60_000
    data = numbered([1400] * 200 + [300])
    assert dest.send_batch(data, [1] * len(data)) == len(data)
    assert (dest.stats.packets_ok, dest.stats.bytes_ok) == (len(data), sum(map(len, data)))
    assert sink.drain(expect=len(data)) == data
    dest.close()


def test_an_ipv6_destination_uses_gso_within_its_path_mtu():
    sink6 = UdpSink(socket.AF_INET6)
    dest = UdpDestination(sink6.endpoint)
    dest.connect()
    assert dest._sock is not None  # the path MTU less the IPv6 and UDP headers
    assert dest.gso_max == dest._sock.getsockopt(socket.IPPROTO_IPV6, IPV6_MTU) - 48 > 60_000
    data = numbered([1232] * 100 + [7])
    assert dest.send_batch(data, [1] * len(data)) == len(data)
    assert sink6.drain(expect=len(data)) == data
    dest.close()
    sink6.close()


def test_a_destination_whose_socket_refuses_gso_sends_plain_from_then_on(sink, caplog):
    dest = UdpDestination(sink.endpoint)
    dest.connect()
    assert dest._sock is not None
    dest._sock.setsockopt(socket.SOL_SOCKET, SO_NO_CHECK, 1)
    data = numbered([1000] * 80)
    assert dest.send_batch(data, [2] * 80) == 80 and dest.gso_max == 0
    assert dest.send_batch(data[:5], [2] * 5) == 5
    s = dest.stats
    assert (s.packets_ok, s.fail, s.lost_records) == (85, 0, 0)
    assert sink.drain(expect=85) == data + data[:5]
    assert sum("UDP GSO refused" in r.message for r in caplog.records) == 1
    dest.close()


def test_use_gso_off_keeps_every_send_plain(sink, monkeypatch):
    monkeypatch.setattr(UdpDestination, "use_gso", False)
    dest = UdpDestination(sink.endpoint)
    dest.connect()
    assert dest.gso_max == 0
    data = numbered([1200] * 70)
    assert dest.send_batch(data, [1] * 70) == 70
    assert sink.drain(expect=70) == data
    dest.close()


def test_an_unpaced_gso_export_reaches_nfcapd_whole(tmp_path):
    """A v9 export part sent in one burst, its equal-size packets as GSO sends, to a real
    nfcapd: nfdump reads back every flow and packet, and nfcapd's socket dropped nothing."""
    records = flows(2_000)

    def uses_gso(exporter: NetflowExporter) -> None:
        assert all(dest.gso_max > 1400 for dest in exporter.destinations)

    stats, dropped, got = export_to_nfcapd(
        tmp_path, records, Config(destination=[], protocol=9, rate_limit=0), started=uses_gso)
    assert stats["lost_records"] == 0 and stats["sock_ok"] == stats["pdus"] > 50
    assert dropped == 0 and len(got) == len(records)
    assert sorted(f["sport"] for f in got) == [r.src_port for r in records]
    assert sum(f["packets"] for f in got) == 2 * len(records)
