"""RFC invariants of an export stream, checked on every packet, and its records decoded.

What it owns: :class:`WireAudit`, a parser of NetFlow v5, NetFlow v9 (RFC 3954) and IPFIX
(RFC 7011) written from the specifications, independent of the agent's encoders and of
:mod:`tests.support.exportclock` (which checks record times against header times; this
module checks everything else). Streams are kept apart by sender address, version and
Source ID / Observation Domain (v5: engine_type and engine_id), as collectors keep them
(IPFIX: and the sender's port, which makes a UDP transport session). For every packet it checks:

* every format: header times (unix time, sysUpTime, IPFIX export time) never go back;
* v5: length = 24 + 48 x count, 1 <= count <= 30; ``flow_sequence`` = flows of earlier
  packets (0 first, unless the receiver joined late); ``unix_nsecs`` < 10^9;
  ``engine_type``/``engine_id`` and the ``sampling_interval`` field as expected; the pad
  bytes zero;
* v9: ``sequence`` = export packets before this one (0 first); ``count`` = template,
  options template and data records in the packet (RFC 3954 section 5.1); FlowSets tile the
  packet, lengths a multiple of 4, padding zero and shorter than a record (section 5.3);
  template IDs >= 256; options templates with a scope (lengths in bytes, multiples of 4);
  a template may be redefined (v9 has no withdrawal), the data after it uses the new one;
  no data before its template; a template in use re-sent at least every ``refresh_packets``
  packets and ``refresh_s`` seconds of export time when asked;
* IPFIX: length = message; ``sequence`` = data records of earlier messages of the session,
  mod 2^32 (RFC 7011 section 3.1); Set IDs 2, 3 or >= 256; set lengths and zero padding
  shorter than a record; options templates with scope count > 0 (3.4.2.2); no template
  withdrawal over UDP (8.1, 8.4), no redefinition without one over TCP or in a file (8.1);
  a withdrawal of all templates (ID 2/3) only of its Set's kind; variable-length fields (7)
  and enterprise bits (3.2);
  addresses and times in their full size (6.2); the same template refresh rule.

Data records are kept decoded as ``{IE: value}`` (v5 records with the v9 numbers of their
fields), so a test compares them with its ground truth: :meth:`WireAudit.flows`.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

V5_HEADER = struct.Struct("!HHIIIIBBH")
V5_RECORD = struct.Struct("!4s4s4sHHIIIIHHBBBBHHBB2s")
V9_HEADER = struct.Struct("!HHIIII")
IPFIX_HEADER = struct.Struct("!HHIII")
SET = struct.Struct("!HH")
VARIABLE = 0xFFFF
ENTERPRISE_BIT = 0x8000
#: the v9 field numbers of the v5 record's fields, in record order (pads left out)
V5_FIELDS = (8, 12, 15, 10, 14, 2, 1, 22, 21, 7, 11, None, 6, 4, 5, 16, 17, 9, 13, None)
#: IEs that RFC 7011 section 6.2 forbids in reduced size: their one allowed length
FULL_SIZE = {8: 4, 12: 4, 15: 4, 225: 4, 226: 4, 27: 16, 28: 16, 62: 16, 281: 16, 282: 16,
             56: 6, 80: 6, 150: 4, 151: 4, 152: 8, 153: 8, 154: 8, 155: 8, 323: 8}
#: IEs whose values are kept as bytes (addresses, strings)
BYTES_IES = frozenset({8, 12, 15, 27, 28, 62, 225, 226, 281, 282, 56, 80, 82, 83})


@dataclass
class Template:
    """A template as the stream defined it: ``[(ie, length, enterprise)]`` and scopes."""

    fields: list[tuple[int, int, int]]
    scopes: int
    sent_packet: int  # index of the packet in its stream that last carried it
    sent_time: int  # that packet's header time, s


@dataclass
class Stream:
    """One export stream as a collector keeps it."""

    packets: int = 0
    next_sequence: int | None = None
    templates: dict[int, Template] = field(default_factory=dict)
    last_time: tuple[int, ...] = ()  # the previous header's (unix secs[, sysUpTime])


@dataclass
class Record:
    """A decoded data record: ``values`` by IE number, with where it came from."""

    version: int
    domain: int
    template: int
    values: dict[int, Any]
    options: bool
    export_time: int  # header unix seconds
    packet: int = 0  # the packet it came in: 1 for the first one fed


class WireAudit:
    """Feed every datagram (or TCP/file message) of an export, in order; read the problems.

    :param refresh_packets: v9/IPFIX: a template must reach data at most this many packets
        after it was last sent (``refresh_rate``); 0 = not checked.
    :param refresh_s: the same in seconds of header time (``timeout_rate`` x 60,
        ``template_refresh_s``); 0 = not checked.
    :param engine: v5 ``(engine_type, engine_id)`` expected, or ``None``.
    :param v5_sampling: the v5 header's expected ``sampling_interval`` field, or ``None``.
    :param udp: IPFIX over UDP: template withdrawals are an error, redefinitions are not
        (``False``, TCP or file: a template must be withdrawn before it is redefined).
    :param from_start: each stream's first sequence number must be 0 (``False``: the
        receiver may have joined late; continuity is still checked from its first packet).
    :param lossy: datagrams were lost on the way (a full socket buffer): a sequence number
        may jump ahead (the jumps are summed in :attr:`missing`), never back.
    """

    def __init__(self, *, refresh_packets: int = 0, refresh_s: int = 0,
                 engine: tuple[int, int] | None = None, v5_sampling: int | None = None,
                 udp: bool = True, from_start: bool = True, lossy: bool = False):
        self.from_start, self.lossy = from_start, lossy
        self.missing = 0  # lossy: packets (v9) or records (v5, IPFIX) the sequence skipped
        self.refresh_packets, self.refresh_s = refresh_packets, refresh_s
        self.engine, self.v5_sampling, self.udp = engine, v5_sampling, udp
        self.streams: dict[tuple, Stream] = {}
        self.records: list[Record] = []
        self.problems: list[str] = []
        self.packets = 0
        self.withdrawals: list[tuple[int, int]] = []  # (domain, template id), TCP/file
        #: v5/v9: each packet's header sysUpTime (ms), by :attr:`Record.packet`
        self.uptimes: dict[int, int] = {}

    # --- entry points ----------------------------------------------------------------------

    def feed(self, data: bytes, peer: tuple[str, int] = ("", 0)) -> None:
        """Check one datagram / message from ``peer`` and keep its records."""
        self.packets += 1
        label = f"packet {self.packets}"
        if len(data) < 4:
            self._problem(label, f"{len(data)} bytes")
            return
        version = struct.unpack_from("!H", data)[0]
        try:
            if version == 5:
                self._v5(data, peer, label)
            elif version == 9:
                self._v9(data, peer, label)
            elif version == 10:
                self._ipfix(data, peer, label)
            else:
                self._problem(label, f"version {version}")
        except struct.error as exc:
            self._problem(label, f"truncated: {exc}")

    def feed_all(self, items: Iterable[bytes | tuple[bytes, tuple[str, int]]]) -> WireAudit:
        """:meth:`feed` each payload (or ``(payload, peer)``); returns ``self``."""
        for item in items:
            if isinstance(item, tuple):
                self.feed(*item)
            else:
                self.feed(item)
        return self

    def assert_clean(self) -> None:
        """Fail with the first problems found."""
        shown = "\n".join(self.problems[:25])
        assert not self.problems, (f"{len(self.problems)} wire problems in {self.packets} "
                                   f"packets:\n{shown}")

    def flows(self) -> list[Record]:
        """Data records that are flows (they carry a source address)."""
        return [r for r in self.records if not r.options and (8 in r.values or 27 in r.values)]

    # --- v5 ----------------------------------------------------------------------------------

    def _v5(self, data: bytes, peer: tuple[str, int], label: str) -> None:
        (_, count, uptime, secs, nsecs, seq, etype, eid, sampling) = V5_HEADER.unpack_from(data)
        if len(data) != V5_HEADER.size + V5_RECORD.size * count or not 1 <= count <= 30:
            self._problem(label, f"v5: {len(data)} bytes with count {count}")
            return
        if nsecs >= 1_000_000_000:
            self._problem(label, f"v5: unix_nsecs {nsecs} >= 10^9")
        if self.engine is not None and (etype, eid) != self.engine:
            self._problem(label, f"v5: engine {(etype, eid)}, expected {self.engine}")
        if self.v5_sampling is not None and sampling != self.v5_sampling:
            self._problem(label, f"v5: sampling_interval {sampling:#x}, "
                                 f"expected {self.v5_sampling:#x}")
        stream = self._stream(peer, 5, etype << 8 | eid)  # both engine fields: the stream
        self._sequence(stream, seq, label, "v5 flow_sequence")
        self._clock(stream, (secs * 10**9 + nsecs, uptime), label, "v5")
        self.uptimes[self.packets] = uptime
        stream.next_sequence = (seq + count) & 0xFFFFFFFF
        stream.packets += 1
        for i in range(count):
            values = V5_RECORD.unpack_from(data, V5_HEADER.size + i * V5_RECORD.size)
            if values[11] or values[19] != b"\0\0":
                self._problem(label, f"v5 record {i}: pad bytes not zero")
            rec = {ie: v for ie, v in zip(V5_FIELDS, values, strict=True) if ie is not None}
            self.records.append(Record(5, eid, 0, rec, False, secs, self.packets))

    # --- v9 ----------------------------------------------------------------------------------

    def _v9(self, data: bytes, peer: tuple[str, int], label: str) -> None:
        _, count, uptime, secs, seq, source = V9_HEADER.unpack_from(data)
        stream = self._stream(peer, 9, source)
        self._sequence(stream, seq, label, "v9 sequence")
        self._clock(stream, (secs, uptime), label, "v9")
        self.uptimes[self.packets] = uptime
        stream.next_sequence = (seq + 1) & 0xFFFFFFFF
        index = stream.packets
        stream.packets += 1
        records = 0
        for set_id, body, pos in self._sets(data, V9_HEADER.size, label, "v9"):
            if (len(body) + 4) % 4:
                self._problem(label, f"v9 flowset {set_id} at {pos}: length {len(body) + 4} "
                                     "is not a multiple of 4")
            if set_id == 0:
                records += self._v9_templates(stream, body, index, secs, label)
            elif set_id == 1:
                records += self._v9_options(stream, body, index, secs, label)
            elif set_id < 256:
                self._problem(label, f"v9 reserved flowset id {set_id}")
            else:
                records += self._data(stream, 9, source, set_id, body, index, secs, label)
        if count != records:
            self._problem(label, f"v9 count {count}, the packet holds {records} records")

    def _v9_templates(self, stream: Stream, body: bytes, index: int, secs: int,
                      label: str) -> int:
        pos, n = 0, 0
        while len(body) - pos >= 4:
            tid, nfields = struct.unpack_from("!HH", body, pos)
            if tid == 0 and nfields == 0 and not any(body[pos:]):
                break  # padding
            pos += 4
            fields = [(*struct.unpack_from("!HH", body, pos + 4 * k), 0) for k in range(nfields)]
            pos += 4 * nfields
            self._define(stream, tid, Template(fields, 0, index, secs), label, "v9")
            n += 1
        return n

    def _v9_options(self, stream: Stream, body: bytes, index: int, secs: int,
                    label: str) -> int:
        pos, n = 0, 0
        while len(body) - pos >= 6:
            tid, scope_len, option_len = struct.unpack_from("!HHH", body, pos)
            if tid == 0 and not any(body[pos:]):
                break  # padding
            pos += 6
            if scope_len % 4 or option_len % 4 or not scope_len:
                self._problem(label, f"v9 options template {tid}: scope length {scope_len}, "
                                     f"option length {option_len} (bytes, multiples of 4, "
                                     "scope > 0)")
                return n
            nfields = (scope_len + option_len) // 4
            fields = [(*struct.unpack_from("!HH", body, pos + 4 * k), 0) for k in range(nfields)]
            pos += 4 * nfields
            for ftype, _, _ in fields[:scope_len // 4]:
                if not 1 <= ftype <= 5:
                    self._problem(label, f"v9 options template {tid}: scope type {ftype}")
            self._define(stream, tid, Template(fields, scope_len // 4, index, secs), label, "v9")
            n += 1
        if any(body[pos:]):
            self._problem(label, "v9 options flowset: non-zero padding")
        return n

    # --- IPFIX -------------------------------------------------------------------------------

    def _ipfix(self, data: bytes, peer: tuple[str, int], label: str) -> None:
        _, length, export_s, seq, domain = IPFIX_HEADER.unpack_from(data)
        if length != len(data):
            self._problem(label, f"ipfix: header length {length}, message {len(data)}")
        stream = self._stream(peer, 10, domain)
        self._sequence(stream, seq, label, "ipfix sequence")
        self._clock(stream, (export_s,), label, "ipfix export time")
        index = stream.packets
        stream.packets += 1
        data_records = 0
        for set_id, body, _ in self._sets(data, IPFIX_HEADER.size, label, "ipfix"):
            if set_id in (2, 3):
                self._ipfix_templates(stream, domain, set_id, body, index, export_s, label)
            elif set_id < 256:
                self._problem(label, f"ipfix: reserved set id {set_id}")
            else:
                data_records += self._data(stream, 10, domain, set_id, body, index, export_s,
                                           label)
        stream.next_sequence = (seq + data_records) & 0xFFFFFFFF

    def _ipfix_templates(self, stream: Stream, domain: int, set_id: int, body: bytes,
                         index: int, secs: int, label: str) -> None:
        pos = 0
        while len(body) - pos >= 4:
            tid, nfields = struct.unpack_from("!HH", body, pos)
            pos += 4
            if nfields == 0:
                if tid < 256 and tid not in (2, 3) and not any(body[pos - 4:]):
                    break  # padding
                if self.udp:
                    self._problem(label, f"ipfix: template withdrawal of {tid} over UDP")
                self.withdrawals.append((domain, tid))
                if tid in (2, 3):  # 8.1: all templates of this Set's kind
                    if tid != set_id:
                        self._problem(label, f"ipfix: withdrawal of all ({tid}) in set {set_id}")
                    options = set_id == 3
                    stream.templates = {k: t for k, t in stream.templates.items()
                                        if (t.scopes > 0) != options}
                else:
                    stream.templates.pop(tid, None)
                continue
            scopes = 0
            if set_id == 3:
                scopes = struct.unpack_from("!H", body, pos)[0]
                pos += 2
                if not 0 < scopes <= nfields:
                    self._problem(label, f"ipfix options template {tid}: scope count {scopes}")
            fields = []
            for _ in range(nfields):
                ie, flen = struct.unpack_from("!HH", body, pos)
                pos += 4
                pen = 0
                if ie & ENTERPRISE_BIT:
                    pen = struct.unpack_from("!I", body, pos)[0]
                    pos += 4
                    if not pen:
                        self._problem(label, f"template {tid}: enterprise bit with number 0")
                ie &= 0x7FFF
                want = FULL_SIZE.get(ie) if not pen else None
                if want is not None and flen != want:
                    self._problem(label, f"template {tid}: IE {ie} in {flen} octets, "
                                         f"RFC 7011 6.2 wants {want}")
                fields.append((ie, flen, pen))
            self._define(stream, tid, Template(fields, scopes, index, secs), label, "ipfix")
        if any(body[pos:]):
            self._problem(label, f"ipfix template set {set_id}: non-zero padding")

    # --- shared ------------------------------------------------------------------------------

    def _stream(self, peer: tuple[str, int], version: int, domain: int) -> Stream:
        """v5/v9 streams are the exporter's address and Source ID / engine (RFC 3954 section
        5.1, as nfcapd keys them); IPFIX over UDP adds the port (a transport session)."""
        sender = peer if version == 10 else peer[0]
        return self.streams.setdefault((sender, version, domain), Stream())

    def _sequence(self, stream: Stream, seq: int, label: str, what: str) -> None:
        if stream.next_sequence is None and not self.from_start:
            return
        want = 0 if stream.next_sequence is None else stream.next_sequence
        ahead = (seq - want) & 0xFFFFFFFF
        if self.lossy and ahead < 1 << 31:
            self.missing += ahead
        elif seq != want:
            self._problem(label, f"{what} {seq}, expected {want}")

    def _clock(self, stream: Stream, times: tuple[int, ...], label: str, what: str) -> None:
        """Header times never go back within a stream: ``times`` is the unix time (strictly)
        and, v5/v9, sysUpTime (which may wrap at 2^32 ms)."""
        for i, (old, new) in enumerate(zip(stream.last_time, times, strict=False)):
            back = 0 < (old - new) & 0xFFFFFFFF < 1 << 31 if i else new < old  # 1: sysUpTime
            if back:
                self._problem(label, f"{what}: header time {new} before the previous {old}")
        stream.last_time = times

    def _sets(self, data: bytes, pos: int, label: str,
              what: str) -> Iterable[tuple[int, bytes, int]]:
        while pos < len(data):
            if len(data) - pos < 4:
                self._problem(label, f"{what}: {len(data) - pos} stray bytes at the end")
                return
            set_id, length = SET.unpack_from(data, pos)
            if length < 4 or pos + length > len(data):
                self._problem(label, f"{what}: set {set_id} at {pos} has length {length}")
                return
            yield set_id, data[pos + 4:pos + length], pos
            pos += length

    def _define(self, stream: Stream, tid: int, tpl: Template, label: str, what: str) -> None:
        if tid < 256:
            self._problem(label, f"{what}: template id {tid} < 256")
        old = stream.templates.get(tid)
        # v9 has no withdrawal and IPFIX over UDP none a collector must see (RFC 7011 8.4):
        # a new definition replaces the old one for the data after it; TCP/file must withdraw
        if old is not None and (old.fields, old.scopes) != (tpl.fields, tpl.scopes) \
                and what == "ipfix" and not self.udp:
            self._problem(label, f"{what}: template {tid} redefined without withdrawal")
        stream.templates[tid] = tpl

    def _data(self, stream: Stream, version: int, domain: int, tid: int, body: bytes,
              index: int, secs: int, label: str) -> int:
        tpl = stream.templates.get(tid)
        if tpl is None:
            self._problem(label, f"data set {tid} before its template")
            return 0
        age = index - tpl.sent_packet
        if self.refresh_packets and age >= self.refresh_packets:
            self._problem(label, f"template {tid} last sent {age} packets ago "
                                 f"(refresh every {self.refresh_packets})")
        if self.refresh_s and secs - tpl.sent_time > self.refresh_s:
            self._problem(label, f"template {tid} last sent {secs - tpl.sent_time} s ago "
                                 f"(refresh every {self.refresh_s} s)")
        fixed = all(length != VARIABLE for _, length, _ in tpl.fields)
        size = sum(length for _, length, _ in tpl.fields) if fixed else 0
        pos, n = 0, 0
        while pos < len(body):
            if fixed and len(body) - pos < size:
                break
            values: dict[Any, Any] = {}
            for ie, length, pen in tpl.fields:
                if length == VARIABLE:
                    length, pos = body[pos], pos + 1
                    if length == 255:
                        length, pos = struct.unpack_from("!H", body, pos)[0], pos + 2
                raw = body[pos:pos + length]
                if len(raw) < length:
                    self._problem(label, f"set {tid}: record {n} cut at IE {ie}")
                    return n
                pos += length
                key = (pen, ie) if pen else ie
                values[key] = raw if ie in BYTES_IES or pen or length > 8 else \
                    int.from_bytes(raw, "big")
            n += 1
            self.records.append(Record(version, domain, tid, values, tpl.scopes > 0, secs,
                                       self.packets))
            if not fixed and len(body) - pos < 4 and not any(body[pos:]):
                break  # padding after variable-length records
        rest = body[pos:]
        if any(rest):
            self._problem(label, f"set {tid}: {len(rest)} trailing bytes not zero")
        if fixed and size and len(rest) >= size:
            self._problem(label, f"set {tid}: padding {len(rest)} >= record size {size}")
        return n

    def _problem(self, label: str, text: str) -> None:
        self.problems.append(f"{label}: {text}")
