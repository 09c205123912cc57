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
closes the oldest. The protocol (length-prefixed msgpack, HTTP) is the caller's: a ``parse``
function that says "incomplete", returns a request, or raises :class:`Rejected` with the
reply to send, and a ``handle`` function that turns a request into reply bytes.

Threads start in :meth:`LocalServer.serve`, which the agent calls after it dropped root, so
they are born with the reduced capability set; they also call :func:`agent.privileges.follow`
first (a no-op then), as every thread that handles input does.
"""

from __future__ import annotations

import contextlib
import logging
import queue
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


@dataclass
class _Conn:
    sock: socket.socket
    deadline: float
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
    :param handle: ``request -> reply bytes``; runs on a worker; must not raise.
    :param busy_reply: what to send when every worker is busy (protocol framing).
    """

    def __init__(self, sock: socket.socket, name: str, parse: Callable[[bytes], Any],
                 handle: Callable[[Any], bytes], busy_reply: bytes = b"", *,
                 workers: int = 4, max_connections: int = 64,
                 request_deadline_s: float = REQUEST_DEADLINE_S,
                 reply_deadline_s: float = REPLY_DEADLINE_S):
        self.sock = sock
        self.name = name
        self.parse = parse
        self.handle = handle
        self.busy_reply = busy_reply
        self.workers = workers
        self.max_connections = max_connections
        self.request_deadline_s = request_deadline_s
        self.reply_deadline_s = reply_deadline_s
        self.counters = ServerCounters()
        self.stop = threading.Event()
        self._queue: queue.Queue[tuple[socket.socket, Any]] = queue.Queue(maxsize=workers)
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
        """Stop every thread, close every connection and the listening socket."""
        self.stop.set()
        for t in self._threads:
            t.join(timeout=5)
        for conn in list(self._conns.values()):
            conn.sock.close()
        self._conns.clear()
        self.sock.close()
        c = self.counters
        if c.timed_out or c.rejected or c.evicted or c.busy or c.reply_failed:
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
            self._drop(sel, oldest)
            self.counters.evicted += 1
        sock.setblocking(False)
        conn = _Conn(sock, time.monotonic() + self.request_deadline_s)
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
            self._answer_and_drop(sel, conn, exc.reply)
            return
        if request is not None:
            self._dispatch(sel, conn, request)

    def _dispatch(self, sel: selectors.BaseSelector, conn: _Conn, request: Any) -> None:
        sel.unregister(conn.sock)
        del self._conns[conn.sock.fileno()]
        try:
            self._queue.put_nowait((conn.sock, request))
        except queue.Full:
            self.counters.busy += 1
            _best_effort_send(conn.sock, self.busy_reply)
            conn.sock.close()

    def _expire(self, sel: selectors.BaseSelector) -> None:
        now = time.monotonic()
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            self.counters.timed_out += 1
            self._drop(sel, conn)

    def _answer_and_drop(self, sel: selectors.BaseSelector, conn: _Conn, reply: bytes) -> None:
        _best_effort_send(conn.sock, reply)
        self._drop(sel, conn)

    def _drop(self, sel: selectors.BaseSelector, conn: _Conn) -> None:
        self._conns.pop(conn.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(conn.sock)
        conn.sock.close()

    # --- workers ---------------------------------------------------------------------------

    def _worker(self) -> None:
        privileges.follow()
        while not self.stop.is_set():
            try:
                sock, request = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            with sock:
                reply = self.handle(request)
                try:
                    send_with_deadline(sock, reply, time.monotonic() + self.reply_deadline_s)
                    self.counters.served += 1
                except OSError as exc:  # TimeoutError included
                    self.counters.reply_failed += 1
                    log.info("%s: reply not delivered: %s", self.name, exc)


def _best_effort_send(sock: socket.socket, data: bytes) -> None:
    """Send a short error reply without blocking (it fits the socket buffer, or is cut)."""
    if not data:
        return
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.send(data)
