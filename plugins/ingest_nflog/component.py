"""``[[ingest.nflog]]``: one reader thread per NFLOG group, batches of per-flow sums.

The datagrams waiting on a socket are read back to back into the decoder (``decoders.py``):
with the C decoder they are waited for, received and summed per flow in C (the thread runs
Python once per batch), and the sums go to the pipeline every ``batch_ms`` (or once
``_HOLD_FLOWS`` rows are held) as FlowBatches of at most ``TAKE_LIMIT`` rows; with the Python
decoder every read becomes a PacketBatch of packets (``decoder`` option).

Life cycle: ``agent_start`` opens and binds a socket per group (inside ``netns`` when set),
then installs the managed nftables table if asked, then starts the readers, so no logged
packet finds the group unbound. ``agent_stop`` deletes the table first, then each reader
sends UNBIND (the kernel flushes its partial batch to us), reads up to the UNBIND ack, emits
the last batch and ends.

Loss accounting: every packet the kernel logs carries ``NFULA_SEQ``; a gap in the sequence is
exactly the number of packets logged but never received (socket overruns and anything else),
and goes into the batch's ``dropped_packets``. Overruns (what ENOBUFS reports) are counted
from the socket's drop counter (``overruns``, kernel batches lost) and reading continues; the
socket sets NETLINK_NO_ENOBUFS (see ``netlink.NflogSocket._open`` for why).
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import sys
import termios
import threading
import time
from typing import TYPE_CHECKING, Any

from netflow_agent.api import (
    ComponentUnavailable,
    FragmentPolicy,
    Ingest,
    RunContext,
    follow_privileges,
    hookimpl,
)

from .config import NLBUFSIZ_MAX, Config

if TYPE_CHECKING:
    from .netlink import NflogSocket
    from .rules import ManagedRules

# .decoders, .netlink and .rules are imported when an instance starts, not with the class:
# every agent registers this type, and an agent without [[ingest.nflog]] keeps ~1 MB less
# (docs/performance-history.md, "Agent memory: a smaller flow index and lazy imports")

_POLL_S = 0.2  # how often an idle reader looks at the stop flag
_STOP_DRAIN_S = 2.0  # longest wait for the next datagram while draining at stop
_STOP_DRAIN_MAX_S = 60.0  # longest drain at stop (a reader far behind a flood catches up)
#: batches queued in the pipeline before a reader waits (the kernel then drops, counted)
_INBOX_LIMIT = 512
#: most datagrams, and bytes, read back to back in one go
_DRAIN_DATAGRAMS = 64
_DRAIN_BYTES = 1 << 20
#: rows (flows, or packets while appending) the C decoder may hold before they go on
#: regardless of ``batch_ms``. Also append mode's packet threshold: the fewest packets of a
#: table cycle that decides on append mode (``decoders.CBatcher``'s ``hold``), so a change
#: here moves when the aggregator starts appending too
_HOLD_FLOWS = 8192


class GroupReader:
    """Reads one group's socket on its own thread and emits the sums as batches.

    The socket is non-blocking; the thread waits in ``poll()``, then reads every datagram
    already queued (up to :data:`_DRAIN_DATAGRAMS` per round, and :data:`_DRAIN_BYTES` plus
    up to 7 datagrams: the C decoder checks the bytes after each ``recvmmsg()`` of up to 8)
    into the decoder, then, when that emptied the socket, sleeps ``coalesce_ms`` (after handing on
    sums that are due), and again. The C decoder's sums are emitted once
    ``batch_ms`` passed (or :data:`_HOLD_FLOWS` rows are held, or the socket is idle), so
    the per-batch Python work, and the cache's per-row work, are shared by many kernel
    batches and packets when traffic is heavy; with the C decoder the whole wait-read-pause
    loop up to that point runs in C with the GIL released (:meth:`_serve`), so the thread
    runs Python once per batch, not once per wakeup (counter ``wakeups``: the rounds).
    After a drop of root the thread follows (:func:`follow_privileges`) before it parses the
    next datagram: at the top of the loop, after ``poll()`` in Python, and in C ``serve``
    returns at a wakeup that finds the effective UID changed.

    :param pending: datagrams that arrived before the BIND ack (decoded first).
    """

    def __init__(self, owner: NflogIngest, sock: NflogSocket, pending: list[bytes]):
        self.owner = owner
        self.sock = sock
        self.pending = pending
        from .decoders import make_batcher

        cfg = owner.config
        self.decoder = make_batcher(cfg.decoder, owner.fragments, cfg.decapsulate,
                                    cfg.keep_outer, _HOLD_FLOWS)
        self.counters = {"batches": 0, "packets": 0, "enobufs": 0, "recv_errors": 0,
                         "datagrams_cut": 0, "unread_at_stop_bytes": 0, "wakeups": 0}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True,
                                       name=f"{owner.name} group {sock.group}")
        self._closed_overruns = 0
        self.poller = select.poll()
        # a datagram is at most one kernel batch (nlbufsiz) or one big packet; with the C
        # decoder the receive buffer lives in C (read()) and this one serves the stop drain
        self.buf = bytearray(max(NLBUFSIZ_MAX, owner.config.snaplen or 65535) + 4096)
        #: how long the C decoder's sums are held before they go on (0: every wakeup)
        self.hold_s = cfg.batch_ms / 1000 if self.decoder.name == "c" else 0.0
        self.emitted_at = time.monotonic()

    def start(self, context: RunContext) -> None:
        """Start the thread."""
        self.context = context
        self.thread.start()

    def _run(self) -> None:
        try:
            for data in self.pending:
                self._feed(data, len(data))
            self.pending = []
            self._emit()
            self.sock.sock.setblocking(False)  # waits happen in poll(); reads never block
            self.poller.register(self.sock.sock.fileno(), select.POLLIN)
            while not self.stopping.is_set():
                euid = os.geteuid()  # before following: serve() sees a later drop of root
                follow_privileges()  # before reading: this thread gives up root's capabilities
                if not self._serve(euid):
                    self._step()
            self._finish()
        except Exception:
            self.owner.log.exception("%s: group %d reader failed", self.owner.name,
                                     self.sock.group)
        finally:
            self._closed_overruns = self._overruns()
            self.sock.close()

    def _serve(self, euid: int) -> bool:
        """Wait, read and sum in C until the sums are due, then hand them on (the C decoder:
        Python runs once per batch, not once per wakeup; the waits and the ``coalesce_ms``
        pauses happen in ``serve`` with the GIL released, and the pause after a read that
        emptied the socket carries over to the next call). Counters: live from C
        (:meth:`stats`).

        :param euid: the effective UID before this thread last followed the privileges:
            while it is root's, ``serve`` returns before reading once it changed (root was
            dropped), so the thread follows before it parses another packet.
        :return: ``False`` when the decoder cannot (:meth:`_step` does it in Python).
        """
        idle = not self.decoder.pending
        result = self.decoder.serve(self.sock.sock.fileno(), _POLL_S * 1000, self._due_ms(),
                                    self.owner.config.coalesce_ms, _HOLD_FLOWS,
                                    _DRAIN_DATAGRAMS, _DRAIN_BYTES, len(self.buf),
                                    euid if euid == 0 else -1)
        if result is None:
            return False
        if result.errno:
            self._recv_error(OSError(result.errno, os.strerror(result.errno)),
                             "poll" if result.poll_failed else "recv")
        if result.timed_out or self._emit_due():
            self._emit()  # hand on the sums held, release stale fragments
            if result.timed_out and idle and not result.datagrams:  # a whole idle wait
                self.decoder.drop_buffers()  # and the row buffers kept for a flood
        return True

    def _step(self) -> None:
        """One wakeup of the Python decoder's loop: wait, read what waits, emit it, pause."""
        if not self.poller.poll(self._poll_ms()):
            self._emit()  # release stale fragments
            return
        follow_privileges()  # root may have been dropped during the wait: before parsing
        more = self._drain()
        self._emit()
        self.counters["wakeups"] += 1
        pause = self.owner.config.coalesce_ms / 1000
        if not more and pause:
            self.stopping.wait(pause)  # let kernel batches gather: one wakeup for many

    def _due_ms(self) -> float:
        """How long until the sums held are due (``batch_ms`` after the last batch)."""
        return (self.emitted_at + self.hold_s - time.monotonic()) * 1000

    def _poll_ms(self) -> float:
        """How long to wait for the socket: until the sums held are due, else the idle poll."""
        if not self.decoder.pending:
            return _POLL_S * 1000
        return max(0.0, (self.emitted_at + self.hold_s - time.monotonic()) * 1000)

    def _emit_due(self) -> bool:
        """Whether to hand the sums on now: ``batch_ms`` passed since the last batch, or the
        C table holds :data:`_HOLD_FLOWS` rows (its memory stays bounded)."""
        return (time.monotonic() - self.emitted_at >= self.hold_s
                or self.decoder.pending >= _HOLD_FLOWS)

    def _drain(self) -> bool:
        """Read the datagrams waiting on the socket into the (Python) decoder.

        :return: ``True`` when it stopped at the bound (more may be waiting).
        """
        fed = 0
        for _ in range(_DRAIN_DATAGRAMS):
            n = self._receive_one()
            if n < 0:
                return False
            fed += n
            if fed >= _DRAIN_BYTES:
                break
        return True

    def _receive_one(self) -> int:
        """Read one datagram, if one is waiting, into the decoder.

        :return: its length, 0 after a receive error, -1 when none is waiting.
        """
        try:
            n = self.sock.sock.recv_into(self.buf, 0, socket.MSG_TRUNC)
        except BlockingIOError:
            return -1
        except OSError as exc:
            if exc.errno == errno.ENOBUFS:  # the kernel dropped batches: seq gaps count them
                self.counters["enobufs"] += 1
            else:
                self._recv_error(exc)
            return 0
        if n > len(self.buf):  # cannot happen with our buffer size; the cut part is a gap
            self.counters["datagrams_cut"] += 1
            n = len(self.buf)
        self._feed(self.buf, n)
        return n

    def _recv_error(self, exc: OSError, call: str = "recv") -> None:
        """Count and log an error of ``call`` (``recv``, or ``poll``: the wait), then pause."""
        self.counters["recv_errors"] += 1
        self.owner.log.warning("%s: group %d: %s: %s", self.owner.name, self.sock.group, call,
                               exc)
        time.sleep(_POLL_S)

    def _feed(self, buf: bytearray | bytes, n: int) -> None:
        self.counters["packets"] += self.decoder.feed(buf, n, time.time_ns())
        self.counters["batches"] += 1

    def _emit(self, final: bool = False) -> None:
        """Hand on everything held, in batches of at most ``TAKE_LIMIT`` rows."""
        self.decoder.release(None if final else time.time_ns())
        while True:
            batch = self.decoder.take(self.owner.name)
            if batch is not None:
                if not self.stopping.is_set():  # at stop the pipeline thread is joining us
                    self.context.wait_for_room(_INBOX_LIMIT)
                self.context.emit(batch)
            if not self.decoder.pending:
                break
        self.emitted_at = time.monotonic()

    def _finish(self) -> None:
        """UNBIND, then read until its ack (the kernel flushes its partial batch first);
        the sums held go on in any case."""
        try:
            self.sock.unbind_request()
        except OSError as exc:  # no ack will come: hand on what was read, nothing else
            self.owner.log.warning("%s: group %d: unbind: %s", self.owner.name,
                                   self.sock.group, exc)
        else:
            self._drain_to_ack()
        self._emit(final=True)
        self.decoder.drop_buffers()  # before the cache's final export needs the memory

    def _drain_to_ack(self) -> None:
        """Read everything queued up to the UNBIND ack (bounded in time, the rest counted)."""
        from .netlink import find_ack

        # Everything queued before the ack is traffic the kernel logged: read it all. The
        # wait is for progress (the next datagram), bounded overall; what a reader far
        # behind cannot read in that time is counted, never silently left in the socket.
        start = time.monotonic()
        fed = 0
        while True:
            now = time.monotonic()
            left = min(_STOP_DRAIN_S, start + _STOP_DRAIN_MAX_S - now)
            if left <= 0 or not self.poller.poll(left * 1000):
                break
            n = self._receive_one()
            if n > 0 and find_ack(self.buf, n, self.sock.last_seq) is not None:
                break
            fed += max(n, 0)
            if fed >= _DRAIN_BYTES:  # emit as it goes: the table stays small
                self._emit()
                fed = 0
        self.counters["unread_at_stop_bytes"] = self._unread_bytes()
        if self.counters["unread_at_stop_bytes"]:
            self.owner.log.error("%s: group %d: %d bytes of logged packets still queued after "
                                 "%.0f s of draining at stop; they are not accounted",
                                 self.owner.name, self.sock.group,
                                 self.counters["unread_at_stop_bytes"], _STOP_DRAIN_MAX_S)

    def _unread_bytes(self) -> int:
        """Bytes still queued on the socket (SIOCINQ), 0 when unknown."""
        try:
            raw = fcntl.ioctl(self.sock.sock.fileno(), termios.FIONREAD, b"\0" * 4)
        except OSError:
            return 0
        return int.from_bytes(raw, sys.byteorder)

    def stop(self) -> None:
        """Ask the thread to finish (it unbinds and drains) and wait for it."""
        self.stopping.set()
        self.thread.join(timeout=_POLL_S + _STOP_DRAIN_MAX_S + _STOP_DRAIN_S + 1)
        if self.thread.is_alive():
            self.owner.log.error("%s: group %d: reader still busy after the stop drain; its "
                                 "last packets are not accounted", self.owner.name,
                                 self.sock.group)

    def stats(self) -> dict[str, int]:
        """This group's counters: what the thread counted, plus what the C decoder's
        ``serve`` received (live, as the decoder's ``messages`` and ``seq_gaps`` are)."""
        out = dict(self.counters)
        for key, value in self.decoder.read_counts().items():
            out[key] += value
        return {**out, **self.decoder.stats(), "overruns": self._overruns(),
                "rcvbuf": self._rcvbuf()}

    def _overruns(self) -> int:
        try:
            return self.sock.overruns()
        except OSError:  # closed: the last value read
            return self._closed_overruns

    def _rcvbuf(self) -> int:
        try:
            return self.sock.rcvbuf
        except OSError:
            return 0


class NflogIngest(Ingest):
    """``[[ingest.nflog]]``: the userspace ``-j NETFLOW`` fed by NFLOG groups."""

    stage = "ingest"
    type_name = "nflog"
    #: NFULA_HWHEADER (MACs), NFULA_VLAN (the one tag the kernel took off the frame) and
    #: NFULA_IFINDEX_PHYS* (bridge ports); no MPLS: NFLOG's payload starts at the IP header
    observable_fields = frozenset({"src_mac", "dst_mac", "ethernet_type", "vlan_id",
                                   "vlan_priority", "in_physdev", "out_physdev"})

    def __init__(self, config: Config, name: str):
        super().__init__(config, name)
        self.readers: list[GroupReader] = []
        self.rules: ManagedRules | None = None
        self.fragments: FragmentPolicy | None = None

    @hookimpl
    def agent_start(self, context: RunContext) -> None:
        """Bind every group, install the managed rules, start the readers."""
        from .decoders import c_unavailable_reason
        from .netlink import NflogSocket
        from .rules import ManagedRules

        cfg = self.config
        self.fragments = context.fragments
        context.declare_netns(self.name, cfg.netns)  # exporters resolve ifIndexes there
        if cfg.decoder == "c" and (reason := c_unavailable_reason()) is not None:
            raise ComponentUnavailable(f"{self.name}: {reason}")
        try:
            for group in cfg.groups:
                sock = NflogSocket(group, cfg.netns, cfg.rcvbuf)
                try:
                    pending = sock.bind(cfg.snaplen, cfg.qthreshold, cfg.batch_buffer(),
                                        max(1, cfg.flush_timeout_ms // 10))
                except OSError:
                    sock.close()
                    raise
                self.readers.append(GroupReader(self, sock, pending))
            if cfg.manage_rules:
                self.rules = ManagedRules(cfg.netns, cfg.groups, list(cfg.chains), cfg.snaplen,
                                          cfg.qthreshold, cfg.rule_priority,
                                          families=tuple(cfg.families))
                self.rules.install()
        except Exception:
            for reader in self.readers:
                reader.sock.close()
            self.readers = []
            raise
        # the cache waits for packets still in the kernel batch or the reader's sums
        context.declare_delivery_lag(self.name, cfg.delivery_lag_ns(
            any(reader.decoder.name == "c" for reader in self.readers)))
        for reader in self.readers:
            reader.start(context)
            self.log.info("%s: reading NFLOG group %d%s (rcvbuf %d, %s decoder)", self.name,
                          reader.sock.group, f" in netns {cfg.netns}" if cfg.netns else "",
                          reader._rcvbuf(), reader.decoder.name)

    @hookimpl
    def agent_stop(self) -> None:
        """Remove the managed rules, then unbind and drain every group."""
        if self.rules is not None:
            self.rules.remove()
        for reader in self.readers:
            reader.stopping.set()
        for reader in self.readers:
            reader.stop()
        self.log.info("%s: stopped: %s", self.name, self._totals())

    def _totals(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for reader in self.readers:
            for key, value in reader.stats().items():
                if key not in ("rcvbuf", "shapes"):
                    totals[key] = totals.get(key, 0) + value
        return totals

    @hookimpl
    def agent_collect_stats(self) -> dict[str, Any]:
        """Totals over all groups plus one nested mapping per group."""
        out: dict[str, Any] = dict(self._totals())
        for reader in self.readers:
            out[f"group {reader.sock.group}"] = reader.stats()
        return out
