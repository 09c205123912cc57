"""The pipeline clock: wall time, or the capture's own time while replaying.

When every ingest is a finite replay (pcap), the capture's timestamps drive timeouts, export
times and sysUpTime, so a replay gives the same flows on any machine, however fast. Otherwise
the clock is the wall clock, in ns.
"""

from __future__ import annotations

import time


class Clock:
    """Wall clock, or the capture clock (:attr:`replay`), in wall-clock ns."""

    def __init__(self) -> None:
        #: ``True`` when every ingest is a finite replay: the capture's time is the clock
        self.replay = False
        #: the latest capture timestamp seen (0 before the first packet)
        self.capture_ns = 0

    def now_ns(self) -> int:
        """Wall clock, or the capture clock while replaying finite sources only."""
        return self.capture_ns if self.replay else time.time_ns()

    def advance(self, clock_ns: int) -> bool:
        """Move the capture clock forward to ``clock_ns`` (never backwards).

        :return: ``True`` on the first move: ``clock_ns`` is the capture's first packet,
            where uptime starts counting.
        """
        if clock_ns <= self.capture_ns:
            return False
        first = not self.capture_ns
        self.capture_ns = clock_ns
        return first
