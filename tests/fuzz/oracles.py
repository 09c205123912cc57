"""Property oracles for the parsers under fuzzing: feed bytes, check every documented rule.

Each ``check_*`` function takes raw bytes, runs one parser the way the agent runs it, and
raises :class:`AssertionError` when a property is broken; any other exception escaping is a
crash (the documented errors are caught here and only there). The same oracles back the short
hypothesis tests in ``tests/fuzz/`` and the long coverage-guided runs in ``bench/fuzz/``.

Targets and their contracts:

* :func:`check_packet`: ``agent.packet.PacketParser.parse`` returns ``None`` (and counts one
  ``trunc``) or a packet tuple whose key decodes to the header's addresses, never raises.
* :func:`check_nflog`: ``NflogDecoder.decode`` never raises; every ``NFULNL_MSG_PACKET`` message
  it accepts becomes a packet or a ``trunc``; the learned-shape fast path gives exactly what
  the attribute-by-attribute walk gives; bytes after ``n`` in the receive buffer are never read.
* :func:`check_nflog_c`: the optional C decoder (``_nflog.Aggregator``) gives exactly the
  Python decoder's flows (packets, bytes, first/last time, flags, out_if) and counters.
* :func:`check_conntrack`: ``ctnetlink.iter_messages`` / ``parse_conntrack`` raise only
  ``MalformedMessage``, never read past the message, and ``to_nat_event`` accepts every entry.
* :func:`check_pcap`: ``PcapReader`` raises only ``PcapError``; a clean file is read to the
  end; ``truncated`` is set exactly when the file stops inside a record.
* :func:`check_config_text`: ``agent.config.check.validate`` returns only ``ConfigIssue`` lists.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

from netflow_agent.config.check import validate
from netflow_agent.errors import ConfigIssue
from netflow_agent.model import KEY, NAT_START, NAT_STOP, split_key
from netflow_agent.packet import MAX_PACKET_LEN, PacketParser
from netflow_agent.plugins.ingest_conntrack import ctnetlink
from netflow_agent.plugins.ingest_conntrack.events import to_nat_event
from netflow_agent.plugins.ingest_nflog.netlink import NflogDecoder
from netflow_agent.plugins.ingest_pcap.reader import PcapError, PcapReader
from tests.ingest_nflog.test_c_decoder import _many_flows

TS_NS = 1_700_000_000_123_456_789
RECV_NS = 1_700_000_001_000_000_000
#: junk placed after ``n`` in receive buffers: a parser that reads it changes its answer
TAIL = bytes(range(256)) * 2


# --- packet parser -------------------------------------------------------------------------


def check_packet(data: bytes, in_if: int = 7, out_if: int = 9, direction: int = 1) -> None:
    """``PacketParser.parse`` on one IP packet: ``None`` + one ``trunc``, or a sound tuple."""
    parser = PacketParser()
    pkt = parser.parse(data, TS_NS, in_if, out_if, direction)
    if pkt is None:
        assert (parser.trunc, parser.frag) == (1, 0), (parser.trunc, parser.frag)
        assert parser.take_counters()[0] == 1 and parser.trunc == 0
        _check_wire_len(data, in_if, out_if, direction)
        return
    assert parser.trunc == 0 and parser.frag in (0, 1)
    key, length, flags, ts, out = pkt
    version = data[0] >> 4
    assert len(key) == KEY.size
    fk = split_key(key)
    assert fk.ip_version == version and fk.in_if == in_if and fk.direction == direction
    assert ts == TS_NS and out == out_if and 0 <= flags <= 255
    if version == 4:
        assert fk.src_addr == data[12:16] and fk.dst_addr == data[16:20]
        # 0 (BIG TCP) without the wire length NFLOG lacks: truncated, never a guessed length
        assert length == struct.unpack_from("!H", data, 2)[0] > 0
        assert fk.tos == data[1] and fk.protocol == data[9]
    else:
        assert fk.src_addr == data[8:24] and fk.dst_addr == data[24:40]
        plen = struct.unpack_from("!H", data, 4)[0]
        if plen or data[6] == 59:
            assert length == 40 + plen
        else:  # payload length 0 with a payload: only a Jumbo Payload option says how long
            assert data[6] == 0 and 40 + 65_536 <= length <= MAX_PACKET_LEN  # RFC 2675
    # a pcap record's original length is read only when the length field says 0
    assert PacketParser().parse(data, TS_NS, in_if, out_if, direction,
                                wire_len=len(data) + 1000) == pkt
    # the memoryview path (NFLOG hands slices of its receive buffer) gives the same answer
    assert PacketParser().parse(memoryview(bytearray(data)), TS_NS, in_if, out_if,
                                direction) == pkt


def _check_wire_len(data: bytes, in_if: int, out_if: int, direction: int) -> None:
    """A packet truncated without a wire length: with one (a pcap record's original length)
    only a length field of 0 makes it a packet, of that length (IPv6: or its Jumbo option's),
    and one over MAX_PACKET_LEN is still truncated."""
    wire = len(data) + 1000
    pkt = PacketParser().parse(data, TS_NS, in_if, out_if, direction, wire_len=wire)
    assert PacketParser().parse(data, TS_NS, in_if, out_if, direction,
                                wire_len=MAX_PACKET_LEN + 1) is None
    if pkt is None or pkt[0][0] != data[0] >> 4:  # a fragment held, or a tunnel's inner
        return
    if data[0] >> 4 == 4:
        assert struct.unpack_from("!H", data, 2)[0] == 0 and pkt[1] == wire
    else:
        assert struct.unpack_from("!H", data, 4)[0] == 0 and data[6] != 59
        assert pkt[1] == wire or 40 + 65_536 <= pkt[1] <= MAX_PACKET_LEN


# --- NFLOG ---------------------------------------------------------------------------------


def _nflog_run(datagrams: list[bytes], shapes: bool) -> tuple[list[Any], dict[str, int], int]:
    decoder = NflogDecoder()
    if not shapes:
        decoder.MAX_SHAPES = 0  # walk every message attribute by attribute
    out: list[Any] = []
    for data in datagrams:
        buf = bytearray(data + TAIL)  # a receive buffer is larger than what recv() filled
        decoder.decode(buf, len(data), RECV_NS, out)
    stats = decoder.stats()
    stats.pop("shapes")
    assert len(out) + decoder.parser.trunc == decoder.messages, (len(out), stats)
    for pkt in out:
        assert isinstance(pkt, tuple) and len(pkt) == 5 and isinstance(pkt[0], bytes)
    return out, stats, decoder.parser.trunc


def check_nflog(data: bytes) -> None:
    """One NFLOG receive buffer, twice (so learned shapes are used): fast path == slow path."""
    datagrams = [data, data]
    fast = _nflog_run(datagrams, shapes=True)
    slow = _nflog_run(datagrams, shapes=False)
    assert fast == slow, "shape fast path and attribute walk disagree"


def _python_flows(datagrams: list[bytes]) -> tuple[dict[bytes, list[int]], tuple[int, ...],
                                                  dict[str, int]]:
    """What ``decoder = "python"`` gives, summed per flow key like the C aggregator."""
    from netflow_agent.plugins.ingest_nflog.decoders import PythonBatcher

    batcher = PythonBatcher()
    for data in datagrams:
        batcher.feed(bytearray(data + TAIL), len(data), RECV_NS)
    batch = batcher.take("fuzz")
    flows: dict[bytes, list[int]] = {}
    counters = (0, 0, 0, 0)
    if batch is not None:
        for key, length, flags, ts, out_if in batch.packets:
            f = flows.setdefault(key, [0, 0, ts, ts, 0, 0])
            f[0] += 1
            f[1] += length
            f[2], f[3] = min(f[2], ts), max(f[3], ts)
            f[4] |= flags
            if out_if:  # the cache keeps the last non-zero output interface
                f[5] = out_if
        counters = (batch.trunc, batch.frag, batch.dropped_bytes, batch.dropped_packets)
    return flows, counters, batcher.stats()


#: the hold of the appending pass: a small flood of new flows switches the aggregator
_APPEND_HOLD = 64


def _appending_batcher() -> Any:
    """A ``CBatcher`` in append mode: a cycle of ``_APPEND_HOLD`` packets, each a new flow,
    fed in two rounds (as tests/ingest_nflog/test_append_mode.py floods it), then taken.

    ``_many_flows`` is imported with the module: imported here, during a @given test, the
    @given tests of its module failed hypothesis's nested_given health check (``-n 2``)."""
    from netflow_agent.plugins.ingest_nflog.decoders import CBatcher

    batcher = CBatcher(hold=_APPEND_HOLD)
    half = _APPEND_HOLD // 2
    for start in (0, half):
        flood = _many_flows(half, start)
        batcher.feed(bytearray(flood), len(flood), RECV_NS)
    while batcher.take("flood") is not None:
        pass
    assert batcher.aggregator.appending, "the flood did not switch to append mode"
    return batcher


def _c_flows(batcher: Any, datagrams: list[bytes], want: tuple[int, int, int, int],
             one_row: bool) -> dict[bytes, list[int]]:
    """Feed ``datagrams`` and take every batch: the rows summed per flow key as the cache
    sums them (``one_row``: each key must be one row, the hashed table); the batches'
    trunc, frag and drop counters must be ``want`` (Python's)."""
    trunc, frag, trunc_bytes, gaps = want
    for d in datagrams:
        batcher.feed(bytearray(d + TAIL), len(d), RECV_NS)
    got: dict[bytes, list[int]] = {}
    seen = [0, 0, 0, 0]
    while (batch := batcher.take("fuzz")) is not None:
        seen = [seen[0] + batch.trunc, seen[1] + batch.frag, seen[2] + batch.dropped_bytes,
                seen[3] + batch.dropped_packets]
        columns = [batch.flows[n].tolist() for n in
                   ("packets", "octets", "start_ns", "end_ns", "tcp_flags", "out_if")]
        for key, packets, octets, start, end, flags, out_if in zip(batch.keys(), *columns,
                                                                    strict=True):
            assert not (one_row and key in got), "one row per flow key"
            f = got.setdefault(key, [0, 0, start, end, 0, 0])
            f[0] += packets
            f[1] += octets
            f[2], f[3] = min(f[2], start), max(f[3], end)
            f[4] |= flags
            if out_if:  # the cache keeps the last non-zero output interface
                f[5] = out_if
    assert seen == [trunc, frag, trunc_bytes, gaps + trunc], "C and Python counters disagree"
    return got


def check_nflog_c(data: bytes) -> None:
    """The C decoder (``_nflog.Aggregator``) against the Python one, same buffers twice:
    hashed (one row per flow key) and in append mode (rows summed per key)."""
    from netflow_agent.plugins.ingest_nflog.decoders import C_ONLY_STATS, CBatcher

    datagrams = [data, data]
    want, counters, want_stats = _python_flows(datagrams)
    batcher = CBatcher()
    assert _c_flows(batcher, datagrams, counters, True) == want, \
        "C and Python decoders disagree"
    stats = {k: v for k, v in batcher.stats().items() if k not in C_ONLY_STATS}
    assert stats == {k: want_stats[k] for k in stats}
    appending = _appending_batcher()
    assert _c_flows(appending, datagrams, counters, False) == want, \
        "C in append mode and Python decoders disagree"


# --- conntrack -----------------------------------------------------------------------------


def _ct_run(buf: bytes | bytearray, length: int) -> list[Any]:
    """What the conntrack reader gets from one datagram: entries, then the error if any."""
    out: list[Any] = []
    try:
        for msg in ctnetlink.iter_messages(buf, length):
            assert msg.start <= msg.end <= length
            if msg.msg_type in (ctnetlink.MSG_CT_NEW, ctnetlink.MSG_CT_DELETE):
                try:
                    entry = ctnetlink.parse_conntrack(buf, msg.start, msg.end, msg.msg_type,
                                                      msg.flags)
                except ctnetlink.MalformedMessage as exc:
                    out.append(("malformed", str(exc)))
                    continue
                for event in (NAT_START, NAT_STOP):
                    nat = to_nat_event(entry, event, RECV_NS)
                    assert nat.ip_version in (4, 6)
                    size = 4 if nat.ip_version == 4 else 16
                    assert len(nat.src_addr) == len(nat.dst_addr) == size
                out.append(entry)
    except ctnetlink.MalformedMessage as exc:
        out.append(("bad header", str(exc)))
    return out



def check_conntrack(data: bytes) -> None:
    """One ctnetlink datagram: only ``MalformedMessage``; nothing read beyond the length."""
    exact = _ct_run(data, len(data))
    padded = _ct_run(bytearray(data + TAIL), len(data))
    assert exact == padded, "parser read bytes beyond the datagram"


# --- pcap reader ---------------------------------------------------------------------------


def read_pcap(data: bytes) -> tuple[list[tuple[int, int, bytes]], bool, str]:
    """Every packet the reader yields, its ``truncated`` flag and its ``PcapError`` (a
    file that is no capture) or its ``error`` (a corrupt header after the file's), or ""."""
    packets: list[tuple[int, int, bytes]] = []
    reader = None
    try:
        reader = PcapReader(io.BytesIO(data))
        for ts, linktype, frame, orig_len in reader:
            assert isinstance(ts, int) and ts >= 0 and isinstance(frame, bytes)
            assert orig_len >= len(frame)
            assert 0 <= linktype <= 0xFFFFFFFF
            packets.append((ts, linktype, frame))
    except PcapError as exc:
        return packets, bool(reader and reader.truncated), str(exc) or "PcapError"
    return packets, reader.truncated, reader.error


def check_pcap(data: bytes) -> None:
    """Arbitrary bytes as a capture file: clean iteration or ``PcapError``, nothing else."""
    read_pcap(data)


def check_pcap_cut(data: bytes, boundaries: list[int], packet_ends: list[int], cut: int) -> None:
    """A valid capture cut at ``cut``: the whole packets before it, ``truncated`` iff mid-block.

    :param boundaries: file offsets where blocks end (the end of the file header(s) first).
    :param packet_ends: the offsets where packet records end.
    """
    got, truncated, error = read_pcap(data[:cut])
    if cut < boundaries[0]:  # inside the file header(s)
        assert error or truncated or not got, (cut, error)
        return
    assert not error, error
    assert len(got) == sum(1 for end in packet_ends if end <= cut)
    assert truncated == (cut not in boundaries), (cut, truncated)


# --- configuration -------------------------------------------------------------------------


def check_config_text(text: str, registry: Any, hook: Any = None) -> list[ConfigIssue]:
    """Validate TOML text from a file: a list of ``ConfigIssue``, never an exception."""
    fd, name = tempfile.mkstemp(suffix=".toml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(text)
        config, issues = validate(Path(name), registry, hook)
    finally:
        os.unlink(name)
    assert isinstance(issues, list)
    assert all(isinstance(i, ConfigIssue) for i in issues)
    assert all(i.severity in ("error", "warning", "note") and isinstance(i.message, str)
               for i in issues)
    if any(i.severity == "error" for i in issues):
        assert config is None
    else:
        assert config is not None
    return issues
