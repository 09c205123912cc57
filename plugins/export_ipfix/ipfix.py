"""IPFIX message encoding (RFC 7011): templates, sets, messages, sequence numbers.

This module owns the wire format of IPFIX messages and nothing else (no sockets, no clocks):

* :class:`Template`: a Template Record or Options Template Record (RFC 7011 section 3.4.1,
  3.4.2.2), its withdrawal (section 8.1) and the fixed length of its Data Records;
* :class:`Session`: the export state of one transport session and Observation Domain
  (sequence number, templates already sent, template refresh counters), owned by the caller;
* :func:`encode_messages`: packs template sets and data sets into messages no longer than a
  size limit, never splitting a record, with sets padded to 4 octets (section 3.3.1) and the
  header's Sequence Number = data records sent in this session *before* this message, modulo
  2^32 (section 3.1 with erratum 4396; template records do not count);
* the flow templates and their packers, which write Data Records from a FlowBatch's columns
  in bulk (one structured array per template and batch, ``agent/wire.py``).

Header (section 3.1), 16 octets::

    0 Version (10) | 2 Length | 4 Export Time (s) | 8 Sequence Number | 12 Observation Domain ID

Set header (section 3.3.2): Set ID (2 Template, 3 Options Template, >= 256 Data) and Length.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from netflow_agent.api import (
    IE_BY_ID,
    VARIABLE_LENGTH,
    Constant,
    EncodeError,
    EpochMs,
    FlowBatch,
    FlowField,
    FlowRecord,
    IcmpTypeCode,
    PackedRecords,
    RowClasses,
    classify_rows,
    flow_columns,
    flow_schema,
    frame_packets,
    join_records,
    pack_template,
    template_dtype,
)

VERSION = 10
SET_ID_TEMPLATE = 2
SET_ID_OPTIONS_TEMPLATE = 3
MIN_TEMPLATE_ID = 256
MAX_MESSAGE_LENGTH = 65535
SEQUENCE_MODULO = 1 << 32

# Version, Length, Export Time, Sequence Number, Observation Domain ID (section 3.1)
HEADER = struct.Struct("!HHIII")
_SEQUENCE_AT = 8  # the sequence number's offset in HEADER
# Set ID, Length (section 3.3.2)
SET_HEADER = struct.Struct("!HH")
# Template ID, Field Count (section 3.4.1)
TEMPLATE_HEADER = struct.Struct("!HH")
# Template ID, Field Count, Scope Field Count (section 3.4.2.2)
OPTIONS_TEMPLATE_HEADER = struct.Struct("!HHH")
# Information Element identifier (E bit 0), Field Length (section 3.2)
FIELD_SPECIFIER = struct.Struct("!HH")
# the same with the Enterprise bit set, then the Enterprise Number (section 3.2)
ENTERPRISE_FIELD_SPECIFIER = struct.Struct("!HHI")
ENTERPRISE_BIT = 0x8000

_NS_PER_MS = 1_000_000


@dataclass(frozen=True, slots=True)
class Template:
    """A (Options) Template: the field layout of one kind of Data Record.

    :param template_id: 256-65535; also the Set ID of its Data Sets.
    :param fields: ``(ie_id, length)`` pairs in record order; length 65535 = variable length.
    :param scope_count: number of leading scope fields; > 0 makes an Options Template.
    :param name: a short label for logs and tests.
    :param extra: the flow schema's fields at the end of ``fields`` (declared and checked by
        :class:`~agent.schema.FlowField`, so they may be IEs this agent's table does not
        know, or enterprise-specific ones, sent with the Enterprise bit).
    """

    template_id: int
    fields: tuple[tuple[int, int], ...]
    scope_count: int = 0
    name: str = ""
    extra: tuple[FlowField, ...] = ()
    #: :meth:`encode`'s bytes and :attr:`record_length`, built once (every message that
    #: announces or refreshes the template used to build them again)
    _record: bytes = field(init=False, repr=False, compare=False)
    _length: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not MIN_TEMPLATE_ID <= self.template_id <= 0xFFFF:
            raise ValueError(f"template id {self.template_id} outside 256-65535")
        if not self.fields or not 0 <= self.scope_count < len(self.fields) + 1:
            raise ValueError(f"template {self.template_id}: bad field or scope count")
        for ie_id, length in self.fields[:len(self.fields) - len(self.extra)]:
            if ie_id not in IE_BY_ID or length <= 0:
                raise ValueError(f"template {self.template_id}: bad field ({ie_id}, {length})")
        object.__setattr__(self, "_record", self._build())
        fixed = all(length != VARIABLE_LENGTH for _, length in self.fields)
        object.__setattr__(self, "_length",
                           sum(length for _, length in self.fields) if fixed else 0)

    @property
    def is_options(self) -> bool:
        """Whether this is an Options Template (scope field count > 0)."""
        return self.scope_count > 0

    @property
    def set_id(self) -> int:
        """The Set ID its template record travels in: 2 (template) or 3 (options template)."""
        return SET_ID_OPTIONS_TEMPLATE if self.is_options else SET_ID_TEMPLATE

    @property
    def record_length(self) -> int:
        """Length of every Data Record of this template; 0 when a field is variable-length."""
        return self._length

    def encode(self) -> bytes:
        """The (Options) Template Record, without set header."""
        return self._record

    def _build(self) -> bytes:
        count = len(self.fields)
        if self.is_options:
            head = OPTIONS_TEMPLATE_HEADER.pack(self.template_id, count, self.scope_count)
        else:
            head = TEMPLATE_HEADER.pack(self.template_id, count)
        pens = [0] * (count - len(self.extra)) + [f.enterprise for f in self.extra]
        return head + b"".join(
            ENTERPRISE_FIELD_SPECIFIER.pack(i | ENTERPRISE_BIT, n, pen) if pen
            else FIELD_SPECIFIER.pack(i, n)
            for (i, n), pen in zip(self.fields, pens, strict=True))

    def withdrawal(self) -> bytes:
        """The Template Withdrawal Record (section 8.1): Template ID and Field Count 0."""
        return TEMPLATE_HEADER.pack(self.template_id, 0)


@dataclass(slots=True)
class Session:
    """Export state of one transport session for one Observation Domain.

    UDP refreshes templates every ``refresh_packets`` messages or ``refresh_ns`` nanoseconds,
    whichever comes first (RFC 7011 section 8.4); TCP sends each template once per
    connection (both 0). Both count from the last message that repeated *every* announced
    template: announcing one new template is no refresh of the others.

    :ivar sequence: data records sent in this session before the next message, mod 2^32.
    :ivar announced: templates already sent in this session, by id, in first-sent order.
    """

    observation_domain_id: int
    refresh_packets: int = 0
    refresh_ns: int = 0
    sequence: int = 0
    announced: dict[int, Template] = field(default_factory=dict)
    messages_since_templates: int = 0
    templates_sent_ns: int = 0
    force_templates: bool = False
    messages: int = 0
    records: int = 0
    octets: int = 0

    def refresh_due(self, now_ns: int) -> bool:
        """Whether the next message must repeat every announced template."""
        if not self.announced:
            return False
        if self.force_templates:
            return True
        if self.refresh_packets and self.messages_since_templates >= self.refresh_packets:
            return True
        return bool(self.refresh_ns) and now_ns - self.templates_sent_ns >= self.refresh_ns


@dataclass(slots=True)
class Message:
    """One encoded IPFIX message and what it carries.

    :ivar data: the message bytes.
    :ivar records: Data Records in it (flow, NAT event and options records).
    """

    data: bytes
    records: int


@dataclass(slots=True)
class DataGroup:
    """Encoded Data Records of one template, in order (input to :func:`encode_messages`)."""

    template: Template
    records: Sequence[bytes]


def _pad(length: int) -> int:
    return -length & 3


class _MessageBuilder:
    """Fills messages set by set; the caller guarantees records fit an empty message."""

    def __init__(self, session: Session, export_time: int, max_length: int, now_ns: int):
        self.session = session
        self.export_time = export_time
        self.max_length = max_length
        self.now_ns = now_ns
        self.out: list[Message] = []
        #: a refresh's templates went out and no data record since (they may fill whole
        #: messages): the next message does not start another refresh, so a record that
        #: fits only without them is not pushed out by templates for ever
        self.refresh_pending_data = False
        self._reset()

    def _reset(self) -> None:
        self.parts: list[bytes] = []
        self.length = HEADER.size
        self.records = 0
        self.refreshed = False  # holds a refresh: every announced template (or the first)

    def checkpoint(self) -> tuple[Any, ...]:
        """The builder's and the session's state now, for :meth:`rollback`."""
        s = self.session
        saved = {f.name: getattr(s, f.name) for f in fields(s)}
        saved["announced"] = dict(s.announced)  # add_templates fills it in place
        return (len(self.out), list(self.parts), self.length, self.records, self.refreshed,
                self.refresh_pending_data, saved)

    def rollback(self, point: tuple[Any, ...]) -> None:
        """Forget every message, set and session change since ``point`` (:meth:`checkpoint`):
        the sequence number, the announced templates and the refresh state are as if the
        records added since were never seen."""
        (out_len, parts, self.length, self.records, self.refreshed, self.refresh_pending_data,
         saved) = point
        del self.out[out_len:]
        self.parts = parts
        for name, value in saved.items():
            setattr(self.session, name, value)

    def room(self) -> int:
        """Octets still free in the current message."""
        return self.max_length - self.length

    def add_set(self, set_id: int, body: bytes, records: int) -> None:
        """Append one set (header + body + padding) to the current message."""
        pad = _pad(SET_HEADER.size + len(body))
        self.parts.append(SET_HEADER.pack(set_id, SET_HEADER.size + len(body) + pad) + body)
        if pad:
            self.parts.append(bytes(pad))
        self.length += SET_HEADER.size + len(body) + pad
        self.records += records
        if records:
            self.refresh_pending_data = False

    def flush(self) -> None:
        """Close the current message (if it has any set) and start a new one."""
        if not self.parts:
            return
        s = self.session
        head = HEADER.pack(VERSION, self.length, self.export_time, s.sequence,
                           s.observation_domain_id)
        self.out.append(Message(head + b"".join(self.parts), self.records))
        s.sequence = (s.sequence + self.records) % SEQUENCE_MODULO
        s.messages += 1
        s.records += self.records
        s.octets += self.length
        # messages since the last one that carried templates, that one included
        s.messages_since_templates = 1 if self.refreshed else s.messages_since_templates + 1
        self._reset()

    def begin_message(self) -> None:
        """Start a message: put the refresh templates first when they are due."""
        if self.parts:
            return
        if self.session.refresh_due(self.now_ns) and not self.refresh_pending_data:
            self.add_templates(list(self.session.announced.values()))

    def add_templates(self, templates: Sequence[Template]) -> None:
        """Put template records into the current message (and more messages if needed).

        When they are every template the session announced (a refresh, or its first), the
        refresh counters restart from this message."""
        s = self.session
        if s.announced.keys() <= {t.template_id for t in templates}:
            self.refreshed = self.refresh_pending_data = True
            s.templates_sent_ns = self.now_ns
            s.force_templates = False
        for set_id in (SET_ID_TEMPLATE, SET_ID_OPTIONS_TEMPLATE):
            wanted = [t.encode() for t in templates if t.set_id == set_id]
            while wanted:
                taken, size = 0, SET_HEADER.size
                while taken < len(wanted) and size + len(wanted[taken]) + 3 <= self.room():
                    size += len(wanted[taken])
                    taken += 1
                if not taken:
                    if not self.parts:
                        raise EncodeError(f"a template record does not fit into "
                                          f"{self.max_length} octets")
                    self.flush()
                    continue
                self.add_set(set_id, b"".join(wanted[:taken]), 0)
                del wanted[:taken]
        for t in templates:
            s.announced.setdefault(t.template_id, t)

    def ensure_announced(self, template: Template, first_record: int) -> None:
        """Send ``template`` in this message unless the session already has it."""
        if template.template_id in self.session.announced:
            return
        need = SET_HEADER.size + len(template.encode()) + 3 + SET_HEADER.size + first_record + 3
        if need > self.room():
            self.flush()
            self.begin_message()
        self.add_templates([template])

    def add_group(self, group: DataGroup) -> None:
        """Append all records of one template, starting new messages as they fill up."""
        records = group.records
        template = group.template
        fixed = template.record_length
        i, n = 0, len(records)
        block = memoryview(join_records(records)) if fixed else None
        while i < n:
            if block is not None and not self.parts:  # whole messages in a tight loop
                i = self._full_messages(template, block, i, n)
                if i >= n:
                    break
            self.begin_message()
            self.ensure_announced(template, fixed or len(records[i]))
            j = self._fit(records, i, fixed)
            if j == i:
                if not self.parts:
                    raise EncodeError(f"record of template {template.template_id} "
                                      f"({len(records[i])} octets) exceeds the message size")
                self.flush()
                continue
            self.add_set(template.template_id, join_records(records[i:j]), j - i)
            i = j
            if i < n:  # the next record did not fit: nor does it in a new set here
                self.flush()

    def _full_messages(self, template: Template, block: memoryview, i: int, n: int) -> int:
        """From a fresh message on, close the messages that hold only one full data set of
        ``template``'s fixed-length records and are followed by more of them: the bytes
        :meth:`add_set` and :meth:`flush` would write, without their per-message
        bookkeeping. Stops where a template (first use, refresh) is due. :return: the next
        record's index."""
        s, fixed = self.session, template.record_length
        if template.template_id not in s.announced or s.refresh_due(self.now_ns):
            return i
        k = max(self.room() - SET_HEADER.size - 3, 0) // fixed  # as _fit: worst-case pad
        if not k:
            return i
        count = (n - i - 1) // k  # only messages the slow path would close too
        if s.refresh_packets:
            count = min(count, s.refresh_packets - s.messages_since_templates)
        if count <= 0:
            return i
        body = k * fixed
        pad = _pad(SET_HEADER.size + body)
        length = HEADER.size + SET_HEADER.size + body + pad
        set_head = SET_HEADER.pack(template.template_id, SET_HEADER.size + body + pad)
        head = HEADER.pack(VERSION, length, self.export_time, 0, s.observation_domain_id)
        # each message: the header with its sequence number (k more each), the set header,
        # k records, padding; in C, one bytes object per message (agent/_wirepack.c)
        self.out += [Message(data, k) for data in frame_packets(
            block, i * fixed, body, count, head, _SEQUENCE_AT, s.sequence, set_head,
            bytes(pad), seq_step=k)]
        s.sequence = (s.sequence + count * k) % SEQUENCE_MODULO
        s.messages += count
        s.records += count * k
        s.octets += count * length
        s.messages_since_templates += count
        self.refresh_pending_data = False  # data went out (as add_set notes)
        return i + count * k

    def _fit(self, records: Sequence[bytes], start: int, fixed: int) -> int:
        """Index after the last record (from ``start``) that fits into the current message."""
        room = self.room() - SET_HEADER.size - 3  # worst-case padding
        if fixed:
            return min(len(records), start + max(room, 0) // fixed)
        end = start
        while end < len(records) and len(records[end]) <= room:
            room -= len(records[end])
            end += 1
        return end


def encode_messages(
    session: Session,
    groups: Iterable[DataGroup],
    *,
    export_time: int,
    max_length: int,
    now_ns: int,
    templates: Sequence[Template] = (),
    refused: list[DataGroup] | None = None,
) -> list[Message]:
    """Encode data records (and templates) into IPFIX messages.

    Templates not yet sent in ``session`` are put into the message before their first Data
    Record; when the session's refresh is due, every announced template opens the message.

    :param session: the transport session's state; sequence and counters are advanced.
    :param groups: data records per template, in the order they should be sent.
    :param export_time: Export Time for the header, seconds since the epoch.
    :param max_length: largest message in octets (UDP: path MTU minus IP/UDP headers).
    :param now_ns: monotonic clock for the time-based template refresh.
    :param templates: templates to send now even without data (new TCP connection).
    :param refused: when given, a group that cannot be encoded (a record or its template
        does not fit into an empty message) is appended to it and left out, and the other
        groups are encoded: neither the messages nor ``session`` keep a trace of it, so no
        later data set goes without its template and the sequence number counts only the
        records in the messages returned (RFC 7011 sections 3.1 and 8).
    :return: the messages, in order.
    :raises EncodeError: a single record does not fit into an empty message (without
        ``refused``, or for ``templates``).
    """
    max_length = min(max_length, MAX_MESSAGE_LENGTH)
    builder = _MessageBuilder(session, export_time, max_length, now_ns)
    if templates:
        builder.add_templates(templates)
    for group in groups:
        if not group.records:
            continue
        if refused is None:
            builder.add_group(group)
            continue
        point = builder.checkpoint()
        try:
            builder.add_group(group)
        except EncodeError:
            builder.rollback(point)
            refused.append(group)
    builder.flush()
    return builder.out


def encode_withdrawals(session: Session, templates: Sequence[Template], export_time: int) -> bytes:
    """One message withdrawing ``templates`` (RFC 7011 section 8.1; TCP/SCTP only, never UDP).

    :param session: the session; the templates are forgotten from it.
    :param templates: the templates to withdraw.
    :param export_time: Export Time for the header.
    """
    parts = []
    for set_id in (SET_ID_TEMPLATE, SET_ID_OPTIONS_TEMPLATE):
        body = b"".join(t.withdrawal() for t in templates if t.set_id == set_id)
        if body:
            parts.append(SET_HEADER.pack(set_id, SET_HEADER.size + len(body)) + body)
    for t in templates:
        session.announced.pop(t.template_id, None)
    length = HEADER.size + sum(map(len, parts))
    head = HEADER.pack(VERSION, length, export_time, session.sequence,
                       session.observation_domain_id)
    return head + b"".join(parts)


# --- variable-length fields (section 7) ------------------------------------------------------


def encode_varlen(value: bytes) -> bytes:
    """A variable-length field value with its length prefix (1 octet, or 255 + 2 octets).

    :param value: the field value (e.g. UTF-8 interfaceName).
    :raises EncodeError: longer than 65535 octets.
    """
    n = len(value)
    if n < 255:
        return bytes((n,)) + value
    if n > 0xFFFF:
        raise EncodeError(f"variable-length value of {n} octets exceeds 65535")
    return b"\xff" + n.to_bytes(2, "big") + value


# --- flow templates ----------------------------------------------------------------------------
#
# Four layouts per IP version: transport (ports + tcpControlBits) or ICMP (icmpTypeCode), each
# with or without routing information (next hop and prefix lengths), which is only sent when
# the record has it. Counters are full 8-octet unsigned64 (no reduced-size encoding).
# While the cache's flow sampler is on, the same layouts end with selectorId (302, 1 octet, as
# ipt_NETFLOW's BTPL_SELECTORID) under their own template IDs 288..295, so that a collector
# ties every flow to the Flow Selection Process announced in the selector options records.

FLOW_TEMPLATE_BASE = 256  # 256..263: flow templates, see flow_template_id()
SELECTOR_FLOW_TEMPLATE_BASE = 288  # 288..295: the same with selectorId (flow sampling on)
SELECTOR_ID_LENGTH = 1  # selectorId (unsigned64) reduced to 1 octet, as ipt_NETFLOW

_COMMON_TAIL = (
    (4, 1),  # protocolIdentifier
    (5, 1),  # ipClassOfService
)
_IFACES_AND_COUNTERS = (
    (10, 4),  # ingressInterface
    (14, 4),  # egressInterface
    (61, 1),  # flowDirection
    (60, 1),  # ipVersion
    (136, 1),  # flowEndReason
    (1, 8),  # octetDeltaCount
    (2, 8),  # packetDeltaCount
    (152, 8),  # flowStartMilliseconds
    (153, 8),  # flowEndMilliseconds
)


#: ``timestamps = "us"``: flowStartMicroseconds / flowEndMicroseconds replace 152/153
_MICROSECOND_TIMES = {152: 154, 153: 155}


def _flow_fields(ip_version: int, icmp: bool, routed: bool,
                 micro: bool = False) -> tuple[tuple[int, int], ...]:
    addrs = ((8, 4), (12, 4)) if ip_version == 4 else ((27, 16), (28, 16))
    route: tuple[tuple[int, int], ...] = ()
    if routed:
        route = ((15, 4), (9, 1), (13, 1)) if ip_version == 4 else ((62, 16), (29, 1), (30, 1))
    if icmp:
        l4: tuple[tuple[int, int], ...] = ((32 if ip_version == 4 else 139, 2),)
        flags: tuple[tuple[int, int], ...] = ()
    else:
        l4 = ((7, 2), (11, 2))
        flags = ((6, 2),)  # tcpControlBits
    tail: tuple[tuple[int, int], ...] = _IFACES_AND_COUNTERS
    if micro:
        tail = tuple((_MICROSECOND_TIMES.get(ie, ie), n) for ie, n in tail)
    return addrs + route + l4 + _COMMON_TAIL + flags + tail


def flow_template_id(ip_version: int, icmp: bool, routed: bool) -> int:
    """Template ID of a flow layout: 256 + v6*1 + icmp*2 + routed*4."""
    return FLOW_TEMPLATE_BASE + (ip_version == 6) + 2 * icmp + 4 * routed


#: seconds from the NTP era 0 (1900-01-01) to the Unix epoch
_NTP_EPOCH_OFFSET = 2_208_988_800


def ntp_microseconds(ns: int) -> int:
    """dateTimeMicroseconds (RFC 7011 section 6.1.9) of a time in ns since the Unix epoch.

    NTP format: seconds since 1900 in the upper 32 bits (wrapping, RFC 7011 6.1.9), the
    fraction of a second in units of 2^-32 s in the lower 32. The fraction is rounded up from
    whole microseconds, so a decoder that truncates to microseconds reads the flow's exact
    microsecond back.
    """
    seconds, rest_ns = divmod(ns, 1_000_000_000)
    fraction = -((-(rest_ns // 1000) << 32) // 1_000_000)  # ceil(us * 2^32 / 10^6)
    return (((seconds + _NTP_EPOCH_OFFSET) & 0xFFFFFFFF) << 32) | fraction


def ntp_microseconds_column(ns: np.ndarray) -> np.ndarray:
    """:func:`ntp_microseconds` of every element of an int64 ns column (vectorized)."""
    seconds, rest_ns = np.divmod(ns.astype(np.int64), 1_000_000_000)
    fraction = -((-((rest_ns // 1000) << 32)) // 1_000_000)
    high = ((seconds + _NTP_EPOCH_OFFSET) & 0xFFFFFFFF).astype(np.uint64) << np.uint64(32)
    return high | fraction.astype(np.uint64)


ICMP_PROTOCOLS = frozenset({1, 58})


@dataclass(frozen=True, slots=True)
class FlowLayout:
    """A flow template plus its packer (record array, and the rows of it to encode or
    ``None`` for all -> :class:`PackedRecords`)."""

    template: Template
    pack: Callable[[np.ndarray, np.ndarray | None], PackedRecords]
    ip_version: int
    micro: bool = False
    #: the rows it encodes (:func:`flow_template_id`: 256..263); the template ID is the same,
    #: or 32 more for a layout with selectorId
    row_class: int = 0


def _times(column: Callable[[str], np.ndarray],
           micro: bool) -> dict[int, Callable[[int], np.ndarray]]:
    """flowStart/End in ms (152/153) or as NTP microseconds (154/155)."""
    if micro:
        return {154: lambda n: ntp_microseconds_column(column("start_ns")),
                155: lambda n: ntp_microseconds_column(column("end_ns"))}
    return {152: lambda n: column("start_ns") // _NS_PER_MS,
            153: lambda n: column("end_ns") // _NS_PER_MS}


def _make_layout(ip_version: int, icmp: bool, routed: bool, micro: bool = False,
                 extra: tuple[FlowField, ...] = (), selector_id: int = 0) -> FlowLayout:
    fields = _flow_fields(ip_version, icmp, routed, micro)
    name = f"flow{ip_version}{'-icmp' if icmp else ''}{'-routed' if routed else ''}"
    row_class = flow_template_id(ip_version, icmp, routed)
    template_id = row_class
    if selector_id:
        fields += ((302, SELECTOR_ID_LENGTH),)
        name += "-selector"
        template_id += SELECTOR_FLOW_TEMPLATE_BASE - FLOW_TEMPLATE_BASE
    template = Template(template_id,
                        fields + tuple((f.element(ip_version), f.width) for f in extra),
                        0, name, extra)

    # computed in the C pass with the plain fields: flowStart/EndMilliseconds, icmpTypeCode
    # (these templates' rows are all ICMP: their destination port), selectorId
    derived: dict[int, IcmpTypeCode | Constant | EpochMs] = {
        32: IcmpTypeCode(), 139: IcmpTypeCode(), 302: Constant(selector_id)}
    if not micro:
        derived.update({152: EpochMs("start_ns"), 153: EpochMs("end_ns")})

    def pack(flows: np.ndarray, rows: np.ndarray | None = None) -> PackedRecords:
        def column(name: str) -> np.ndarray:
            return flows[name] if rows is None else flows[name][rows]

        special = _times(column, micro) if micro else None  # NTP times: NumPy
        return pack_template(flows, fields, extra, special, rows, derived=derived)

    assert template_dtype(fields, extra).itemsize == template.record_length
    return FlowLayout(template, pack, ip_version, micro, row_class)


def _layouts(micro: bool, extra: tuple[FlowField, ...] = (),
             selector_id: int = 0) -> dict[int, FlowLayout]:
    return {layout.template.template_id: layout
            for layout in (_make_layout(v, icmp, routed, micro, extra, selector_id)
                           for v in (4, 6) for icmp in (False, True) for routed in (False, True))}


#: Template ID -> layout, for every flow template (``timestamps = "ms"``, the default).
FLOW_LAYOUTS: dict[int, FlowLayout] = _layouts(micro=False)
#: The same template IDs with flowStart/EndMicroseconds (``timestamps = "us"``); an exporter
#: uses one of the two sets.
FLOW_LAYOUTS_US: dict[int, FlowLayout] = _layouts(micro=True)


def flow_layouts(micro: bool = False, extra: Sequence[FlowField] | None = None,
                 selector_id: int = 0) -> dict[int, FlowLayout]:
    """The flow layouts of an exporter: today's fields plus ``extra`` in every template.

    :param micro: flowStart/EndMicroseconds (``timestamps = "us"``) instead of milliseconds.
    :param extra: the flow schema fields to append (MAC, VLAN, MPLS, physdev, plugin
        fields); default: the active schema's :meth:`~agent.schema.FlowSchema.export_fields`.
    :param selector_id: > 0 while flow sampling is on: every record also carries this
        selectorId (302), in templates 288..295 (see above); 0 = the plain templates.
    """
    added = tuple(flow_schema().export_fields() if extra is None else extra)
    if not added and not selector_id:
        return FLOW_LAYOUTS_US if micro else FLOW_LAYOUTS
    return _layouts(micro, added, selector_id)


def encode_flow_groups(
    records: FlowBatch | np.ndarray | Iterable[FlowRecord],
    on_error: Callable[[FlowRecord, Exception], None],
    layouts: dict[int, FlowLayout] = FLOW_LAYOUTS,
) -> list[DataGroup]:
    """Encode flows into one :class:`DataGroup` per template, from the columns in bulk.

    :param records: the flows: a batch, a record array or flow records.
    :param on_error: called for each flow that cannot be encoded (a value out of range for
        its column, a time before 1970 in milliseconds); the flow is skipped.
    :param layouts: :data:`FLOW_LAYOUTS` (ms timestamps) or :data:`FLOW_LAYOUTS_US`, or
        :func:`flow_layouts`.
    """
    flows = flow_columns(records, on_error)
    micro = next(iter(layouts.values())).micro
    classes = flow_classes(flows)
    if not micro and classes.lowest < 0:
        bad = (flows["start_ns"] < 0) | (flows["end_ns"] < 0)
        for r in FlowBatch("", flows[bad]).records():
            on_error(r, EncodeError("flow time before 1970 (dateTimeMilliseconds)"))
        flows = flows[~bad]
        classes = flow_classes(flows)
    by_class = {FLOW_TEMPLATE_BASE + c: rows for c, rows in classes.rows.items()}
    groups = []
    for layout in layouts.values():
        if layout.row_class in by_class:  # the template's rows, packed where they lie
            groups.append(DataGroup(layout.template,
                                    layout.pack(flows, by_class[layout.row_class])))
    return groups


def flow_classes(flows: np.ndarray) -> RowClasses:
    """Each row's template (:func:`flow_template_id` less :data:`FLOW_TEMPLATE_BASE`) and
    the batch's times, in one pass (:func:`~agent.wire.classify_rows`)."""
    return classify_rows(flows, v6=1, icmp=2, routed=4, v6_exact=True)


# --- reading back (loss accounting) --------------------------------------------------------


def _varlen_record_length(body: bytes, pos: int, template: Template) -> int:
    """Length of one record with variable-length fields starting at ``pos``."""
    start = pos
    for _, length in template.fields:
        if length != VARIABLE_LENGTH:
            pos += length
            continue
        n = body[pos]
        pos += 1
        if n == 255:
            n = int.from_bytes(body[pos:pos + 2], "big")
            pos += 2
        pos += n
    return pos - start


def message_totals(data: bytes, templates: dict[int, Template]) -> tuple[int, int, int]:
    """Count the Data Records of an encoded message and the packets/octets of its flows.

    Used only for messages that were lost (send error, broken connection), to fill the
    notSent* counters.

    :param data: one message produced by :func:`encode_messages`.
    :param templates: the templates it may use, by id.
    :return: ``(records, packets, octets)``.
    """
    records = packets = octets = 0
    pos = HEADER.size
    while pos + SET_HEADER.size <= len(data):
        set_id, length = SET_HEADER.unpack_from(data, pos)
        if length < SET_HEADER.size:
            break
        body = data[pos + SET_HEADER.size:pos + length]
        pos += length
        template = templates.get(set_id)
        if template is None:
            continue
        n, p, o = _set_totals(body, template)
        records, packets, octets = records + n, packets + p, octets + o
    return records, packets, octets


def group_totals(group: DataGroup) -> tuple[int, int, int]:
    """``(records, packets, octets)`` of a data group, as :func:`message_totals` counts them
    in a message: for groups that never made it into one (the message encoder refused)."""
    if not group.template.record_length:
        return len(group.records), 0, 0
    return _set_totals(join_records(group.records), group.template)


def _set_totals(body: bytes, template: Template) -> tuple[int, int, int]:
    fixed = template.record_length
    if not fixed:
        count, pos = 0, 0
        min_len = sum(1 if n == VARIABLE_LENGTH else n for _, n in template.fields)
        while len(body) - pos >= min_len:
            pos += _varlen_record_length(body, pos, template)
            count += 1
        return count, 0, 0
    count = len(body) // fixed
    ids = [ie_id for ie_id, _ in template.fields]
    if template.is_options or 1 not in ids or 2 not in ids:
        return count, 0, 0
    offsets = np.cumsum([0] + [length for _, length in template.fields])
    counters = np.dtype({"names": ["octets", "packets"], "formats": [">u8", ">u8"],
                         "offsets": [int(offsets[ids.index(1)]), int(offsets[ids.index(2)])],
                         "itemsize": fixed})
    rows = np.frombuffer(body, counters, count)
    return count, int(rows["packets"].sum()), int(rows["octets"].sum())
