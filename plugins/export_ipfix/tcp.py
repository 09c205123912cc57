"""IPFIX over TCP to one collector: connection, reconnect backoff, spool, in-flight accounting.

This module owns one TCP transport session per destination (RFC 7011 section 10.4):

* connect without blocking; on failure retry with exponential backoff, never more often than
  ``reconnect_min_ns`` (RFC 7011 10.4.4: by default not more than once per minute);
* every new connection is a new transport session: sequence numbers restart at 0 and every
  template is sent again before any data (section 8);
* records are queued in a :class:`~.spool.Spool` and leave it only while the connection can
  take them, in order; while the collector is down or slow they stay there, and what the
  spool bound refuses is counted lost;
* bytes handed to the kernel stay "in flight" until TCP has them acknowledged (``SIOCOUTQ``
  = unacknowledged + unsent octets, tcp(7)); when the connection breaks, the records of
  messages still in flight are counted lost (they may or may not have reached the collector;
  resending them could duplicate them);
* the collector never sends IPFIX data back, so readable EOF/RST means it went away: this is
  checked before each write so nothing is written into a connection known to be closed;
* at shutdown the spool is flushed (bounded time), all templates are withdrawn (section 8.1,
  TCP only) and the connection is closed.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from netflow_agent.api import address_family, parse_endpoint

from .ipfix import DataGroup, Session, Template, encode_messages, encode_withdrawals
from .spool import Item, Spool

SIOCOUTQ = 0x5411
_INT = struct.Struct("i")
#: Most octets kept in user space (encoded, not yet accepted by the kernel).
PENDING_LIMIT = 256 * 1024
#: Records taken from the spool per encoding step.
PUMP_BATCH = 512


@dataclass(slots=True)
class TcpStats:
    """Counters of one TCP destination."""

    connects: int = 0  # successful connections (transport sessions)
    connect_failures: int = 0
    disconnects: int = 0  # connections that broke
    messages: int = 0  # messages handed to the kernel
    octets: int = 0
    records: int = 0  # data records in those messages
    acked_records: int = 0  # records in messages TCP acknowledged
    lost_in_flight: int = 0  # records in unacknowledged messages when a connection broke
    lost_packets: int = 0  # packets of those flow records
    lost_octets: int = 0  # octets of those flow records


@dataclass(slots=True)
class _InFlight:
    end: int  # stream offset just after this message
    records: int
    data: bytes


class TcpDestination:
    """One IPFIX-over-TCP collector.

    :param endpoint: ``host:port``.
    :param observation_domain_id: Observation Domain ID of every message.
    :param spool: the queue for this destination.
    :param encode: turns spool items into data groups (flows, NAT events).
    :param templates: every template of the exporter, sent on each new connection.
    :param connect_records: records sent right after the templates on each new connection,
        before the spool (sampling options: the collector must know the rate first).
    :param totals: ``totals(message) -> (records, packets, octets)`` for loss accounting.
    :param max_message: largest message in octets.
    :param source: local ``addr[:port]`` to bind, ``""`` = any.
    :param sndbuf: ``SO_SNDBUF``; 0 = system default.
    :param reconnect_min_ns: smallest gap between connect attempts.
    :param reconnect_max_ns: largest gap (the backoff doubles up to it).
    :param clock: monotonic ns clock; ``wall``: seconds since the epoch (Export Time; the
        exporter passes its export clock).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        observation_domain_id: int,
        spool: Spool,
        encode: Callable[[list[Item]], list[DataGroup]],
        templates: Callable[[], Sequence[Template]],
        connect_records: Callable[[], list[DataGroup]] | None = None,
        totals: Callable[[bytes], tuple[int, int, int]],
        max_message: int = 65535,
        source: str = "",
        sndbuf: int = 0,
        reconnect_min_ns: int = 60_000_000_000,
        reconnect_max_ns: int = 600_000_000_000,
        clock: Callable[[], int] = time.monotonic_ns,
        wall: Callable[[], float] = time.time,
        log: logging.Logger | None = None,
    ):
        self.endpoint = endpoint
        self.host, self.port = parse_endpoint(endpoint)
        self.source = parse_endpoint(source, 0) if source else None
        self.odid = observation_domain_id
        self.spool = spool
        self._encode = encode
        self._templates = templates
        self._connect_records = connect_records
        self._totals = totals
        self.max_message = max_message
        self.sndbuf = sndbuf
        self.reconnect_min_ns = reconnect_min_ns
        self.reconnect_max_ns = reconnect_max_ns
        self._clock = clock
        self._wall = wall
        self.log = log or logging.getLogger("agent.export.ipfix")
        self.stats = TcpStats()
        self.session: Session | None = None
        self._sock: socket.socket | None = None
        self._connecting = False
        self._next_attempt_ns = 0
        self._backoff_ns = reconnect_min_ns
        self._pending = bytearray()
        self._queued = 0  # stream octets queued (pending included)
        self._written = 0  # stream octets the kernel accepted
        self._in_flight: deque[_InFlight] = deque()

    # --- state -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether a transport session is up."""
        return self._sock is not None and not self._connecting

    def submit(self, kind: int, records: Iterable[Any]) -> list[Any]:
        """Queue records and send what the connection takes now.

        :return: records the spool refused (lost).
        """
        refused = self.spool.push(kind, records)
        self.pump()
        return refused

    def send_now(self, groups: list[DataGroup]) -> bool:
        """Send records that are not spooled (options records) if connected; else skip them."""
        if not self.connected or not self._alive():
            return False
        self._queue_messages(groups)
        self._flush_pending()
        return True

    # --- connecting ------------------------------------------------------------------------

    def poll(self) -> None:
        """Timer work: progress a connect, notice a closed peer, account acks, send spool."""
        if self._sock is None:
            if self._clock() >= self._next_attempt_ns:
                self._start_connect()
            return
        if self._connecting:
            self._finish_connect()
            return
        if self._alive():
            self._account_acks()
            self._flush_pending()
            self.pump()

    def _start_connect(self) -> None:
        now = self._clock()
        self._next_attempt_ns = now + self._backoff_ns
        try:
            family, address = self._resolve()
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            self._connect_failed(exc)
            return
        sock.setblocking(False)
        try:
            if self.sndbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf)
            if self.source:
                sock.bind(self.source)
            err = sock.connect_ex(address)
        except OSError as exc:
            sock.close()
            self._connect_failed(exc)
            return
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            self._connect_failed(OSError(err, errno.errorcode.get(err, str(err))))
            return
        self._sock, self._connecting = sock, True
        self._finish_connect()

    def _resolve(self) -> tuple[int, Any]:
        family = address_family(self.host)
        flags = socket.AI_NUMERICHOST if family else 0
        infos = socket.getaddrinfo(self.host, self.port, family or 0, socket.SOCK_STREAM, 0,
                                   flags)
        return infos[0][0], infos[0][4]

    def _finish_connect(self) -> None:
        sock = self._sock
        assert sock is not None
        _, writable, _ = select.select([], [sock], [], 0)
        if not writable:
            return  # still in progress
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._drop_socket()
            self._connect_failed(OSError(err, errno.errorcode.get(err, str(err))))
            return
        self._connecting = False
        self._on_connected()

    def _connect_failed(self, exc: OSError) -> None:
        self.stats.connect_failures += 1
        self._next_attempt_ns = self._clock() + self._backoff_ns
        self.log.warning("%s: connect failed (%s); next attempt in %.1f s", self.endpoint, exc,
                         self._backoff_ns / 1e9)
        self._backoff_ns = min(self._backoff_ns * 2, self.reconnect_max_ns)

    def _on_connected(self) -> None:
        self.stats.connects += 1
        self._backoff_ns = self.reconnect_min_ns
        self.session = Session(self.odid)
        self._pending.clear()
        self._queued = self._written = 0
        self._in_flight.clear()
        self.log.info("%s: connected (session %d, %d records spooled)", self.endpoint,
                      self.stats.connects, len(self.spool))
        first = self._connect_records() if self._connect_records is not None else []
        self._queue_messages(first, templates=self._templates())
        self._flush_pending()
        self.pump()

    # --- sending ---------------------------------------------------------------------------

    def pump(self) -> None:
        """Move records from the spool into the connection while it takes them."""
        if not self.connected or not self.spool or not self._alive():
            return
        while self.connected and self.spool and len(self._pending) < PENDING_LIMIT:
            items = self.spool.peek(PUMP_BATCH)
            groups = self._encode(items)
            self.spool.pop(len(items))
            self._queue_messages(groups)
            if not self._flush_pending():
                break

    def _queue_messages(self, groups: list[DataGroup], templates: Sequence[Template] = ()) -> None:
        assert self.session is not None
        messages = encode_messages(self.session, groups, export_time=int(self._wall()),
                                   max_length=self.max_message, now_ns=self._clock(),
                                   templates=templates)
        for m in messages:
            self._pending += m.data
            self._queued += len(m.data)
            self._in_flight.append(_InFlight(self._queued, m.records, m.data))
            self.stats.messages += 1
            self.stats.octets += len(m.data)
            self.stats.records += m.records

    def _flush_pending(self) -> bool:
        """Write pending octets without blocking; ``False`` if the kernel is full or broken."""
        sock = self._sock
        while self._pending and sock is not None:
            try:
                n = sock.send(self._pending)
            except BlockingIOError:
                return False
            except OSError as exc:
                self._broken(exc)
                return False
            del self._pending[:n]
            self._written += n
        return sock is not None

    def _alive(self) -> bool:
        """Check for EOF/RST from the collector (which never sends data)."""
        sock = self._sock
        assert sock is not None
        try:
            data = sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except OSError as exc:
            self._broken(exc)
            return False
        if not data:
            self._broken(ConnectionResetError("collector closed the connection"))
            return False
        return True  # unexpected bytes from the collector are ignored

    def _account_acks(self) -> None:
        sock = self._sock
        if sock is None or not self._in_flight:
            return
        try:
            outq = _INT.unpack(fcntl.ioctl(sock.fileno(), SIOCOUTQ, b"\0\0\0\0"))[0]
        except OSError:
            return
        acked = self._written - outq
        while self._in_flight and self._in_flight[0].end <= acked:
            self.stats.acked_records += self._in_flight.popleft().records

    def _lose_in_flight(self) -> int:
        """Count the records of every unacknowledged message as lost; return how many."""
        lost = packets = octets = 0
        for m in self._in_flight:
            r, p, o = self._totals(m.data)
            lost, packets, octets = lost + r, packets + p, octets + o
        self.stats.lost_in_flight += lost
        self.stats.lost_packets += packets
        self.stats.lost_octets += octets
        self._in_flight.clear()
        return lost

    def _broken(self, exc: BaseException) -> None:
        self._account_acks()
        lost = self._lose_in_flight()
        self.stats.disconnects += 1
        self.log.warning("%s: connection lost (%s); %d records in flight lost, %d spooled",
                         self.endpoint, exc, lost, len(self.spool))
        self._drop_socket()
        self._next_attempt_ns = max(self._next_attempt_ns, self._clock())

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._connecting = False
        self.session = None
        self._pending.clear()
        self._in_flight.clear()

    # --- shutdown --------------------------------------------------------------------------

    def close(self, timeout_s: float, persist: bool) -> int:
        """Flush the spool (within ``timeout_s``), withdraw templates, close.

        :param timeout_s: most time spent flushing.
        :param persist: keep undelivered records in the spool file for the next start.
        :return: records left undelivered and not persisted (lost).
        """
        deadline = time.monotonic() + timeout_s
        if self._sock is not None and self._connecting:
            self._wait_writable(deadline)
            self._finish_connect()
        while self.connected and (self.spool or self._pending) and time.monotonic() < deadline:
            self.pump()
            if self._pending:
                self._wait_writable(deadline)
                self._flush_pending()
        if self.connected and not self._pending and self.session is not None:
            self._withdraw()
        if self._sock is not None:
            self._account_acks()
            while self._in_flight and time.monotonic() < deadline:  # let TCP acknowledge
                time.sleep(0.005)
                self._account_acks()
            if self._in_flight:  # never acknowledged (collector not reading): counted lost
                lost = self._lose_in_flight()
                self.log.warning("%s: closing with %d records unacknowledged (counted lost)",
                                 self.endpoint, lost)
            try:
                self._sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self._drop_socket()
        return self.spool.close(persist)

    def _withdraw(self) -> None:
        assert self.session is not None and self._sock is not None
        templates = list(self.session.announced.values())
        if not templates:
            return
        data = encode_withdrawals(self.session, templates, int(self._wall()))
        self._pending += data
        self._flush_pending()

    def _wait_writable(self, deadline: float) -> None:
        if self._sock is None:
            return
        select.select([], [self._sock], [], max(deadline - time.monotonic(), 0))

    def snapshot(self) -> dict[str, Any]:
        """Counters plus state for ``agent_collect_stats``."""
        out: dict[str, Any] = {"destination": self.endpoint, "connected": self.connected}
        out.update(asdict(self.stats))
        out.update(spooled=len(self.spool), spool_dropped=self.spool.dropped,
                   spool_spilled=self.spool.spilled, in_flight=len(self._in_flight))
        return out
