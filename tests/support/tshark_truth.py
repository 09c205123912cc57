"""Ground truth of a capture as tshark dissects it: the flows a NetFlow probe must report.

What it owns: :func:`tshark_flows` runs ``tshark -2`` (two passes, so fragments know the frame
their datagram is reassembled in) over any capture file and folds its per-frame fields into
``{FlowKey: FlowTruth}``, with the semantics ipt_NETFLOW (and this agent) document:

* the key is (protocol, source, destination, source port, destination port) of the IP header
  that the probe accounts: the outermost one, or with ``decapsulate`` the one inside the first
  tunnel of those kinds (GRE, VXLAN, Geneve, IP-in-IP);
* ICMP and ICMPv6: source port 0, destination port ``type << 8 | code``;
* bytes are the IP header's own length (IPv4 total length, IPv6 40 + payload length), not what
  was captured: a short snap length does not change them;
* every fragment counts as a packet with its own length; it belongs to the 5-tuple of its
  datagram (tshark's reassembly says which), the agent's ``fragments = "track"``;
* TCP flags are the OR over the flow's packets; first/last are the capture timestamps (ns).

Nothing here parses packets: every value is a tshark field, so a misunderstanding shared by
``tests/support/pcapgen.py`` and the agent's parser cannot hide here. Frames without an IP
layer are listed in :attr:`Truth.non_ip`; IP layers tshark marks malformed or whose header
it could not read (:attr:`Truth.bad_ip`) are not flows.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from tests.support import require_tool

FlowKey = tuple[int, str, str, int, int]  # protocol, src, dst, sport, dport

#: tshark layer names of the tunnels each ``decapsulate`` name opens
TUNNEL_LAYERS = {"gre": {"gre"}, "vxlan": {"vxlan"}, "geneve": {"geneve"},
                 "ipip": {"ip", "ipv6"}}
_IP_LAYERS = ("ip", "ipv6")
_V6_EXT = ("ipv6.hopopts", "ipv6.routing", "ipv6.fraghdr", "ipv6.dstopts")
#: ipt_NETFLOW walks past an IPv6 AH header (ipv6_ext_hdr()) but not an IPv4 one: so does
#: the agent (agent/packet.py), so the truth does too, although tshark ends the IP layer there
_V6_WALKED = (*_V6_EXT, "ah")
_FIELDS = [
    "frame.number", "frame.interface_id", "frame.time_epoch", "frame.protocols", "_ws.malformed",
    "ip.proto", "ip.src", "ip.dst", "ip.len", "ip.hdr_len", "ip.reassembled_in",
    "ipv6.nxt", "ipv6.src", "ipv6.dst", "ipv6.plen", "ipv6.reassembled.in",
    "ipv6.hopopts.nxt", "ipv6.routing.nxt", "ipv6.fraghdr.nxt", "ipv6.dstopts.nxt",
    "ah.next_header",
    "tcp.srcport", "tcp.dstport", "tcp.flags", "udp.srcport", "udp.dstport",
    "sctp.srcport", "sctp.dstport", "dccp.srcport", "dccp.dstport",
    "icmp.type", "icmp.code", "icmpv6.type", "icmpv6.code",
]
#: layers with 16-bit ports -> the prefix of their port fields (UDP-Lite's are udp.*)
_PORT_LAYERS = {"tcp": "tcp", "udp": "udp", "udplite": "udp", "sctp": "sctp", "dccp": "dccp"}
_ICMP_LAYERS = ("icmp", "icmpv6")


@dataclass
class FlowTruth:
    """One flow as the capture holds it."""

    packets: int = 0
    octets: int = 0
    tcp_flags: int = 0
    first_ns: int = 0
    last_ns: int = 0

    def add(self, length: int, flags: int, ts_ns: int) -> None:
        self.first_ns = min(self.first_ns, ts_ns) if self.packets else ts_ns
        self.last_ns = max(self.last_ns, ts_ns)
        self.packets += 1
        self.octets += length
        self.tcp_flags |= flags


@dataclass
class Truth:
    """tshark's view of one capture."""

    flows: dict[FlowKey, FlowTruth] = field(default_factory=dict)
    non_ip: list[int] = field(default_factory=list)  # frame numbers without an IP layer
    bad_ip: list[int] = field(default_factory=list)  # IP layers tshark could not read

    def table(self) -> dict[FlowKey, tuple[int, int]]:
        """``{key: (packets, bytes)}``."""
        return {k: (f.packets, f.octets) for k, f in self.flows.items()}


Rows = list[dict[str, list[str]]]
#: tshark_rows' answers in this process, by (SHA-256 of the capture, options): a test that
#: reads one capture twice (with and without ``decapsulate``) starts tshark once (~0.6 s)
_ROWS: dict[tuple[str, tuple[str, ...]], Rows] = {}


def tshark_rows(path: str | Path, *options: str) -> Rows:
    """Every frame's fields (all occurrences, in order), reassembly on, names resolved off;
    the same capture bytes and options are dissected once per process."""
    key = (hashlib.sha256(Path(path).read_bytes()).hexdigest(), options)
    if key not in _ROWS:
        _ROWS[key] = _run_tshark(path, options)
    return _ROWS[key]


def _run_tshark(path: str | Path, options: tuple[str, ...]) -> Rows:
    tshark = require_tool("tshark")
    cmd = [tshark, "-n", "-2", "-r", str(path), "-o", "ip.defragment:TRUE",
           "-o", "ipv6.defragment:TRUE", *options, "-T", "fields", "-E", "separator=\t",
           "-E", "occurrence=a", "-E", "aggregator=|"]
    for name in _FIELDS:
        cmd += ["-e", name]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.splitlines():
        cols = line.split("\t")
        rows.append({name: (cols[i].split("|") if i < len(cols) and cols[i] else [])
                     for i, name in enumerate(_FIELDS)})
    return rows


def tshark_flows(path: str | Path, decapsulate: frozenset[str] = frozenset(),
                 *options: str) -> Truth:
    """The flows of the capture at ``path`` (see the module doc)."""
    rows = tshark_rows(path, *options)
    return _fold(rows, decapsulate, {int(r["frame.number"][0]): r for r in rows})


def tshark_flows_by_interface(path: str | Path, decapsulate: frozenset[str] = frozenset(),
                              *options: str) -> dict[int, Truth]:
    """The flows of each interface of the pcapng at ``path``, by interface id: one tshark run
    for many captures, each written as an interface of its own (fragments are looked up in
    the whole file: give each interface's datagrams IDs of their own, or whole datagrams)."""
    rows = tshark_rows(path, *options)
    frames = {int(r["frame.number"][0]): r for r in rows}
    groups: dict[int, Rows] = {}
    for row in rows:
        groups.setdefault(int(row["frame.interface_id"][0]), []).append(row)
    return {i: _fold(group, decapsulate, frames) for i, group in groups.items()}


def _fold(rows: Rows, decapsulate: frozenset[str],
          frames: dict[int, dict[str, list[str]]]) -> Truth:
    """The flows of ``rows``; ``frames`` (every frame of the file by number) for the
    fragments' datagrams."""
    truth = Truth()
    for row in rows:
        number = int(row["frame.number"][0])
        layers = row["frame.protocols"][0].split(":") if row["frame.protocols"] else []
        pick = _accounted_ip(layers, decapsulate)
        if pick is None:
            truth.non_ip.append(number)
            continue
        got = _flow_of(row, layers, pick, frames)
        if got is None:
            truth.bad_ip.append(number)
            continue
        key, length, flags = got
        stamp = row["frame.time_epoch"]  # none in a pcapng simple packet block
        ts_ns = _epoch_ns(stamp[0]) if stamp else 0
        truth.flows.setdefault(key, FlowTruth()).add(length, flags, ts_ns)
    return truth


def _epoch_ns(text: str) -> int:
    sec, _, frac = text.partition(".")
    return int(sec) * 10**9 + int((frac + "000000000")[:9])


def _accounted_ip(layers: list[str], decapsulate: frozenset[str]) -> int | None:
    """Index in ``layers`` of the IP layer the probe accounts, or None when there is none."""
    ips = [i for i, name in enumerate(layers) if name in _IP_LAYERS]
    if not ips:
        return None
    outer = ips[0]
    opens = set().union(*(TUNNEL_LAYERS[k] for k in decapsulate)) if decapsulate else set()
    after = _upper(layers, outer)
    if after is not None and layers[after] in opens:
        inner = [i for i in ips if i > outer]
        if inner:
            return inner[0]
    return outer


def _upper(layers: list[str], ip_index: int) -> int | None:
    """Index of the layer above the IP layer at ``ip_index`` (past IPv6 extension headers,
    past the UDP header of a UDP tunnel)."""
    i = _past_extensions(layers, ip_index)
    if i < len(layers) and layers[i] == "udp" and i + 1 < len(layers) \
            and layers[i + 1] in ("vxlan", "geneve"):
        i += 1
    return i if i < len(layers) else None


def _nth(row: dict[str, list[str]], name: str, n: int) -> str | None:
    values = row[name]
    return values[n] if n < len(values) else None


def _flow_of(row: dict[str, list[str]], layers: list[str], at: int,
             frames: dict[int, dict[str, list[str]]]) -> tuple[FlowKey, int, int] | None:
    """(key, IP length, TCP flags) of the IP layer at ``layers[at]``."""
    name = layers[at]
    occ = layers[:at].count(name)  # which occurrence of ip/ipv6 fields belongs to it
    if name == "ip":
        src, dst, proto = _nth(row, "ip.src", occ), _nth(row, "ip.dst", occ), \
            _nth(row, "ip.proto", occ)
        length = _nth(row, "ip.len", occ)
        if src is None or dst is None or length is None or proto is None:
            return None
        nbytes, protocol = int(length), int(proto)
        reassembled = _nth(row, "ip.reassembled_in", occ) if occ == 0 else None
    else:
        src, dst = _nth(row, "ipv6.src", occ), _nth(row, "ipv6.dst", occ)
        plen = _nth(row, "ipv6.plen", occ)
        if src is None or dst is None or plen is None:
            return None
        nbytes = 40 + int(plen)
        protocol = _v6_protocol(row, layers, at, occ)
        reassembled = _nth(row, "ipv6.reassembled.in", 0) if occ == 0 else None
    upper_at = _upper_transport(layers, at)
    if reassembled and int(reassembled) in frames and int(reassembled) != int(
            row["frame.number"][0]):  # a fragment: its datagram's ports
        whole = frames[int(reassembled)]
        wlayers = whole["frame.protocols"][0].split(":")
        wat = wlayers.index(name)  # its link layer may differ (pcapng interfaces)
        sport, dport, flags = _ports(whole, wlayers, _upper_transport(wlayers, wat))
        flags = 0  # only the fragment with the TCP header has flags
        if upper_at is not None:  # the first fragment holds the transport header
            flags = _ports(row, layers, upper_at)[2]
    else:
        sport, dport, flags = _ports(row, layers, upper_at)
    return (protocol, src, dst, sport, dport), nbytes, flags


def _past_extensions(layers: list[str], at: int) -> int:
    """Index of the first layer after the IP layer at ``at`` and its extension headers."""
    walked = _V6_WALKED if layers[at] == "ipv6" else ()
    i = at + 1
    while i < len(layers) and layers[i] in walked:
        i += 1
    return i


def _upper_transport(layers: list[str], at: int) -> int | None:
    i = _past_extensions(layers, at)
    if i < len(layers) and (layers[i] in _PORT_LAYERS or layers[i] in _ICMP_LAYERS):
        return i
    return None


def _ports(row: dict[str, list[str]], layers: list[str], at: int | None) -> tuple[int, int, int]:
    """(sport, dport, tcp flags) of the transport layer at ``layers[at]``; ICMP type/code in
    dport as NetFlow does."""
    if at is None:
        return 0, 0, 0
    name = layers[at]
    if name in _ICMP_LAYERS:
        occ = layers[:at].count(name)
        icmp_type, code = _nth(row, f"{name}.type", occ), _nth(row, f"{name}.code", occ)
        return 0, (int(icmp_type or 0) << 8) | int(code or 0), 0
    prefix = _PORT_LAYERS[name]
    occ = sum(1 for layer in layers[:at] if _PORT_LAYERS.get(layer) == prefix)
    sport, dport = _nth(row, f"{prefix}.srcport", occ), _nth(row, f"{prefix}.dstport", occ)
    flags = _nth(row, "tcp.flags", occ) if name == "tcp" else None
    return int(sport or 0), int(dport or 0), int(flags, 16) & 0xFF if flags else 0


def _v6_protocol(row: dict[str, list[str]], layers: list[str], at: int, occ: int) -> int:
    """The IPv6 upper-layer protocol: the Next Header of the last extension header."""
    i, value = at + 1, _nth(row, "ipv6.nxt", occ)
    while i < len(layers) and layers[i] in _V6_WALKED:
        ext = layers[i]
        name = "ah.next_header" if ext == "ah" else f"{ext}.nxt"
        value = _nth(row, name, layers[:i].count(ext))
        i += 1
    return int(value or 0)
