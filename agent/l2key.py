"""The optional layer-2 key fields of a flow, packed from what an ingest saw of a frame.

Owns one translation shared by the packet ingests (pcap, NFLOG): from the link-layer facts of
one packet (MAC addresses, VLAN tags, MPLS label stack entries, bridge ports) to the key bytes
the active :class:`~agent.schema.FlowSchema` puts after the 44-byte base
(:meth:`FlowSchema.pack_ext` packs the same bytes, slowly: this packer is the per-packet path
and remembers the bytes of recent fact combinations, which repeat per flow).

What each field holds (IANA IPFIX names):

* ``src_mac``/``dst_mac``: the frame's addresses; ``b""`` (zeros) when the link has none;
* ``ethernet_type``: the EtherType of the IP packet the key describes (0x0800 or 0x86DD),
  whatever tags or labels were in front of it;
* ``vlan_id``/``vlan_priority``: the outermost tag; ``inner_vlan_*``: the second one;
* ``mpls_label_N``: the N-th label stack entry from the top as the 24 bits mplsLabelStackSection
  carries (label << 4 | traffic class << 1 | bottom of stack, RFC 3032 without the TTL);
* ``in_physdev``/``out_physdev``: the bridge ports (NFLOG with br_netfilter).

A field the schema does not have is ignored; a schema without any of them gives ``b""``
(:attr:`L2KeyPacker.active` is then ``False`` and an ingest skips the slow link walk).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from netflow_agent.schema import BASE_KEY_SIZE, OPTIONAL_KEY, FlowSchema

__all__ = ["L2_FIELDS", "L2KeyPacker", "ETHERTYPE_OF_VERSION"]

#: the optional key fields an ingest fills from the link layer
L2_FIELDS = frozenset(f.name for f in OPTIONAL_KEY if f.name != "tunnel_id")
ETHERTYPE_OF_VERSION = {4: 0x0800, 6: 0x86DD}
_CACHE_MAX = 4096


class L2KeyPacker:
    """Packs the layer-2 key fields of ``schema`` (one packer per ingest thread).

    :ivar active: whether the schema has any layer-2 field (else :meth:`pack` gives ``b""``).
    :ivar size: bytes after the base key (the schema's :attr:`~FlowSchema.ext_size`).
    """

    __slots__ = ("active", "size", "_slots", "_cache", "_mpls")

    def __init__(self, schema: FlowSchema) -> None:
        self.size = schema.ext_size
        slots: dict[str, tuple[int, int]] = {}
        layout: Mapping[str, tuple] = schema.key_dtype.fields or {}
        for name in schema.ext_names:  # where the key dtype puts each field after the base
            if name in L2_FIELDS:
                dtype, off = layout[name][:2]
                slots[name] = (off - BASE_KEY_SIZE, dtype.itemsize)
        self._slots = slots
        self._mpls = sum(1 for n in slots if n.startswith("mpls_label_"))
        self.active = bool(slots)
        self._cache: dict[tuple, bytes] = {}

    def pack(self, ip_version: int, src_mac: bytes = b"", dst_mac: bytes = b"",
             vlans: Sequence[tuple[int, int, int]] = (), mpls: Sequence[int] = (),
             in_physdev: int = 0, out_physdev: int = 0) -> bytes:
        """The key bytes after the base for one packet.

        :param vlans: ``(tpid, id, priority)`` per tag, outermost first (:class:`LinkFacts`).
        :param mpls: 32-bit label stack entries, outermost first.
        """
        if not self.active:
            return b""
        memo = (ip_version, src_mac, dst_mac, tuple(vlans[:2]), tuple(mpls[:self._mpls]),
                in_physdev, out_physdev)
        out = self._cache.get(memo)
        if out is None:
            if len(self._cache) >= _CACHE_MAX:
                self._cache.clear()
            out = self._cache[memo] = self._build(*memo)
        return out

    def _build(self, ip_version: int, src_mac: bytes, dst_mac: bytes,
               vlans: tuple[tuple[int, int, int], ...], mpls: tuple[int, ...],
               in_physdev: int, out_physdev: int) -> bytes:
        values: dict[str, int | bytes] = {
            "src_mac": src_mac[:6] if len(src_mac) >= 6 else b"",
            "dst_mac": dst_mac[:6] if len(dst_mac) >= 6 else b"",
            "ethernet_type": ETHERTYPE_OF_VERSION.get(ip_version, 0),
            "in_physdev": in_physdev, "out_physdev": out_physdev,
        }
        for prefix, tag in zip(("vlan", "inner_vlan"), vlans, strict=False):
            values[f"{prefix}_id"], values[f"{prefix}_priority"] = tag[1], tag[2]
        for n, entry in enumerate(mpls, 1):
            values[f"mpls_label_{n}"] = entry >> 8
        out = bytearray(self.size)
        for name, (off, width) in self._slots.items():
            value = values.get(name)
            if isinstance(value, bytes):
                out[off:off + len(value)] = value
            elif value:
                out[off:off + width] = value.to_bytes(width, "big")
        return bytes(out)
