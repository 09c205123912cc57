"""Replay progress: one line on stderr, rewritten in place, while a capture is replayed.

What it owns: the progress line of ``agent -c FILE`` replaying pcap files (share of the file
read, packets, packets/s, ETA), when it shows (stderr is a terminal, or ``--progress``;
never with ``--no-progress``; only once a replay has run :data:`DELAY_S` seconds, so short
replays print nothing), and keeping log lines readable: a log line first erases the progress
line, which is redrawn at the next update.

Replay ingests report through :meth:`agent.runtime.RunContext.report_progress`; the CLI
installs a :class:`Progress` there. Updates come from reader threads; drawing is
rate-limited (:data:`MIN_INTERVAL_S`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import IO, Any

#: a replay shows progress once it has run this long
DELAY_S = 2.0
#: the line is redrawn at most this often
MIN_INTERVAL_S = 0.25


@dataclass
class _Source:
    name: str
    done: int = 0
    total: int = 0
    packets: int = 0
    finished: bool = False


def wanted(stream: IO[str], flag: bool | None) -> bool:
    """``--progress`` (True) / ``--no-progress`` (False) decide; else whether ``stream`` is a
    terminal."""
    if flag is not None:
        return flag
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    """The progress line on ``stream``.

    :param clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, stream: IO[str], clock: Any = time.monotonic):
        self.stream = stream
        self.clock = clock
        self.sources: dict[str, _Source] = {}
        self.started = 0.0
        self.drawn_at = 0.0
        self.shown = False  # the line is on the screen now
        self.ever_shown = False
        self.lock = threading.Lock()

    def update(self, source: str, done: int, total: int, packets: int,
               finished: bool = False) -> None:
        """A replay read ``done`` of ``total`` bytes of ``source`` (a file path) and
        ``packets`` packets; ``finished`` once it reached the end or stopped."""
        with self.lock:
            now = self.clock()
            if not self.sources:
                self.started = now
            self.sources[source] = _Source(source, done, total, packets, finished)
            if now - self.started < DELAY_S:
                return
            all_done = all(s.finished for s in self.sources.values())
            if all_done:
                if self.ever_shown:
                    self._write("\r" + self.line(now) + "\x1b[K\n")
                    self.shown = False
                return
            if now - self.drawn_at >= MIN_INTERVAL_S:
                self._write("\r" + self.line(now) + "\x1b[K")
                self.shown = self.ever_shown = True
                self.drawn_at = now

    def line(self, now: float) -> str:
        """The progress text (without control characters)."""
        srcs = list(self.sources.values())
        done, total = sum(s.done for s in srcs), sum(s.total for s in srcs)
        packets = sum(s.packets for s in srcs)
        elapsed = max(now - self.started, 1e-6)
        share = done / total if total else 0.0
        name = os.path.basename(srcs[0].name) if len(srcs) == 1 else f"{len(srcs)} files"
        eta = (total - done) / (done / elapsed) if done else 0.0
        return (f"replay {name}: {share:6.1%} of {_size(total)}, {packets} packets, "
                f"{packets / elapsed:.0f} pkt/s, ETA {_duration(eta)}")

    def clear(self) -> None:
        """Erase the line (before a log line); it comes back at the next update."""
        with self.lock:
            if self.shown:
                self._write("\r\x1b[K")
                self.shown = False

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed terminal must not stop the replay
            pass

    def install(self) -> None:
        """Make the root logger's handlers on this stream erase the line before a record."""
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is self.stream:
                handler.addFilter(self._before_record)

    def _before_record(self, record: logging.LogRecord) -> bool:
        self.clear()
        return True


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _duration(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else \
        f"{s // 60}:{s % 60:02d}"
