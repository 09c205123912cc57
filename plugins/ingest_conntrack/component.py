"""``ingest.conntrack``: NAT translation start/stop events from ctnetlink, for NEL export.

This module owns the component's life: at start it prepares the watched namespace (sysctls),
opens an event socket and a dump socket there, reports translations that already exist, and
runs one reader thread that turns conntrack NEW/DESTROY messages into
:class:`agent.model.NatEvent` batches for ``context.emit_nat_events``. Overruns (``ENOBUFS``)
are counted and repaired by a table dump (see :mod:`.resync`). It needs no packet ingest.

Kernel references: ``Documentation/networking/nf_conntrack-sysctl.rst``
(``nf_conntrack_events``, ``nf_conntrack_timestamp``, ``nf_conntrack_acct``) and
``net/netfilter/nf_conntrack_netlink.c``. The seed's stat line is
``Natevents enabled, count start N, stop M``.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time
from typing import Any

from netflow_agent.api import (
    NAT_START,
    NAT_STOP,
    Ingest,
    NatEvent,
    RunContext,
    follow_privileges,
    hookimpl,
    run_in_netns,
)

from . import ctnetlink
from .ctnetlink import MSG_CT_DELETE, MSG_CT_NEW, NLM_F_CREATE, MalformedMessage
from .events import entry_key
from .resync import Key, NatTracker

#: sysctl -> value the component needs in the watched namespace, and why.
WANTED_SYSCTLS = {
    "net.netfilter.nf_conntrack_events": (
        "1",
        "DESTROY events also for connections older than the listener",
    ),
    "net.netfilter.nf_conntrack_timestamp": ("1", "exact start/stop times in events"),
    "net.netfilter.nf_conntrack_acct": ("1", "per-direction counters in stop events"),
}

_RECV_BUF = 64 * 1024
#: reliable mode: how long a translation missing from a dump waits for its redelivered DESTROY
_RELIABLE_STOP_GRACE_NS = 10 * 1_000_000_000
_MAX_BATCH = 512  # messages handled between two emits


def apply_sysctls(wanted: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """Set sysctls in the calling thread's network namespace.

    :param wanted: dotted sysctl name -> value.
    :return: ``(name, old, new, error)`` per sysctl; ``error`` is ``""`` on success and
        ``old == new`` when nothing had to change.
    """
    results = []
    for name, value in wanted.items():
        path = "/proc/sys/" + name.replace(".", "/")
        try:
            with open(path) as f:
                old = f.read().strip()
            if old != value:
                with open(path, "w") as f:
                    f.write(value)
            results.append((name, old, value, ""))
        except OSError as exc:
            results.append((name, "?", value, exc.strerror or str(exc)))
    return results


class ConntrackIngest(Ingest):
    """One conntrack listener in one network namespace (``[[ingest.conntrack]]``)."""

    stage = "ingest"
    type_name = "conntrack"
    emits_flows = False  # NAT events only: [flow] fields do not concern it

    def __init__(self, config: Any, name: str):
        super().__init__(config, name)
        grace = _RELIABLE_STOP_GRACE_NS if config.reliable else 0
        self.tracker = NatTracker(nat_only=config.nat_only, stop_grace_ns=grace)
        self.overruns = 0
        self.resyncs = 0
        self.malformed = 0
        self.emitted = 0
        self._context: RunContext | None = None
        self._events: socket.socket | None = None
        self._dump: socket.socket | None = None
        self._seq = 0
        self._stop = threading.Event()
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None
        self._buf = bytearray(_RECV_BUF)

    # --- lifecycle ---------------------------------------------------------------------------

    @hookimpl
    def agent_start(self, context: RunContext) -> None:
        """Prepare the namespace, open the sockets, report existing translations, start reading."""
        self._context = context
        where = f"netns {self.config.netns}" if self.config.netns else "the agent's netns"
        if self.config.set_sysctls:
            results = run_in_netns(
                self.config.netns,
                lambda: apply_sysctls(
                    {name: value for name, (value, _why) in WANTED_SYSCTLS.items()}
                ),
            )
            self._log_sysctls(results, where)
        self._events, self._dump = run_in_netns(self.config.netns, self._open_sockets)
        self._wake_r, self._wake_w = os.pipe()
        self._resync(reason="start")
        self.log.info(
            "%s: natevents enabled in %s (%d translations open)",
            self.name,
            where,
            self.tracker.open_count,
        )
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    @hookimpl
    def agent_stop(self) -> None:
        """Stop the reader thread and close the sockets (open translations are not stopped)."""
        self._stop.set()
        if self._wake_w >= 0:
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        for sock in (self._events, self._dump):
            if sock is not None:
                sock.close()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._events = self._dump = None
        self._wake_r = self._wake_w = -1

    @hookimpl
    def agent_collect_stats(self) -> dict[str, Any]:
        """The seed's ``Natevents ... count start N, stop M`` counters, overruns and resyncs."""
        t = self.tracker
        return {
            "natevents_start": t.starts,
            "natevents_stop": t.stops,
            "natevents_active": t.open_count,
            "overruns": self.overruns,
            "resyncs": self.resyncs,
            "resync_starts": t.resync_starts,
            "resync_stops": t.resync_stops,
            "late_starts": t.late_starts,
            "skipped_untranslated": t.skipped,
            "duplicates": t.duplicates,
            "malformed": self.malformed,
        }

    # --- start-up helpers ----------------------------------------------------------------------

    def _open_sockets(self) -> tuple[socket.socket, socket.socket]:
        events = ctnetlink.open_event_socket(self.config.rcvbuf, self.config.reliable)
        try:
            dump = ctnetlink.open_dump_socket(_RECV_BUF * 16)
        except OSError:
            events.close()
            raise
        return events, dump

    def _log_sysctls(self, results: list[tuple[str, str, str, str]], where: str) -> None:
        for name, old, new, error in results:
            why = WANTED_SYSCTLS[name][1]
            if error:
                self.log.warning(
                    "%s: cannot set %s=%s in %s (%s): %s", self.name, name, new, where, error, why
                )
            elif old != new:
                self.log.info(
                    "%s: set %s=%s in %s (was %s): %s", self.name, name, new, where, old, why
                )
            else:
                self.log.info("%s: %s=%s already in %s", self.name, name, new, where)

    # --- reader thread -------------------------------------------------------------------------

    def _run(self) -> None:
        """Wait for events, handle them in batches, resync after overruns and periodically."""
        assert self._events is not None
        poller = select.poll()
        poller.register(self._events.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        interval_ns = self.config.resync_interval * 1_000_000_000
        next_resync = time.monotonic_ns() + interval_ns
        while not self._stop.is_set():
            poller.poll(self._poll_timeout_ms(next_resync if interval_ns else None))
            if self._stop.is_set():
                return
            follow_privileges()  # before reading: this thread gives up root's capabilities
            try:
                if self._drain():
                    self._resync(reason="overrun")
                elif interval_ns and time.monotonic_ns() >= next_resync:
                    self._resync(reason="periodic")
                    next_resync = time.monotonic_ns() + interval_ns
                if self.tracker.pending:
                    self._emit(self.tracker.expire(self._clock()))
            except Exception:  # keep listening; a bug here must not silence NAT logging
                self.log.exception("%s: error while handling conntrack events", self.name)

    def _poll_timeout_ms(self, next_resync: int | None) -> int | None:
        """Sleep until an event, the next periodic resync, or the next pending stop is due."""
        waits = []
        if next_resync is not None:
            waits.append((next_resync - time.monotonic_ns()) // 1_000_000)
        deadline = self.tracker.next_deadline()
        if deadline is not None:
            waits.append((deadline - self._clock()) // 1_000_000 + 1)
        return max(0, min(waits)) if waits else None

    def _clock(self) -> int:
        """Wall clock for events without a conntrack timestamp (never the replay clock)."""
        return time.time_ns()

    def _drain(self) -> bool:
        """Handle every queued event message, emitting in batches.

        :return: ``True`` if the socket reported an overrun (events were lost).
        """
        assert self._events is not None
        overrun = False
        batch: list[NatEvent] = []
        while True:
            try:
                n = self._events.recv_into(self._buf, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.overruns += 1
                overrun = True
                continue
            self._handle(self._buf, n, batch)
            if len(batch) >= _MAX_BATCH:
                self._emit(batch)
                batch = []
        self._emit(batch)
        return overrun

    def _handle(self, buf: bytearray, length: int, out: list[NatEvent]) -> None:
        """Parse one received datagram and append the resulting NAT events to ``out``."""
        now = self._clock()
        try:
            for msg in ctnetlink.iter_messages(buf, length):
                if msg.msg_type == MSG_CT_NEW and msg.flags & NLM_F_CREATE:
                    entry = ctnetlink.parse_conntrack(
                        buf, msg.start, msg.end, msg.msg_type, msg.flags
                    )
                    out.extend(self.tracker.on_new(entry, now))
                elif msg.msg_type == MSG_CT_DELETE:
                    entry = ctnetlink.parse_conntrack(
                        buf, msg.start, msg.end, msg.msg_type, msg.flags
                    )
                    out.extend(self.tracker.on_destroy(entry, now))
        except (MalformedMessage, IndexError, ValueError) as exc:
            self.malformed += 1
            self.log.debug("%s: malformed ctnetlink message skipped: %s", self.name, exc)

    def _emit(self, events: list[NatEvent]) -> None:
        if events and self._context is not None:
            self._context.emit_nat_events(events)
            self.emitted += len(events)

    # --- resync --------------------------------------------------------------------------------

    def _resync(self, reason: str) -> None:
        """Dump the table and reconcile; repeat while the event socket keeps overrunning."""
        while True:
            self.resyncs += 1
            self._drain_quietly()
            self.tracker.begin_resync()
            alive = self._dump_alive()
            overrun = self._drain()
            events = self.tracker.reconcile(alive, self._clock())
            self._emit(events)
            log = self.log.info if events or reason == "start" else self.log.debug
            log(
                "%s: resync (%s): %d translations open, %d starts and %d stops recovered",
                self.name,
                reason,
                self.tracker.open_count,
                sum(1 for e in events if e.event == NAT_START),
                sum(1 for e in events if e.event == NAT_STOP),
            )
            if not overrun:
                return
            reason = "overrun during resync"

    def _drain_quietly(self) -> None:
        """Handle queued events before a dump; an overrun here is covered by the dump itself."""
        if self._drain():
            self.log.debug("%s: overrun while draining before a dump", self.name)

    def _dump_alive(self) -> dict[Key, ctnetlink.CtEntry]:
        """The wanted entries of a full table dump, keyed like the tracker's."""
        assert self._dump is not None
        self._seq += 1
        alive: dict[Key, ctnetlink.CtEntry] = {}
        for data, msg in ctnetlink.dump_table(self._dump, self._seq):
            try:
                entry = ctnetlink.parse_conntrack(data, msg.start, msg.end, msg.msg_type, msg.flags)
            except (MalformedMessage, IndexError, ValueError):
                self.malformed += 1
                continue
            if self.tracker.wanted(entry):
                alive[entry_key(entry)] = entry
        return alive
