"""Export pacing: datagrams leave at most ``rate`` per second, bursts wait in a bounded backlog.

Flows that expire together (a scan after a flood, the final export at stop) are encoded into
thousands of datagrams at once; sent back to back they overrun a collector's socket buffer
even when the collector keeps up with the average rate, and UDP tells nobody. This module
owns the fix for one destination:

* :class:`TokenBucket`: ``rate`` tokens per second, at most ``burst`` saved up;
* :class:`PacedSender`: a FIFO backlog of datagrams and their record counts (two deques:
  no Python object per queued datagram beyond the datagram itself) and a thread that sends
  them, a burst per call, through a callback as tokens allow. The backlog holds at most
  ``limit`` datagrams; :meth:`PacedSender.put` queues a batch up to that and says how
  many it took (the caller counts the rest as lost, like a full socket buffer). At
  :meth:`PacedSender.close` the backlog is still sent at the paced rate, up to a deadline;
  what is left then is reported through the ``lost`` callback. Nothing is dropped uncounted.

The callback runs on the pacing thread; the caller makes its socket use thread-safe.
The agent's UDP destinations always pass ``send_paced`` (below); the Python loop over
``send``/``send_many`` is the same pacing written out in Python, which the tests drive with
an injectable clock (``tests/unit/test_pacing.py``) and the C loop reproduces.

With a ``send_paced`` callback (the UDP destinations: :func:`netflow_agent._udpsend.send_paced`,
agent/_udpsend.c) the thread hands the callback up to :data:`CHUNK_S` worth of the backlog
at a time, and the token bucket's waits and the bursts run in C with the GIL released: the
thread's Python runs once per chunk (about 10 times a second at the default rate), not once
per burst (~130 times), and a burst's wake-up never waits for the GIL or makes the encoding
thread give it up. The chunk's datagrams still count in the backlog until they are sent (the
C loop reports its progress in the shared state), a waiting put() is woken when a chunk taken
leaves the queue at low water (it refills while the C loop sends), and closing sets the
deadline the C loop reads at every wake-up.
"""

from __future__ import annotations

import logging
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from netflow_agent import privileges
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
)
from netflow_agent.config.schema import option

log = logging.getLogger("netflow_agent.transport.pacing")

#: default burst: this many seconds' worth of tokens may be spent at once
BURST_S = 0.01
#: with a ``send_paced`` callback, the pacing thread hands it at most this many seconds' worth
#: of datagrams per call (at least a burst): the callback sleeps and sends burst by burst in C,
#: and the thread's Python (a waiting put()'s wake-up, the backlog's bookkeeping) runs once
#: per chunk; 0.1 s keeps a waiting put() refilling the backlog well before it runs dry
CHUNK_S = 0.1
#: exporters' default ``rate_limit``, datagrams per second and destination: about 4 MB/s,
#: 90k NetFlow v9 records/s, far above a busy router's average, and a burst at this rate
#: fits a collector's default 208 KiB socket buffer if it reads every 30 ms
DEFAULT_RATE_LIMIT = 3000
#: exporters' default ``backlog``: 10 s at the default rate (at most about 42 MB of
#: datagrams); the final export of a full cache at stop is the largest burst (about 30 v9
#: records per datagram: 900k flows fit)
DEFAULT_BACKLOG = 30000
#: a put() that waits for room (the final export at stop) keeps at most this many seconds of
#: datagrams queued ahead of the sender (at least a burst; with ``send_paced``, besides the
#: chunk the C loop holds), not the whole ``backlog``: the
#: encoder then produces the final export about as fast as it leaves, and a full cache's
#: datagrams (~9 MB for 200k flows) are never all in memory at once; the stop takes as long
#: as before (the paced rate sets it)
WAIT_BACKLOG_S = 0.25
#: ...but never fewer than this many (one export part, 8,192 records at 15 or more per
#: datagram): at a low ``rate_limit`` a stop's export to several destinations is then queued
#: to all of them at once instead of one destination after another
WAIT_BACKLOG_MIN = 600
#: how long closing a paced destination may still send its backlog (NetFlow; IPFIX has
#: ``flush_timeout_s``): DEFAULT_BACKLOG at DEFAULT_RATE_LIMIT
DEFAULT_FLUSH_S = 10.0
#: the longest a closing destination sends a backlog bigger than its flush timeout allows
#: (the final export of a big cache at stop); the systemd unit's TimeoutStopSec (150 s) leaves
#: room for it after an NFLOG stop drain (up to 60 s)
MAX_CLOSE_S = 45.0


#: of a backlog's free datagrams, this share (1/32) plus up to :data:`ROOM_RESERVE` are kept
#: out of the room an exporter offers a scan (:func:`records_room`): datagrams that carry
#: templates or options, and the last, part-filled datagram of each export part
ROOM_MARGIN_DIV = 32
ROOM_RESERVE = 16


def records_room(rooms: Sequence[int | None], limit: int, per_datagram: int) -> int | None:
    """The flow records an exporter can take now without overflowing its paced backlogs
    (the ``agent_export_room`` answer of a UDP exporter).

    :param rooms: each destination's free backlog in datagrams (``backlog_room``; ``None``
        for an unpaced one).
    :param limit: the backlog's size in datagrams.
    :param per_datagram: the fewest records a full datagram of flows holds (the largest
        record the exporter may write): the estimate is never more than what fits.
    :return: records the fullest destination can take, less a margin (0 when it is nearly
        full); ``None`` (no limit) without destinations or when one is unpaced.
    """
    if not rooms or None in rooms:
        return None
    free = min(r for r in rooms if r is not None)
    reserve = free // ROOM_MARGIN_DIV + min(ROOM_RESERVE, limit // 8)
    return max(0, free - reserve) * max(1, per_datagram)


def rate_limit_option(unit: str) -> Any:
    """The ``rate_limit`` key of the UDP exporters' tables (``unit``: what they send)."""
    return option(DEFAULT_RATE_LIMIT, doc=f"UDP: most {unit} per second to each destination; a "
                  "burst of expiring flows waits in the backlog and leaves at this rate, so a "
                  "collector that keeps up with the average is not overrun by the peak. "
                  "0 = no pacing.", min=0, max=10_000_000)


def backlog_option(unit: str) -> Any:
    """The ``backlog`` key of the UDP exporters' tables."""
    return option(DEFAULT_BACKLOG, doc=f"UDP: most {unit} waiting for their turn per "
                  "destination (with rate_limit); one that finds it full is lost and counted "
                  "(lost_records, backlog_dropped).", min=1, max=10_000_000)


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up (``burst`` >= 1)."""

    def __init__(self, rate: float, burst: int, now: float):
        self.rate = rate
        self.burst = max(1, burst)
        self.tokens = float(self.burst)
        self.stamp = now

    def refill(self, now: float) -> None:
        """Add the tokens earned since the last refill."""
        if now > self.stamp:
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, want: int, now: float) -> int:
        """Take up to ``want`` whole tokens; how many were taken."""
        self.refill(now)
        got = min(want, int(self.tokens))
        self.tokens -= got
        return got

    def wait_s(self, now: float, want: int = 1) -> float:
        """Seconds until ``want`` whole tokens (at most the burst) are saved up."""
        self.refill(now)
        want = min(max(1, want), self.burst)
        return 0.0 if self.tokens >= want else (want - self.tokens) / self.rate


@dataclass(slots=True)
class PacingStats:
    """Backlog counters of one destination (datagrams unless named records)."""

    rate_limit: int = 0  # datagrams per second (0 = unpaced)
    backlog: int = 0  # datagrams waiting now
    backlog_peak: int = 0  # most datagrams ever waiting at once
    backlog_limit: int = 0  # most datagrams that may wait
    backlog_dropped: int = 0  # datagrams not queued (backlog full) or left at close
    backlog_dropped_records: int = 0  # their records (also in the destination's lost_records)
    paced: int = 0  # datagrams that went through the backlog


class PacedSender:
    """Send datagrams through ``send`` at most ``rate`` per second, from a thread of its own.

    The thread wakes when three quarters of a burst of tokens are saved up (:data:`BURST_S`
    worth is a burst; or when the backlog's datagrams have their tokens, if fewer), not once
    per datagram, and hands what the tokens allow (at most a burst) to ``send_many`` (the UDP
    destination sends it with one ``sendmmsg``): the rate and the largest burst are the same,
    the thread's wake-ups are about ``burst * 3 / 4`` times fewer than one per datagram, and
    a wake-up up to a quarter burst late loses no tokens to the bucket's cap. (A wake-up of
    this thread costs far more CPU than a datagram it sends: ~30-80 µs against ~2-5 µs in
    ``bench/export/final_export.py`` on a 2-vCPU VM; at half a burst per wake-up the thread
    used 15-30 % more CPU.)

    :param send: ``send(datagram, records) -> bool``, called on the pacing thread (unused,
        may be ``None``, with ``send_many`` or ``send_paced``).
    :param lost: ``lost(datagram, records)``, called for every datagram still queued at
        :meth:`close`.
    :param rate: datagrams per second (> 0).
    :param limit: most datagrams in the backlog (> 0).
    :param name: the thread's name.
    :param clock: monotonic seconds (injectable for tests).
    :param send_many: ``send_many(datagrams, records)`` (two lists of the same length),
        called on the pacing thread with each burst, in order; default: ``send`` on each.
    :param send_paced: ``send_paced(datagrams, records, state) -> int``, called on the
        pacing thread with a chunk of the backlog (at most :data:`CHUNK_S` worth) and the
        token bucket's shared state (``array('d')``, the ``PACE_*`` layout of
        agent/_udpsend.c): it sends the chunk in paced bursts (``_udpsend.send_paced``) and
        counts each datagram's outcome, and returns how many it handled (sent or counted
        lost): all of them, or fewer once the closing deadline in the state passed (the rest
        go back to the backlog). Needs the default ``clock`` (CLOCK_MONOTONIC, the C loop's).
    """

    def __init__(self, send: Callable[[bytes, int], bool] | None,
                 lost: Callable[[bytes, int], None], *,
                 rate: int, limit: int, name: str = "pacer",
                 clock: Callable[[], float] = time.monotonic,
                 send_many: Callable[[list[bytes], list[int]], object] | None = None,
                 send_paced: Callable[[list[bytes], list[int], array], int] | None = None):
        if rate <= 0 or limit <= 0:
            raise ValueError("rate and limit must be positive")
        if send is None and send_many is None and send_paced is None:
            raise ValueError("one of send, send_many and send_paced is needed")
        if send_paced is not None and clock is not time.monotonic:
            raise ValueError("send_paced paces on CLOCK_MONOTONIC: no other clock")
        self._send = send
        self._send_many = send_many or self._each
        self._send_paced = send_paced
        self._lost = lost
        self._clock = clock
        self._bucket = TokenBucket(rate, int(rate * BURST_S), clock())
        #: 3/4 of a burst per wake-up (see the class docstring)
        self._want = max(1, self._bucket.burst * 3 // 4)
        #: the C loop's token bucket and progress (send_paced), shared while it runs
        self._state = array("d", [0.0] * PACE_STATE)
        self._state[PACE_RATE] = rate
        self._state[PACE_BURST] = self._bucket.burst
        self._state[PACE_WANT] = self._want
        #: most datagrams per send_paced call, and how many the running call holds
        self._chunk = max(self._bucket.burst, int(rate * CHUNK_S))
        self._inflight = 0
        self._running: list[bytes] = []  # the chunk the running call holds
        self._bursts = 0  # bursts sent by the Python loop (the C loop counts in its state)
        #: most datagrams queued while a put() still has time to wait (WAIT_BACKLOG_S)
        self._wait_limit = min(limit, max(self._bucket.burst, int(rate * WAIT_BACKLOG_S),
                                          WAIT_BACKLOG_MIN))
        #: a waiting put() is woken once the queue is down to this (half its wait limit),
        #: not after every burst: the encoder then runs a few times a second with a lot of
        #: room, instead of after every burst
        self._low_water = self._wait_limit // 2
        self._queue: deque[bytes] = deque()  # datagrams waiting, oldest first
        self._counts: deque[int] = deque()  # the records of each
        self._cond = threading.Condition()
        self._closing = False
        self._deadline = 0.0
        self._idle = False  # the thread waits for datagrams (not for tokens)
        self._putters = 0  # put() calls waiting for room
        self.stats = PacingStats(rate_limit=rate, backlog_limit=limit)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, datagrams: Sequence[bytes], records: Sequence[int], wait_s: float = 0.0) -> int:
        """Queue datagrams in order, as many as the backlog has room for.

        :param wait_s: how long to wait for room when the backlog is full (the final export
            at shutdown, when nothing else needs the caller's thread); 0 = not at all. While
            it waits, only :data:`WAIT_BACKLOG_S` worth of datagrams is queued ahead of the
            sender (the rest is queued as it leaves); once ``wait_s`` is over, the whole
            backlog limit applies before anything is counted lost.
        :return: ``n``: ``datagrams[:n]`` were queued; the caller counts the rest as lost
            (they are in :attr:`PacingStats.backlog_dropped` already).
        """
        if len(records) != len(datagrams):
            raise ValueError("datagrams and records differ in length")
        st = self.stats
        deadline = self._clock() + wait_s
        n = 0
        with self._cond:
            while True:
                left_s = deadline - self._clock()  # over: the last try, the whole limit
                room = 0 if self._closing else max(0, self._room_now(left_s > 0))
                take = min(room, len(datagrams) - n)
                self._queue.extend(datagrams[n:n + take])
                self._counts.extend(records[n:n + take])
                n += take
                st.backlog = self._backlog()
                st.backlog_peak = max(st.backlog_peak, st.backlog)
                if take and self._idle:  # a thread waiting for tokens needs no wake-up
                    self._cond.notify_all()
                if n == len(datagrams) or self._closing or left_s <= 0:
                    break
                self._putters += 1
                try:
                    self._cond.wait(left_s)  # the sending thread notifies at low water
                finally:
                    self._putters -= 1
            st.backlog_dropped += len(datagrams) - n
            st.backlog_dropped_records += sum(records[n:])
        return n

    def _room_now(self, waiting: bool) -> int:
        """Datagrams put() may queue now: up to the backlog limit, and while it may still
        wait, up to the wait limit in the queue (a chunk the C loop holds is at the sender,
        not queued ahead of it: each wake-up then refills a chunk more)."""
        room = self.stats.backlog_limit - self._backlog()
        return min(room, self._wait_limit - len(self._queue)) if waiting else room

    def _backlog(self) -> int:
        """Datagrams waiting now: queued, and those of a running ``send_paced`` chunk that
        it has not sent yet."""
        inflight = self._inflight
        return len(self._queue) + (inflight - int(self._state[PACE_DONE]) if inflight else 0)

    def _run(self) -> None:
        if self._send_paced is not None:
            self._run_chunks(self._send_paced)
            return
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            privileges.follow()
            try:
                self._send_many(*batch)
            except Exception:  # a send that raises must not stop the thread or lose uncounted
                log.exception("%s: sending a burst of %d datagrams failed; counted lost",
                              self._thread.name, len(batch[0]))
                for datagram, count in zip(*batch, strict=True):
                    self._lost(datagram, count)
            self._bursts += 1
            self.stats.paced += len(batch[0])

    def _run_chunks(self, send_paced: Callable[[list[bytes], list[int], array], int]) -> None:
        """The pacing thread with ``send_paced``: a chunk of the backlog per call."""
        while True:
            chunk = self._next_chunk()
            if chunk is None:
                return
            privileges.follow()
            datagrams, records = chunk
            try:
                done = send_paced(datagrams, records, self._state)
            except Exception:  # must not stop the thread or lose uncounted
                done = int(self._state[PACE_DONE])
                log.exception("%s: sending %d paced datagrams failed; %d counted lost",
                              self._thread.name, len(datagrams), len(datagrams) - done)
                for datagram, count in zip(datagrams[done:], records[done:], strict=True):
                    self._lost(datagram, count)
                done = len(datagrams)
            self._end_chunk(datagrams, records, done)

    def _next_chunk(self) -> tuple[list[bytes], list[int]] | None:
        """Wait for datagrams and take up to a chunk, the bucket handed to the C loop;
        ``None`` when closed and done (or out of time)."""
        with self._cond:
            while True:
                if self._closing and (not self._queue or self._clock() >= self._deadline):
                    return None
                if self._queue:
                    break
                self._idle = True
                self._cond.wait()
                self._idle = False
            n = min(len(self._queue), self._chunk)
            pop, popc = self._queue.popleft, self._counts.popleft
            chunk = [pop() for _ in range(n)], [popc() for _ in range(n)]
            state = self._state
            state[PACE_TOKENS], state[PACE_STAMP] = self._bucket.tokens, self._bucket.stamp
            state[PACE_DONE] = 0.0
            state[PACE_DEADLINE] = self._deadline if self._closing else 0.0
            self._inflight, self._running = n, chunk[0]
            if self._putters and len(self._queue) <= self._low_water:
                self._cond.notify_all()  # a waiting put() refills while the C loop sends
            return chunk

    def _end_chunk(self, datagrams: list[bytes], records: list[int], done: int) -> None:
        """After a ``send_paced`` call: the bucket back, what it did not handle (the deadline
        passed) back at the head of the backlog, a waiting put() woken at low water."""
        with self._cond:
            state = self._state
            self._bucket.tokens, self._bucket.stamp = state[PACE_TOKENS], state[PACE_STAMP]
            if done < len(datagrams):
                self._queue.extendleft(reversed(datagrams[done:]))
                self._counts.extendleft(reversed(records[done:]))
            self._inflight, self._running = 0, []
            self.stats.paced += done
            self.stats.backlog = len(self._queue)
            if self._putters and len(self._queue) <= self._low_water:
                self._cond.notify_all()

    def _each(self, datagrams: list[bytes], records: list[int]) -> None:
        send = self._send
        assert send is not None  # __init__: send, send_many or send_paced
        for datagram, count in zip(datagrams, records, strict=True):
            send(datagram, count)

    def _next_batch(self) -> tuple[list[bytes], list[int]] | None:
        """Wait for datagrams and tokens; ``None`` when closed and done (or out of time)."""
        with self._cond:
            while True:
                if self._closing and (not self._queue or self._clock() >= self._deadline):
                    return None
                if not self._queue:
                    self._idle = True
                    self._cond.wait()
                    self._idle = False
                    continue
                now = self._clock()
                # 3/4 of a burst (or the whole backlog) per wake-up, not a datagram each: the
                # bucket saves up to a whole burst, so a wake-up a little late loses no tokens
                want = min(len(self._queue), self._want)
                if self._bucket.wait_s(now, want) == 0.0 or self._closing:
                    queued = len(self._queue)
                    n = self._bucket.take(queued, now)
                    if n:
                        pop, popc = self._queue.popleft, self._counts.popleft
                        batch = [pop() for _ in range(n)], [popc() for _ in range(n)]
                        self.stats.backlog = len(self._queue)
                        if self._putters and len(self._queue) <= self._low_water:
                            self._cond.notify_all()  # room for a waiting put()
                        return batch
                wait = self._bucket.wait_s(now, want)
                if self._closing:
                    wait = min(wait, max(0.0, self._deadline - now))
                self._cond.wait(wait)

    @property
    def pending(self) -> int:
        """Datagrams waiting now."""
        with self._cond:
            return self._backlog()

    @property
    def bursts(self) -> int:
        """Bursts sent so far (one wake-up of the pacing loop each)."""
        return self._bursts + int(self._state[PACE_BURSTS])

    def current_stats(self) -> tuple[PacingStats, list[bytes], int]:
        """:attr:`stats` with the backlog as it is now, the chunk a running ``send_paced``
        call holds (``[]`` if none) and how many of it it handled: the progress the backlog
        was computed from, read once, so a caller that holds its counters still can add
        what was sent since they were last counted. The stats are a copy whose ``paced``
        includes the chunk's handled datagrams, so ``paced`` and ``backlog`` add up too."""
        with self._cond:
            done = int(self._state[PACE_DONE]) if self._inflight else 0
            self.stats.backlog = len(self._queue) + self._inflight - done
            return replace(self.stats, paced=self.stats.paced + done), self._running, done

    @property
    def room(self) -> int:
        """Datagrams the backlog can still take now (0 once closing)."""
        with self._cond:
            return 0 if self._closing else max(0, self.stats.backlog_limit - self._backlog())

    def drain_seconds(self, extra: int = 0) -> float:
        """How long sending the current backlog and ``extra`` more datagrams takes at the
        paced rate."""
        with self._cond:
            queued = self._backlog()
        return (queued + extra) / self._bucket.rate if self._bucket.rate else 0.0

    def close(self, timeout: float) -> None:
        """Send what is queued at the paced rate for up to ``timeout`` seconds, then stop;
        whatever is still queued is reported lost."""
        with self._cond:
            self._closing = True
            self._deadline = self._clock() + timeout
            self._state[PACE_DEADLINE] = self._deadline  # a running C loop reads it
            self._cond.notify_all()
        self._thread.join()
        with self._cond:
            left = list(zip(self._queue, self._counts, strict=True))
            self._queue.clear()
            self._counts.clear()
            self.stats.backlog = 0
        self.stats.backlog_dropped += len(left)
        self.stats.backlog_dropped_records += sum(count for _, count in left)
        for datagram, count in left:
            self._lost(datagram, count)
