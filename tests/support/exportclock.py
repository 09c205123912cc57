"""The export clock invariant, checked on the wire: no exported time lies after its packet's.

What it owns: an independent parser of NetFlow v5, NetFlow v9 and IPFIX datagrams (or IPFIX
messages read from a TCP stream or a file) that keeps templates per stream and reads every
time a record carries, and :func:`assert_export_clock`, which fails a test on any of:

* a record whose end (v5 ``Last``, v9 ``LAST_SWITCHED``, IPFIX ``flowEnd*``) or start lies
  after the time in its packet header (v5/v9 ``sysUpTime``; IPFIX ``exportTime``, whole
  seconds), or a NAT event time (``observationTimeMilliseconds``) after it: RFC 3954 flow
  times are uptimes of the past, and collectors computing ``export time - (uptime - t)``
  would see flows end after they were exported;
* a record that starts after it ends;
* a v5/v9 header whose ``unix_secs``/``sysUpTime`` pair gives a boot time later than an
  earlier packet's (the uptime origin may only move back, see ``ExportState.observe``);
* data whose template never arrived, and a stream with no timed record at all (a check that
  checked nothing).

It does not use the agent's encoders, so it is a second opinion on what they wrote.
:func:`clock_tap` is the way live tests use it: a UDP sink to add to an exporter's
``destination`` list (exporters mirror every datagram), checked when the block ends.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tests.support.collectors import UdpSink
from tests.support.netns import Netns

V5_HEADER = struct.Struct("!HHIIIIBBH")
V5_RECORD = struct.Struct("!4s4s4sHHIIIIHHxBBBHHBB2x")
V9_HEADER = struct.Struct("!HHIIII")
IPFIX_HEADER = struct.Struct("!HHIII")
VARIABLE = 0xFFFF

#: v9 uptime fields: FIRST_SWITCHED (22), LAST_SWITCHED (21), ms of sysUpTime
V9_FIRST, V9_LAST = 22, 21
#: absolute start/end pairs (IE id -> ms per unit, start/end); 323 is one time (NAT events)
ABSOLUTE_UNITS = {150: 1000, 151: 1000, 152: 1, 153: 1, 323: 1}
STARTS, ENDS = frozenset({150, 152, 22}), frozenset({151, 153, 21, 323})


@dataclass
class Timed:
    """The times of one record, in the scale of its header time (ms).

    :ivar start: ms, or ``None`` when the record has no start.
    :ivar end: ms, or ``None`` when the record has no end.
    """

    start: int | None
    end: int | None


@dataclass
class ClockReport:
    """What :class:`ExportClockChecker` saw: counts and every violation, described."""

    packets: int = 0
    records: int = 0
    problems: list[str] = field(default_factory=list)


class ExportClockChecker:
    """Feed it every datagram (or message) of one export stream, in order.

    Templates are kept per (version, source id / observation domain), as a collector does.
    """

    def __init__(self) -> None:
        self.templates: dict[tuple[int, int, int], tuple[list[tuple[int, int]], int]] = {}
        self.boot_ms: dict[tuple[int, int], int] = {}
        self.report = ClockReport()

    def feed(self, data: bytes, label: str = "") -> None:
        """Parse one datagram / message and record its problems."""
        label = label or f"packet {self.report.packets + 1}"
        self.report.packets += 1
        version = struct.unpack_from("!H", data)[0] if len(data) >= 2 else 0
        if version == 5:
            self._v5(data, label)
        elif version == 9:
            self._v9(data, label)
        elif version == 10:
            self._ipfix(data, label)
        else:
            self._problem(label, f"unknown version {version}")

    # --- the three formats -----------------------------------------------------------------

    def _v5(self, data: bytes, label: str) -> None:
        _, count, uptime, secs, nsecs, _, _, engine_id, _ = V5_HEADER.unpack_from(data)
        self._boot(label, (5, engine_id), secs * 1000 + nsecs // 1_000_000 - uptime)
        for i in range(count):
            fields = V5_RECORD.unpack_from(data, V5_HEADER.size + i * V5_RECORD.size)
            self._check(label, f"record {i}", Timed(fields[7], fields[8]), uptime, "sysUpTime")

    def _v9(self, data: bytes, label: str) -> None:
        _, _, uptime, secs, _, source = V9_HEADER.unpack_from(data)
        self._boot(label, (9, source), secs * 1000 - uptime)
        for set_id, body in _sets(data, V9_HEADER.size):
            if set_id in (0, 1):
                self._v9_templates(source, set_id, body)
            elif set_id >= 256:
                for n, rec in enumerate(self._records(label, (9, source, set_id), body)):
                    timed = _timed(rec, uptime_scale=True, boot_ms=secs * 1000 - uptime)
                    self._check(label, f"set {set_id} record {n}", timed, uptime, "sysUpTime")

    def _v9_templates(self, source: int, set_id: int, body: bytes) -> None:
        pos = 0
        while pos + 4 <= len(body):
            if set_id == 0:
                tid, nfields = struct.unpack_from("!HH", body, pos)
                pos += 4
                scopes = 0
            else:
                tid, scope_len, option_len = struct.unpack_from("!HHH", body, pos)
                pos += 6
                nfields, scopes = (scope_len + option_len) // 4, scope_len // 4
            if tid < 256:  # padding
                return
            specs = [struct.unpack_from("!HH", body, pos + 4 * k) for k in range(nfields)]
            pos += 4 * nfields
            self.templates[(9, source, tid)] = (specs, scopes)

    def _ipfix(self, data: bytes, label: str) -> None:
        _, _, export_s, _, domain = IPFIX_HEADER.unpack_from(data)
        for set_id, body in _sets(data, IPFIX_HEADER.size):
            if set_id in (2, 3):
                self._ipfix_templates(domain, set_id, body)
            elif set_id >= 256:
                for n, rec in enumerate(self._records(label, (10, domain, set_id), body)):
                    timed = _timed(rec, uptime_scale=False, boot_ms=0)
                    self._check(label, f"set {set_id} record {n}", timed, export_s * 1000,
                                "exportTime")

    def _ipfix_templates(self, domain: int, set_id: int, body: bytes) -> None:
        pos = 0
        while pos + 4 <= len(body):
            tid, nfields = struct.unpack_from("!HH", body, pos)
            pos += 4
            scopes = 0
            if set_id == 3 and nfields:
                scopes = struct.unpack_from("!H", body, pos)[0]
                pos += 2
            if tid < 256:
                return
            specs = []
            for _ in range(nfields):
                ie, length = struct.unpack_from("!HH", body, pos)
                pos += 4
                if ie & 0x8000:  # enterprise number follows
                    pos += 4
                specs.append((ie & 0x7FFF, length))
            self.templates[(10, domain, tid)] = (specs, scopes)

    # --- records ---------------------------------------------------------------------------

    def _records(self, label: str, key: tuple[int, int, int],
                 body: bytes) -> list[dict[int, int]]:
        known = self.templates.get(key)
        if known is None:
            self._problem(label, f"data set {key[2]} before its template")
            return []
        specs, _ = known
        fixed = all(length != VARIABLE for _, length in specs)
        size = sum(length for _, length in specs) if fixed else 0
        out, pos = [], 0
        while pos < len(body) and (not fixed or pos + size <= len(body)):
            rec: dict[int, int] = {}
            for ie, length in specs:
                if length == VARIABLE:
                    length, pos = body[pos], pos + 1
                    if length == 255:
                        length, pos = struct.unpack_from("!H", body, pos)[0], pos + 2
                if ie in ABSOLUTE_UNITS or ie in (V9_FIRST, V9_LAST) and length <= 8:
                    rec[ie] = int.from_bytes(body[pos:pos + length], "big")
                pos += length
            if not fixed and pos > len(body):
                break
            out.append(rec)
            if not fixed and len(body) - pos < 4:  # padding
                break
        return out

    def _check(self, label: str, what: str, timed: Timed, header: int, name: str) -> None:
        if timed.start is None and timed.end is None:
            return
        self.report.records += 1
        if timed.start is not None and timed.end is not None and timed.start > timed.end:
            self._problem(label, f"{what}: start {timed.start} after end {timed.end}")
        for kind, value in (("start", timed.start), ("end", timed.end)):
            if value is not None and value > header:
                self._problem(label, f"{what}: {kind} {value} after the header's {name} "
                                     f"{header} (by {value - header} ms)")

    def _boot(self, label: str, key: tuple[int, int], boot_ms: int) -> None:
        earlier = self.boot_ms.get(key)
        if earlier is not None and boot_ms > earlier + 1:
            self._problem(label, f"boot time {boot_ms} (unix_secs*1000 - sysUpTime) is later "
                                 f"than an earlier packet's {earlier}")
        self.boot_ms[key] = boot_ms if earlier is None else min(earlier, boot_ms)

    def _problem(self, label: str, text: str) -> None:
        self.report.problems.append(f"{label}: {text}")


def _sets(data: bytes, offset: int) -> Iterable[tuple[int, bytes]]:
    while offset + 4 <= len(data):
        set_id, length = struct.unpack_from("!HH", data, offset)
        if length < 4:
            return
        yield set_id, data[offset + 4:offset + length]
        offset += length


def _timed(rec: dict[int, int], uptime_scale: bool, boot_ms: int) -> Timed:
    """The record's start and end in ms of the header's scale.

    v9 (``uptime_scale``): uptimes as they are, absolute ms minus the header's boot time.
    IPFIX: absolute ms since the epoch.
    """
    start = end = None
    for ie, value in rec.items():
        if ie in (V9_FIRST, V9_LAST):
            ms = value if uptime_scale else None
        else:
            ms = value * ABSOLUTE_UNITS[ie] - (boot_ms if uptime_scale else 0)
        if ms is None:
            continue
        if ie in STARTS:
            start = ms if start is None else min(start, ms)
        if ie in ENDS:
            end = ms if end is None else max(end, ms)
    return Timed(start, end)


def check_export_clock(datagrams: Iterable[bytes]) -> ClockReport:
    """Parse one export stream's datagrams in order; return what was seen and every problem."""
    checker = ExportClockChecker()
    for data in datagrams:
        checker.feed(data)
    return checker.report


def assert_export_clock(datagrams: Iterable[bytes], min_records: int = 1,
                        udp: bool = True, lossy: bool = False) -> ClockReport:
    """Fail unless every record of every datagram respects the export clock (module doc),
    and every datagram the RFC invariants of :class:`tests.support.wireaudit.WireAudit`
    (sequence numbers continuous from the first datagram on, counts, lengths, padding,
    templates before data; the datagrams are one stream).

    :param min_records: at least this many timed records must have been checked.
    :param udp: ``False`` for IPFIX messages of a TCP session or file (withdrawals allowed).
    :param lossy: some datagrams were lost on the way: sequence numbers may jump ahead.
    """
    from tests.support.wireaudit import WireAudit

    datagrams = list(datagrams)
    WireAudit(udp=udp, from_start=False, lossy=lossy).feed_all(datagrams).assert_clean()
    report = check_export_clock(datagrams)
    shown = "\n".join(report.problems[:20])
    assert not report.problems, (f"{len(report.problems)} export clock violations in "
                                 f"{report.packets} packets ({report.records} records):\n{shown}")
    assert report.records >= min_records, (f"only {report.records} timed records in "
                                           f"{report.packets} packets")
    return report


@contextmanager
def clock_tap(min_records: int = 1, host: str = "127.0.0.1",
              netns: Netns | None = None) -> Iterator[UdpSink]:
    """A :class:`~tests.support.collectors.UdpSink` whose datagrams must pass
    :func:`assert_export_clock` when the block ends without an error.

    Add ``tap.endpoint`` to the exporter's destinations and stop the agent inside the block
    (its last flush is checked too)::

        with Nfcapd(dir) as cap, clock_tap() as tap:
            ...destination = ["127.0.0.1:{cap.port}", "{tap.endpoint}"]...
    """
    sink = UdpSink(host=host, netns=netns)
    try:
        yield sink
        assert_export_clock(sink.collect(), min_records)
    finally:
        sink.close()
