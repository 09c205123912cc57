"""Shared builders for the IPFIX exporter tests: records, message splitting, a TCP collector."""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time
from typing import Any

from netflow_agent.model import NAT_START, NAT_STOP, FlowRecord, NatEvent

T0 = 1_764_537_000_000_000_000  # 2025-11-30T21:10:00Z in ns
HEADER = struct.Struct("!HHIII")
SET_HEADER = struct.Struct("!HH")


def addr(text: str) -> bytes:
    """Packed address."""
    return ipaddress.ip_address(text).packed


def flow(i: int, v6: bool = False, proto: int = 17, **kw: Any) -> FlowRecord:
    """A distinct flow record number ``i`` with deterministic counters."""
    src = f"fd00::{i + 1:x}" if v6 else f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
    dst = "fd00::ffff" if v6 else "10.255.0.1"
    values: dict[str, Any] = dict(
        ip_version=6 if v6 else 4, protocol=proto, src_addr=addr(src), dst_addr=addr(dst),
        src_port=1024 + i % 60000, dst_port=53, packets=i + 1, octets=(i + 1) * 100,
        start_ns=T0 + i * 1_000_000, end_ns=T0 + i * 1_000_000 + 5_000_000, in_if=1, out_if=2,
        end_reason=1)
    values.update(kw)
    return FlowRecord(**values)


def nat_event(i: int, start: bool = True, v6: bool = False) -> NatEvent:
    """A NAT event (masquerade of a client to 10.2.0.1 or fd00:2::1)."""
    if v6:
        pre_src, dst, post_src = f"fd00:1::{i + 2:x}", "fd00:2::2", "fd00:2::1"
    else:
        pre_src, dst, post_src = f"10.1.0.{i + 2}", "10.2.0.2", "10.2.0.1"
    return NatEvent(event=NAT_START if start else NAT_STOP, time_ns=T0 + i * 1_000_000,
                    ip_version=6 if v6 else 4, protocol=6, src_addr=addr(pre_src),
                    dst_addr=addr(dst), src_port=40000 + i, dst_port=80,
                    post_src_addr=addr(post_src), post_dst_addr=addr(dst),
                    post_src_port=50000 + i, post_dst_port=80, snat=True)


def split_stream(data: bytes) -> list[bytes]:
    """Split a TCP stream / IPFIX file into messages using the header Length."""
    out, pos = [], 0
    while pos + HEADER.size <= len(data):
        length = HEADER.unpack_from(data, pos)[1]
        assert length >= HEADER.size, f"bad message length {length} at {pos}"
        out.append(data[pos:pos + length])
        pos += length
    assert pos == len(data), "trailing partial message"
    return out


def sets_of(message: bytes) -> list[tuple[int, bytes]]:
    """``(set_id, body_with_padding)`` for every set of a message."""
    out, pos = [], HEADER.size
    while pos < len(message):
        set_id, length = SET_HEADER.unpack_from(message, pos)
        out.append((set_id, message[pos + 4:pos + length]))
        pos += length
    return out


class TcpCollector:
    """A small IPFIX-over-TCP collector: accepts connections, splits the stream into messages.

    :ivar sessions: one list of message bytes per accepted connection, in order.
    """

    def __init__(self, port: int = 0):
        self.port = port
        self.sessions: list[list[bytes]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> TcpCollector:
        """Listen (same port on restart) and serve in a thread."""
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(4)
        s.settimeout(0.05)
        self.port = s.getsockname()[1]
        self._listener = s
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        assert self._listener is not None
        conns: list[tuple[socket.socket, bytearray, list[bytes]]] = []
        while not self._stop.is_set():
            try:
                c, _ = self._listener.accept()
                c.settimeout(0.01)
                msgs: list[bytes] = []
                with self._lock:
                    self.sessions.append(msgs)
                conns.append((c, bytearray(), msgs))
            except TimeoutError:
                pass
            for c, buf, msgs in conns:
                self._read(c, buf, msgs)
        for c, buf, msgs in conns:  # read everything that arrived, then close
            c.settimeout(0.2)
            self._read(c, buf, msgs)
            c.close()
        self._listener.close()

    def _read(self, c: socket.socket, buf: bytearray, msgs: list[bytes]) -> None:
        while True:
            try:
                data = c.recv(65536)
            except (TimeoutError, BlockingIOError):
                return
            except OSError:
                return
            if not data:
                return
            buf += data
            while len(buf) >= HEADER.size:
                length = HEADER.unpack_from(buf, 0)[1]
                if len(buf) < length:
                    break
                with self._lock:
                    msgs.append(bytes(buf[:length]))
                del buf[:length]

    def stop(self) -> None:
        """Read all that arrived, close every connection and the listener."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def messages(self) -> list[bytes]:
        """All messages of all sessions, in order."""
        with self._lock:
            return [m for s in self.sessions for m in s]

    def wait_for(self, predicate: Any, timeout: float = 10) -> None:
        """Poll until ``predicate(self)`` is true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return
            time.sleep(0.02)
        raise AssertionError("collector condition not met in time")


def without_set(message: bytes, set_id: int) -> bytes:
    """The message minus its sets with ``set_id`` (for decoders without variable-length
    support, like the PyPI ``netflow`` package); the header length is fixed up."""
    kept = b"".join(SET_HEADER.pack(sid, 4 + len(body)) + body
                    for sid, body in sets_of(message) if sid != set_id)
    version, _, export_time, seq, odid = HEADER.unpack_from(message)
    return HEADER.pack(version, HEADER.size + len(kept), export_time, seq, odid) + kept


def decodable(messages: list[bytes], udp: bool = True) -> list[bytes]:
    """Messages for the ``netflow`` package: interface-name sets removed, empty ones dropped.

    The messages (one stream, in order) are first checked by
    :class:`~tests.support.wireaudit.WireAudit`; the sequence numbers of what is left are
    lowered by the records removed before, so the shortened stream is consistent too.
    ``udp``: ``False`` for the messages of a TCP session or file (see ``WireAudit``)."""
    from netflow_agent.plugins.export_ipfix.options import INTERFACE_NAMES_ID
    from tests.support.wireaudit import WireAudit

    audit = WireAudit(udp=udp, from_start=False).feed_all(messages)
    audit.assert_clean()
    removed = [0] * (len(messages) + 1)
    for r in audit.records:
        if r.template == INTERFACE_NAMES_ID:
            removed[r.packet] += 1
    out, gone = [], 0
    for i, message in enumerate(messages):
        kept = without_set(message, INTERFACE_NAMES_ID)
        seq = HEADER.unpack_from(kept)[3]
        out.append(kept[:8] + struct.pack("!I", (seq - gone) & 0xFFFFFFFF) + kept[12:])
        gone += removed[i + 1]
    return [m for m in out if len(m) > HEADER.size]
