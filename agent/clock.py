"""The pipeline clock: wall time, or the capture's own time while replaying.

When every ingest is a finite replay (pcap), the capture's timestamps drive timeouts, export
times and sysUpTime, so a replay gives the same flows on any machine, however fast. Otherwise
the clock is the wall clock, in ns.

With several captures replayed at once (one ``[[ingest.pcap]]`` per interface's file), each
reader runs at its own speed: the capture clock is the earliest time an unfinished capture may
still hand over (the later of its last batch's time and the start of the batch it waits to
hand over), so a fast reader never makes a slow one's flows look idle (they would leave as one
record per batch, differently on every run), and a quiet, later-starting or non-IP capture
never holds the others' clock back (their flows would merge across idle gaps and fill the
table). :class:`ReplayOrder` makes the readers hand their batches over in time order, so a
flow's idle gaps are seen at their capture times whichever reader is faster.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Collection


class Clock:
    """Wall clock, or the capture clock (:attr:`replay`), in wall-clock ns."""

    def __init__(self) -> None:
        #: ``True`` when every ingest is a finite replay: the capture's time is the clock
        self.replay = False
        #: the capture clock (0 before the first packet, and at a capture's epoch 0)
        self.capture_ns = 0
        #: whether the capture clock has moved: a capture stamped 0 (1970) starts it too
        self.started = False
        #: the replays still emitting (set by the owner; each one holds the clock back)
        self.pending: Callable[[], Collection[str]] = tuple
        #: the replays' hand-over order (set by the owner with several possible): where
        #: each may still hand the loop a batch (:meth:`ReplayOrder.next_start`)
        self.order: ReplayOrder | None = None
        self._sources: dict[str, int] = {}  # replay -> its latest packet time
        self._latest = -1  # the latest time of any replay (-1: none yet)

    def now_ns(self) -> int:
        """Wall clock, or the capture clock while replaying finite sources only."""
        return self.capture_ns if self.replay else time.time_ns()

    def advance(self, clock_ns: int, source: str = "") -> bool:
        """Note that ``source`` (a replay) reached ``clock_ns``, and move the capture clock
        forward (never backwards) to the time every pending replay has reached; without
        ``source``, to ``clock_ns``.

        :return: ``True`` on the first move: the capture clock is the capture's first packet
            time, where uptime starts counting.
        """
        if source:
            if clock_ns > self._sources.get(source, -1):
                self._sources[source] = clock_ns
            self._latest = max(self._latest, clock_ns)
            clock_ns = self._reached()
        if clock_ns < 0 or (self.started and clock_ns <= self.capture_ns):
            return False
        first = not self.started
        self.started = True
        self.capture_ns = clock_ns
        return first

    def taken(self, source: str) -> None:
        """The loop took one of ``source``'s batches (:meth:`ReplayOrder.taken`)."""
        if self.order is not None:
            self.order.taken(source)

    def source_done(self, source: str) -> bool:
        """``source`` emitted everything (it is no longer :attr:`pending`): the clock may
        move on to the others' times, or to the latest of all once none is left.

        :return: as :meth:`advance`.
        """
        self._sources.pop(source, None)
        return self.advance(self._reached() if self.pending() else self._latest)

    def _reached(self) -> int:
        """The earliest time a pending replay may still hand over: for each, the later of its
        last batch's time and the start of its oldest batch on its way (or of the one it
        said it hands over next); -1 while one has said nothing."""
        order = self.order
        times = [max(self._sources.get(s, -1), order.next_start(s) if order else -1)
                 for s in self.pending()]
        if not times:
            return self._latest
        return min(times)


class ReplayOrder:
    """Several replays hand their batches over in the order of their first packets' times
    (a merge at batch granularity): a reader whose next batch starts later than another
    pending replay's waits for it, so the capture clock sees one time line whatever the
    readers' speeds. The replay with the earliest next batch never waits (no deadlock); one
    that has not said where it starts holds the others back. One replay: never waits.

    Each waiting reader has its own condition: a call wakes only the reader whose turn it
    now is, so N readers cost O(N) per batch, not a wake-up of every reader.

    :param pending: the replays still emitting (the lifecycle's set, read on any thread).
    """

    def __init__(self, pending: Callable[[], Collection[str]]) -> None:
        self.pending = pending
        self._lock = threading.Lock()
        self._next: dict[str, int] = {}  # replay -> the first time of its next batch
        self._waiting: dict[str, threading.Condition] = {}
        #: replay -> the first times of its batches handed over and not yet taken, in order
        self._in_flight: dict[str, deque[int]] = {}

    def next_start(self, source: str) -> int:
        """The earliest time ``source`` may still hand the loop: its oldest batch on its way
        there, else where it said its next batch starts (-1: nothing said, or finished with
        nothing left on its way, its end queued for the loop)."""
        with self._lock:
            queued = self._in_flight.get(source)
            if queued:
                return queued[0]
            start = self._next.get(source, -1)
            return -1 if start == _NEVER else start

    def taken(self, source: str) -> None:
        """The loop took ``source``'s oldest batch on its way (one :meth:`wait_turn` let go)."""
        with self._lock:
            queued = self._in_flight.get(source)
            if queued:
                queued.popleft()

    def wait_turn(self, source: str, first_ns: int, cancel: Callable[[], bool],
                  emits: bool = True) -> None:
        """Block until ``source``'s batch starting at ``first_ns`` is the earliest of the
        pending replays' (or ``cancel()`` says stop; checked every 50 ms); ``emits``: the
        caller then hands the batch over (else it only says how far it got)."""
        with self._lock:
            self._next[source] = first_ns
            self._wake_turn()
            if not self._earliest(source, first_ns):
                cond = self._waiting[source] = threading.Condition(self._lock)
                try:
                    while not cancel() and not self._earliest(source, first_ns):
                        cond.wait(0.05)
                finally:
                    del self._waiting[source]
            if emits:
                self._in_flight.setdefault(source, deque()).append(first_ns)

    def finish(self, source: str) -> None:
        """``source`` emitted everything: nobody waits for it any more."""
        with self._lock:
            self._next[source] = _NEVER
            self._wake_turn()

    def _wake_turn(self) -> None:
        """Wake the waiting reader whose batch is now the earliest, if one is (lock held)."""
        if self._waiting:
            _, turn = min((self._next.get(s, -1), s) for s in (*self.pending(), *self._waiting))
            if turn in self._waiting:
                self._waiting[turn].notify()

    def _earliest(self, source: str, first_ns: int) -> bool:
        mine = (first_ns, source)
        return all((self._next.get(other, -1), other) >= mine
                   for other in tuple(self.pending()) if other != source)


_NEVER = 2**63 - 1
