"""Independent collectors that check what the agent exports: nfcapd/nfdump, tshark, PyPI netflow.

What it owns:

* :class:`Nfcapd`: runs ``nfcapd -w DIR -b ADDR -p PORT`` (nfdump 1.7.1; optionally inside a
  namespace), stops it by PID (SIGTERM makes it close and rename its current file, so nfdump
  can read everything that arrived), and :func:`nfdump_flows` reads the files with
  ``nfdump -o json`` into :class:`dict` records with normalised keys (:data:`NFDUMP_KEYS`),
  including the NAT/NEL fields (``src4_xlt_ip``... -> ``nat_src``...).
* :class:`UdpSink`: a raw UDP receiver (on loopback or inside a namespace) that keeps every
  datagram, for byte-level assertions; :func:`write_udp_pcap` turns datagrams into a pcap.
* :func:`tshark_decode`: ``tshark -d udp.port==P,cflow`` on a capture or on datagrams; it
  fails on any malformed packet or expert info of severity error, and returns the decoded
  ``cflow`` layers.
* :func:`netflow_decode`: the PyPI ``netflow`` package (v1/v5/v9/IPFIX) with a caller-owned
  template cache, retrying data that arrived before its template.

Fixtures (re-exported by ``tests/conftest.py``): ``nfcapd``, ``udp_sink``.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import require_tool
from tests.support.netns import Netns, end_process
from tests.support.pcapgen import LINKTYPE_RAW, ipv4_packet, ipv6_packet, write_pcap

#: nfdump JSON key -> our key (the rest is kept under ``raw``).
NFDUMP_KEYS = {
    "proto": "proto",
    "src_port": "sport",
    "dst_port": "dport",
    "in_packets": "packets",
    "in_bytes": "bytes",
    "out_packets": "out_packets",
    "out_bytes": "out_bytes",
    "input_snmp": "in_if",
    "output_snmp": "out_if",
    "src_tos": "tos",
    "direction": "direction",
    "src_mask": "src_mask",
    "dst_mask": "dst_mask",
    "first": "first",
    "last": "last",
    "src_xlt_port": "nat_sport",
    "dst_xlt_port": "nat_dport",
    "nat_event": "nat_event",
    "nat_event_id": "nat_event_id",
    "export_sysid": "export_sysid",
    "type": "type",
}
_TCP_FLAG_LETTERS = "CEUAPRSF"  # nfdump's 8-character flag string, most significant bit first
CLONE_NEWNET = 0x40000000


class CollectorError(RuntimeError):
    """A collector tool failed or reported a decoding problem."""


# --- nfcapd / nfdump ----------------------------------------------------------------------


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port that is free right now on ``host`` (the kernel picks it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def icmp_errors(sock: socket.socket) -> int:
    """Read and count the ICMP errors ``sock`` received (its ip(7) ``IP_RECVERR`` error
    queue: one entry per error; reading clears the error a next send would report)."""
    count = 0
    while True:
        try:
            sock.recvmsg(2048, 512, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return count
        count += 1


class Nfcapd:
    """An ``nfcapd`` collector writing into its own directory.

    ::

        with Nfcapd(tmp_path) as cap:          # 127.0.0.1, a free port
            ...export to ("127.0.0.1", cap.port)...
        flows = cap.flows()                     # stops nfcapd (flush), runs nfdump

    :param workdir: where the flow files go (created).
    :param bind: the address to listen on (``-b``); IPv6 adds ``-6``.
    :param port: UDP port (default: a free one; 2055 inside a namespace).
    :param netns: run inside this namespace instead of the host's loopback.
    """

    def __init__(
        self,
        workdir: str | Path,
        bind: str = "127.0.0.1",
        port: int = 0,
        netns: Netns | None = None,
    ):
        require_tool("nfcapd")
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.bind, self.netns = bind, netns
        self.port = port or (2055 if netns else free_udp_port(bind))
        self.proc: subprocess.Popen | None = None
        self.log = ""

    def start(self) -> Nfcapd:
        """Start nfcapd and wait until its socket is bound."""
        cmd = [
            "nfcapd",
            "-w",
            str(self.dir),
            "-b",
            self.bind,
            "-p",
            str(self.port),
            "-t",
            "3600",
            "-I",
            "test",
        ]
        if ":" in self.bind:
            cmd.append("-6")
        popen = self.netns.popen if self.netns else _host_popen
        self.proc = popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._wait_bound()
        return self

    def _wait_bound(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        ss = ["ss", "-Hnul", f"sport = :{self.port}"]
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise CollectorError(f"nfcapd exited {self.proc.returncode}: {self._read_log()}")
            out = (self.netns.run(ss) if self.netns else _host_run(ss)).stdout
            if out.strip():
                return
            time.sleep(0.05)
        raise CollectorError(f"nfcapd did not bind {self.bind}:{self.port}")

    def wait_drained(self, timeout: float = 10) -> None:
        """Until nfcapd has read every datagram queued on its socket, see
        :func:`wait_udp_drained`."""
        wait_udp_drained(self.port, self.netns, timeout)

    def stop(self) -> None:
        """Once nfcapd has read what is queued on its socket (:meth:`wait_drained`: a
        datagram sent just before is not lost), SIGTERM by PID: it writes and renames its
        current file, then exits."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.wait_drained()
        end_process(self.proc, timeout=10)
        self.log = self._read_log()
        self.proc = None

    def _read_log(self) -> str:
        if self.proc is None or self.proc.stdout is None:
            return self.log
        with contextlib.suppress(ValueError):
            return self.proc.stdout.read() or ""
        return ""

    def rotate(self) -> None:
        """Flush what arrived so far into a file by restarting nfcapd on the same port."""
        self.stop()
        self.start()

    def flows(self) -> list[dict[str, Any]]:
        """Stop (once it read what was sent; flush) and return every record received, see
        :func:`nfdump_flows`."""
        self.stop()
        return nfdump_flows(self.dir)

    def __enter__(self) -> Nfcapd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_udp_drained(port: int, netns: Netns | None = None, timeout: float = 10) -> None:
    """Until the UDP socket bound to ``port`` has nothing queued (``ss`` Recv-Q 0).

    Datagrams sent before the call are then in the receiving program's hands: stopping it
    right after loses none of them, without guessing how long they take to be read.

    :raise CollectorError: still something queued after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    ss = ["ss", "-Hnul", f"sport = :{port}"]
    while time.monotonic() < deadline:
        out = (netns.run(ss) if netns else _host_run(ss)).stdout.split()
        if len(out) >= 2 and out[1] == "0":
            return
        time.sleep(0.02)
    raise CollectorError(f"UDP port {port}: the receiver did not read its queue in {timeout} s")


def _host_popen(cmd: Sequence[str], **kwargs: Any) -> subprocess.Popen:
    return subprocess.Popen(list(cmd), text=True, **kwargs)


def _utc_env() -> dict[str, str]:
    """This process's environment with ``TZ=UTC``: for tools that print local times
    (nfdump's first/last, tshark's absolute times), so that their text reads the same on
    any host."""
    return {**os.environ, "TZ": "UTC"}


def _host_run(cmd: Sequence[str],
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, check=False, timeout=30,
                          env=env)


def nfdump_flows(flow_dir: str | Path, nf_filter: str = "") -> list[dict[str, Any]]:
    """Read every nfcapd file in ``flow_dir`` with ``nfdump -o json``.

    Each record is normalised to: ``proto``, ``src``, ``dst``, ``sport``, ``dport`` (ICMP:
    ``type << 8 | code``), ``packets``, ``bytes``, ``tcp_flags`` (int), ``in_if``, ``out_if``,
    ``tos``, ``direction``, ``first``/``last`` (strings, UTC: nfdump prints local time, so
    it runs with ``TZ=UTC``), NAT fields ``nat_src``, ``nat_dst``,
    ``nat_sport``, ``nat_dport``, ``nat_event`` when present, and ``raw`` (the JSON object).

    :param nf_filter: an nfdump filter expression, e.g. ``"proto udp"``.
    """
    require_tool("nfdump")
    files = sorted(p for p in Path(flow_dir).glob("nfcapd.*") if ".current." not in p.name)
    if not files:
        return []
    cmd = ["nfdump", "-R", str(flow_dir), "-o", "json", "-N"]
    if nf_filter:
        cmd.append(nf_filter)
    for attempt in range(3):
        proc = _host_run(cmd, _utc_env())
        if proc.returncode != 0:
            raise CollectorError(f"nfdump failed ({proc.returncode}): {proc.stderr.strip()}")
        text = proc.stdout.strip()
        if "No matching flows" in text:  # nfdump's answer for files without a record
            return []
        try:
            records = json.loads(text) if text.startswith("[") else json.loads(f"[{text}]")
        except json.JSONDecodeError as exc:
            # nfdump 1.7.1 now and then prints a cut JSON list for a file nfcapd closed
            # a moment ago (seen under load); reading it again gives the whole file
            if attempt == 2:
                raise CollectorError(f"nfdump printed invalid JSON ({exc}): {text[:300]!r}"
                                     ) from exc
            time.sleep(0.5)
            continue
        return [normalise_nfdump(r) for r in records]
    raise AssertionError("unreachable")


def normalise_nfdump(rec: dict[str, Any]) -> dict[str, Any]:
    """Map one nfdump JSON object to the normalised keys (see :func:`nfdump_flows`)."""
    out: dict[str, Any] = {
        ours: rec[theirs] for theirs, ours in NFDUMP_KEYS.items() if theirs in rec
    }
    out["src"] = rec.get("src4_addr") or rec.get("src6_addr")
    out["dst"] = rec.get("dst4_addr") or rec.get("dst6_addr")
    out["nat_src"] = rec.get("src4_xlt_ip") or rec.get("src6_xlt_ip")
    out["nat_dst"] = rec.get("dst4_xlt_ip") or rec.get("dst6_xlt_ip")
    for key in ("nat_sport", "nat_dport"):
        if key in out:
            out[key] = int(out[key])
    if "icmp_type" in rec:
        out["sport"], out["dport"] = 0, rec["icmp_type"] << 8 | rec.get("icmp_code", 0)
    out["tcp_flags"] = tcp_flags_value(rec.get("tcp_flags", ""))
    out["raw"] = rec
    return out


def tcp_flags_value(flags: str) -> int:
    """nfdump's ``"...AP.SF"`` flag string as an integer (0x1b)."""
    if len(flags) != 8:
        return 0
    return sum(1 << (7 - i) for i, ch in enumerate(flags) if ch not in ". ")


def flow_table(records: Iterable[dict[str, Any]]) -> dict[tuple, tuple[int, int]]:
    """``{(proto, src, dst, sport, dport): (packets, bytes)}`` summed over records.

    Keys match :class:`~tests.support.truth.FlowId` minus the IP version, so
    ``flow_table(recs) == {f[1:]: v for f, v in truth.table().items()}`` compares exactly.
    """
    table: dict[tuple, tuple[int, int]] = {}
    for r in records:
        key = (r["proto"], r["src"], r["dst"], r.get("sport", 0), r.get("dport", 0))
        pk, by = table.get(key, (0, 0))
        table[key] = (pk + r.get("packets", 0), by + r.get("bytes", 0))
    return table


# --- raw UDP sink -------------------------------------------------------------------------


def socket_in_netns(ns: Netns | None, family: int, kind: int) -> socket.socket:
    """Create a socket inside ``ns`` (or here, when ``None``) without moving this thread.

    A helper thread enters the namespace with ``setns(2)``, creates the socket and exits;
    a socket stays in the namespace it was created in.
    """
    if ns is None:
        return socket.socket(family, kind)
    result: list[Any] = []

    def create() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/run/netns/{ns.name}") as fd:
                if libc.setns(fd.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({ns.name})")
            result.append(socket.socket(family, kind))
        except BaseException as exc:  # reported to the caller below
            result.append(exc)

    thread = threading.Thread(target=create, name=f"setns-{ns.name}")
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


@dataclass
class Datagram:
    """One received datagram: wall-clock ns, sender ``(addr, port)`` and payload."""

    ts_ns: int
    peer: tuple[str, int]
    data: bytes


class UdpSink:
    """Keeps every UDP datagram sent to ``host:port`` (a background thread receives).

    :param port: 0 picks a free port (see :attr:`port`).
    :param host: address to bind, ``127.0.0.1`` by default (``::1`` for IPv6).
    :param netns: bind inside this namespace.
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", netns: Netns | None = None):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket_in_netns(netns, family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind((host, port))
        self.sock.settimeout(0.05)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.datagrams: list[Datagram] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._receive, name=f"udp-sink-{self.port}", daemon=True
        )
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._cond:
                self.datagrams.append(Datagram(time.time_ns(), peer[:2], data))
                self._cond.notify_all()

    def wait(self, count: int, timeout: float = 10) -> list[bytes]:
        """Wait until at least ``count`` datagrams arrived; return all payloads.

        :raise CollectorError: on timeout, with how many arrived.
        """
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.datagrams) >= count, timeout)
            got = [d.data for d in self.datagrams]
        if not ok:
            raise CollectorError(f"UdpSink:{self.port}: {len(got)} of {count} datagrams")
        return got

    @property
    def endpoint(self) -> str:
        """``host:port`` as an exporter's ``destination`` entry (IPv6 in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def wait_for(self, predicate: Callable[[list[bytes]], bool],
                 timeout: float = 10) -> list[bytes]:
        """Wait until ``predicate(payloads so far)`` holds; return the payloads.

        :raise CollectorError: on timeout, with how many datagrams arrived.
        """
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate([d.data for d in self.datagrams]),
                                     timeout)
            got = [d.data for d in self.datagrams]
        if not ok:
            raise CollectorError(f"UdpSink:{self.port}: condition not met with {len(got)} "
                                 "datagrams")
        return got

    def payloads(self) -> list[bytes]:
        """Every payload received so far, in arrival order."""
        with self._cond:
            return [d.data for d in self.datagrams]

    def collect(self) -> list[bytes]:
        """Stop receiving, take what is still queued in the socket, return every payload.

        Call it once the sender is done (the agent stopped): everything it sent is then
        either received or queued, so nothing depends on timing.
        """
        self._stop.set()
        self._thread.join(2)
        self.sock.setblocking(False)
        with self._cond:
            while True:
                try:
                    data, peer = self.sock.recvfrom(65535)
                except (BlockingIOError, OSError):
                    break
                self.datagrams.append(Datagram(time.time_ns(), peer[:2], data))
            return [d.data for d in self.datagrams]

    def write_pcap(self, path: str | Path) -> Path:
        """Write what arrived as a raw-IP pcap addressed to this sink's port (for tshark)."""
        with self._cond:
            items = [(d.ts_ns, d.peer, d.data) for d in self.datagrams]
        return write_udp_pcap(path, items, dst=(self.host, self.port))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def __enter__(self) -> UdpSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_udp_pcap(
    path: str | Path, datagrams: Iterable[tuple[int, tuple[str, int], bytes]], dst: tuple[str, int]
) -> Path:
    """Wrap ``(ts_ns, (src, sport), payload)`` datagrams in IP/UDP and write a raw-IP pcap."""
    import ipaddress

    frames = []
    dst_ip = ipaddress.ip_address(dst[0])
    for ts, (src, sport), payload in datagrams:
        src_ip = ipaddress.ip_address(src)
        udp = struct.pack("!HHHH", sport, dst[1], 8 + len(payload), 0) + payload  # csum 0
        if dst_ip.version == 4:
            ip = ipv4_packet(src_ip.packed, dst_ip.packed, 17, udp)
        else:  # IPv6 forbids a zero UDP checksum, but tshark does not need it to decode
            ip = ipv6_packet(src_ip.packed, dst_ip.packed, 17, udp)
        frames.append((ts, ip, len(ip)))
    write_pcap(path, LINKTYPE_RAW, frames)
    return Path(path)


# --- a reference exporter ---------------------------------------------------------------


def softflowd_export(
    pcap: str | Path,
    host: str,
    port: int,
    version: int = 9,
    netns: Netns | None = None,
    timeout: float = 30,
) -> str:
    """Replay ``pcap`` through softflowd 1.1.0 and export every flow to ``host:port``.

    A known-good exporter, to prove the collectors (and to compare the agent with). ``-c none``
    matters: with a control socket, softflowd -r can block in ``accept()`` after the file ends.

    :param version: 1, 5, 9 or 10 (IPFIX). IPv6 flows are tracked (``-6``); v5 drops them.
    :return: softflowd's output (its per-protocol summary).
    """
    require_tool("softflowd")
    with tempfile.TemporaryDirectory(prefix="nfa-sf-") as tmp:
        cmd = [
            "softflowd",
            "-r",
            str(pcap),
            "-n",
            f"{host}:{port}",
            "-v",
            str(version),
            "-d",
            "-6",
            "-c",
            "none",
            "-p",
            f"{tmp}/softflowd.pid",
        ]
        if ":" in host:
            cmd[4] = f"[{host}]:{port}"
        proc = netns.run(cmd, check=False, timeout=timeout) if netns else _host_run(cmd)
    if proc.returncode != 0:
        raise CollectorError(f"softflowd exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout + proc.stderr


# --- structural checks -------------------------------------------------------------------


def check_export_datagram(data: bytes) -> list[str]:
    """Framing problems of one NetFlow v5/v9 or IPFIX datagram (empty list = well framed).

    tshark tolerates several framing errors (a v5 count larger than the records present, an
    IPFIX length that disagrees with the datagram), so tests check them here: v5 length is
    24 + 48 x count with 1 <= count <= 30; v9 and IPFIX sets tile the datagram exactly, each
    at least 4 bytes; the IPFIX header length equals the datagram length (RFC 7011 3.1).
    """
    if len(data) < 4:
        return [f"{len(data)} bytes: too short for a header"]
    version, count = struct.unpack_from("!HH", data)
    if version == 5:
        want = 24 + 48 * count
        problems = (
            [] if len(data) == want else [f"v5: {len(data)} bytes, count {count} needs {want}"]
        )
        return problems + ([] if 1 <= count <= 30 else [f"v5: count {count} not in 1..30"])
    if version == 9:
        return _check_sets(data, 20, "v9")
    if version == 10:
        problems = (
            [] if count == len(data) else [f"ipfix: header length {count}, datagram {len(data)}"]
        )
        return problems + _check_sets(data, 16, "ipfix")
    return [f"unknown version {version}"]


def _check_sets(data: bytes, offset: int, label: str) -> list[str]:
    while offset < len(data):
        if offset + 4 > len(data):
            return [f"{label}: {len(data) - offset} stray bytes after the last set"]
        set_id, length = struct.unpack_from("!HH", data, offset)
        if length < 4 or offset + length > len(data):
            return [f"{label}: set {set_id} at {offset} has length {length}"]
        offset += length
    return []


# --- tshark -------------------------------------------------------------------------------

PI_ERROR = 0x00800000  # epan/proto.h expert severity "error"


def tshark_decode(
    capture: str | Path | Sequence[bytes], port: int, transport: str = "udp"
) -> list[dict[str, Any]]:
    """Decode NetFlow/IPFIX with tshark's ``cflow`` dissector and check it is well formed.

    :param capture: a pcap/pcapng path, or raw export datagrams (first checked with
        :func:`check_export_datagram`, then written to a pcap).
    :param port: the collector port the export was sent to (``-d udp.port==P,cflow``).
    :param transport: ``"udp"`` or ``"tcp"``.
    :return: one dict per frame: the ``cflow`` layer from ``tshark -T json`` (absolute
        times in UTC: tshark runs with ``TZ=UTC``).
    :raise CollectorError: when a frame is malformed or has an expert error.
    """
    require_tool("tshark")
    with contextlib.ExitStack() as stack:
        if isinstance(capture, (str, Path)):
            path = Path(capture)
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nfa-ts-")))
            framing = [
                f"datagram {i + 1}: {p}"
                for i, d in enumerate(capture)
                for p in check_export_datagram(d)
            ]
            if framing:
                raise CollectorError("; ".join(framing))
            items = [(time.time_ns(), ("127.0.0.2", 9999), d) for d in capture]
            path = write_udp_pcap(tmp / "export.pcap", items, ("127.0.0.1", port))
        base = ["tshark", "-n", "-r", str(path), "-d", f"{transport}.port=={port},cflow"]
        _check_tshark_expert(base)
        proc = _host_run([*base, "-T", "json"], _utc_env())  # absolute times in UTC
        if proc.returncode != 0:
            raise CollectorError(f"tshark failed: {proc.stderr.strip()}")
        frames = json.loads(proc.stdout or "[]", object_pairs_hook=_json_pairs)
    return [f["_source"]["layers"].get("cflow", {}) for f in frames]


def _check_tshark_expert(base: list[str]) -> None:
    """Fail on malformed frames or expert infos of severity error."""
    fields = [
        "-T",
        "fields",
        "-E",
        "separator=|",
        "-e",
        "frame.number",
        "-e",
        "_ws.malformed",
        "-e",
        "_ws.expert.severity",
        "-e",
        "_ws.expert.message",
    ]
    proc = _host_run([*base, *fields])
    if proc.returncode != 0:
        raise CollectorError(f"tshark failed: {proc.stderr.strip()}")
    problems = []
    for line in proc.stdout.splitlines():
        number, malformed, severities, messages = (line.split("|") + ["", "", ""])[:4]
        worst = max((int(s) for s in severities.split(",") if s.strip()), default=0)
        if malformed or worst >= PI_ERROR:
            problems.append(f"frame {number}: {messages or 'malformed'}")
    if problems:
        raise CollectorError("tshark: " + "; ".join(problems))


#: fields that mark a decoded flow (or NAT event) record in tshark's cflow tree
CFLOW_RECORD_MARKERS = frozenset(
    {
        "cflow.srcaddr",
        "cflow.srcaddrv6",
        "cflow.packets",
        "cflow.octets",
        "cflow.packets64",
        "cflow.octets64",
        "cflow.nat_event",
        "cflow.post_natsource_ipv4_address",
    }
)


def cflow_records(layers: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flatten tshark ``cflow`` layers into one dict per flow record.

    A record is a node (``pdu 1/3`` in v5, ``Flow 1`` in v9/IPFIX data sets) holding one of
    :data:`CFLOW_RECORD_MARKERS`; its ``*_tree`` children are merged in. Values stay strings,
    as tshark prints them (``"0x1b"`` for flags).
    """
    out: list[dict[str, Any]] = []
    for layer in layers:
        out.extend(_find_records(layer))
    return out


def _find_records(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if CFLOW_RECORD_MARKERS & node.keys():
        yield _flatten(node)
        return
    for value in node.values():
        if isinstance(value, dict):
            yield from _find_records(value)


def _flatten(node: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(_flatten(value))
        else:
            flat[key] = value
    return flat


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """Keep repeated keys of tshark's JSON (one field several times) as lists."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            prev = out[key]
            out[key] = [*prev, value] if isinstance(prev, list) else [prev, value]
        else:
            out[key] = value
    return out


# --- PyPI netflow -------------------------------------------------------------------------


def netflow_decode(
    datagrams: Iterable[bytes], templates: dict | None = None, audit: bool = True,
    lossy: bool = False, udp: bool = True,
) -> tuple[list[Any], list[dict[str, Any]]]:
    """Decode export datagrams with the PyPI ``netflow`` package.

    Data that arrives before its template is kept and retried once a later datagram brings
    templates (as the package's reference collector does).

    :param templates: a caller-owned cache ``{"netflow": {}, "ipfix": {}}``, filled in place.
    :param audit: first check the datagrams as one stream with
        :class:`~tests.support.wireaudit.WireAudit` (sequence numbers continuous from the
        first one on, counts, lengths, padding, templates before data); ``False`` for
        datagrams that are not one stream in order.
    :param lossy: datagrams were lost on the way: sequence numbers may jump ahead.
    :param udp: ``False`` for IPFIX messages of a TCP session or a file (the audit then
        allows template withdrawals and wants one before a template is redefined).
    :return: ``(export packets, flow dicts)``; each flow dict is the record's ``data`` plus
        ``_version``.
    :raise CollectorError: when data is left whose template never arrived.
    """
    import netflow
    from netflow.ipfix import IPFIXTemplateNotRecognized
    from netflow.v9 import V9TemplateNotRecognized

    from tests.support.wireaudit import WireAudit

    datagrams = list(datagrams)
    if audit:
        WireAudit(from_start=False, udp=udp, lossy=lossy).feed_all(datagrams).assert_clean()
    templates = templates if templates is not None else {"netflow": {}, "ipfix": {}}
    pending, packets = list(datagrams), []
    while pending:
        waiting = []
        for data in pending:
            try:  # bytearray: parse_packet would try to read a `bytes` object as hex text
                packets.append(netflow.parse_packet(bytearray(data), templates))
            except (V9TemplateNotRecognized, IPFIXTemplateNotRecognized):
                waiting.append(data)
        if len(waiting) == len(pending):
            raise CollectorError(f"{len(waiting)} datagrams reference unknown templates")
        pending = waiting
    flows = []
    for pkt in packets:
        version = pkt.header.version
        flows.extend({**f.data, "_version": version} for f in pkt.flows)
    return packets, flows


_NETFLOW_ALIASES = {  # our key -> the PyPI netflow package's names for v5, v9 and IPFIX
    "src": ("IPV4_SRC_ADDR", "IPV6_SRC_ADDR", "sourceIPv4Address", "sourceIPv6Address"),
    "dst": ("IPV4_DST_ADDR", "IPV6_DST_ADDR", "destinationIPv4Address", "destinationIPv6Address"),
    "sport": ("SRC_PORT", "L4_SRC_PORT", "sourceTransportPort"),
    "dport": (
        "DST_PORT",
        "L4_DST_PORT",
        "destinationTransportPort",
        "ICMP_TYPE",
        "icmpTypeCodeIPv4",
        "icmpTypeCodeIPv6",
    ),
    "proto": ("PROTO", "PROTOCOL", "protocolIdentifier"),
    "packets": ("IN_PACKETS", "IN_PKTS", "packetDeltaCount", "packetTotalCount"),
    "bytes": ("IN_OCTETS", "IN_BYTES", "octetDeltaCount", "octetTotalCount"),
    "tcp_flags": ("TCP_FLAGS", "tcpControlBits"),
}


def netflow_records(flows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Normalise :func:`netflow_decode` flows to the keys of :func:`nfdump_flows`.

    Records without a source address (options data: sampling, exporter info) are left out.
    Integer addresses (v5, IPFIX) become strings. ``raw`` keeps the package's dict.
    """
    import ipaddress

    out = []
    for flow in flows:
        rec: dict[str, Any] = {"sport": 0, "dport": 0, "tcp_flags": 0, "raw": flow}
        for ours, names in _NETFLOW_ALIASES.items():
            for name in names:
                if name in flow:
                    rec[ours] = flow[name]
                    break
        if "src" not in rec:
            continue
        v6 = any(k in flow for k in ("IPV6_SRC_ADDR", "sourceIPv6Address"))
        for key in ("src", "dst"):
            value = rec[key]
            rec[key] = str(ipaddress.IPv6Address(value) if v6 else ipaddress.IPv4Address(value))
        out.append(rec)
    return out


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def nfcapd(tmp_path: Path) -> Iterator[Nfcapd]:
    """Name: nfcapd. Scope: function. Depends: tmp_path, the nfcapd tool.

    A running nfcapd on 127.0.0.1 and a free port; ``nfcapd.flows()`` stops it and returns
    the records. For a collector inside a namespace, build ``Nfcapd(dir, netns=ns)``.
    """
    with Nfcapd(tmp_path / "nfcapd") as cap:
        yield cap


@pytest.fixture
def udp_sink() -> Iterator[UdpSink]:
    """Name: udp_sink. Scope: function. Depends: nothing.

    A :class:`UdpSink` on 127.0.0.1 and a free port.
    """
    with UdpSink() as sink:
        yield sink


_SLOW_READER = r"""
import socket, sys, threading
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, int(sys.argv[1]))
s.bind(("127.0.0.1", 0))
port = s.getsockname()[1]
local = "0100007F:%04X" % port
def drops():
    with open("/proc/net/udp") as table:
        return next(int(line.split()[-1]) for line in table if line.split()[1] == local)
print(port, flush=True)
sent = []  # the parent's first line: how many datagrams the sender sent
threading.Thread(target=lambda: sent.append(int(sys.stdin.readline())), daemon=True).start()
s.settimeout(0.05)
got = 0
while True:
    try:
        s.recv(65535)
        got += 1
        continue
    except socket.timeout:
        pass
    if sent and got + drops() >= sent[0]:  # every datagram read or dropped at the socket
        break
print(got, flush=True)
sys.stdin.readline()  # the socket stays open until the parent has read its drop count
"""


def udp_drops(port: int, host: str = "127.0.0.1") -> int:
    """Datagrams the kernel dropped at the IPv4 UDP socket bound to ``host:port`` in this
    netns (``/proc/net/udp`` ``drops``: receive buffer full)."""
    local = f"{int.from_bytes(socket.inet_aton(host), 'little'):08X}:{port:04X}"
    with open("/proc/net/udp") as table:
        return next(int(line.split()[-1]) for line in table if line.split()[1] == local)


class SlowCollector:
    """A collector that keeps up with a paced sender but not with a burst: a UDP socket with
    a small ``SO_RCVBUF`` (256 KiB asked: about 200 full datagrams) read as fast as a
    separate process can. A burst of thousands of datagrams sent back to back overflows it
    whatever the reader's speed; at the default ``rate_limit`` the reader only has to read
    every few tens of milliseconds, which it does even on a loaded machine (an earlier
    reader that paused after every 10 datagrams managed about 5,000 a second when idle, and
    fewer than the paced 3,000 when the tests shared the two CPUs: drops then said nothing
    about pacing).

    :meth:`result` (call it once the sender has finished, with how many datagrams it sent)
    returns once each of them was read or counted dropped at the socket: no quiet period is
    waited for, and a slow start of the sender is no "idle" end.
    """

    def __init__(self, rcvbuf: int = 256 << 10):
        self.proc = subprocess.Popen([sys.executable, "-c", _SLOW_READER, str(rcvbuf)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def result(self, sent: int, timeout: float = 120) -> tuple[int, int]:
        """``(datagrams received, datagrams dropped at the socket)`` once the ``sent``
        datagrams were all read or dropped (``timeout``: fail rather than wait forever when
        fewer arrive than the sender counted)."""
        assert self.proc.stdout is not None and self.proc.stdin is not None
        self.proc.stdin.write(f"{sent}\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"the collector did not see {sent} datagrams within {timeout} s"
        got = int(self.proc.stdout.readline())
        drops = udp_drops(self.port)
        self.proc.communicate("\n", timeout=timeout)
        return got, drops

    def __enter__(self) -> SlowCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        end_process(self.proc)
