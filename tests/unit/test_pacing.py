"""agent.transport.pacing: the token bucket's arithmetic and the backlog's accounting."""

from __future__ import annotations

import threading

from netflow_agent.loop import EXPORT_ROWS
from netflow_agent.transport.pacing import (
    WAIT_BACKLOG_MIN,
    WAIT_BACKLOG_S,
    PacedSender,
    TokenBucket,
)


def test_token_bucket_spends_the_burst_then_the_rate():
    bucket = TokenBucket(rate=1000, burst=10, now=0.0)
    assert bucket.take(50, 0.0) == 10  # the saved-up burst
    assert bucket.take(50, 0.0) == 0
    assert abs(bucket.wait_s(0.0) - 0.001) < 1e-9
    assert bucket.take(50, 0.005) == 5  # 5 ms at 1000/s
    assert bucket.take(50, 10.0) == 10  # never more than the burst


def test_everything_put_is_sent_in_order():
    got: list[bytes] = []
    done = threading.Event()

    def send(datagram: bytes, records: int) -> bool:
        got.append(datagram)
        if len(got) == 200:
            done.set()
        return True

    pacer = PacedSender(send, lambda d, r: None, rate=100_000, limit=1000)
    data = [i.to_bytes(2, "big") for i in range(200)]
    assert pacer.put(data, [1] * 200) == 200
    assert done.wait(30)
    pacer.close(timeout=5)
    assert got == data
    assert pacer.stats.paced == 200 and pacer.stats.backlog == 0
    assert pacer.stats.backlog_peak >= 1 and pacer.stats.backlog_dropped == 0


def test_a_burst_whose_send_raises_is_counted_lost_and_the_thread_goes_on():
    sent: list[int] = []
    lost: list[int] = []

    def send_many(datagrams: list[bytes], records: list[int]) -> None:
        if b"bad" in datagrams:
            raise RuntimeError("a plugin's send broke")
        sent.extend(records)

    failed = threading.Event()
    pacer = PacedSender(lambda d, r: True, lambda d, r: lost.append(r) or failed.set(),
                        rate=100_000, limit=1000, send_many=send_many)
    assert pacer.put([b"bad", b"x"], [7, 2]) == 2
    assert failed.wait(30)
    assert pacer.put([b"ok"], [1]) == 1  # after the failed burst: the thread still sends
    pacer.close(timeout=5)
    assert lost == [7, 2] and sent == [1]


def test_overflow_and_leftovers_are_counted_exactly():
    """limit 5, 1 datagram/s, closed at once: sent + left at close + refused = put."""
    sent: list[int] = []
    left: list[int] = []
    pacer = PacedSender(lambda d, r: sent.append(r) or True, lambda d, r: left.append(r),
                        rate=1, limit=5)
    assert pacer.put([b"x"] * 12, list(range(1, 13))) == 5  # records 1..5 queued
    pacer.close(timeout=0)
    assert len(sent) + len(left) == 5 and sorted(sent + left) == [1, 2, 3, 4, 5]
    st = pacer.stats
    assert st.backlog_dropped == 7 + len(left)
    assert st.backlog_dropped_records == sum(range(6, 13)) + sum(left)
    assert pacer.put([b"y"], [1]) == 0  # closed: nothing is queued any more


def _waiting_put(n: int, rate: int, limit: int) -> PacedSender:
    """A put of ``n`` datagrams that may wait for room, closed once all were sent (in order,
    none dropped: asserted); the pacer's statistics tell how much was queued at once."""
    sent: list[int] = []
    pacer = PacedSender(lambda d, r: sent.append(r) or True, lambda d, r: None,
                        rate=rate, limit=limit)
    assert pacer.put([b"z"] * n, list(range(n)), wait_s=30) == n
    pacer.close(timeout=30)
    assert sent == list(range(n)) and pacer.stats.backlog_dropped == 0
    return pacer


def test_put_may_wait_for_room():
    """The final export at shutdown waits for the backlog instead of dropping."""
    assert _waiting_put(50, rate=2000, limit=5).stats.backlog_peak == 5


def test_a_waiting_put_keeps_only_a_quarter_second_queued():
    """The final export at stop (``wait_s``) is queued as it leaves, not all at once: at most
    WAIT_BACKLOG_S of datagrams wait in memory (a full cache's final export was ~9 MB of
    queued datagrams, the agent's peak RSS in bench/compare W2), and every one is sent."""
    peak = _waiting_put(3000, rate=4000, limit=100_000).stats.backlog_peak
    assert 0 < peak <= 4000 * WAIT_BACKLOG_S  # not 3000


def test_a_put_out_of_time_still_fills_the_whole_backlog_before_losing():
    """Waiting keeps the queue short; once the wait is over the whole ``backlog`` limit still
    takes what fits, and only the rest is lost (and counted)."""
    pacer = PacedSender(lambda d, r: True, lambda d, r: None, rate=1, limit=50)
    queued = pacer.put([b"x"] * 80, [2] * 80, wait_s=0.05)
    assert 50 <= queued < 80  # 50 queued (+ the one the first token sent at once)
    assert pacer.stats.backlog_dropped == 80 - queued
    assert pacer.stats.backlog_dropped_records == 2 * (80 - queued)
    pacer.close(timeout=0)


def test_a_shutdown_burst_bigger_than_the_flush_timeout_is_sent_whole():
    """The final export of a big cache: the backlog takes longer than flush_timeout_s at the
    paced rate, so closing waits as long as the backlog needs (bench/compare W3 lost 127k of
    1M records at stop when closing stopped at flush_timeout_s)."""
    import socket

    from netflow_agent.transport.udp import UdpDestination

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        dest = UdpDestination(f"127.0.0.1:{rx.getsockname()[1]}", rate_limit=200,
                              backlog=100, flush_timeout_s=0.2)
        dest.connect()
        assert dest.send_batch([b"d"] * 150, [1] * 150, wait_s=0.2) == 150  # waited for room
        dest.close()  # 100 queued at 200/s: 0.5 s, more than flush_timeout_s
        rx.settimeout(0)
        got = 0
        while True:
            try:
                rx.recv(16)
            except BlockingIOError:
                break
            got += 1
    assert got == 150 and dest.late_lost_records == 0 and dest.stats.lost_records == 0


def test_a_backlog_leaves_in_whole_bursts_at_the_rate():
    """The pacing thread wakes once per three quarters of a burst (rate * BURST_S * 3 / 4
    datagrams), not once per datagram: 300 queued at 1000/s (burst 10) take about 43
    hand-overs (60 at half a burst per wake-up), none bigger than the burst, and no faster
    than the rate."""
    import time

    bursts: list[int] = []
    pacer = PacedSender(lambda d, r: True, lambda d, r: None, rate=1000, limit=1000,
                        send_many=lambda d, r: bursts.append(len(d)))
    started = time.monotonic()
    assert pacer.put([b"p"] * 300, [1] * 300) == 300
    pacer.close(timeout=30)
    elapsed = time.monotonic() - started
    assert sum(bursts) == 300 and pacer.stats.paced == 300
    assert max(bursts) <= 10  # never more than the burst at once
    assert len(bursts) <= 55  # was one hand-over per token (~290), then per half burst (~60)
    assert elapsed >= 0.25  # 290 datagrams after the first burst, at 1000/s


def test_token_bucket_waits_for_a_whole_burst():
    bucket = TokenBucket(rate=1000, burst=10, now=0.0)
    assert bucket.take(10, 0.0) == 10
    assert abs(bucket.wait_s(0.0, want=50) - 0.010) < 1e-9  # capped at the burst
    assert abs(bucket.wait_s(0.004, want=3) - 0.0) < 1e-9  # 4 tokens saved: enough


def test_a_waiting_put_at_a_low_rate_still_queues_a_whole_export_part():
    """At 100 datagrams/s a quarter second is 25 datagrams; a stop's export part (up to
    WAIT_BACKLOG_MIN datagrams) is still queued at once, so the next destination's part is
    queued too instead of waiting for this one to leave (stop time x destinations)."""
    part = -(-EXPORT_ROWS // 15)  # one export part's datagrams, at 15 v9 records or more each
    assert WAIT_BACKLOG_MIN >= part
    pacer = PacedSender(lambda d, r: True, lambda d, r: None, rate=100, limit=100_000)
    try:
        assert pacer.put([b"p"] * part, [1] * part, wait_s=30) == part
        assert pacer.stats.backlog >= part - 100  # returned with the part queued, not sent
    finally:
        pacer.close(timeout=0)
