"""One non-blocking, connected UDP socket per export destination, with loss accounting.

This module owns the socket side of NetFlow v5/v9 and IPFIX-over-UDP export (RFC 7011
section 10.3: UDP export tolerates loss, so loss must be *counted*, never waited for). It
follows ipt_NETFLOW's behaviour and statistics (README "HOW TO READ STAT", ``sock:`` and
``sockX:`` lines):

* the socket is **connected** (``connect(2)`` on UDP only fixes the peer), so the kernel
  reports ICMP port-unreachable from the collector as ``ECONNREFUSED`` on a later ``send`` or
  through ``SO_ERROR``; each one is counted as ``cberr`` (ip(7), udp(7) "Error handling");
* the socket is **non-blocking**: ``EAGAIN``/``EWOULDBLOCK`` (send buffer full) and
  ``ENOBUFS`` drop that datagram, count it as ``err_sndbuf`` and its records as lost;
* a batch of datagrams (an unpaced export part, a paced burst) leaves through
  ``sendmmsg(2)`` (:func:`netflow_agent._udpsend.send_burst`, the GIL released): one syscall
  for the batch while the kernel takes every datagram. Each datagram's outcome is still
  counted on its own: one the kernel refuses is counted as a lone ``send`` would be (and
  ``ECONNREFUSED`` retried once); when the kernel stops short after taking some (sendmmsg
  drops that error), the rest of the batch goes one datagram per call, so every later error
  is seen. Only the ICMP unreachable that stopped such a call short is consumed unseen by
  the kernel (``sock_error()`` takes it, ``sendmmsg`` returns the count only: a short count
  does not say why). So after a send or :meth:`~UdpDestination.poll` met a refusal, the
  next unpaced batch goes one datagram per call from the start, and so on while each meets
  one; the first batch that meets none ends it (a collector that is back gets whole
  batches at once again): ``cberr`` misses the refusal met by the first batch of a refusal
  episode, and, paced, one per burst of the C loop that starts with
  no refusal pending (after :meth:`~UdpDestination.poll` took it: at most one a second).
  Counting every ICMP error exactly, as ipt_NETFLOW's ``sk_error_report`` does, would need
  ``IP_RECVERR``'s error queue, bounded by ``SO_RCVBUF`` (166 errors at the default
  212,992 bytes) and turning soft errors (host unreachable) into send errors: not used
  (docs/performance.md, "cberr and sendmmsg");
* where the socket takes ``UDP_SEGMENT`` (UDP GSO, Linux >= 4.18, udp(7)), runs of equal-size
  datagrams in a batch (the v9/IPFIX full packets) go as one GSO send each: the IP output
  path runs once per run and the kernel cuts the same datagrams (bytes, boundaries, order).
  Only datagrams that fit the path MTU (``IP_MTU`` at connect) go that way; a GSO send the
  socket refuses as such (``EINVAL``/``EIO``) is sent again without GSO, and GSO stays off
  for that socket (logged). A GSO send refused for any other reason refuses its first
  datagram, and the rest are tried one per call as above, so each is counted on its own;
* a destination that cannot be connected (no route, address not yet configured) is retried
  at most once per ``retry_interval_ns``; every failed attempt is counted;
* the send-queue fill is read with the ``SIOCOUTQ`` ioctl (= ``TIOCOUTQ``, 0x5411) after each
  batch to keep the ``peak`` that ipt_NETFLOW shows next to ``sndbuf``;
* a destination that was refused or unconnected and is reachable again raises a one-shot
  :meth:`UdpDestination.take_reachable_again` signal, so template-based encoders (v9, IPFIX)
  resend their templates first. While a destination is refused, :attr:`needs_templates`
  stays true, so the very first datagram a restarting collector receives carries templates;
* with ``rate_limit`` (datagrams per second), datagrams go through a
  :class:`~agent.transport.pacing.PacedSender`: a bounded backlog and a thread that sends
  at that rate, so a burst of expiring flows does not overrun a collector that keeps up
  with the average. The thread hands the backlog chunk by chunk to
  :func:`netflow_agent._udpsend.send_paced` (the token bucket's waits and the bursts in C,
  the GIL released); a burst the kernel stops short comes back here and each of its
  datagrams is counted as above. Backlog overflow, and what is still queued when the
  destination closes after ``flush_timeout_s``, count as lost records.

Nothing here blocks: connect on UDP does not wait, sends are non-blocking, and the only name
resolution is done at connect time for non-numeric hosts. With pacing, the counters and
reconnects are serialised by a lock (the pacing thread sends, the caller's thread polls); the
C loop sends on the socket without it while it sleeps between bursts (nothing closes or
replaces a connected socket while the pacing thread runs: :meth:`UdpDestination.close` stops
it first), and its results are counted under it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import struct
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from netflow_agent._udpsend import (
    PACE_BURSTS,
    PACE_DONE,
    PACE_FILLED,
    PACE_PEAK,
    send_burst,
    send_paced,
)
from netflow_agent.transport.pacing import (
    DEFAULT_BACKLOG,
    DEFAULT_FLUSH_S,
    MAX_CLOSE_S,
    PacedSender,
)

#: ``SIOCOUTQ`` (linux/sockios.h, = TIOCOUTQ): bytes not yet sent from the socket's queue.
SIOCOUTQ = 0x5411
_INT = struct.Struct("i")
_DROP_ERRNOS = frozenset({errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS})
#: How long a destination counts as "refused" after its last ICMP port-unreachable.
REFUSED_HOLD_NS = 3_000_000_000
#: udp(7) ``UDP_SEGMENT`` (linux/udp.h) and the path-MTU options ip(7) ``IP_MTU``, ipv6(7)
#: ``IPV6_MTU``, by number: Python's socket module does not name all of them
SOL_UDP, UDP_SEGMENT = 17, 103
IP_MTU, IPV6_MTU = 14, 24
#: IP + UDP header bytes in front of each GSO segment's payload, per address family
_GSO_HEADERS = {socket.AF_INET: (socket.IPPROTO_IP, IP_MTU, 28),
                socket.AF_INET6: (socket.IPPROTO_IPV6, IPV6_MTU, 48)}


def _bytes_like(obj: object) -> bool:
    """Whether ``send_burst``/``send_paced`` can take ``obj``: a C-contiguous buffer (a
    memoryview with a stride is a buffer, but not one a ``sendmmsg`` iovec can point at)."""
    try:
        with memoryview(obj) as view:  # type: ignore[arg-type]
            return view.c_contiguous
    except (TypeError, BufferError):
        return False


class EndpointError(ValueError):
    """A ``host:port`` string that cannot be parsed."""


def parse_endpoint(text: str, default_port: int | None = None) -> tuple[str, int]:
    """Split ``"10.0.0.1:2055"``, ``"[::1]:2055"`` or ``"collector.example:2055"``.

    :param text: the endpoint as written in the config.
    :param default_port: used when ``text`` has no port; ``None`` makes the port required.
    :return: ``(host, port)`` with IPv6 brackets removed.
    :raises EndpointError: empty host, bad or missing port, unbalanced brackets.
    """
    text = text.strip()
    host, port_text = _split_host_port(text)
    if not host:
        raise EndpointError(f"{text!r}: empty host")
    if port_text is None:
        if default_port is None:
            raise EndpointError(f"{text!r}: missing port (write host:port, [v6addr]:port)")
        return host, default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise EndpointError(f"{text!r}: port must be a number 0-65535")
    return host, int(port_text)


def normal_endpoint(text: str, default_port: int | None = None) -> str:
    """``text`` (:func:`parse_endpoint`'s forms) as ``host:port`` / ``[v6]:port``: how
    exporters name a destination in what they report and hand over across a reload."""
    host, port = parse_endpoint(text, default_port)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split_host_port(text: str) -> tuple[str, str | None]:
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise EndpointError(f"{text!r}: missing ']' after IPv6 address")
        rest = text[end + 1 :]
        if rest and not rest.startswith(":"):
            raise EndpointError(f"{text!r}: expected ':port' after ']'")
        return text[1:end], (rest[1:] if rest else None)
    if text.count(":") > 1:  # bare IPv6 address without a port
        return text, None
    host, sep, port = text.partition(":")
    return host, (port if sep else None)


def address_family(host: str) -> int | None:
    """``AF_INET``/``AF_INET6`` for a numeric address, ``None`` for a host name."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return family
        except OSError:
            continue
    return None


@dataclass(slots=True)
class DestinationStats:
    """Counters of one destination (ipt_NETFLOW ``sock:`` and ``sockX:`` lines)."""

    packets_ok: int = 0  # datagrams handed to the kernel ("sock: ok")
    bytes_ok: int = 0  # their bytes ("sock: ... bytes")
    fail: int = 0  # datagrams not sent, any reason ("sock: fail")
    cberr: int = 0  # ICMP port/host unreachable reported by the kernel ("cberr")
    err_sndbuf: int = 0  # dropped because the send buffer was full ("sndbuf reached")
    err_connect: int = 0  # failed connect attempts ("connect")
    err_other: int = 0  # other send errors ("other")
    connect_attempts: int = 0  # all connect attempts, successful or not
    lost_records: int = 0  # flow/event records in datagrams not sent, or never encoded
    sndbuf: int = 0  # socket send buffer size in bytes (SO_SNDBUF as the kernel reports it)
    filled: int = 0  # bytes in the send queue at the last sample (SIOCOUTQ)
    peak: int = 0  # largest ``filled`` seen


class UdpDestination:
    """A connected, non-blocking UDP socket to one collector, with its counters.

    :param endpoint: ``"host:port"`` or ``"[v6]:port"``.
    :param source: local address to bind, ``"addr"`` or ``"addr:port"``; ``""`` = any.
    :param sndbuf: ``SO_SNDBUF`` in bytes; 0 keeps the system default.
    :param retry_interval_ns: smallest gap between two connect attempts.
    :param rate_limit: most datagrams per second (0 = send at once, unpaced).
    :param backlog: most datagrams waiting for their turn when paced.
    :param flush_timeout_s: at :meth:`close`, how long the backlog may still be sent.
    :param on_late_loss: ``f(datagram, records)``, called on the pacing thread for a datagram
        lost after :meth:`send`/:meth:`send_batch` had accepted (queued) it; for callers that
        count lost packets and octets inside the datagrams.
    :param on_loss: ``f(datagram, records)``, called for *every* datagram lost, on whichever
        thread lost it (a send error, a full backlog, the backlog left at close; often under
        the socket lock: keep it short and thread-safe, e.g. a deque append); for callers
        that count the packets and octets of every lost record.
    :param clock: monotonic ns clock (injectable for tests).
    :param log: logger; defaults to ``agent.transport.udp``.
    """

    #: send runs of equal-size datagrams with UDP GSO where the socket takes it (False: never;
    #: for A/B benches, bench/export/final_export.py --no-gso)
    use_gso = True

    def __init__(
        self,
        endpoint: str,
        *,
        source: str = "",
        sndbuf: int = 0,
        retry_interval_ns: int = 1_000_000_000,
        rate_limit: int = 0,
        backlog: int = DEFAULT_BACKLOG,
        flush_timeout_s: float = DEFAULT_FLUSH_S,
        on_late_loss: Callable[[bytes, int], None] | None = None,
        on_loss: Callable[[bytes, int], None] | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        log: logging.Logger | None = None,
    ):
        self.endpoint = endpoint
        self.host, self.port = parse_endpoint(endpoint)
        self.source = parse_endpoint(source, 0) if source else None
        self.sndbuf_request = sndbuf
        self.retry_interval_ns = retry_interval_ns
        self.stats = DestinationStats()
        self._clock = clock
        self._log = log or logging.getLogger("netflow_agent.transport.udp")
        self._sock: socket.socket | None = None
        #: largest datagram a GSO send may carry per segment on this socket (0: GSO off)
        self.gso_max = 0
        self._last_attempt_ns: int | None = None
        self._last_cberr_ns: int | None = None
        #: a send or :meth:`poll` met ``ECONNREFUSED`` since the last unpaced batch began:
        #: the next one goes one datagram per call (see the module docstring)
        self._met_refusal = False
        self._was_down = False
        self._reachable_again = False
        self._lock = threading.Lock()
        self.flush_timeout_s = flush_timeout_s
        #: records lost after send()/send_batch() had queued them (paced only): the caller saw
        #: them accepted, so it counts these separately
        self.late_lost_records = 0
        self._on_late_loss = on_late_loss
        self._on_loss = on_loss
        #: the paced chunk the pacing thread counts now, and how many of it are counted
        self._chunk: list[bytes] = []
        self._chunk_counted = 0
        self._pacer = PacedSender(None, self._paced_lost, rate=rate_limit, limit=backlog,
                                  name=f"pace {endpoint}",
                                  send_paced=self._paced_send_chunk) if rate_limit else None

    # --- connection ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the socket is connected (sends are attempted)."""
        return self._sock is not None

    def connect(self) -> bool:
        """Open and connect the socket now; count the attempt.

        :return: ``True`` when connected; on failure the error is counted and logged.
        """
        self._last_attempt_ns = self._clock()
        self.stats.connect_attempts += 1
        try:
            self._sock = self._open()
        except OSError as exc:
            self.stats.err_connect += 1
            self._was_down = True
            self._log.warning("%s: cannot connect (attempt %d): %s",
                              self.endpoint, self.stats.connect_attempts, exc)
            return False
        self.stats.sndbuf = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        self.gso_max = self._gso_limit(self._sock) if self.use_gso else 0
        if self._was_down:
            self._mark_reachable()
        self._log.info("%s: connected (sndbuf %d)", self.endpoint, self.stats.sndbuf)
        return True

    def _open(self) -> socket.socket:
        family, address = self._resolve()
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if self.sndbuf_request:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sndbuf_request)
            if self.source:
                if self.source[1]:  # mirrored destinations may share one fixed source port
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(self.source)
            sock.connect(address)
        except OSError:
            sock.close()
            raise
        return sock

    @staticmethod
    def _gso_limit(sock: socket.socket) -> int:
        """The largest payload per GSO segment on the connected ``sock``: its path MTU less
        the IP and UDP headers; 0 when the socket does not take ``UDP_SEGMENT``."""
        level, option, headers = _GSO_HEADERS.get(sock.family, (0, 0, 0))
        try:
            sock.setsockopt(SOL_UDP, UDP_SEGMENT, 0)  # probe; 0 leaves plain sends as they are
            mtu = sock.getsockopt(level, option) if option else 0
        except OSError:
            return 0
        return max(mtu - headers, 0)

    def _gso_refused(self, err: int) -> None:
        """The socket refused a GSO send as such (the rest went without): GSO off for it."""
        self._log.warning("%s: UDP GSO refused (%s): sending without it on this socket",
                          self.endpoint, os.strerror(err))
        self.gso_max = 0

    def _resolve(self) -> tuple[int, tuple]:
        family = address_family(self.host)
        flags = socket.AI_NUMERICHOST if family else 0
        # an address goes as ASCII bytes: a str is IDNA-encoded first, which imports
        # encodings.idna and unicodedata (~0.3 MB) for nothing; a name still goes as str
        host: str | bytes = self.host.encode("ascii") if family else self.host
        infos = socket.getaddrinfo(host, self.port, family or 0, socket.SOCK_DGRAM, 0, flags)
        family, _, _, _, address = infos[0]
        return family, address

    def maybe_reconnect(self) -> bool:
        """Retry connecting when unconnected and the retry interval has passed.

        :return: whether the socket is connected afterwards.
        """
        if self._sock is not None:
            return True
        last = self._last_attempt_ns
        if last is not None and self._clock() - last < self.retry_interval_ns:
            return False
        return self.connect()

    def close(self) -> None:
        """Send the backlog (paced, for ``flush_timeout_s`` or as long as the backlog takes at
        the paced rate, at most :data:`~agent.transport.pacing.MAX_CLOSE_S`), close the
        socket; counters stay. What the backlog still holds then is counted as lost."""
        if self._pacer is not None:
            needed = self._pacer.drain_seconds() + 1.0
            self._pacer.close(max(self.flush_timeout_s, min(needed, MAX_CLOSE_S)))
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    # --- sending -------------------------------------------------------------------------

    def send(self, datagram: bytes, records: int = 0, wait_s: float = 0.0) -> bool:
        """Send one datagram without blocking; count the outcome.

        :param datagram: the encoded export packet.
        :param records: how many flow/event records it carries (counted as lost on failure).
        :param wait_s: paced: how long to wait for room in a full backlog (see
            :meth:`send_batch`).
        :return: ``True`` if the kernel accepted it (paced: if it was queued).
        """
        if self._pacer is not None:
            return self.send_batch([datagram], [records], wait_s) == 1
        ok = self._send_one(datagram, records)
        self._sample_fill()
        return ok

    def send_batch(self, datagrams: Sequence[bytes], records: Sequence[int],
                   wait_s: float = 0.0) -> int:
        """Send several datagrams; the queue fill is sampled once at the end.

        :param datagrams: encoded export packets, in order.
        :param records: record count per datagram (same length as ``datagrams``).
        :param wait_s: paced: how long to wait for room in a full backlog before counting the
            rest as lost; for the final export at shutdown (``RunContext.stopping``), when
            waiting blocks nothing else. Unpaced: ignored.
        :return: the number of datagrams the kernel accepted (paced: that were queued).
        """
        if self._pacer is not None:
            if wait_s > 0:  # shutdown: as long as this batch needs at the paced rate
                needed = self._pacer.drain_seconds(len(datagrams)) + 1.0
                wait_s = max(wait_s, min(needed, MAX_CLOSE_S))
            queued = self._pacer.put(datagrams, records, wait_s)
            with self._lock:  # no room in the backlog: lost, like a full send buffer
                for datagram, count in zip(datagrams[queued:], records[queued:], strict=True):
                    self._lost(count, datagram)
            return queued
        if len(datagrams) != len(records):
            raise ValueError("datagrams and records differ in length")
        if not datagrams:  # nothing sent: no news of the collector (keeps _met_refusal)
            return 0
        # the collector refused the last batch (or poll saw it): one per call, so no
        # sendmmsg cut short by an ICMP error swallows it; a batch that meets no refusal
        # ends that, so a collector that is back gets whole batches again (not only after
        # REFUSED_HOLD_NS)
        single, self._met_refusal = self._met_refusal, False
        lost = self._send_many(datagrams, records, single=single)
        self._sample_fill()
        return len(datagrams) - len(lost)

    def _send_one(self, datagram: bytes, records: int) -> bool:
        sock = self._sock
        if sock is None and not self.maybe_reconnect():
            return self._lost(records, datagram)
        assert self._sock is not None
        for _ in range(2):  # a pending ECONNREFUSED belongs to an earlier datagram: retry once
            try:
                self._sock.send(datagram)
            except ConnectionRefusedError:
                self._count_cberr()
                continue
            except OSError as exc:
                return self._send_error(exc.errno or 0, records, datagram)
            stats = self.stats
            stats.packets_ok += 1
            stats.bytes_ok += len(datagram)
            return True
        return self._lost(records, datagram)

    def _send_many(self, datagrams: Sequence[bytes], records: Sequence[int], pos: int = 0,
                   end: int | None = None,
                   result: tuple[int, int, int] | None = None, single: bool = False) -> list[int]:
        """Send ``datagrams[pos:end]`` in order with as few ``sendmmsg`` calls as the kernel
        allows; count every datagram's outcome as :meth:`_send_one` does (the caller holds
        the lock when paced). ``result``: what a call already made for them returned
        (``(0, errno, gso_errno)``: the paced loop's burst that stopped short at ``pos``).
        ``single``: one datagram per call from the start (else from where the kernel stops
        short or refuses one).
        :return: the indexes of the datagrams lost, in order."""
        lost: list[int] = []
        stats = self.stats
        end = len(datagrams) if end is None else end
        refused = 0  # ECONNREFUSED answers for datagrams[pos] (a pending one is retried once)
        while pos < end:
            count = 1 if single else end - pos
            if result is not None:
                (sent, err, gso_err), result = result, None
            else:
                sock = self._sock
                if sock is None and not self.maybe_reconnect():
                    self._lost(records[pos], datagrams[pos])
                    lost.append(pos)
                    pos += 1
                    continue
                assert self._sock is not None
                try:
                    sent, err, gso_err = send_burst(self._sock.fileno(), datagrams, pos, count,
                                                    self.gso_max)
                except TypeError:  # not bytes-like: find which one per call, lose only that
                    if not single:
                        single = True
                        continue
                    self._lose_not_bytes(datagrams, records, pos)
                    lost.append(pos)
                    pos += 1
                    continue
            if gso_err:
                self._gso_refused(gso_err)
            if sent:
                stats.packets_ok += sent
                stats.bytes_ok += sum(map(len, datagrams[pos:pos + sent]))
                pos += sent
                refused = 0
            single = single or bool(err)  # the next ones would likely fail at once too
            if err == errno.ECONNREFUSED:
                self._count_cberr()
                refused += 1
                if refused < 2:
                    continue
                self._lost(records[pos], datagrams[pos])
            elif err:
                self._send_error(err, records[pos], datagrams[pos])
            else:
                single = single or sent < count
                continue
            lost.append(pos)
            pos += 1
            refused = 0
        return lost

    def _lose_not_bytes(self, datagrams: Sequence[bytes], records: Sequence[int],
                        pos: int) -> None:
        self._log.error("%s: datagram of type %s is not bytes-like: counted lost",
                        self.endpoint, type(datagrams[pos]).__name__)
        self._lost(records[pos], datagrams[pos])

    def _paced_send_chunk(self, datagrams: list[bytes], records: list[int],
                          state: array) -> int:
        """The pacing thread's send of a chunk of the backlog: ``send_paced`` sleeps and
        sends burst by burst in C with the GIL released; here, per call, the datagrams it
        sent are counted, and a burst that stopped short goes through :meth:`_send_many`
        (every datagram's outcome counted, ECONNREFUSED retried once). Without a socket each
        burst's datagrams are tried here (a reconnect, or counted lost), still paced. A
        datagram the C loop cannot take (not a contiguous buffer) is lost alone.
        :return: datagrams handled, sent or counted lost (fewer than all only when the
        closing deadline passed). ``state[PACE_DONE]`` is the chunk's progress throughout,
        also when this raises (a loss callback): what is past it was not counted."""
        with self._lock:
            self._chunk, self._chunk_counted = datagrams, 0
        pos = 0
        end = bad = len(datagrams)  # bad: the next datagram the C loop refused, if any
        while pos < end:
            if pos == bad:
                self._lose_paced_not_bytes(datagrams, records, pos, state)
                pos, bad = pos + 1, end
                continue
            sock = self._sock
            fd = sock.fileno() if sock is not None else -1
            try:
                done, err, gso_err, paid = send_paced(fd, datagrams, pos, bad - pos,
                                                      self.gso_max, state)
            except TypeError:  # a datagram not bytes-like: pace up to it, lose it alone
                bad = next((i for i in range(pos, end) if not _bytes_like(datagrams[i])), -1)
                if bad < 0:  # none found: each datagram's own send finds it
                    self._log.warning("%s: the paced send refused %d datagrams, none of them "
                                      "found bad: sending them one by one", self.endpoint,
                                      end - pos)
                    with self._lock:
                        failed = self._send_many_paced(datagrams, records, pos, end, state)
                    self._late_losses(datagrams, records, failed)
                    return end
                continue
            with self._lock:
                stats = self.stats
                if done:
                    stats.packets_ok += done
                    stats.bytes_ok += sum(map(len, datagrams[pos:pos + done]))
                    self._chunk_counted += done
                    pos += done
                self._fill_from(state)
                failed = []
                if paid:  # a burst stopped short: count each of its datagrams
                    failed = self._send_many_paced(datagrams, records, pos, pos + paid, state,
                                                   (0, err, gso_err))
                    pos += paid
                elif gso_err:
                    self._gso_refused(gso_err)
            self._late_losses(datagrams, records, failed)
            if not paid and pos < bad:  # the closing deadline passed
                break
        return pos

    def _send_many_paced(self, datagrams: list[bytes], records: list[int], pos: int, end: int,
                         state: array, result: tuple[int, int, int] | None = None) -> list[int]:
        """:meth:`_send_many` for datagrams of a paced chunk (the lock held): the chunk's
        progress (``PACE_DONE``, the counted part) advances by each datagram it counted, also
        when it raises partway (a loss callback), so none is counted twice."""
        stats = self.stats
        before = stats.packets_ok + stats.fail
        try:
            return self._send_many(datagrams, records, pos, end, result)
        finally:  # each datagram is counted once, in packets_ok or fail
            counted = stats.packets_ok + stats.fail - before
            state[PACE_DONE] += counted
            self._chunk_counted += counted

    def _lose_paced_not_bytes(self, datagrams: list[bytes], records: list[int], pos: int,
                              state: array) -> None:
        with self._lock:
            state[PACE_DONE] += 1  # counted below: never again, even if a callback raises
            self._chunk_counted += 1
            self._lose_not_bytes(datagrams, records, pos)
        self._late_loss(datagrams[pos], records[pos])

    def _late_losses(self, datagrams: list[bytes], records: list[int],
                     lost: list[int]) -> None:
        for i in lost:
            self._late_loss(datagrams[i], records[i])

    def count_unencoded(self, records: int) -> None:
        """Count ``records`` this destination should have carried but that never became a
        datagram (the exporter's encoder refused them) in ``lost_records``, as a lost
        datagram's are; no datagram, so neither ``fail`` nor ``on_loss``."""
        with self._lock:
            self.stats.lost_records += records

    def _paced_lost(self, datagram: bytes, records: int) -> None:
        """A datagram still in the backlog when the flush time ran out at close."""
        with self._lock:
            self._lost(records, datagram)
        self._late_loss(datagram, records)

    def _late_loss(self, datagram: bytes, records: int) -> None:
        self.late_lost_records += records
        if self._on_late_loss is not None:
            self._on_late_loss(datagram, records)

    def _send_error(self, err: int, records: int, datagram: bytes) -> bool:
        if err in _DROP_ERRNOS:
            self.stats.err_sndbuf += 1
        else:
            self.stats.err_other += 1
            self._log.debug("%s: send failed: %s", self.endpoint, os.strerror(err))
        return self._lost(records, datagram)

    def _lost(self, records: int, datagram: bytes) -> bool:
        self.stats.fail += 1
        self.stats.lost_records += records
        if self._on_loss is not None:
            self._on_loss(datagram, records)
        return False

    def _count_cberr(self) -> None:
        self.stats.cberr += 1
        self._last_cberr_ns = self._clock()
        self._met_refusal = True
        self._was_down = True

    def _fill_from(self, state: array) -> None:
        """The send-queue fill ``send_paced`` sampled after its bursts."""
        if state[PACE_BURSTS]:
            self.stats.filled = int(state[PACE_FILLED])
            self.stats.peak = max(self.stats.peak, int(state[PACE_PEAK]))

    def _sample_fill(self) -> None:
        if self._sock is None:
            return
        try:
            raw = fcntl.ioctl(self._sock.fileno(), SIOCOUTQ, b"\0\0\0\0")
        except OSError:
            return
        filled = _INT.unpack(raw)[0]
        self.stats.filled = filled
        if filled > self.stats.peak:
            self.stats.peak = filled

    # --- periodic work and signals -------------------------------------------------------

    def poll(self) -> None:
        """Timer work: retry connecting, collect pending socket errors, update reachability.

        Call about once a second. A pending ``ECONNREFUSED`` (ICMP port unreachable that no
        send has picked up yet) is read through ``SO_ERROR`` and counted as ``cberr``.
        """
        with self._lock:
            self._poll()

    def _poll(self) -> None:
        if not self.maybe_reconnect():
            return
        assert self._sock is not None
        err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err == errno.ECONNREFUSED:
            self._count_cberr()
        elif err:
            self.stats.err_other += 1
        self._sample_fill()
        if self._was_down and not self.refused:
            self._mark_reachable()

    @property
    def refused(self) -> bool:
        """Unconnected, or an ICMP unreachable was seen within :data:`REFUSED_HOLD_NS`."""
        if self._sock is None:
            return True
        last = self._last_cberr_ns
        return last is not None and self._clock() - last < REFUSED_HOLD_NS

    @property
    def needs_templates(self) -> bool:
        """Whether template-based encoders should put templates in the next datagram.

        True while the collector is refused or unconnected (so the first datagram a restarted
        collector sees carries templates) and once after it became reachable again.
        """
        return self.refused or self.take_reachable_again()

    def _mark_reachable(self) -> None:
        self._was_down = False
        self._reachable_again = True
        self._log.info("%s: reachable again", self.endpoint)

    def take_reachable_again(self) -> bool:
        """One-shot: ``True`` once after the destination came back (connect or no cberr)."""
        value, self._reachable_again = self._reachable_again, False
        return value

    def snapshot(self) -> dict[str, int | str | bool]:
        """The counters plus endpoint and state, for ``agent_collect_stats``."""
        out: dict[str, int | str | bool] = {"destination": self.endpoint}
        with self._lock:  # no count changes while the backlog and progress are read
            out.update(asdict(self.stats))
            if self._pacer is not None:
                pacing, chunk, done = self._pacer.current_stats()
                out.update(asdict(pacing))
                self._add_sent_uncounted(out, chunk, done)
        out["connected"] = self.connected
        return out

    def _add_sent_uncounted(self, out: dict[str, int | str | bool], chunk: list[bytes],
                            done: int) -> None:
        """Add to ``out`` the datagrams of the running paced ``chunk`` the C loop has sent
        (``done`` handled, read with the backlog) that are not counted yet (that happens when
        its call returns): ``packets_ok + fail + backlog`` then adds up at any moment."""
        counted = self._chunk_counted if chunk is self._chunk else 0
        if done > counted:
            out["packets_ok"] = int(out["packets_ok"]) + done - counted
            out["bytes_ok"] = int(out["bytes_ok"]) + sum(map(len, chunk[counted:done]))

    @property
    def backlog_room(self) -> int | None:
        """Datagrams the paced backlog can still take now; ``None`` when unpaced."""
        return self._pacer.room if self._pacer is not None else None

    @property
    def backlog(self) -> int:
        """Datagrams waiting for their turn (0 when unpaced)."""
        return self._pacer.pending if self._pacer is not None else 0
