"""Process-wide logging set-up: levels, journald-friendly output, rate-limited repeats.

A dead collector makes :mod:`agent.transport.udp` log "cannot connect" at every retry, a
crashing hook logs at every call: without a limit one broken thing floods the journal and
hides everything else. :class:`RepeatFilter` lets a message through, then holds back
identical ones for ``interval`` seconds and says how many it held back when the next one
passes. Two messages are "identical" when they come from the same logger, at the same
level, with the same format string and the same first argument (components put their
instance name or endpoint first, so two dead collectors are still both reported). A record
logged with ``extra=NEVER_FOLD`` always passes (each failed reload is an event of its own).

Under systemd (``$JOURNAL_STREAM`` set, see systemd.exec(5)) each line starts with the
sd-daemon(3) ``<N>`` priority prefix instead of a timestamp, so ``journalctl -p warning``
works and timestamps are not doubled.

``[agent] debug`` has one meaning, ipt_NETFLOW's ``debug=`` (:func:`apply_debug`): 0 logs at
info level (start, stop, reload, problems), 1 adds debug logging, 2 and more add one line per
flow, logged by ``agent.flows`` when the cache creates it and when it is exported. It is
applied at start and at every reload, unless ``--log-level`` was given.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from netflow_agent.model import FlowRecord

#: ``log.error(..., extra=NEVER_FOLD)``: the repeat filter lets this record through
NEVER_FOLD = {"never_fold": True}
#: syslog priorities for the sd-daemon(3) ``<N>`` prefix
_SD_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                logging.CRITICAL: 2}


class RepeatFilter(logging.Filter):
    """Pass a message, then at most one identical message per ``interval`` seconds.

    :param interval: seconds; ``0`` disables the limit.
    :param clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, interval: float = 60.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.interval = interval
        self._clock = clock
        #: key -> (time the last one passed, how many were held back since)
        self._seen: dict[tuple[str, int, str, str], tuple[float, int]] = {}

    @staticmethod
    def _key(record: logging.LogRecord) -> tuple[str, int, str, str]:
        args = record.args
        first = ""
        if isinstance(args, tuple) and args:
            first = str(args[0])
        return record.name, record.levelno, str(record.msg), first

    def filter(self, record: logging.LogRecord) -> bool:
        """Return whether ``record`` is written; count the ones held back."""
        if self.interval <= 0 or getattr(record, "never_fold", False):
            return True
        key = self._key(record)
        now = self._clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.interval:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.msg = f"{record.msg} [{last[1]} similar message(s) suppressed in the last " \
                         f"{now - last[0]:.0f} s]"
        self._seen[key] = (now, 0)
        if len(self._seen) > 4096:  # bounded: forget the oldest half
            for old in sorted(self._seen, key=lambda k: self._seen[k][0])[:2048]:
                del self._seen[old]
        return True


class JournalFormatter(logging.Formatter):
    """``<N>logger: message`` lines for journald (the priority prefix sets the level)."""

    def format(self, record: logging.LogRecord) -> str:
        """Prefix every line of the message with its syslog priority."""
        text = super().format(record)
        prio = _SD_PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


def under_journald() -> bool:
    """Whether standard error is connected to the journal (systemd.exec(5) JOURNAL_STREAM)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream or ":" not in stream:
        return False
    dev, _, ino = stream.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return f"{st.st_dev}:{st.st_ino}" == f"{dev}:{ino}"


def install(interval: float = 60.0) -> RepeatFilter:
    """Add the repeat filter to every root handler; use the journal format under systemd.

    :param interval: see :class:`RepeatFilter`.
    :return: the filter (its ``interval`` may be changed later, e.g. on reload).
    """
    repeat = RepeatFilter(interval)
    journal = under_journald()
    for handler in logging.getLogger().handlers:
        handler.addFilter(repeat)
        if journal:
            handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    return repeat


#: ``[agent] debug`` from which every flow is logged when created and when exported
FLOW_DEBUG = 2
_PROTO = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP"}
flow_log = logging.getLogger("agent.flows")


def level_for_debug(debug: int) -> int:
    """The root log level for an ``[agent] debug`` value: 0 info, 1 and more debug."""
    return logging.DEBUG if debug >= 1 else logging.INFO


_level_pinned = False


def pin_level() -> None:
    """``--log-level`` was given: :func:`apply_debug` leaves the root level alone from now on."""
    global _level_pinned
    _level_pinned = True


def apply_debug(debug: int) -> None:
    """Set the root log level from ``[agent] debug`` (at start and at every reload), unless
    :func:`pin_level` was called."""
    if not _level_pinned:
        logging.getLogger().setLevel(level_for_debug(debug))


def key_text(key: bytes) -> str:
    """``UDP 10.0.0.1:53 -> 10.0.0.2:5000 tos=0 if=3 dir=0`` for a packed flow key."""
    from netflow_agent.model import split_key

    k = split_key(key)
    return _endpoints(k.ip_version, k.protocol, k.src_addr, k.src_port, k.dst_addr,
                      k.dst_port) + f" tos={k.tos} if={k.in_if} dir={k.direction}"


def _endpoints(version: int, proto: int, src: bytes, sport: int, dst: bytes,
               dport: int) -> str:
    import ipaddress

    fmt = "[{}]:{}" if version == 6 else "{}:{}"
    return (f"{_PROTO.get(proto, str(proto))} "
            f"{fmt.format(ipaddress.ip_address(src), sport)} -> "
            f"{fmt.format(ipaddress.ip_address(dst), dport)}")


def log_created(key: bytes) -> None:
    """One debug line for a flow the cache just created (``[agent] debug >= 2``)."""
    flow_log.debug("flow created: %s", key_text(key))


def log_exported(records: Iterable[FlowRecord]) -> None:
    """One debug line per exported flow record (``[agent] debug >= 2``)."""
    for r in records:
        flow_log.debug("flow exported: %s pkts=%d bytes=%d flags=0x%02x in=%d out=%d "
                       "first=%d last=%d end=%d",
                       _endpoints(r.ip_version, r.protocol, r.src_addr, r.src_port,
                                  r.dst_addr, r.dst_port),
                       r.packets, r.octets, r.tcp_flags, r.in_if, r.out_if, r.start_ns,
                       r.end_ns, r.end_reason)


def find_filter() -> RepeatFilter | None:
    """The installed :class:`RepeatFilter`, if any."""
    for handler in logging.getLogger().handlers:
        for f in handler.filters:
            if isinstance(f, RepeatFilter):
                return f
    return None
