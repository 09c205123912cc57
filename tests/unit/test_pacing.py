"""agent.transport.pacing: the token bucket's arithmetic and the backlog's accounting."""

from __future__ import annotations

import threading

from netflow_agent.transport.pacing import PacedSender, TokenBucket


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


def test_put_may_wait_for_room():
    """The final export at shutdown waits for the backlog instead of dropping."""
    sent: list[int] = []
    pacer = PacedSender(lambda d, r: sent.append(r) or True, lambda d, r: None,
                        rate=2000, limit=5)
    assert pacer.put([b"z"] * 50, list(range(50)), wait_s=30) == 50
    pacer.close(timeout=30)
    assert sent == list(range(50))
    assert pacer.stats.backlog_dropped == 0 and pacer.stats.backlog_peak == 5
