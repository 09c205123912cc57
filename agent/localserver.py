"""Bounded servers for the agent's local interfaces (control socket, metrics endpoint).

What it owns: accepting connections on a listening socket that the caller bound (as root,
before the privilege drop), reading each request under a **whole-request deadline** and a
**size limit**, and answering it on a **fixed pool of worker threads**.

::

    listening socket ─▶ io thread (selector) ─ complete request ─▶ bounded queue ─▶ workers
                        reads without blocking,      (full: "busy" reply,   compute the reply,
                        closes at the deadline or     close)                send it before a
                        beyond the size limit                               deadline

A slow or idle client therefore holds one selector slot and its few buffered bytes, never a
thread: one client sending a byte every few seconds, or many idle connections, cannot delay
anybody else. At most ``max_connections`` connections are read at once; a new one beyond that
pushes out the oldest, which gets ``busy_reply`` (not started: asking again is safe). A
queued request whose client hung up before a worker took it is not started (nobody waits
for its answer); ``handle`` gets the request and its accept time, so that a reply bounded in
time (a reload) counts the time spent queued. The protocol (length-prefixed msgpack, HTTP)
is the caller's: a ``parse`` function that says "incomplete", returns a request, or raises
:class:`Rejected` with the reply to send, and a ``handle`` function that turns a request
(and the monotonic time its connection was accepted) into reply bytes. ``busy_reply`` and
``stopping_reply`` are bytes, or functions that build them per reply (an HTTP ``Date``
header).

Stopping (:meth:`LocalServer.close`, :func:`refuse_pending`) leaves no client with a
reset: Linux resets a Unix stream peer whose connection is closed before it was accepted,
or with bytes it sent still unread (``ECONNRESET``, "Connection reset by peer"). A Unix
listener is therefore shut down for reading first (``connect(2)`` is then refused at once,
``ECONNREFUSED``), every connection still in its backlog is accepted, and every connection
not answered yet (backlog, being read, queued for a worker) gets ``stopping_reply``; what
the client sent is read and discarded before the close (:func:`finish`). A TCP listener
cannot be shut down that way (it would reset its backlog): at most ``pending_limit`` of its
waiting connections are answered, so that a client that keeps connecting cannot hold the
stop up.

Threads start in :meth:`LocalServer.serve`, which the agent calls after it dropped root, so
they are born with the reduced capability set; they also call :func:`agent.privileges.follow`
first (a no-op then), as every thread that handles input does.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from netflow_agent import privileges

log = logging.getLogger("agent.localserver")

#: a request is complete within this many seconds of the connection, or it is closed
REQUEST_DEADLINE_S = 5.0
#: a reply must be written within this many seconds of being ready
REPLY_DEADLINE_S = 10.0
#: a fixed reply, or a function that builds it each time it is sent
Reply = bytes | Callable[[], bytes]


def reply_bytes(reply: Reply) -> bytes:
    """The bytes of ``reply`` (built now when it is a function)."""
    return reply() if callable(reply) else reply


class Rejected(Exception):
    """A request that will not be served; ``reply`` (may be empty) is sent before closing.

    :param reply: bytes to send (an error in the protocol's framing); never echoes input.
    :param reason: for the log and counters.
    """

    def __init__(self, reply: bytes, reason: str):
        super().__init__(reason)
        self.reply = reply
        self.reason = reason


@dataclass
class ServerCounters:
    """What the server refused or cut short (logged at close, readable by tests)."""

    accepted: int = 0
    served: int = 0
    timed_out: int = 0  # closed at the request deadline
    rejected: int = 0  # too large or malformed
    evicted: int = 0  # closed to admit a newer connection
    busy: int = 0  # every worker busy and the queue full
    reply_failed: int = 0  # the client did not take its reply in time
    stopping: int = 0  # answered with the stopping reply: the server closed before serving
    abandoned: int = 0  # the client hung up while its request was queued: not started


@dataclass
class _Conn:
    sock: socket.socket
    deadline: float
    accepted: float = 0.0
    buf: bytearray = field(default_factory=bytearray)


def send_with_deadline(sock: socket.socket, data: bytes, deadline: float) -> None:
    """``sendall`` that gives up at ``deadline`` (monotonic), not per ``send`` call.

    :raises TimeoutError: the peer did not take the data in time.
    """
    view = memoryview(data)
    while view:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("reply not taken before the deadline")
        sock.settimeout(left)
        sent = sock.send(view)
        view = view[sent:]


class LocalServer:
    """Serve one listening socket with a selector thread and ``workers`` worker threads.

    :param sock: a bound, listening socket.
    :param name: thread name prefix (``control``, ``metrics``).
    :param parse: ``bytes -> request | None`` (``None``: incomplete); raises :class:`Rejected`.
    :param handle: ``(request, accepted) -> reply bytes`` (``accepted``: monotonic time of
        the connection's accept); runs on a worker; must not raise.
    :param busy_reply: what to send when every worker is busy, or to a connection pushed out
        by a newer one (protocol framing).
    :param stopping_reply: what to send to every connection not served when the server
        closes (see the module docstring).
    :param pending_limit: at most this many connections waiting in a TCP listener's backlog
        get ``stopping_reply`` at the close (the listen backlog is a sensible value).
    """

    def __init__(self, sock: socket.socket, name: str, parse: Callable[[bytes], Any],
                 handle: Callable[[Any, float], bytes], busy_reply: Reply = b"", *,
                 stopping_reply: Reply = b"", workers: int = 4, max_connections: int = 64,
                 request_deadline_s: float = REQUEST_DEADLINE_S,
                 reply_deadline_s: float = REPLY_DEADLINE_S, pending_limit: int = 64):
        self.sock = sock
        self.name = name
        self.parse = parse
        self.handle = handle
        self.busy_reply = busy_reply
        self.stopping_reply = stopping_reply
        self.workers = workers
        self.max_connections = max_connections
        self.request_deadline_s = request_deadline_s
        self.reply_deadline_s = reply_deadline_s
        self.pending_limit = pending_limit
        self.counters = ServerCounters()
        self.stop = threading.Event()
        #: (connection, request, its accept time)
        self._queue: queue.Queue[tuple[socket.socket, Any, float]] = queue.Queue(maxsize=workers)
        self._conns: dict[int, _Conn] = {}  # by fd, in accept order (oldest first)
        self._threads: list[threading.Thread] = []

    # --- threads ---------------------------------------------------------------------------

    def serve(self) -> None:
        """Start the io thread and the workers (call after the privilege drop)."""
        self.sock.setblocking(False)
        threads = [threading.Thread(target=self._io_loop, name=f"{self.name}-io", daemon=True)]
        threads += [threading.Thread(target=self._worker, name=f"{self.name}-{n}", daemon=True)
                    for n in range(self.workers)]
        self._threads = threads
        for t in threads:
            t.start()

    def close(self) -> None:
        """Stop every thread, answer every connection not served yet with ``stopping_reply``
        (the backlog's included), and close them and the listening socket."""
        self.stop.set()
        _stop_connecting(self.sock)  # the io thread sees it and leaves its loop
        for t in self._threads:
            t.join(timeout=5)
        unserved = [conn.sock for conn in self._conns.values()]
        self._conns.clear()
        while True:  # complete requests no worker took before it stopped
            try:
                unserved.append(self._queue.get_nowait()[0])
            except queue.Empty:
                break
        for sock in unserved:
            finish(sock, reply_bytes(self.stopping_reply))
        self.counters.stopping += len(unserved) + refuse_pending(
            self.sock, self.stopping_reply, self.pending_limit)
        self.sock.close()
        c = self.counters
        if (c.timed_out or c.rejected or c.evicted or c.busy or c.reply_failed or c.stopping
                or c.abandoned):
            log.info("%s: %s", self.name, c)

    # --- io thread -------------------------------------------------------------------------

    def _io_loop(self) -> None:
        privileges.follow()
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, selectors.EVENT_READ, None)
            while not self.stop.is_set():
                for key, _ in sel.select(self._select_timeout()):
                    if key.data is None:
                        self._accept(sel)
                    else:
                        self._read(sel, key.data)
                self._expire(sel)

    def _select_timeout(self) -> float:
        if not self._conns:
            return 0.5
        first = min(c.deadline for c in self._conns.values())
        return max(0.0, min(0.5, first - time.monotonic()))

    def _accept(self, sel: selectors.BaseSelector) -> None:
        try:
            sock, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.warning("%s: accept failed: %s", self.name, exc)
            return
        self.counters.accepted += 1
        if len(self._conns) >= self.max_connections:
            oldest = next(iter(self._conns.values()))
            self._drop(sel, oldest, reply_bytes(self.busy_reply))  # not started: may retry
            self.counters.evicted += 1
            log.warning("%s: %d connections open: the oldest was answered busy (not started; "
                        "asking again is safe)", self.name, self.max_connections)
        sock.setblocking(False)
        now = time.monotonic()
        conn = _Conn(sock, now + self.request_deadline_s, accepted=now)
        self._conns[sock.fileno()] = conn
        sel.register(sock, selectors.EVENT_READ, conn)

    def _read(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sel, conn)
            return
        conn.buf += data
        try:
            request = self.parse(bytes(conn.buf))
        except Rejected as exc:
            self.counters.rejected += 1
            log.info("%s: request rejected: %s", self.name, exc.reason)
            self._drop(sel, conn, exc.reply)
            return
        if request is not None:
            self._dispatch(sel, conn, request)

    def _dispatch(self, sel: selectors.BaseSelector, conn: _Conn, request: Any) -> None:
        sel.unregister(conn.sock)
        del self._conns[conn.sock.fileno()]
        try:
            self._queue.put_nowait((conn.sock, request, conn.accepted))
        except queue.Full:
            self.counters.busy += 1
            finish(conn.sock, reply_bytes(self.busy_reply))
            log.warning("%s: every worker busy and the queue full: a request was answered "
                        "busy (not started; asking again is safe)", self.name)

    def _expire(self, sel: selectors.BaseSelector) -> None:
        now = time.monotonic()
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            self.counters.timed_out += 1
            self._drop(sel, conn)

    def _drop(self, sel: selectors.BaseSelector, conn: _Conn, reply: bytes = b"") -> None:
        self._conns.pop(conn.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(conn.sock)
        finish(conn.sock, reply)

    # --- workers ---------------------------------------------------------------------------

    def _worker(self) -> None:
        privileges.follow()
        while not self.stop.is_set():
            try:
                sock, request, accepted = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            if self.stop.is_set():  # taken as the server closes: not started, say so
                self.counters.stopping += 1
                finish(sock, reply_bytes(self.stopping_reply))
                continue
            if peer_gone(sock):  # the client gave up while queued: nobody to answer
                self.counters.abandoned += 1
                finish(sock, b"")
                continue
            with sock:
                reply = self.handle(request, accepted)
                try:
                    send_with_deadline(sock, reply, time.monotonic() + self.reply_deadline_s)
                    self.counters.served += 1
                except OSError as exc:  # TimeoutError included
                    self.counters.reply_failed += 1
                    log.info("%s: reply not delivered: %s", self.name, exc)


#: at most this many bytes a client sent are read (and discarded) before closing on it
_DISCARD_LIMIT = 1 << 20


def finish(sock: socket.socket, reply: bytes) -> None:
    """End a connection that gets no (other) answer: send ``reply`` (a short error, without
    blocking), read and discard what the client sent (up to :data:`_DISCARD_LIMIT`, without
    blocking), close. Unread bytes at the close would reset the connection, and a client that
    is still sending would then see "Connection reset by peer" instead of ``reply``."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        if reply:
            sock.send(reply)
        left = _DISCARD_LIMIT
        while left > 0:
            data = sock.recv(min(left, 65536))
            if not data:
                break
            left -= len(data)
    sock.close()


def peer_gone(sock: socket.socket) -> bool:
    """Whether the client of ``sock`` closed its connection (gave up: a timeout, ^C).

    ``POLLHUP``: set on a Unix stream socket once the peer closed, not when it only shut
    down its sending side (a client that half-closes still waits for its reply). A TCP
    connection shows it only once both sides shut down: for TCP this is mostly ``False``,
    and the request is served as before."""
    poller = select.poll()
    poller.register(sock, select.POLLHUP)
    return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in poller.poll(0))


def _stop_connecting(sock: socket.socket) -> None:
    """Make ``connect(2)`` to a Unix listening socket fail at once with ``ECONNREFUSED``:
    after this, its backlog only shrinks (accept still returns what is queued). A TCP
    listener is left alone: shutting it down resets its backlog."""
    if sock.family == socket.AF_UNIX:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)


def refuse_pending(sock: socket.socket, reply: Reply, limit: int = 64) -> int:
    """Accept every connection waiting in the backlog of the listening socket ``sock`` and
    :func:`finish` it with ``reply``; return how many. A Unix listener is shut down first
    (:func:`_stop_connecting`): none can join the backlog after the last accept. A TCP one
    cannot be: new connections keep arriving, so at most ``limit`` are answered (the rest
    are reset by the close). Leaves ``sock`` open (the caller closes it)."""
    _stop_connecting(sock)
    sock.setblocking(False)
    unix = sock.family == socket.AF_UNIX
    count = 0
    while unix or count < limit:
        try:
            conn, _ = sock.accept()
        except OSError:  # BlockingIOError: the backlog is empty
            return count
        count += 1
        finish(conn, reply_bytes(reply))
    return count
