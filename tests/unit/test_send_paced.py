"""netflow_agent._udpsend.send_paced, the paced export's loop in C, and the UDP destination
that hands it the backlog chunk by chunk: the rate is held, bursts never exceed the bucket,
every datagram's outcome is counted, the backlog stays visible while the C loop sends, closing
flushes everything (or stops at its deadline and counts the rest), and a dead collector is
counted, not lost silently."""

from __future__ import annotations

import errno
import socket
import threading
import time
from array import array

import pytest

from netflow_agent._udpsend import (
    PACE_BURST,
    PACE_BURSTS,
    PACE_DEADLINE,
    PACE_DONE,
    PACE_RATE,
    PACE_STAMP,
    PACE_STATE,
    PACE_TOKENS,
    PACE_WANT,
    send_paced,
)
from netflow_agent.transport import udp
from netflow_agent.transport.pacing import CHUNK_S, PacedSender
from netflow_agent.transport.udp import UdpDestination
from tests.export_netflow.collect import UdpSink
from tests.support.collectors import free_udp_port

#: socket(7): SO_RCVBUF beyond net.core.rmem_max
SO_RCVBUFFORCE = 33


@pytest.fixture
def sink():
    s = UdpSink()
    s.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    yield s
    s.close()


def bucket(rate: float, burst: float, tokens: float | None = None) -> array:
    """A state buffer as PacedSender fills it: ``tokens`` saved up (default: a burst)."""
    state = array("d", [0.0] * PACE_STATE)
    state[PACE_RATE], state[PACE_BURST] = rate, burst
    state[PACE_WANT] = max(1, burst * 3 // 4)
    state[PACE_TOKENS] = burst if tokens is None else tokens
    state[PACE_STAMP] = time.monotonic()
    return state


def numbered(n: int) -> list[bytes]:
    return [i.to_bytes(4, "big") for i in range(n)]


def test_the_c_loop_holds_the_rate_and_sends_everything_in_order(sink):
    """300 datagrams at 2,000/s with a 20-datagram burst: the first burst at once, the other
    280 at the rate (>= 0.14 s), bursts of 15-20, every one sent and in order."""
    data = numbered(300)
    state = bucket(2000, 20)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.connect(sink.sock.getsockname())
        started = time.monotonic()
        assert send_paced(tx.fileno(), data, 0, len(data), 0, state) == (300, 0, 0, 0)
        elapsed = time.monotonic() - started
    assert elapsed >= 280 / 2000 * 0.95
    assert state[PACE_DONE] == 300
    assert 300 / 20 <= state[PACE_BURSTS] <= 300 / 15 + 1  # 3/4 of a burst per wake-up or more
    assert state[PACE_TOKENS] < 20  # spent, not saved
    assert sink.drain(expect=300) == data


def test_a_deadline_stops_the_loop_and_leaves_the_rest_unsent(sink):
    """Closing: the loop sends what the tokens allow until the deadline, then returns; what is
    left is the caller's to count."""
    data = numbered(1000)
    state = bucket(1000, 10)
    state[PACE_DEADLINE] = time.monotonic() + 0.1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.connect(sink.sock.getsockname())
        sent, err, _, paid = send_paced(tx.fileno(), data, 0, len(data), 0, state)
    assert (err, paid) == (0, 0) and 50 <= sent <= 200  # ~100 in 0.1 s at 1000/s, + a burst
    assert sink.drain(expect=sent) == data[:sent]


def test_a_refused_datagram_returns_its_paid_burst_to_the_caller(sink):
    data = [b"a", b"b", b"B" * 70_000, b"c"]  # EMSGSIZE for the third
    state = bucket(10_000, 100)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        tx.connect(sink.sock.getsockname())
        sent, err, _, paid = send_paced(tx.fileno(), data, 0, 4, 0, state)
        assert (sent, paid) == (2, 2) and err in (0, errno.EMSGSIZE)
    assert sink.drain(expect=2) == [b"a", b"b"]


def test_without_a_socket_each_burst_is_handed_back_paced():
    """No socket (fd -1): the loop still waits for 3/4 of a burst (4 tokens saved, 7 wanted:
    3 ms at 1000/s) and hands that burst back for the caller to try or count: every whole
    token it has when it wakes (7, or up to the burst of 10 if the sleep overshot), which
    it earned in the time it slept, and no burst counted (nothing was sent)."""
    state = bucket(1000, 10, tokens=4)
    started = time.monotonic()
    sent, err, gso_err, paid = send_paced(-1, numbered(50), 0, 50, 0, state)
    elapsed = time.monotonic() - started
    assert (sent, err, gso_err) == (0, 0, 0) and 7 <= paid <= 10
    assert elapsed >= (7 - 4) / 1000 * 0.95 and paid <= 4 + elapsed * 1000
    assert 0 <= state[PACE_TOKENS] < 1  # every whole token handed out with the burst
    assert state[PACE_BURSTS] == 0 and state[PACE_DONE] == 0


def test_bad_state_and_arguments_raise_before_sending():
    with pytest.raises(ValueError, match="PACE_STATE"):
        send_paced(-1, [b"a"], 0, 1, 0, array("d", [0.0] * (PACE_STATE - 1)))
    with pytest.raises(ValueError, match="positive rate"):
        send_paced(-1, [b"a"], 0, 1, 0, array("d", [0.0] * PACE_STATE))
    for rate, burst in ((float("nan"), 1), (float("inf"), 1), (10, float("nan")),
                        (10, float("inf"))):
        with pytest.raises(ValueError, match="positive rate"):
            send_paced(-1, [b"a"], 0, 1, 0, bucket(rate, burst, tokens=1))
    with pytest.raises(BufferError):
        send_paced(-1, [b"a"], 0, 1, 0, b"\0" * 8 * PACE_STATE)  # read-only
    with pytest.raises(IndexError):
        send_paced(-1, [b"a"], 1, 1, 0, bucket(10, 1))
    with pytest.raises(TypeError, match="datagram 1 is str"):
        send_paced(-1, [b"a", "b"], 0, 2, 0, bucket(10, 1))


# --- the destination: PacedSender's thread with the C loop ---


def test_a_paced_destination_shows_its_backlog_while_the_c_loop_sends(sink):
    """1,000 datagrams at 1,000/s: while the C loop holds a chunk, `backlog` still counts its
    unsent datagrams and goes down as they leave; close() sends every one, none lost."""
    dest = UdpDestination(sink.endpoint, rate_limit=1000, backlog=5000)
    dest.connect()
    data = numbered(1000)
    assert dest.send_batch(data, [3] * 1000) == 1000
    seen: list[int] = []
    deadline = time.monotonic() + 30
    while dest.backlog and time.monotonic() < deadline:
        seen.append(int(dest.snapshot()["backlog"]))
        time.sleep(0.02)
    dest.close()
    assert seen[0] > 500 and seen == sorted(seen, reverse=True) and len(set(seen)) > 5
    s = dest.snapshot()
    assert (s["packets_ok"], s["backlog"], s["paced"], s["lost_records"]) == (1000, 0, 1000, 0)
    assert s["peak"] >= 0 and s["backlog_peak"] >= 1000
    assert sink.drain(expect=1000) == data


def test_closing_flushes_the_whole_backlog_at_the_rate(sink):
    dest = UdpDestination(sink.endpoint, rate_limit=5000, backlog=10_000, flush_timeout_s=0.1)
    dest.connect()
    data = numbered(2000)
    started = time.monotonic()
    assert dest.send_batch(data, [1] * 2000) == 2000
    dest.close()  # 0.4 s of sending, more than flush_timeout_s: close waits as long as needed
    elapsed = time.monotonic() - started
    assert elapsed >= (2000 - 50) / 5000 * 0.95  # the rate held (a 50-datagram burst)
    assert dest.stats.packets_ok == 2000 and dest.stats.lost_records == 0
    assert sink.drain(expect=2000) == data


def test_a_close_deadline_inside_a_chunk_counts_the_rest_lost(sink):
    """The deadline falls while the C loop holds a chunk: it stops there, the unsent rest
    goes back to the backlog and is counted lost (records and the late-loss callback)."""
    late: list[int] = []
    dest = UdpDestination(sink.endpoint, rate_limit=1000, backlog=10_000,
                          on_late_loss=lambda d, r: late.append(r))
    dest.connect()
    assert dest.send_batch(numbered(3000), [2] * 3000) == 3000
    dest._pacer.close(0.3)  # ~300 of 3000 at 1000/s, chunks of 100
    s = dest.stats
    sent, lost = s.packets_ok, len(late)
    assert sent + lost == 3000 and 0 < sent < 600  # never faster than the rate
    assert s.lost_records == 2 * lost == dest.late_lost_records
    assert dest._pacer.stats.backlog_dropped == lost and dest.backlog == 0
    assert sink.drain(expect=sent) == numbered(sent)
    dest.close()


def test_a_dead_collector_is_counted_and_every_datagram_accounted():
    """Nobody listens: loopback answers with ICMP port unreachable; every datagram is either
    handed to the kernel or counted lost, and the refusals are counted as cberr."""
    lost: list[int] = []
    dest = UdpDestination(f"127.0.0.1:{free_udp_port()}", rate_limit=20_000, backlog=5000,
                          on_loss=lambda d, r: lost.append(r))
    dest.connect()
    n = 600
    assert dest.send_batch(numbered(n), [1] * n) == n
    dest.close()
    s = dest.stats
    assert s.packets_ok + s.fail == n and s.fail == len(lost) == s.lost_records
    assert s.cberr >= 1


def test_a_paced_chunk_is_a_tenth_of_a_second():
    dest = UdpDestination("127.0.0.1:9", rate_limit=3000)
    try:
        assert dest._pacer._chunk == int(3000 * CHUNK_S) == 300
    finally:
        dest.close()


def test_the_pacing_thread_wakes_per_chunk_not_per_burst(sink, monkeypatch):
    """The interpreter side of the pacing thread runs once per chunk: 1,500 datagrams at
    3,000/s (0.5 s, ~68 bursts of 22) in 5 calls of send_paced (6 if one chunk was taken
    before the whole batch was queued)."""
    calls: list[int] = []

    def counted(fd, datagrams, start, count, gso_max, state):
        calls.append(count)
        return send_paced(fd, datagrams, start, count, gso_max, state)

    monkeypatch.setattr(udp, "send_paced", counted)
    dest = UdpDestination(sink.endpoint, rate_limit=3000, backlog=5000)
    dest.connect()
    assert dest.send_batch(numbered(1500), [1] * 1500) == 1500
    dest.close()
    assert sum(calls) == 1500 and len(calls) <= 6 and max(calls) <= 300
    assert dest._pacer.bursts >= 1500 // 30
    assert sink.drain(expect=1500) == numbered(1500)


def test_a_snapshot_mid_chunk_adds_up(sink):
    """While the C loop holds a chunk, every snapshot accounts for every datagram: sent
    (packets_ok, bytes_ok), lost (fail) or waiting (backlog), including those the C loop
    sent since the chunk began."""
    dest = UdpDestination(sink.endpoint, rate_limit=1000, backlog=5000)
    dest.connect()
    n = 600
    assert dest.send_batch(numbered(n), [1] * n) == n
    mid: list[dict] = []
    deadline = time.monotonic() + 30
    while dest.backlog and time.monotonic() < deadline:
        s = dest.snapshot()
        assert s["packets_ok"] + s["fail"] + s["backlog"] == n, s
        assert s["paced"] + s["backlog"] == n, s  # paced moves with the chunk too
        assert s["bytes_ok"] == 4 * s["packets_ok"]
        if s["packets_ok"] % dest._pacer._chunk:  # inside a chunk (chunks of 100)
            mid.append(s)
        time.sleep(0.005)
    dest.close()
    assert len(mid) >= 3
    assert (dest.stats.packets_ok, dest.stats.fail) == (n, 0)


def test_a_raising_loss_callback_counts_each_datagram_once(sink):
    """The per-datagram path of a burst that stopped short (the 70,000-byte datagram) calls
    an on_loss that raises: what it counted before is not counted again, the rest of the
    chunk is counted lost, and the pacing thread goes on."""
    calls: list[int] = []

    def on_loss(datagram, records):
        calls.append(records)
        if len(calls) == 1:
            raise RuntimeError("a caller's bug")

    dest = UdpDestination(sink.endpoint, rate_limit=10_000, backlog=100, on_loss=on_loss)
    dest.connect()
    data = numbered(10)
    data[3] = b"B" * 70_000  # EMSGSIZE: the C burst stops short there
    assert dest.send_batch(data, [1] * 10) == 10
    assert wait_for(lambda: dest.backlog == 0, 10)
    assert dest.send_batch([b"next"], [1]) == 1  # the thread still sends
    dest.close()
    s = dest.stats  # 3 sent, the big one lost (its callback raised), the 6 after it lost
    assert (s.packets_ok, s.fail, s.lost_records, len(calls)) == (4, 7, 7, 7)
    assert sink.drain(expect=4) == data[:3] + [b"next"]


def test_a_non_contiguous_view_no_index_found_sends_the_chunk_per_datagram(sink, monkeypatch):
    """The C loop refuses a chunk as not bytes-like but the check finds no culprit: the chunk
    goes through the per-datagram path (which loses only the datagram it cannot send)."""
    monkeypatch.setattr(udp, "_bytes_like", lambda obj: True)
    dest = UdpDestination(sink.endpoint, rate_limit=20_000, backlog=1000)
    dest.connect()
    data: list = numbered(100)
    data[50] = memoryview(b"xxxxxxxx")[::2]
    assert dest.send_batch(data, [1] * 100) == 100
    dest.close()
    s = dest.stats
    assert (s.packets_ok, s.fail, s.lost_records) == (99, 1, 1)
    assert sink.drain(expect=99) == data[:50] + data[51:]


def test_a_waiting_put_refills_while_the_c_loop_sends():
    """A put() that waits for room (the final export) is woken as soon as a chunk taken for
    the C loop leaves the queue at half its wait limit, so it refills the queue while that
    chunk is sent, not after it."""
    refilled: list[bool] = []
    done = threading.Event()

    def fake_send_paced(datagrams, records, state):
        queued = len(pacer._queue)
        if queued <= pacer._low_water and not done.is_set():
            grew = wait_for(lambda: len(pacer._queue) > queued or done.is_set(), 2.0)
            refilled.append(grew)
        state[PACE_DONE] = len(datagrams)
        return len(datagrams)

    pacer = PacedSender(None, lambda d, r: None, rate=3000, limit=30_000,
                        send_paced=fake_send_paced)
    n = 3000  # the wait limit is 750, low water 375, a chunk 300
    try:
        assert pacer.put(numbered(n), [1] * n, wait_s=60) == n
        done.set()
    finally:
        pacer.close(30)
    assert len(refilled) >= 3 and all(refilled), refilled
    assert pacer.stats.paced == n


def wait_for(condition, timeout: float) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds passed; whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.001)
    return True
