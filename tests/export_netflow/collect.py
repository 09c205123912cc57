"""Independent decoders for the NetFlow export tests: a UDP sink, nfcapd/nfdump, tshark, netflow.

Written before ``tests/support/collectors.py`` landed. Tool lookup and free ports come from
``tests.support``; what stays here has no equivalent there with the same behaviour, which these
tests' assertions rely on: nfdump rows in a chosen ``-o fmt:`` text layout (the shared helper
returns normalised JSON), tshark flagging *any* expert info (the shared one fails only on
errors), a sink drained until quiet (the shared one waits for a count) and the ``netflow``
package's parser without retries (so a datagram that needs earlier templates fails).
Everything runs on loopback only.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import netflow.v9
from netflow.utils import parse_packet

from tests.support import require_tool
from tests.support.collectors import wait_udp_drained
from tests.support.pcapgen import LINKTYPE_RAW, ipv4_packet, write_pcap
from tests.support.wireaudit import WireAudit

# netflow 0.12.2's v9 field table lacks natEvent (230); add the IANA name so the package's
# own parser can decode NEL records (its parsing logic stays untouched).
netflow.v9.V9_FIELD_TYPES.setdefault(230, "natEvent")

EXPORT_PORT = 2055


class UdpSink:
    """A UDP socket on loopback that keeps every datagram it receives.

    :param family: ``AF_INET`` (127.0.0.1) or ``AF_INET6`` (::1).
    :param port: the port to bind; 0 = any free one.
    """

    def __init__(self, family: int = socket.AF_INET, port: int = 0):
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1" if family == socket.AF_INET else "::1", port))
        self.port = self.sock.getsockname()[1]
        host = "127.0.0.1" if family == socket.AF_INET else "[::1]"
        self.endpoint = f"{host}:{self.port}"
        self.datagrams: list[bytes] = []

    def drain(self, timeout: float = 0.3, expect: int = 0) -> list[bytes]:
        """Receive until ``timeout`` passes with nothing new (or ``expect`` datagrams)."""
        self.sock.settimeout(timeout)
        while not expect or len(self.datagrams) < expect:
            try:
                self.datagrams.append(self.sock.recv(65535))
            except TimeoutError:
                break
        return self.datagrams

    def close(self) -> None:
        self.sock.close()


def full_socket() -> tuple[socket.socket, socket.socket]:
    """A connected datagram socket whose peer reads nothing, filled until the kernel says
    EAGAIN (a real full send buffer: loopback UDP never fills one); ``(socket, peer)``."""
    sock, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    for _ in range(100_000):
        try:
            sock.send(b"f" * 512)
        except BlockingIOError:
            return sock, peer
    raise AssertionError("the socket pair never filled")


def decode(datagrams: list[bytes]) -> list:
    """Parse datagrams in order with the PyPI ``netflow`` package (templates carried over),
    after :class:`~tests.support.wireaudit.WireAudit` found them well formed (one stream,
    sequence numbers continuous from the first datagram on)."""
    WireAudit(from_start=False).feed_all(datagrams).assert_clean()
    templates: dict = {"netflow": {}, "ipfix": {}}
    return [parse_packet(d, templates) for d in datagrams]


def write_capture(datagrams: list[bytes], path: Path, port: int = EXPORT_PORT) -> Path:
    """Wrap datagrams in IPv4/UDP (loopback) and write a raw-IP pcap for tshark."""
    frames = []
    for i, data in enumerate(datagrams):
        udp = struct.pack("!HHHH", 40000, port, 8 + len(data), 0) + data
        ip = ipv4_packet(b"\x7f\0\0\1", b"\x7f\0\0\1", 17, udp)
        frames.append((1_700_000_000_000_000_000 + i * 1000, ip, len(ip)))
    write_pcap(path, LINKTYPE_RAW, frames)
    return path


def tshark(path: Path, *args: str, port: int = EXPORT_PORT) -> str:
    """Run tshark on ``path`` with UDP ``port`` decoded as cflow; return stdout."""
    cmd = [require_tool("tshark"), "-r", str(path), "-d", f"udp.port=={port},cflow", *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout


def tshark_problems(path: Path, port: int = EXPORT_PORT) -> str:
    """Frames that tshark marks malformed or with any expert info ("" = none)."""
    return tshark(path, "-Y", "_ws.malformed || _ws.expert", port=port)


def tshark_fields(path: Path, fields: list[str], port: int = EXPORT_PORT) -> list[list[str]]:
    """One row per frame, one (comma-joined) column per field."""
    args = ["-T", "fields", "-E", "separator=|", "-E", "occurrence=a"]
    for f in fields:
        args += ["-e", f]
    return [line.split("|") for line in tshark(path, *args, port=port).splitlines()]


class Nfcapd:
    """An ``nfcapd`` collector on 127.0.0.1:``port`` writing into ``directory``."""

    def __init__(self, directory: Path, port: int):
        self.directory, self.port = directory, port
        directory.mkdir(parents=True, exist_ok=True)
        self.log = directory.parent / f"nfcapd-{port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Nfcapd:
        cmd = [require_tool("nfcapd"), "-w", str(self.directory), "-b", "127.0.0.1",
               "-p", str(self.port)]
        self.proc = subprocess.Popen(cmd, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        _wait_udp_bound(self.port)
        return self

    def stop(self) -> None:
        """Wait until nfcapd read what is queued, terminate it (it flushes its file), wait."""
        if self.proc and self.proc.poll() is None:
            wait_udp_drained(self.port)
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def flows(self, fmt: str = "%pr|%sa|%da|%sp|%dp|%pkt|%byt|%flg|%ts|%te") -> list[list[str]]:
        """nfdump rows (fields stripped) for everything collected."""
        cmd = [require_tool("nfdump"), "-R", str(self.directory), "-q", "-N", "-o", f"fmt:{fmt}"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout
        return [[c.strip() for c in line.split("|")] for line in out.splitlines() if line]

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def _wait_udp_bound(port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return  # taken: the collector is listening
        time.sleep(0.02)
    raise TimeoutError(f"nothing bound UDP port {port}")


@contextmanager
def nfcapd(directory: Path, port: int) -> Iterator[Nfcapd]:
    """Run an nfcapd for the duration of the block; always stopped afterwards."""
    collector = Nfcapd(directory, port).start()
    try:
        yield collector
    finally:
        collector.stop()
