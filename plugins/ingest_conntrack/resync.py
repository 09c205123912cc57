"""Which translations are open, and the exactly-once rules for their start and stop events.

This module owns :class:`NatTracker`, the pure state machine between ctnetlink messages and
NAT events. Conntrack multicast is lossy: when the listener's socket buffer overruns, the
kernel drops events and reports ``ENOBUFS`` once (``netlink_overrun()``). The component then
dumps the conntrack table and calls :meth:`NatTracker.reconcile`:

* a translation in the dump that we never saw start gets its start event (time = the
  conntrack timestamp extension's start when present, so the time is still exact);
* a translation we saw start that is no longer in the dump gets its stop event, dated when
  the dump found it gone (the kernel's stop time was in the lost message). In reliable event
  mode the kernel redelivers DESTROY events that did not fit, so the tracker first waits a
  grace period for the exact one; a DESTROY that still turns up after a synthesized stop is
  recognised and dropped;
* a DESTROY for a translation whose NEW was lost yields the start (from ``CTA_TIMESTAMP``)
  and the stop together.

Every translation therefore yields one start and one stop, however the messages were lost.
The same reconcile runs once at start-up (translations older than the agent get their start)
and, optionally, periodically. Reference: ulogd2 ``NFCT`` plugin (``netlink_resync_timeout``),
conntrackd's resync after ``ENOBUFS``; kernel ``net/netlink/af_netlink.c:netlink_overrun``.
"""

from __future__ import annotations

from netflow_agent.model import NAT_START, NAT_STOP, NatEvent

from .ctnetlink import CtEntry
from .events import entry_key, is_translated, to_nat_event

Key = tuple[int, tuple[bytes, bytes, int, int, int]]


#: How long a synthesized stop suppresses a late DESTROY for the same connection.
DUPLICATE_WINDOW_NS = 600 * 1_000_000_000


class NatTracker:
    """Open translations and event counters (one per component instance, one thread).

    :param nat_only: keep only connections with source or destination translation.
    :param stop_grace_ns: how long a translation missing from a dump waits for its DESTROY
        before the dump's stop is emitted. 0 (lossy events) stops it at once; in reliable
        event mode the kernel redelivers the DESTROY, whose stop time is exact, so wait.
    """

    def __init__(self, nat_only: bool = True, stop_grace_ns: int = 0):
        self.nat_only = nat_only
        self.stop_grace_ns = stop_grace_ns
        self.active: dict[Key, CtEntry] = {}
        self.pending: dict[Key, tuple[CtEntry, int]] = {}  # gone from a dump, stop not yet out
        self.recently_stopped: dict[Key, int] = {}  # stops we synthesized -> when
        self._destroyed_during_resync: set[Key] | None = None
        self._started_during_resync: set[Key] | None = None
        self.starts = 0
        self.stops = 0
        self.skipped = 0  # untranslated connections ignored (nat_only)
        self.duplicates = 0  # messages for an event already emitted (ignored)
        self.resync_starts = 0  # starts found only by a dump
        self.resync_stops = 0  # stops found only by a dump (event lost)
        self.late_starts = 0  # starts recovered from a DESTROY whose NEW was lost

    @property
    def open_count(self) -> int:
        """Translations with a start out and no stop yet."""
        return len(self.active) + len(self.pending)

    def wanted(self, entry: CtEntry) -> bool:
        """Whether this connection produces NAT events under this tracker's filter."""
        return is_translated(entry) or not self.nat_only

    def on_new(self, entry: CtEntry, now_ns: int) -> list[NatEvent]:
        """A conntrack NEW event: the start, unless a dump already reported it."""
        if not self.wanted(entry):
            self.skipped += 1
            return []
        key = entry_key(entry)
        if key in self.active:
            self.duplicates += 1
            return []
        self.active[key] = entry
        if self._started_during_resync is not None:
            self._started_during_resync.add(key)
        self.starts += 1
        return [to_nat_event(entry, NAT_START, now_ns)]

    def on_destroy(self, entry: CtEntry, now_ns: int) -> list[NatEvent]:
        """A conntrack DESTROY event: the stop, preceded by the start if its NEW was lost."""
        if not self.wanted(entry):
            self.skipped += 1
            return []
        key = entry_key(entry)
        if self._destroyed_during_resync is not None:
            self._destroyed_during_resync.add(key)
        if self.recently_stopped.pop(key, None) is not None:
            self.duplicates += 1
            return []
        events = []
        if self.active.pop(key, None) is None and self.pending.pop(key, None) is None:
            events.append(to_nat_event(entry, NAT_START, entry.start_ns or now_ns))
            self.starts += 1
            self.late_starts += 1
        events.append(to_nat_event(entry, NAT_STOP, now_ns))
        self.stops += 1
        return events

    def begin_resync(self) -> None:
        """Mark the start of a dump: events from now on are remembered for :meth:`reconcile`."""
        self._destroyed_during_resync = set()
        self._started_during_resync = set()

    def reconcile(self, alive: dict[Key, CtEntry], now_ns: int) -> list[NatEvent]:
        """Compare a table dump with the open translations and emit what was missed.

        Call after :meth:`begin_resync`, the dump, and handling every event queued up to the
        end of the dump (the dump itself evicts expired entries, whose DESTROY events then
        carry the exact stop time).

        :param alive: wanted entries from the dump, keyed by :func:`.events.entry_key`.
        :param now_ns: wall-clock time of the dump.
        """
        destroyed = self._destroyed_during_resync or set()
        started = self._started_during_resync or set()
        self._destroyed_during_resync = self._started_during_resync = None
        events = []
        for key, entry in alive.items():
            if key not in self.active and key not in destroyed:
                self.active[key] = entry
                events.append(to_nat_event(entry, NAT_START, entry.start_ns or now_ns))
                self.starts += 1
                self.resync_starts += 1
        # a NEW handled after the dump began may be missing from the dump: it is not gone
        gone = [key for key in self.active if key not in alive and key not in started]
        for key in gone:
            self.pending[key] = (self.active.pop(key), now_ns)
        return events + self.expire(now_ns)

    def expire(self, now_ns: int) -> list[NatEvent]:
        """Emit the stops of translations that left the table and whose DESTROY never came.

        :param now_ns: wall clock; stops are dated when the dump found the entry gone.
        """
        events = []
        for key, (entry, since) in list(self.pending.items()):
            if now_ns - since >= self.stop_grace_ns:
                del self.pending[key]
                events.append(to_nat_event(entry._replace(stop_ns=0), NAT_STOP, since))
                self.stops += 1
                self.resync_stops += 1
                self.recently_stopped[key] = now_ns
        if self.recently_stopped:
            self._forget_old_stops(now_ns)
        return events

    def next_deadline(self) -> int | None:
        """When :meth:`expire` next has work (wall-clock ns), or ``None``."""
        if not self.pending:
            return None
        return min(since for _entry, since in self.pending.values()) + self.stop_grace_ns

    def _forget_old_stops(self, now_ns: int) -> None:
        """Drop suppression entries older than the window (the dict is in time order)."""
        old = []
        for key, when in self.recently_stopped.items():
            if now_ns - when <= DUPLICATE_WINDOW_NS:
                break
            old.append(key)
        for key in old:
            del self.recently_stopped[key]
