"""NetFlow v9 export packets (RFC 3954): templates, data FlowSets, packet assembly.

This module owns the v9 wire layout and is a pure function of records plus an
:class:`~.state.ExportState`; sockets and timers live in :mod:`.component`.

* Header (RFC 3954 section 5.1): ``count`` = all records in the packet (template records and
  data records); ``sequence`` = export packets sent before this one; Source ID fixed per
  instance.
* Template IDs are >= 256 (section 5.2); every FlowSet is padded to 4 bytes (section 5.3).
* A packet never exceeds ``mtu`` bytes.
* Templates are sent before the first data that uses them, again once ``refresh_packets``
  packets or ``refresh_ns`` of export time have passed since they were last sent (ipt_NETFLOW
  ``refresh-rate`` / ``timeout-rate``, Cisco defaults 20 packets / 30 min), and whenever
  ``state.force_templates`` is set (a collector came back).

Flow templates carry ipt_NETFLOW's base fields (interfaces, packets, octets, First/Last,
protocol, TOS) plus addresses, ipVersion (60), ports (ICMP type/code in the destination port
as ipt_NETFLOW does), TCP flags, direction (61) and flowEndReason (136, an IPFIX IE that v9
carries like any other field type, filled as the IPFIX exporter fills it: idle/active
timeout, end of flow, forced end, lack of resources); the "routed" variants add next hop
and prefix lengths for records that know them (``shared/PROTOCOLS.md`` section 6.6).

Sampling (RFC 3954 section 6.1 Options Templates, Cisco field types 34/35): when the agent's
ingest samples, two Options Templates (FlowSet ID 1, scope System = the Source ID) and one
record each open the packets that carry template refreshes, so a collector knows the rate
before the flows it applies to. Data templates do not change.

* 262: SAMPLING_INTERVAL (34, 4 bytes) + SAMPLING_ALGORITHM (35, 1 byte: 1 deterministic,
  2 random), the complete description (softflowd sends this pair; pmacct, Wireshark and
  current nfdump read it);
* 263: SAMPLING_INTERVAL alone, because nfcapd 1.7.1 (Debian 12) ignores an options template
  that also holds 35 but scales flows by one that holds 34 only (tested in
  ``tests/export_netflow/test_netflow_sampling.py``).

Interface names (as the IPFIX exporter sends them): Options Template 264, scope Interface
(type 2, 4 bytes: the ifIndex that INPUT_SNMP/OUTPUT_SNMP carry) and interfaceName (82, Cisco
IF_NAME) as a NUL-padded 16-byte string, one record per interface the flows used; sent with
the templates (same cadence) and at once when a new interface shows up. tshark decodes
them; nfcapd 1.7.1 reads past them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from netflow_agent.api import (
    NS_PER_S,
    FlowBatch,
    FlowField,
    FlowRecord,
    IcmpTypeCode,
    PackedRecords,
    RowClasses,
    Sampling,
    UptimeMs,
    classify_rows,
    flow_columns,
    flow_schema,
    frame_packets,
    join_records,
    pack_template,
)

from .state import NS_PER_MS, UINT32_MASK, ExportState, TemplateMark
from .v5 import Tally, split_rows

VERSION = 9
TEMPLATE_FLOWSET_ID = 0
OPTIONS_FLOWSET_ID = 1
MIN_TEMPLATE_ID = 256
COUNTER32_MAX = UINT32_MASK

# Header, 20 bytes: version(2) count(2) sysUpTime(4, ms) unix_secs(4) sequence(4) source_id(4)
HEADER = struct.Struct("!HHIIII")
_SEQUENCE_AT = 12  # the sequence number's offset in HEADER
# FlowSet header: flowset_id(2) length(2, bytes incl. header and padding)
FLOWSET_HEADER = struct.Struct("!HH")
# Template record header: template_id(2) field_count(2), then (type(2), length(2)) pairs
TEMPLATE_HEADER = struct.Struct("!HH")
# Options template header: template_id(2) option_scope_length(2) option_length(2), in bytes
OPTIONS_TEMPLATE_HEADER = struct.Struct("!HHH")
FIELD_SPEC = struct.Struct("!HH")

_STRUCT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}
_ICMP_PROTOCOLS = frozenset({1, 58})

# Flow template ids of one exporter instance; NEL uses 260/261 (see nel.py).
TEMPLATE_FLOW4 = 256
TEMPLATE_FLOW6 = 257
TEMPLATE_FLOW4_ROUTED = 258
TEMPLATE_FLOW6_ROUTED = 259
TEMPLATE_SAMPLING = 262  # options: sampling interval and algorithm
TEMPLATE_SAMPLING_INTERVAL = 263  # options: sampling interval only (nfdump 1.7.1)
TEMPLATE_INTERFACE_NAMES = 264  # options: interfaceName by ifIndex

SCOPE_SYSTEM = 1  # RFC 3954 section 6.1 scope field types
SCOPE_INTERFACE = 2
IF_NAME = 82  # interfaceName / Cisco IF_NAME
IF_NAME_LENGTH = 16  # Linux IFNAMSIZ: 15 bytes and a NUL; v9 has no variable-length fields


@dataclass(frozen=True, slots=True)
class Template:
    """A v9 template: its id, its (field type, length) list and the matching record layout.

    :param template_id: >= 256.
    :param fields: ``((field_type, length), ...)`` in wire order.
    :param scope_fields: > 0 makes an Options Template whose first ``scope_fields`` fields
        are scope fields (types 1-5 of RFC 3954 section 6.1).
    :param extra: the flow schema's fields at the end of ``fields`` (:func:`flow_templates`),
        written from the batch columns; ``record`` packs the fields before them.
    """

    template_id: int
    fields: tuple[tuple[int, int], ...]
    scope_fields: int = 0
    extra: tuple[FlowField, ...] = ()
    record: struct.Struct = field(init=False, compare=False)
    flowset: bytes = field(init=False, compare=False)
    #: bytes in one data record of this template (the packet builder asks per FlowSet)
    size: int = field(init=False, compare=False)

    def __post_init__(self) -> None:
        base = self.fields[:len(self.fields) - len(self.extra)]
        codes = "".join(_code(ftype, length) for ftype, length in base)
        object.__setattr__(self, "record", struct.Struct("!" + codes))
        object.__setattr__(self, "size", self.record.size + sum(f.width for f in self.extra))
        if self.scope_fields:
            flowset = _options_flowset(self.template_id, self.fields, self.scope_fields)
        else:
            flowset = _template_flowset(self.template_id, self.fields)
        object.__setattr__(self, "flowset", flowset)


_BYTES_FIELDS = frozenset({8, 12, 15, 27, 28, 62, IF_NAME, 225, 226, 281, 282})


def _code(field_type: int, length: int) -> str:
    if field_type in _BYTES_FIELDS:
        return f"{length}s"
    return _STRUCT_CODES[length]


def _template_flowset(template_id: int, fields: Sequence[tuple[int, int]]) -> bytes:
    body = TEMPLATE_HEADER.pack(template_id, len(fields))
    body += b"".join(FIELD_SPEC.pack(t, n) for t, n in fields)
    return FLOWSET_HEADER.pack(TEMPLATE_FLOWSET_ID, 4 + len(body)) + body


def _options_flowset(template_id: int, fields: Sequence[tuple[int, int]], scopes: int) -> bytes:
    """An Options Template FlowSet (ID 1) with one options template, padded to 4 bytes."""
    scope_len, option_len = 4 * scopes, 4 * (len(fields) - scopes)
    body = OPTIONS_TEMPLATE_HEADER.pack(template_id, scope_len, option_len)
    body += b"".join(FIELD_SPEC.pack(t, n) for t, n in fields)
    pad = -(4 + len(body)) % 4
    return FLOWSET_HEADER.pack(OPTIONS_FLOWSET_ID, 4 + len(body) + pad) + body + bytes(pad)


#: scope System (4 bytes: the Source ID), SAMPLING_INTERVAL, SAMPLING_ALGORITHM
SAMPLING_TEMPLATE = Template(TEMPLATE_SAMPLING, ((SCOPE_SYSTEM, 4), (34, 4), (35, 1)), 1)
#: scope System, SAMPLING_INTERVAL
SAMPLING_INTERVAL_TEMPLATE = Template(TEMPLATE_SAMPLING_INTERVAL,
                                      ((SCOPE_SYSTEM, 4), (34, 4)), 1)


def sampling_options(sampling: Sampling | None, source_id: int) -> list[tuple[Template, bytes]]:
    """The sampling options records for :func:`encode_flows` (see the module docstring).

    :param sampling: the agent's sampling; ``None`` = nothing to announce (empty list). An
        interval of 1 is encoded too: it tells a collector that sampling has stopped.
    :param source_id: the scope value (System): this exporter's Source ID.
    """
    if sampling is None:
        return []
    scope = source_id & UINT32_MASK
    return [
        (SAMPLING_TEMPLATE,
         SAMPLING_TEMPLATE.record.pack(scope, sampling.interval, sampling.algorithm)),
        (SAMPLING_INTERVAL_TEMPLATE,
         SAMPLING_INTERVAL_TEMPLATE.record.pack(scope, sampling.interval)),
    ]


#: scope Interface (4 bytes: the ifIndex flow records carry in 10/14), interfaceName (82)
INTERFACE_NAMES_TEMPLATE = Template(TEMPLATE_INTERFACE_NAMES,
                                    ((SCOPE_INTERFACE, 4), (IF_NAME, IF_NAME_LENGTH)), 1)


def interface_names_options(names: dict[int, str]) -> list[tuple[Template, bytes]]:
    """One interfaceName options record per ifIndex, sorted by index (for :func:`assemble`).

    :param names: ifIndex -> name; a name is UTF-8, NUL-padded to :data:`IF_NAME_LENGTH`
        bytes (cut there: Linux names have at most 15).
    """
    pack = INTERFACE_NAMES_TEMPLATE.record.pack
    return [(INTERFACE_NAMES_TEMPLATE, pack(index, name.encode("utf-8", "replace")))
            for index, name in sorted(names.items())]


# --- flow templates -------------------------------------------------------------------------


def _flow_fields(ip_version: int, counter_len: int, routed: bool) -> tuple[tuple[int, int], ...]:
    alen = 4 if ip_version == 4 else 16
    src, dst = (8, 12) if ip_version == 4 else (27, 28)
    fields = [
        (src, alen), (dst, alen),  # IPV4/IPV6_SRC_ADDR, _DST_ADDR
        (7, 2), (11, 2),  # L4_SRC_PORT, L4_DST_PORT (ICMP: type << 8 | code)
        (4, 1), (6, 1), (5, 1), (60, 1),  # PROTOCOL, TCP_FLAGS, SRC_TOS, IP_PROTOCOL_VERSION
        (10, 4), (14, 4), (61, 1),  # INPUT_SNMP, OUTPUT_SNMP, DIRECTION
        (2, counter_len), (1, counter_len),  # IN_PKTS, IN_BYTES
        (22, 4), (21, 4),  # FIRST_SWITCHED, LAST_SWITCHED (sysUpTime ms)
        (32, 2),  # ICMP_TYPE: type << 8 | code for ICMP/ICMPv6, else 0 (nfdump reads it)
        (136, 1),  # flowEndReason (IPFIX IE, as the IPFIX exporter sends it)
    ]
    if routed:
        hop, smask, dmask = (15, 9, 13) if ip_version == 4 else (62, 29, 30)
        fields += [(hop, alen), (smask, 1), (dmask, 1)]  # NEXT_HOP, SRC_MASK, DST_MASK
    return tuple(fields)


def v9_fields(fields: Sequence[FlowField]) -> tuple[FlowField, ...]:
    """The schema fields v9 can carry: IANA ones (enterprise fields need IPFIX's enterprise
    bit; a dry run warns about them, ``__init__.py``)."""
    return tuple(f for f in fields if not f.enterprise)


def flow_templates(counters64: bool,
                   extra: Sequence[FlowField] | None = None) -> dict[int, Template]:
    """The four flow templates of an instance, keyed by template id.

    :param counters64: 8-byte IN_PKTS/IN_BYTES instead of 4 (RFC 3954 allows N bytes).
    :param extra: the flow schema fields appended to every template (MAC, VLAN, MPLS,
        physdev, plugin fields); default: the active schema's
        :meth:`~agent.schema.FlowSchema.export_fields`, enterprise ones left out.
    """
    clen = 8 if counters64 else 4
    added = v9_fields(flow_schema().export_fields() if extra is None else extra)
    return {
        tid: Template(tid, _flow_fields(version, clen, routed)
                      + tuple((f.element(version), f.width) for f in added), extra=added)
        for tid, version, routed in (
            (TEMPLATE_FLOW4, 4, False),
            (TEMPLATE_FLOW6, 6, False),
            (TEMPLATE_FLOW4_ROUTED, 4, True),
            (TEMPLATE_FLOW6_ROUTED, 6, True),
        )
    }


def pack_flows(flows: np.ndarray, tpl: Template, boot_ns: int,
               rows: np.ndarray | None = None) -> PackedRecords:
    """The data records of ``tpl`` for every row of ``flows`` (or its ``rows``, in that
    order), from the columns in bulk.

    FIRST/LAST_SWITCHED are sysUpTime ms (:meth:`.ExportState.uptime_ms`; 0 before boot),
    ICMP_TYPE the destination port's ``type << 8 | code`` for ICMP/ICMPv6 and 0 otherwise,
    both computed in the pass that writes the plain fields (:class:`~agent.wire.UptimeMs`,
    :class:`~agent.wire.IcmpTypeCode`), TCP_FLAGS the low byte (a plain field: its 1-byte
    cast is the low byte). The origin passed down is ``boot_ns`` rounded down to its
    millisecond, so that ``(ns - origin) // 1 ms`` is :meth:`.ExportState.uptime_ms`'s
    ``ns // 1 ms - boot_ns // 1 ms``: the header's sysUpTime and each record's times then
    decode to the records' own milliseconds.
    """
    base = tpl.fields[:len(tpl.fields) - len(tpl.extra)]
    origin = boot_ns // NS_PER_MS * NS_PER_MS
    return pack_template(flows, base, tpl.extra, rows=rows, derived=_DERIVED, base_ns=origin)


#: the template fields computed from their row: FIRST/LAST_SWITCHED, ICMP_TYPE
_DERIVED: dict[int, UptimeMs | IcmpTypeCode] = {
    22: UptimeMs("start_ns"), 21: UptimeMs("end_ns"), 32: IcmpTypeCode()}


def flow_classes(flows: np.ndarray) -> RowClasses:
    """Each row's template (its id less :data:`TEMPLATE_FLOW4`: IPv6 1, routed 2), and
    the times and counters :func:`encode_flows` needs, in one pass
    (:func:`~agent.wire.classify_rows`)."""
    return classify_rows(flows, v6=1, routed=2)


def flow_groups(
    records: FlowBatch | np.ndarray | Sequence[FlowRecord],
    templates: dict[int, Template],
    state: ExportState,
    counters64: bool,
    tally: Tally,
    classes: RowClasses | None = None,
) -> list[tuple[Template, PackedRecords]]:
    """Pack the flows with their templates, one block of records per template.

    Rows with next hop or prefix lengths use the routed templates. With 32-bit counters a row
    whose counters do not fit is split (see :func:`.v5.split_rows`). Within a template the
    rows keep their order.

    :param classes: :func:`flow_classes` of ``records`` when the caller has them.
    """
    flows = flow_columns(records)
    if classes is None:
        classes = flow_classes(flows)
    if not counters64 and classes.largest > COUNTER32_MAX:
        flows = split_rows(flows, tally, COUNTER32_MAX)
        classes = flow_classes(flows)
    groups = []
    for tid, tpl in templates.items():
        if tid - TEMPLATE_FLOW4 in classes.rows:  # the template's rows, packed where they lie
            groups.append((tpl, pack_flows(flows, tpl, state.boot_ns,
                                           classes.rows[tid - TEMPLATE_FLOW4])))
    return groups


# --- packet assembly ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RefreshPolicy:
    """When templates are resent and how big packets may be.

    :param mtu: largest export packet in bytes (v9 header included).
    :param refresh_packets: resend a template after this many export packets.
    :param refresh_ns: resend a template after this much export time.
    """

    mtu: int = 1400
    refresh_packets: int = 20
    refresh_ns: int = 30 * 60 * 1_000_000_000


def refresh_due(state: ExportState, policy: RefreshPolicy, mark: TemplateMark | None,
                now_ns: int) -> bool:
    """Whether something last done at ``mark`` (a template sent; ``None`` = never) is due
    again: ``policy.refresh_packets`` packets or ``policy.refresh_ns`` have passed since."""
    return (
        mark is None
        or state.packets - mark.packet >= policy.refresh_packets
        or now_ns - mark.time_ns >= policy.refresh_ns
    )


class _PacketBuilder:
    """Collects FlowSets for one packet and closes it with a header (internal)."""

    def __init__(self, state: ExportState, policy: RefreshPolicy, now_ns: int, tally: Tally):
        self.state, self.policy, self.now_ns, self.tally = state, policy, now_ns, tally
        self.datagrams: list[bytes] = []
        self.forced: set[int] = set()
        self._reset()

    def _reset(self) -> None:
        self.parts: list[bytes | memoryview] = []
        self.room = self.policy.mtu - HEADER.size
        self.count = 0
        self.data_records = 0
        self.templates_in: set[int] = set()

    def template_due(self, tpl: Template) -> bool:
        if tpl.template_id in self.templates_in:
            return False
        if self.state.force_templates and tpl.template_id not in self.forced:
            return True
        mark = self.state.templates.get(tpl.template_id)
        return refresh_due(self.state, self.policy, mark, self.now_ns)

    def add_template(self, tpl: Template) -> None:
        self.parts.append(tpl.flowset)
        self.room -= len(tpl.flowset)
        self.count += 1
        self.templates_in.add(tpl.template_id)
        self.forced.add(tpl.template_id)
        self.state.templates[tpl.template_id] = TemplateMark(self.state.packets, self.now_ns)

    def add_data(self, tpl: Template, body: bytes | memoryview, records: int,
                 data: bool = True) -> None:
        """Add a data FlowSet of ``records`` records (``body``: their bytes, back to back;
        a view is copied once, into the packet); ``data=False`` for options records."""
        pad = -(4 + len(body)) % 4
        self.parts += (FLOWSET_HEADER.pack(tpl.template_id, 4 + len(body) + pad), body)
        if pad:
            self.parts.append(bytes(pad))
        self.room -= 4 + len(body) + pad
        self.count += records
        if data:
            self.data_records += records

    def fitting(self, tpl: Template, available: int) -> int:
        """How many records of ``tpl`` fit into one padded data FlowSet in ``self.room``."""
        return min(available, _fitting(tpl.size, self.room))

    def packets_before_template(self, tpl: Template) -> int:
        """How many packets, from a fresh one on, can leave before ``tpl`` is due again
        (0: it is due now); with :meth:`template_due`'s rules."""
        state = self.state
        if state.force_templates and tpl.template_id not in self.forced:
            return 0
        mark = state.templates.get(tpl.template_id)
        if mark is None or self.now_ns - mark.time_ns >= self.policy.refresh_ns:
            return 0
        return max(0, mark.packet + self.policy.refresh_packets - state.packets)

    def full_packets(self, tpl: Template, block: memoryview, i: int, k: int, count: int,
                     data: bool) -> int:
        """Close ``count`` packets of ``k`` records each from ``block`` (record ``i`` on), one
        data FlowSet each, straight to datagrams: the bytes :meth:`add_data` and
        :meth:`flush` would write, without their per-packet bookkeeping. The builder must be
        fresh. :return: the next record's index."""
        state, size = self.state, tpl.size
        body = k * size
        pad = -(4 + body) % 4
        flowset = FLOWSET_HEADER.pack(tpl.template_id, 4 + body + pad)
        head = HEADER.pack(VERSION, k, state.uptime_ms(self.now_ns),
                           (self.now_ns // NS_PER_S) & UINT32_MASK, 0,
                           state.source_id & UINT32_MASK)
        # each packet: the header with its sequence number, the FlowSet header, k records,
        # padding; in C, one bytes object per packet (agent/_wirepack.c)
        self.datagrams += frame_packets(block, i * size, body, count, head, _SEQUENCE_AT,
                                        state.packets, flowset, bytes(pad))
        self.tally.records.extend([k if data else 0] * count)
        state.packets += count
        return i + count * k

    def template_packet(self, tpl: Template, block: memoryview, i: int, k: int,
                        data: bool) -> int:
        """Close one packet of ``tpl``'s template and ``k`` records from ``block`` (record
        ``i`` on), more records following: the bytes and marks :meth:`add_template`,
        :meth:`add_data` and :meth:`flush` would write, in one step (a template comes due
        every ``refresh_packets`` packets: ~400 times per 200k flows at the default 20). The
        builder must be fresh. :return: the next record's index."""
        state, size = self.state, tpl.size
        body = k * size
        pad = -(4 + body) % 4
        self.datagrams.append(b"".join((
            HEADER.pack(VERSION, 1 + k, state.uptime_ms(self.now_ns),
                        (self.now_ns // NS_PER_S) & UINT32_MASK, state.packets & UINT32_MASK,
                        state.source_id & UINT32_MASK),
            tpl.flowset, FLOWSET_HEADER.pack(tpl.template_id, 4 + body + pad),
            block[i * size:i * size + body], bytes(pad))))
        self.tally.records.append(k if data else 0)
        self.forced.add(tpl.template_id)
        state.templates[tpl.template_id] = TemplateMark(state.packets, self.now_ns)
        state.packets += 1
        return i + k

    def flush(self) -> None:
        parts = self.parts
        if not parts:
            return
        state = self.state
        parts.insert(0, HEADER.pack(  # now_ns is a whole second (see encode_flows)
            VERSION, self.count, state.uptime_ms(self.now_ns),
            (self.now_ns // NS_PER_S) & UINT32_MASK, state.packets & UINT32_MASK,
            state.source_id & UINT32_MASK,
        ))
        self.datagrams.append(b"".join(parts))  # the only copy of the records' bytes
        self.tally.records.append(self.data_records)
        state.packets += 1
        self._reset()


def _fitting(size: int, room: int) -> int:
    """How many ``size``-byte records fit into one padded data FlowSet in ``room`` bytes."""
    k = max(room - 4, 0) // size
    while k and 4 + k * size + (-(4 + k * size) % 4) > room:
        k -= 1
    return k


def assemble(
    groups: Sequence[tuple[Template, Sequence[bytes]]],
    state: ExportState,
    policy: RefreshPolicy,
    now_ns: int,
    tally: Tally,
    options: Sequence[tuple[Template, bytes]] = (),
) -> list[bytes]:
    """Pack grouped data records (and due templates) into packets of at most ``policy.mtu``.

    :param groups: ``(template, packed records)`` pairs; records must match the template.
    :param options: ``(options template, record)`` pairs sent first, only when their
        template is due (first use, refresh, forced), so they follow the template cadence;
        the records of one template are sent together.
    :return: the datagrams; ``state.packets`` and template marks are updated.
    :raises ValueError: the MTU cannot hold one template plus one record.
    """
    builder = _PacketBuilder(state, policy, now_ns, tally)
    if groups:
        by_template: dict[int, tuple[Template, list[bytes]]] = {}
        for tpl, record in options:
            by_template.setdefault(tpl.template_id, (tpl, []))[1].append(record)
        for tpl, records in by_template.values():
            if builder.template_due(tpl):
                _assemble_group(builder, tpl, records, data=False)
    for tpl, bodies in groups:
        _assemble_group(builder, tpl, bodies)
    builder.flush()
    state.force_templates = False
    return builder.datagrams


def _assemble_group(builder: _PacketBuilder, tpl: Template, bodies: Sequence[bytes],
                    data: bool = True) -> None:
    size, i, n = tpl.size, 0, len(bodies)
    block = memoryview(join_records(bodies))  # FlowSets are slices of it, not copies
    smallest = len(tpl.flowset) + 4 + size + 3
    if smallest > builder.policy.mtu - HEADER.size:
        raise ValueError(f"mtu {builder.policy.mtu} cannot hold template {tpl.template_id}")
    room = builder.policy.mtu - HEADER.size
    per_packet = _fitting(size, room)
    with_template = _fitting(size, room - len(tpl.flowset))
    while i < n:
        if not builder.parts and per_packet:  # a fresh packet: whole ones in a tight loop
            # only packets that the slow path below would close too (more records follow)
            run = min(builder.packets_before_template(tpl), (n - i - 1) // per_packet)
            if run > 0:
                i = builder.full_packets(tpl, block, i, per_packet, run, data)
                continue
            if 0 < with_template < n - i and builder.template_due(tpl):  # the refresh
                i = builder.template_packet(tpl, block, i, with_template, data)
                continue
        if builder.template_due(tpl):
            if builder.room < smallest:
                builder.flush()
                continue
            builder.add_template(tpl)
        k = builder.fitting(tpl, n - i)
        if k == 0:
            builder.flush()
            continue
        builder.add_data(tpl, block[i * size:(i + k) * size], k, data)
        i += k
        if i < n:  # k < what was left: not even one more FlowSet of tpl fits this packet
            builder.flush()


def encode_flows(
    records: FlowBatch | Sequence[FlowRecord],
    state: ExportState,
    templates: dict[int, Template],
    policy: RefreshPolicy,
    now_ns: int,
    *,
    counters64: bool = False,
    tally: Tally | None = None,
    options: Sequence[tuple[Template, bytes]] = (),
) -> list[bytes]:
    """Encode flow records as NetFlow v9 export packets.

    :param records: expired flows (IPv4 and IPv6), a batch or records.
    :param state: this exporter's state (sequence, uptime origin, template marks).
    :param templates: from :func:`flow_templates` (built once per instance).
    :param policy: MTU and template refresh settings.
    :param now_ns: the export clock, wall-clock ns. The header time is the later of it and
        the latest record time, rounded **up** to a whole second (:meth:`.ExportState.stamp`):
        the header has no sub-second time, collectors compute absolute times as
        ``unix_secs * 1000 - sysUpTime + First``, and rounding up keeps those exact to the
        millisecond while no First/Last lies after sysUpTime (RFC 3954 section 5.1).
    :param counters64: must match how ``templates`` were built.
    :param tally: optional; receives data records per packet and split counts.
    :param options: options records (:func:`sampling_options`,
        :func:`interface_names_options`) that open the packet whenever their template is due.
    :return: the datagrams, in order.
    """
    tally = tally if tally is not None else Tally()
    flows = flow_columns(records)
    classes = flow_classes(flows)
    export_ns = state.stamp(now_ns, classes.latest, NS_PER_S)
    state.observe(export_ns, classes.earliest)
    groups = flow_groups(flows, templates, state, counters64, tally, classes)
    return assemble(groups, state, policy, export_ns, tally, options)
