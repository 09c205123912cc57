"""ipt_NETFLOW's aggregation rules (``aggregation=``): grammar, and the rewrite of flow keys.

Grammar (the seed's): comma-separated rules, or a TOML list of them.

* netmask rule ``PREFIX/LEN=NEWLEN``: an address inside PREFIX/LEN is cut to NEWLEN bits
  (``192.0.0.0/8=16``); IPv6 prefixes work the same way (``2001:db8::/32=48``);
* port rule ``LOW-HIGH=PORT`` or ``PORT=PORT``: a port in the range becomes PORT
  (``80-89=80``, ``3128=80``); only for protocols with ports (TCP, UDP, SCTP, DCCP, UDP-Lite),
  so an ICMP type/code is never rewritten.

Rules apply to source and destination alike; netmask and port rules are each tried in order
and the first match of each kind wins. The cache applies them to every packet (and every
kernel delta, and every restored flow) *before* the flow lookup, as ipt_NETFLOW does, so the
table holds aggregated flows and ``maxflows`` counts them. The prefix lengths a flow was cut to
become its source/destination mask (sourceIPv4PrefixLength 9 / destinationIPv4PrefixLength
13); a flow takes the masks of the packet that created it, as in ipt_NETFLOW.

:class:`KeyRules` compiles the rules once and rewrites a whole batch's key fields in place
(:meth:`KeyRules.apply`, one C call per batch, no Python per key), so rules cost the same for
every key, seen before or not, and the batch then takes the cache's C merge. Measured costs:
docs/performance.md, "Ninth stop: aggregation rules and hash sampling on columns" (the
per-key memo before it: docs/performance-history.md, "Aggregation rules").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from netflow_agent._flowindex import rewrite_keys
from netflow_agent.model import KEY
from netflow_agent.packet import PORT_PROTOCOLS

__all__ = ["KeyRules", "NetmaskRule", "PortRule", "parse_rule", "split_rules"]

class NetmaskRule(NamedTuple):
    """``PREFIX/LEN=NEWLEN`` as integers: match ``addr & mask == net``, keep ``newmask``."""

    version: int
    net: int
    mask: int
    newmask: int
    newlen: int


class PortRule(NamedTuple):
    """``LOW-HIGH=PORT``."""

    low: int
    high: int
    port: int


def parse_rule(text: str) -> NetmaskRule | PortRule:
    """Parse one rule; raise ``ValueError`` with a message that says what is wrong."""
    left, sep, right = text.strip().partition("=")
    if not sep or not left or not right:
        raise ValueError(f"'{text}': expected PREFIX/LEN=NEWLEN or LOW-HIGH=PORT")
    if "/" in left:
        return _netmask_rule(text, left, right)
    return _port_rule(text, left, right)


def _netmask_rule(text: str, left: str, right: str) -> NetmaskRule:
    try:
        net = ipaddress.ip_network(left.strip(), strict=False)
        newlen = int(right)
    except ValueError as exc:
        raise ValueError(f"'{text}': {exc}") from None
    if not 0 <= newlen <= net.max_prefixlen:
        raise ValueError(f"'{text}': new prefix length must be 0..{net.max_prefixlen}")
    bits = net.max_prefixlen
    newmask = ((1 << newlen) - 1) << (bits - newlen) if newlen else 0
    return NetmaskRule(net.version, int(net.network_address), int(net.netmask), newmask, newlen)


def _port_rule(text: str, left: str, right: str) -> PortRule:
    low_s, dash, high_s = left.partition("-")
    try:
        low, high, port = int(low_s), int(high_s if dash else low_s), int(right)
    except ValueError:
        raise ValueError(f"'{text}': ports must be numbers (LOW-HIGH=PORT)") from None
    if not (0 <= low <= high <= 65535 and 0 <= port <= 65535):
        raise ValueError(f"'{text}': ports must be 0..65535 with LOW <= HIGH")
    return PortRule(low, high, port)


def split_rules(rules: str | Sequence[str]) -> list[str]:
    """Accept the seed's comma-separated string or a list of rules."""
    items = rules.split(",") if isinstance(rules, str) else rules
    return [r.strip() for r in items if r.strip()]


def rule_issues(rules: str | Sequence[str]) -> list[tuple[str, str]]:
    """``(path, message)`` for every rule that does not parse (``rules[N]`` for a list)."""
    issues = []
    for n, rule in enumerate(split_rules(rules)):
        try:
            parse_rule(rule)
        except ValueError as exc:
            issues.append((f"[{n}]" if not isinstance(rules, str) else "", str(exc)))
    return issues


class KeyRules:
    """Compiled aggregation rules that rewrite flow keys on columns (see the module docstring).

    :meth:`apply` rewrites the address and port fields of a whole batch in place, in C
    (``agent/_flowindex.c``'s ``rewrite_keys``: the netmask rules compiled to masks, the port
    rules to a 65,536-entry map); nothing is kept between batches (no memo, no object per key).

    :param rules: the rules as text (a comma-separated string or a list); must parse.
    """

    def __init__(self, rules: str | Sequence[str] = ()):
        self.texts = split_rules(rules)
        parsed = [parse_rule(r) for r in self.texts]
        self.netmask = {v: [r for r in parsed if isinstance(r, NetmaskRule) and r.version == v]
                        for v in (4, 6)}
        self._cuts = b"".join(_cut(r) for r in parsed if isinstance(r, NetmaskRule))
        ports = [r for r in parsed if isinstance(r, PortRule)]
        self.port_map = _port_map(ports) if ports else None

    def __bool__(self) -> bool:
        return bool(self.texts)

    def apply(self, keys: np.ndarray) -> np.ndarray:
        """Rewrite the key fields of every row of ``keys`` in place; return each row's masks.

        :param keys: a C-contiguous structured array (packed keys viewed as the schema's key
            dtype, a batch's record rows, or a view of rows that hold a packed key) with the
            fields ``ip_version`` and ``protocol`` (1 byte), ``src_port`` and ``dst_port``
            (2 bytes, either byte order) and ``src_addr`` and ``dst_addr`` (16 bytes, IPv4
            in the first 4).
        :return: ``src_mask << 8 | dst_mask`` per row (uint16; 0 where no netmask rule
            matched): the prefix lengths the row's addresses were cut to.
        """
        masks = np.empty(len(keys), np.uint16)
        if not len(keys):
            return masks
        if not keys.flags.c_contiguous:
            raise ValueError("keys: need a C-contiguous array")
        dtype = keys.dtype
        rewrite_keys(keys.view(f"V{dtype.itemsize}"), dtype.itemsize, _fields(dtype),
                     self._cuts, self.port_map, _WITH_PORTS, masks)
        return masks

    def rewrite(self, key: bytes) -> tuple[bytes, int]:
        """``(aggregated key, masks)`` of one packed key (any schema width: the 44-byte
        base key, :data:`~agent.model.KEY`, and what a schema appends): :meth:`apply` on a
        row of one.

        :raises ValueError: ``key`` is shorter than the base key.
        """
        if len(key) < _BASE_KEY_BYTES:
            raise ValueError(f"key: {len(key)} bytes, need at least the {_BASE_KEY_BYTES}-byte "
                             "base key")
        row = np.frombuffer(key, np.dtype((np.void, len(key)))).copy()
        masks = self.apply(row.view(_key_dtype(len(key))))
        return row.tobytes(), int(masks[0])


#: the packed base key (:data:`~agent.model.KEY`): every schema's key starts with it
_BASE_KEY_BYTES = KEY.size
#: per protocol number, 1 if the port rules rewrite its ports
_WITH_PORTS = bytes(int(p in PORT_PROTOCOLS) for p in range(256))
_FIELDS = (("ip_version", 1), ("protocol", 1), ("src_port", 2), ("dst_port", 2),
           ("src_addr", 16), ("dst_addr", 16))


def _fields(dtype: np.dtype) -> tuple[int, ...]:
    """The ``fields`` of ``rewrite_keys``: each key field's offset in a row of ``dtype``,
    then whether the ports are in the other byte order."""
    fields: dict[str, tuple] = dict(dtype.fields or {})
    for name, width in _FIELDS:
        if name not in fields or fields[name][0].itemsize != width:
            raise ValueError(f"keys: need a {width}-byte field {name!r}")
    swapped = {not fields[name][0].isnative for name in ("src_port", "dst_port")}
    if len(swapped) != 1:
        raise ValueError("keys: src_port and dst_port in different byte orders")
    return (*(int(fields[name][1]) for name, _w in _FIELDS), int(swapped.pop()))


def _cut(rule: NetmaskRule) -> bytes:
    """A netmask rule as ``rewrite_keys`` reads it: version, new length, 6 pad bytes, then
    mask, net and the mask to keep over a 16-byte address field (an IPv4 rule matches the
    first 4 bytes and leaves the padding after them as it is)."""
    size = 4 if rule.version == 4 else 16

    def field(value: int, padding: bytes) -> bytes:
        return value.to_bytes(size, "big") + padding * (16 - size)

    return (bytes([rule.version, rule.newlen]) + bytes(6) + field(rule.mask, b"\0")
            + field(rule.net, b"\0") + field(rule.newmask, b"\xff"))


def _key_dtype(size: int) -> np.dtype:
    """The base packed key (:data:`~agent.model.KEY`) as a dtype of ``size`` bytes."""
    return np.dtype({"names": ["ip_version", "protocol", "src_port", "dst_port", "src_addr",
                               "dst_addr"],
                     "formats": ["u1", "u1", ">u2", ">u2", "V16", "V16"],
                     "offsets": [0, 1, 8, 10, 12, 28], "itemsize": size})


def _port_map(rules: list[PortRule]) -> np.ndarray:
    """Every port 0..65535 after the port rules (first match wins)."""
    out = np.arange(65536, dtype=np.uint16)
    for r in reversed(rules):  # earlier rules overwrite later ones
        out[r.low:r.high + 1] = r.port
    return out
