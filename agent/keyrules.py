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

:class:`KeyRules` compiles the rules once and memoizes the rewrite per packed key, so the cost
per packet is one dict lookup; the memo is bounded (:data:`MEMO_MAX` keys per generation,
two generations). Measured costs: docs/performance-history.md, "Aggregation rules".
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import NamedTuple

from netflow_agent.model import KEY, Packet, make_key, split_key
from netflow_agent.packet import PORT_PROTOCOLS

__all__ = ["KeyRules", "NetmaskRule", "PortRule", "parse_rule", "split_rules"]

#: keys per memo generation (two generations: at most ~2 x 131,072 x ~120 bytes = 30 MB);
#: more distinct keys than that at once pay the full rewrite (about 1 us) more often
MEMO_MAX = 1 << 17


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
    """Compiled aggregation rules that rewrite packed flow keys (see the module docstring).

    The memo has two generations of at most :data:`MEMO_MAX` keys each: when the young one is
    full it becomes the old one and the oldest is dropped, so the keys of live flows survive
    (a hit in the old generation moves the key to the young one). Addresses and ports are
    memoized too, so a miss costs one key split and one repack. Not thread-safe: the
    pipeline thread owns it, like the cache.

    :param rules: the rules as text (a comma-separated string or a list); must parse.
    """

    def __init__(self, rules: str | Sequence[str] = ()):
        self.texts = split_rules(rules)
        parsed = [parse_rule(r) for r in self.texts]
        self.netmask = {v: [r for r in parsed if isinstance(r, NetmaskRule) and r.version == v]
                        for v in (4, 6)}
        ports = [r for r in parsed if isinstance(r, PortRule)]
        self.port_map = _port_map(ports) if ports else None
        self._memo: dict[bytes, bytes] = {}
        self._old: dict[bytes, bytes] = {}
        self._masks: dict[bytes, int] = {}
        self._old_masks: dict[bytes, int] = {}
        self._addrs: dict[bytes, tuple[bytes, int]] = {}

    def __bool__(self) -> bool:
        return bool(self.texts)

    def rewrite_packets(self, packets: list[Packet]) -> list[Packet]:
        """The packets with aggregated keys; :meth:`masks` then knows every key returned."""
        self._bound()
        get, miss = self._memo.get, self._miss
        return [(get(k) or miss(k), n, f, t, o) for k, n, f, t, o in packets]

    def rewrite_keys(self, keys: list[bytes]) -> list[bytes]:
        """The aggregated keys (kernel deltas); :meth:`masks` then knows every key returned."""
        self._bound()
        get, miss = self._memo.get, self._miss
        return [get(k) or miss(k) for k in keys]

    def rewrite(self, key: bytes) -> tuple[bytes, int]:
        """``(aggregated key, masks)`` of one key (a restored flow)."""
        self._bound()
        new = self._memo.get(key) or self._miss(key)
        return new, self._masks[new]

    def masks(self, new_key: bytes) -> int:
        """``src_mask << 8 | dst_mask`` of a key the last rewrite call returned (0 if none)."""
        return self._masks.get(new_key, 0)

    def _bound(self) -> None:
        """Start a young generation when the current one is full (between calls only, so
        :meth:`masks` knows every key of the last call)."""
        if len(self._memo) > MEMO_MAX:
            self._old, self._memo = self._memo, {}
            self._old_masks, self._masks = self._masks, {}
        if len(self._addrs) > MEMO_MAX:
            self._addrs.clear()

    def _miss(self, key: bytes) -> bytes:
        new = self._old.get(key)
        if new is not None:
            self._masks.setdefault(new, self._old_masks.get(new, 0))
        else:
            new = self._compute(key)
        self._memo[key] = new
        return new

    def _compute(self, key: bytes) -> bytes:
        k = split_key(key)
        src, smask = self._addrs.get(k.src_addr) or self._addr(k.ip_version, k.src_addr)
        dst, dmask = self._addrs.get(k.dst_addr) or self._addr(k.ip_version, k.dst_addr)
        sport, dport = k.src_port, k.dst_port
        if self.port_map is not None and k.protocol in PORT_PROTOCOLS:
            sport, dport = self.port_map[sport], self.port_map[dport]
        if (src, dst, sport, dport) == (k.src_addr, k.dst_addr, k.src_port, k.dst_port):
            new = key  # nothing changed: the same key object, no repack (masks still kept)
        else:
            new = make_key(k.ip_version, k.protocol, src, dst, sport, dport, k.tos, k.in_if,
                           k.direction, key[KEY.size:])  # the schema's optional fields kept
        self._masks.setdefault(new, smask << 8 | dmask)  # the creating packet's masks
        return new

    def _addr(self, version: int, addr: bytes) -> tuple[bytes, int]:
        value = int.from_bytes(addr, "big")
        out = addr, 0
        for r in self.netmask[version]:
            if value & r.mask == r.net:
                out = (value & r.newmask).to_bytes(len(addr), "big"), r.newlen
                break
        self._addrs[addr] = out
        return out


def _port_map(rules: list[PortRule]) -> list[int]:
    """Every port 0..65535 after the port rules (first match wins)."""
    out = list(range(65536))
    for r in reversed(rules):  # earlier rules overwrite later ones
        out[r.low:r.high + 1] = [r.port] * (r.high - r.low + 1)
    return out
