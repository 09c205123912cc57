"""The flow schema: one declared catalogue of flow fields, and the layouts derived from it.

A :class:`FlowField` names one flow property with its IANA IPFIX Information Element
(https://www.iana.org/assignments/ipfix/ipfix.xhtml, RFC 7012), its width on the wire, whether
it is part of the flow **key** (two packets with different values are different flows), a
**value** the cache merges (and how: ``sum``, ``or``, ``min``, ``max``, ``first``, ``last``),
or **meta** data set when the flow is exported (end reason, prefix lengths, next hop).

A :class:`FlowSchema` is the active selection for one run, chosen at start from ``[flow]``
(:class:`FlowOptions`): today's fields by default, MAC/VLAN/MPLS/physdev when configured, and
fields declared by plugins (``agent_flow_fields``) when ``[flow] fields`` names them.
Everything downstream derives from it:

* the **packed key** (:attr:`FlowSchema.key_dtype`, big-endian, :attr:`FlowSchema.key_size`
  bytes): the 44-byte base (:data:`BASE_KEY`) followed by the optional key fields in catalogue
  order; IPv4 addresses are zero-padded to 16 bytes so every key of a run has one width, and a
  NumPy ``V<key_size>`` view of the key columns *is* the packed keys;
* the **record columns** (:attr:`FlowSchema.record_dtype`): every active field as one column
  of a :class:`~agent.model.FlowBatch`;
* the **templates** (:meth:`FlowSchema.export_fields`): the v9/IPFIX fields per IP version.

One schema is active per process (:func:`active`, set by the pipeline at start); ``[flow]``
changes need a restart because every key in the flow table has the schema's width.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np

__all__ = [
    "BASE_KEY", "CATALOGUE", "FlowField", "FlowOptions", "FlowSchema", "MERGES", "active",
    "default_schema", "set_active",
]

Role = Literal["key", "value", "meta"]
Merge = Literal["sum", "or", "min", "max", "first", "last"]
MERGES: tuple[Merge, ...] = ("sum", "or", "min", "max", "first", "last")
_KINDS = {"u1": 1, "u2": 2, "u4": 4, "u8": 8, "i8": 8}


@dataclass(frozen=True, slots=True)
class FlowField:
    """One flow property.

    :param name: the column name (a Python identifier; ``FlowRecord`` attribute for built-ins).
    :param ie: the IPFIX Information Element id (the v9 field type for ids below 128 and the
        ones nfdump reads the same way); for IP-version specific elements ``ie`` is the IPv4
        one and ``ie6`` the IPv6 one.
    :param width: bytes on the wire.
    :param role: ``key``, ``value`` or ``meta`` (see the module docstring).
    :param merge: how the cache combines two values of a ``value`` field.
    :param dtype: the column type: ``u1 u2 u4 u8 i8`` (unsigned/signed integers) or
        ``bytes`` (``width`` raw bytes, e.g. a MAC address).
    :param enterprise: the private enterprise number for non-IANA elements (IPFIX only).
    :param doc: one line for ``agent config sample`` and docs/hooks.md.
    """

    name: str
    ie: int
    width: int
    role: Role = "key"
    merge: Merge = "last"
    dtype: str = "u4"
    ie6: int = 0
    enterprise: int = 0
    doc: str = ""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"flow field name {self.name!r} is not an identifier")
        if not 0 < self.ie < 1 << 15:
            raise ValueError(f"flow field {self.name}: IE {self.ie} outside 1..32767")
        if self.role not in ("key", "value", "meta"):
            raise ValueError(f"flow field {self.name}: role {self.role!r}")
        if self.merge not in MERGES:
            raise ValueError(f"flow field {self.name}: merge {self.merge!r}; one of {MERGES}")
        if self.dtype != "bytes" and self.dtype not in _KINDS:
            raise ValueError(f"flow field {self.name}: dtype {self.dtype!r}; one of "
                             f"{', '.join(_KINDS)} or bytes")
        if self.dtype in _KINDS and not 0 < self.width <= _KINDS[self.dtype]:
            raise ValueError(f"flow field {self.name}: width {self.width} does not fit "
                             f"{self.dtype}")

    @property
    def column(self) -> str:
        """The NumPy type code of the column (native byte order)."""
        return f"V{self.width}" if self.dtype == "bytes" else self.dtype

    @property
    def key_column(self) -> str:
        """The type code inside the packed (big-endian) key."""
        if self.dtype == "bytes":
            return f"V{self.width}"
        return ">" + self.dtype

    def element(self, ip_version: int) -> int:
        """The IE id for records of ``ip_version``."""
        return self.ie6 if ip_version == 6 and self.ie6 else self.ie


def _f(name: str, ie: int, width: int, role: Role = "key", merge: Merge = "last",
       dtype: str = "u4", ie6: int = 0, doc: str = "") -> FlowField:
    return FlowField(name, ie, width, role, merge, dtype, ie6, 0, doc)


#: The base key every run has, in packed order (44 bytes).
BASE_KEY: tuple[FlowField, ...] = (
    _f("ip_version", 60, 1, dtype="u1", doc="ipVersion: 4 or 6"),
    _f("protocol", 4, 1, dtype="u1", doc="protocolIdentifier"),
    _f("tos", 5, 1, dtype="u1", doc="ipClassOfService"),
    _f("direction", 61, 1, dtype="u1", doc="flowDirection: 0 ingress, 1 egress"),
    _f("in_if", 10, 4, doc="the observation interface in a key; ingressInterface in a record"),
    _f("src_port", 7, 2, dtype="u2", doc="sourceTransportPort"),
    _f("dst_port", 11, 2, dtype="u2", doc="destinationTransportPort; ICMP type << 8 | code"),
    _f("src_addr", 8, 16, dtype="bytes", ie6=27, doc="source address (IPv4 zero-padded)"),
    _f("dst_addr", 12, 16, dtype="bytes", ie6=28, doc="destination address"),
)

#: Optional key fields, in packed order after :data:`BASE_KEY` (``[flow]`` turns them on).
OPTIONAL_KEY: tuple[FlowField, ...] = (
    _f("src_mac", 56, 6, dtype="bytes", doc="sourceMacAddress"),
    _f("dst_mac", 80, 6, dtype="bytes", doc="destinationMacAddress"),
    _f("ethernet_type", 256, 2, dtype="u2", doc="ethernetType of the (inner) IP packet"),
    _f("vlan_id", 58, 2, dtype="u2", doc="vlanId: the outer 802.1Q/802.1ad tag's id"),
    _f("vlan_priority", 244, 1, dtype="u1", doc="dot1qPriority: the outer tag's PCP"),
    _f("inner_vlan_id", 245, 2, dtype="u2", doc="dot1qCustomerVlanId: the inner (QinQ) tag"),
    _f("inner_vlan_priority", 246, 1, dtype="u1", doc="dot1qCustomerPriority"),
    *(_f(f"mpls_label_{n}", 69 + n, 3, doc=f"mplsLabelStackSection{n if n > 1 else ''}: "
         "label << 4 | traffic class << 1 | bottom-of-stack, as on the wire")
      for n in range(1, 11)),
    _f("in_physdev", 252, 4, doc="ingressPhysicalInterface: the bridge port in"),
    _f("out_physdev", 253, 4, doc="egressPhysicalInterface: the bridge port out"),
    _f("tunnel_id", 351, 8, dtype="u8", doc="layer2SegmentId: segment type << 56 | id "
       "(0x01 VXLAN VNI) of a decapsulated tunnel"),
)

#: Values the cache merges, always present.
VALUES: tuple[FlowField, ...] = (
    _f("packets", 2, 8, "value", "sum", "u8", doc="packetDeltaCount"),
    _f("octets", 1, 8, "value", "sum", "u8", doc="octetDeltaCount"),
    _f("start_ns", 152, 8, "value", "min", "i8", doc="flow start, wall-clock ns"),
    _f("end_ns", 153, 8, "value", "max", "i8", doc="flow end, wall-clock ns"),
    _f("tcp_flags", 6, 1, "value", "or", "u1", doc="tcpControlBits, OR of every packet"),
    _f("out_if", 14, 4, "value", "last", doc="the other interface (egressInterface)"),
)

#: Set when a flow leaves the cache or by aggregators, always present.
META: tuple[FlowField, ...] = (
    _f("end_reason", 136, 1, "meta", dtype="u1", doc="flowEndReason"),
    _f("src_mask", 9, 1, "meta", dtype="u1", ie6=29, doc="source prefix length, 0 unknown"),
    _f("dst_mask", 13, 1, "meta", dtype="u1", ie6=30, doc="destination prefix length"),
    _f("next_hop", 15, 16, "meta", dtype="bytes", ie6=62, doc="next hop, zeros unknown"),
)

CATALOGUE: dict[str, FlowField] = {f.name: f for f in (*BASE_KEY, *OPTIONAL_KEY, *VALUES, *META)}
MAC_FIELDS = ("src_mac", "dst_mac")
VLAN_FIELDS = ("vlan_id", "vlan_priority", "inner_vlan_id", "inner_vlan_priority")
PHYSDEV_FIELDS = ("in_physdev", "out_physdev")


@dataclass(frozen=True, slots=True)
class FlowOptions:
    """What ``[flow]`` selects (see :class:`agent.config.model.FlowSection`)."""

    mac: bool = False
    vlan: bool = False
    mpls_labels: int = 0
    physdev: str = ""  # "", "export" or "override"
    tunnel_id: bool = False
    fields: tuple[str, ...] = ()

    def optional_names(self) -> list[str]:
        """The optional built-in key fields these options turn on, in catalogue order."""
        wanted: set[str] = set()
        if self.mac:
            wanted.update(MAC_FIELDS)
        if self.vlan:
            wanted.update(VLAN_FIELDS)
        if self.mac or self.vlan:
            wanted.add("ethernet_type")
        wanted.update(f"mpls_label_{n}" for n in range(1, self.mpls_labels + 1))
        if self.physdev == "export":
            wanted.update(PHYSDEV_FIELDS)
        if self.tunnel_id:
            wanted.add("tunnel_id")
        return [f.name for f in OPTIONAL_KEY if f.name in wanted]


@dataclass(frozen=True)
class FlowSchema:
    """The active fields of one run and the layouts derived from them.

    :param extra: the optional and plugin-declared fields in use, in key order.
    :param options: the ``[flow]`` options the schema was built from.
    """

    extra: tuple[FlowField, ...] = ()
    options: FlowOptions = field(default_factory=FlowOptions)

    @classmethod
    def build(cls, options: FlowOptions | None = None,
              declared: Iterable[FlowField] = ()) -> FlowSchema:
        """The schema ``options`` select; ``declared`` are the plugins' fields.

        :raises ValueError: a name in ``options.fields`` nobody declared, or a declared field
            whose name is taken.
        """
        options = options or FlowOptions()
        extra = [CATALOGUE[n] for n in options.optional_names()]
        offered = {}
        for f in declared:
            if f.name in CATALOGUE or f.name in offered:
                raise ValueError(f"flow field {f.name!r} is declared twice")
            offered[f.name] = f
        for name in options.fields:
            if name not in offered:
                known = ", ".join(sorted(offered)) or "none"
                raise ValueError(f"flow field {name!r} is not declared by any plugin "
                                 f"(declared: {known})")
            extra.append(offered[name])
        return cls(tuple(extra), options)

    # --- derived layouts -------------------------------------------------------------------

    @property
    def key_fields(self) -> tuple[FlowField, ...]:
        """Base key, then the active optional and plugin key fields."""
        return BASE_KEY + tuple(f for f in self.extra if f.role == "key")

    @property
    def value_fields(self) -> tuple[FlowField, ...]:
        """The merged values: built-ins, then plugin values."""
        return VALUES + tuple(f for f in self.extra if f.role == "value")

    @property
    def fields(self) -> tuple[FlowField, ...]:
        """Every column, in :attr:`record_dtype` order."""
        return self.key_fields + self.value_fields + META + tuple(
            f for f in self.extra if f.role == "meta")

    @cached_property
    def key_dtype(self) -> np.dtype:
        """The packed key as a big-endian structured dtype (no padding). Computed once per
        schema (frozen): the cache's take and the encoders ask for it and for
        :attr:`record_dtype` a few times per part, and building the field tuple each time
        cost ~7.2 µs (~1 ns a flow of an 8,192-flow part per call)."""
        return _cached_dtype(tuple((f.name, f.key_column) for f in self.key_fields))

    @property
    def key_size(self) -> int:
        """Bytes in every packed key of this run (44 with the default fields)."""
        return int(self.key_dtype.itemsize)

    @property
    def key_names(self) -> tuple[str, ...]:
        """Names of the key fields, in packed order."""
        return tuple(f.name for f in self.key_fields)

    @property
    def ext_size(self) -> int:
        """Bytes of key after the 44-byte base (0 with the default fields)."""
        return self.key_size - BASE_KEY_SIZE

    @cached_property
    def record_dtype(self) -> np.dtype:
        """One column per field, native byte order: the layout of a FlowBatch (computed
        once per schema, as :attr:`key_dtype`)."""
        return _cached_dtype(tuple((f.name, f.column) for f in self.fields))

    @property
    def ext_names(self) -> tuple[str, ...]:
        """Names of the key fields after the base, in packed order."""
        return tuple(f.name for f in self.key_fields[len(BASE_KEY):])

    def has(self, name: str) -> bool:
        """Whether ``name`` is a column of this schema."""
        return any(f.name == name for f in self.fields)

    def export_fields(self) -> tuple[FlowField, ...]:
        """The optional and plugin fields exporters add to their v9/IPFIX templates, in
        key order (v5 has a fixed record and ignores them)."""
        return self.extra

    # --- keys ------------------------------------------------------------------------------

    def pack_ext(self, values: dict[str, int | bytes]) -> bytes:
        """The key bytes after the base for ``values`` (missing names are 0)."""
        if not self.ext_size:
            return b""
        row = np.zeros(1, self.key_dtype)
        for name in self.ext_names:
            if name in values:
                row[name] = values[name]
        return row.tobytes()[BASE_KEY_SIZE:]

    def keys_of(self, flows: np.ndarray) -> np.ndarray:
        """The packed keys of a record array, as an array of ``V<key_size>``."""
        keys = np.empty(len(flows), self.key_dtype)
        keys[...] = flows[list(self.key_names)]  # one structured cast, by position
        return keys.view(f"V{self.key_size}")

    def decode_keys(self, keys: Sequence[bytes]) -> np.ndarray:
        """Packed keys (all of :attr:`key_size` bytes) as a structured key array."""
        if not keys:
            return np.zeros(0, self.key_dtype)
        return np.frombuffer(b"".join(keys), self.key_dtype)

    def empty(self, n: int = 0) -> np.ndarray:
        """A zeroed record array of ``n`` rows."""
        return np.zeros(n, self.record_dtype)


BASE_KEY_SIZE = 44
_DTYPES: dict[tuple[tuple[str, str], ...], np.dtype] = {}


def _cached_dtype(spec: tuple[tuple[str, str], ...]) -> np.dtype:
    dt = _DTYPES.get(spec)
    if dt is None:
        dt = _DTYPES[spec] = np.dtype(list(spec))
    return dt


def default_schema() -> FlowSchema:
    """Today's fields only."""
    return _DEFAULT


_DEFAULT = FlowSchema()
_active: FlowSchema = _DEFAULT
assert struct.calcsize("!BBBBIHH16s16s") == BASE_KEY_SIZE == _DEFAULT.key_size


def active() -> FlowSchema:
    """The schema of this process (the default one until the pipeline sets another)."""
    return _active


def set_active(schema: FlowSchema) -> None:
    """Make ``schema`` the process's schema (the pipeline, at start)."""
    global _active
    _active = schema
