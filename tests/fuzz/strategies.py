"""Hypothesis strategies for the fuzz tests: near-valid inputs with lying lengths and junk.

Random bytes alone almost never get past a parser's first length check, so every strategy
here builds the real structure (IP headers and extension chains, netlink messages with NFLOG
or ctnetlink attributes, pcap/pcapng records, TOML configurations from the registered
components' own keys) and then lets hypothesis lie about lengths, types and sizes, cut the
result short, or mix in raw bytes. Recorded datagrams from the ingest tests are used as seeds
and mutated.

:func:`fuzz_settings` scales every test with ``FUZZ_EXAMPLES`` (default small for CI).
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import struct
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
#: examples per property; CI keeps the default, long runs set e.g. FUZZ_EXAMPLES=20000
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "150"))


def fuzz_settings(scale: float = 1.0) -> settings:
    """Settings for one fuzz property: ``FUZZ_EXAMPLES * scale`` examples, no deadline."""
    return settings(
        max_examples=max(10, int(FUZZ_EXAMPLES * scale)),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
    )


def u8() -> st.SearchStrategy[int]:
    return st.integers(0, 0xFF)


def u16() -> st.SearchStrategy[int]:
    return st.integers(0, 0xFFFF)


def u32() -> st.SearchStrategy[int]:
    return st.integers(0, 0xFFFFFFFF)


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    """``seed`` with a few bytes overwritten, then maybe cut short or extended."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(0, 6))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(u8())
    if data and draw(st.booleans()):
        del data[draw(st.integers(0, len(data))):]
    data += draw(st.binary(max_size=8))
    return bytes(data)


# --- IP packets ----------------------------------------------------------------------------

PROTOCOLS = [0, 1, 6, 17, 33, 43, 44, 50, 51, 58, 59, 60, 132, 135, 136, 255]
IPV6_EXT = [0, 43, 44, 51, 60, 135]


@st.composite
def ipv4_packet(draw: st.DrawFn) -> bytes:
    ihl = draw(st.one_of(st.just(5), st.integers(0, 15)))
    options = draw(st.binary(min_size=max(0, ihl * 4 - 20), max_size=max(0, ihl * 4 - 20)))
    body = draw(st.binary(max_size=48))
    real_total = 20 + len(options) + len(body)
    total = draw(st.one_of(st.just(real_total), u16()))
    frag = draw(st.one_of(st.sampled_from([0, 0x4000, 0x2000, 0x2001, 0x0001, 0x3FFF]), u16()))
    proto = draw(st.one_of(st.sampled_from(PROTOCOLS), u8()))
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, draw(u8()), total, 0, frag, 64, proto, 0,
                       draw(st.binary(min_size=4, max_size=4)),
                       draw(st.binary(min_size=4, max_size=4)))
    return head + options + body


@st.composite
def ipv6_packet(draw: st.DrawFn) -> bytes:
    chain = draw(st.lists(st.one_of(st.sampled_from(IPV6_EXT), u8()), max_size=10))
    last = draw(st.one_of(st.sampled_from(PROTOCOLS), u8()))
    headers = chain + [last]
    ext = b""
    for kind, nh in zip(headers, headers[1:], strict=False):
        hlen = draw(st.integers(0, 3))
        if kind == 44 or draw(st.integers(0, 4)) == 0:  # fragment shape: 8 bytes, offset/flags
            ext += struct.pack("!BBHI", nh, 0, draw(u16()), draw(u32()))
        else:
            ext += bytes([nh, hlen]) + draw(st.binary(min_size=6 + 8 * hlen,
                                                       max_size=6 + 8 * hlen))
    body = draw(st.binary(max_size=40))
    real = len(ext) + len(body)
    payload_len = draw(st.one_of(st.just(real), u16()))
    head = struct.pack("!IHBB16s16s", (6 << 28) | draw(st.integers(0, (1 << 28) - 1)),
                       payload_len, headers[0], 64,
                       draw(st.binary(min_size=16, max_size=16)),
                       draw(st.binary(min_size=16, max_size=16)))
    return head + ext + body


@st.composite
def ip_packets(draw: st.DrawFn) -> bytes:
    """An IPv4 or IPv6 packet (sometimes cut short), or raw bytes."""
    pkt = draw(st.one_of(ipv4_packet(), ipv6_packet(), st.binary(max_size=64)))
    if pkt and draw(st.integers(0, 3)) == 0:
        pkt = pkt[:draw(st.integers(0, len(pkt)))]
    return pkt


# --- netlink -------------------------------------------------------------------------------

NLA_FLAGS = [0, 0, 0, 0x4000, 0x8000]


def nlattr(atype: int, payload: bytes, length: int | None = None) -> bytes:
    """One netlink attribute; ``length`` overrides ``nla_len`` (to lie about it)."""
    real = 4 + len(payload)
    return struct.pack("=HH", real if length is None else length, atype) + payload + \
        b"\0" * (-real % 4)


@st.composite
def attr(draw: st.DrawFn, atype: int, size: int, nested: Any = None) -> bytes:
    """An attribute of ``atype`` whose payload is usually ``size`` bytes (or ``nested``)."""
    if nested is not None and draw(st.integers(0, 5)):
        payload = b"".join(draw(nested))
    else:
        n = draw(st.one_of(st.just(size), st.just(size), st.integers(0, 20)))
        payload = draw(st.binary(min_size=n, max_size=n))
    flags = draw(st.sampled_from(NLA_FLAGS))
    length = None if draw(st.integers(0, 9)) else draw(u16())
    return nlattr(atype | flags, payload, length)


@st.composite
def nlmsg(draw: st.DrawFn, msg_type: int, body: bytes) -> bytes:
    """A netlink message; sometimes with a lying ``nlmsg_len`` or another type."""
    real = 16 + len(body)
    length = real if draw(st.integers(0, 9)) else draw(u32())
    mtype = msg_type if draw(st.integers(0, 7)) else draw(st.sampled_from([1, 2, 3, 4, 0x401]))
    flags = draw(st.sampled_from([0, 0x400, 0x2, 0x600]))
    return struct.pack("=IHHII", length, mtype, flags, draw(u32()), 0) + body + \
        b"\0" * (-real % 4)


@st.composite
def datagram(draw: st.DrawFn, message: Any, seeds: list[bytes]) -> bytes:
    """Several messages back to back, or a mutated recorded datagram; maybe trailing junk."""
    if seeds and draw(st.integers(0, 2)) == 0:
        return draw(mutated(draw(st.sampled_from(seeds))))
    data = b"".join(draw(st.lists(message, min_size=1, max_size=4)))
    return data + draw(st.one_of(st.just(b""), st.binary(max_size=24)))


# NFLOG (linux/netfilter/nfnetlink_log.h)

def _nflog_seeds() -> list[bytes]:
    path = ROOT / "tests" / "ingest_nflog" / "data" / "router.nflog"
    if not path.exists():
        return []
    raw, out, off = path.read_bytes(), [], 0
    while off + 4 <= len(raw):
        (n,) = struct.unpack_from("<I", raw, off)
        out.append(raw[off + 4:off + 4 + n])
        off += 4 + n
    return out


NFLOG_SEEDS = _nflog_seeds()


def _nflog_vlan() -> st.SearchStrategy[list[bytes]]:
    """NFULA_VLAN's nested NFULA_VLAN_TCI (2) and NFULA_VLAN_PROTO (1)."""
    return st.lists(st.one_of(attr(2, 2), attr(1, 2)), max_size=3)


@st.composite
def nflog_message(draw: st.DrawFn) -> bytes:
    hook = draw(st.sampled_from([0, 1, 2, 3, 4, 7]))
    hdr = draw(st.one_of(st.just(struct.pack(">HBx", 0x0800, hook)), st.binary(max_size=8)))
    parts = [nlattr(1, hdr)]
    for atype, size in draw(st.lists(st.sampled_from(
            [(4, 4), (5, 4), (2, 4), (3, 16), (12, 4), (13, 4), (10, 6), (8, 12), (15, 2),
             (16, 14), (17, 2), (11, 4), (14, 4), (99, 3)]), max_size=6)):
        parts.append(draw(attr(atype, size)))
    for atype in draw(st.lists(st.sampled_from([6, 7, 20]), max_size=3)):  # layer 2
        parts.append(draw(attr(atype, 16, nested=_nflog_vlan())) if atype == 20
                     else draw(attr(atype, 4)))
    payload = draw(ip_packets())
    parts.append(nlattr(9, payload, None if draw(st.integers(0, 9)) else draw(u16())))
    if draw(st.integers(0, 5)) == 0:
        parts = draw(st.permutations(parts))
    if draw(st.integers(0, 5)) == 0:
        parts.append(draw(attr(draw(u8()), 4)))
    body = struct.pack("=BB2s", 2, 0, b"\0\x05") + b"".join(parts)
    return draw(nlmsg(0x400, body))


def nflog_datagrams() -> st.SearchStrategy[bytes]:
    return datagram(nflog_message(), NFLOG_SEEDS)


# ctnetlink (linux/netfilter/nfnetlink_conntrack.h)

def _ct_seeds() -> list[bytes]:
    out = []
    for name in ("events", "dump"):
        path = ROOT / "tests" / "ingest_conntrack" / "data" / f"{name}.hex"
        if path.exists():
            out += [bytes.fromhex(line.split()[1]) for line in path.read_text().splitlines()
                    if len(line.split()) == 2]
    return out


CT_SEEDS = _ct_seeds()


def _ct_tuple(v6: bool) -> st.SearchStrategy[list[bytes]]:
    size = 16 if v6 else 4
    ip = st.lists(st.one_of(attr(3 if v6 else 1, size), attr(4 if v6 else 2, size)),
                  min_size=0, max_size=3)
    proto = st.lists(st.one_of(attr(1, 1), attr(2, 2), attr(3, 2), attr(4, 2), attr(5, 1),
                               attr(6, 1), attr(7, 2), attr(8, 1), attr(9, 1)), max_size=5)
    return st.lists(st.one_of(attr(1, 8, nested=ip), attr(2, 8, nested=proto)), max_size=3)


def _ct_pair() -> st.SearchStrategy[list[bytes]]:
    return st.lists(st.one_of(attr(1, 8), attr(2, 8), attr(1, 4)), max_size=3)


@st.composite
def ct_message(draw: st.DrawFn) -> bytes:
    v6 = draw(st.booleans())
    tup = _ct_tuple(v6)
    parts = draw(st.lists(st.one_of(
        attr(1, 8, nested=tup), attr(2, 8, nested=tup), attr(3, 4), attr(12, 4),
        attr(9, 8, nested=_ct_pair()), attr(10, 8, nested=_ct_pair()),
        attr(20, 8, nested=_ct_pair()), attr(7, 4), attr(draw(u8()), 4)), max_size=8))
    body = struct.pack("=BBH", 10 if v6 else 2, 0, 0) + b"".join(parts)
    return draw(nlmsg(draw(st.sampled_from([0x100, 0x102])), body))


def ct_datagrams() -> st.SearchStrategy[bytes]:
    return datagram(ct_message(), CT_SEEDS)


# --- pcap / pcapng -------------------------------------------------------------------------


@st.composite
def pcap_file(draw: st.DrawFn) -> tuple[bytes, list[int], list[int]]:
    """A valid classic pcap: ``(data, block end offsets (headers first), packet ends)``."""
    order = draw(st.sampled_from("<>"))
    magic = draw(st.sampled_from([0xA1B2C3D4, 0xA1B23C4D]))
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 65535,
                       draw(st.sampled_from([1, 101, 113, 276, 0, 228, 147])))]
    bounds = [24]
    frames = draw(st.lists(st.binary(max_size=40), max_size=5))
    for frame in frames:
        out.append(struct.pack(order + "IIII", draw(u32()), draw(st.integers(0, 999_999)),
                               len(frame), len(frame)) + frame)
        bounds.append(bounds[-1] + 16 + len(frame))
    return b"".join(out), bounds, bounds[1:]


def _ng_block(order: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack(order + "II", btype, 12 + len(body)) + body + \
        struct.pack(order + "I", 12 + len(body))


@st.composite
def pcapng_file(draw: st.DrawFn) -> tuple[bytes, list[int], list[int]]:
    """A valid pcapng: SHB, IDB (maybe with if_tsresol), then EPB/SPB/unknown blocks."""
    order = draw(st.sampled_from("<>"))
    blocks = [_ng_block(order, 0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))]
    opts = b""
    if draw(st.booleans()):
        opts = struct.pack(order + "HHB3x", 9, 1, draw(u8())) + struct.pack(order + "HH", 0, 0)
    blocks.append(_ng_block(order, 1, struct.pack(order + "HHI", 1, 0, 65535) + opts))
    bounds = [len(blocks[0]) + len(blocks[1])]
    packets = []
    for kind, frame in draw(st.lists(st.tuples(st.sampled_from(["epb", "spb", "other"]),
                                               st.binary(max_size=40)), max_size=5)):
        if kind == "epb":
            body = struct.pack(order + "IIIII", 0, draw(u32()), draw(u32()), len(frame),
                               len(frame)) + frame
            blocks.append(_ng_block(order, 6, body))
        elif kind == "spb":
            blocks.append(_ng_block(order, 3, struct.pack(order + "I", len(frame)) + frame))
        else:
            blocks.append(_ng_block(order, 5, frame))  # interface statistics: skipped
        bounds.append(bounds[-1] + len(blocks[-1]))
        if kind != "other":
            packets.append(bounds[-1])
    return b"".join(blocks), bounds, packets


# --- configuration -------------------------------------------------------------------------

SCALARS = st.one_of(
    st.integers(-(1 << 63), (1 << 63) - 1), st.integers(-3, 70000), st.booleans(),
    st.floats(allow_nan=True), st.text(max_size=20),
    st.sampled_from(["-", "", "127.0.0.1:2055", "[::1]:4739", "udp", "tcp", "max", "v9",
                     "/nonexistent", "/dev/null", "eth*", "lo", "ingress", "both", "10.0.0.0/8=16",
                     "a\x00b", "9" * 30]),
    st.datetimes(min_value=datetime.datetime(1, 1, 1), max_value=datetime.datetime(9999, 1, 1)),
    st.dates(), st.times(),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)


def config_keys(registry: Any) -> dict[str, list[str]]:
    """Table name (``cache``, ``export.netflow``...) -> the keys its config class declares."""
    out: dict[str, list[str]] = {}
    for ctype in registry.types.values():
        fields = [f.name for f in dataclasses.fields(ctype.config_class)]
        table = ctype.table if ctype.stage in ("ingest", "export") else ctype.stage
        out.setdefault(table, []).extend(fields + ["type"] * (ctype.stage == "cache"))
    from netflow_agent.config.model import AgentSection
    out["agent"] = [f.name for f in dataclasses.fields(AgentSection)]
    return out


@st.composite
def config_dict(draw: st.DrawFn, keys: dict[str, list[str]]) -> dict[str, Any]:
    """A configuration shaped like the real one: known tables and keys, random values."""
    data: dict[str, Any] = {}
    for table in draw(st.lists(st.sampled_from(sorted(keys) + ["bogus", "ingest.nope"]),
                               min_size=1, max_size=5)):
        known = keys.get(table, ["x"])
        body = draw(st.dictionaries(st.one_of(st.sampled_from(known), st.text(max_size=6)),
                                    VALUES, max_size=4))
        if "." in table:  # [[stage.name]]: a list of tables (sometimes a single table)
            stage, name = table.split(".", 1)
            entry = body if draw(st.integers(0, 7)) == 0 else [body]
            data.setdefault(stage, {})[name] = entry
        else:
            data[table] = body
    return data


@st.composite
def toml_text(draw: st.DrawFn, keys: dict[str, list[str]]) -> str:
    """TOML-looking text: real table headers and keys, values and punctuation that may break."""
    lines = []
    for _ in range(draw(st.integers(0, 10))):
        table = draw(st.sampled_from(sorted(keys)))
        kind = draw(st.integers(0, 4))
        if kind == 0:
            header = f"[[{table}]]" if "." in table else f"[{table}]"
            lines.append(draw(st.sampled_from([header, header[1:], header + "]", f"[{table}"])))
        elif kind == 4:
            lines.append(draw(st.text(max_size=30)))
        else:
            key = draw(st.sampled_from(keys[table]))
            value = draw(st.sampled_from(
                ["1", "-1", "0", "1e999", "nan", "inf", "true", '"x"', '""', "[]", "[1, 2]",
                 '["127.0.0.1:2055"]', '["::1"]', "{a = 1}", "9223372036854775808",
                 "0x7fffffff", "1979-05-27T07:32:00Z", '"""\n"""', "'a'", "= =", '"\\u0000"']))
            lines.append(f"{key} = {value}")
    return "\n".join(lines)


#: the smallest valid table of each component; near-valid configs start from these
BASE_TABLES: dict[str, dict[str, Any]] = {
    "ingest.pcap": {"path": "/dev/null"},
    "ingest.nflog": {"group": 5},
    "ingest.ebpf": {"interfaces": ["lo"]},
    "ingest.conntrack": {},
    "export.log": {"path": "-"},
    "export.netflow": {"destination": ["127.0.0.1:2055"]},
    "export.ipfix": {"destination": ["127.0.0.1:4739"]},
}
NASTY = st.one_of(VALUES, st.sampled_from(
    ["a\x00b", "\x00", "/proc/self/ns/net", "/", "..", "eth0" * 40, "1.2.3.4:0", "[::1]",
     ":2055", "host:99999", "::1:2055", "[fe80::1%lo]:2055", -1, 0, 1 << 31, 1 << 40, 2.5,
     [], [""], ["x"], {}]))


@st.composite
def near_valid_config(draw: st.DrawFn, keys: dict[str, list[str]]) -> dict[str, Any]:
    """A valid configuration (one ingest, one export, maybe more) with 1-3 values changed,
    so the later checks (resources, plugins' ``agent_check_config``) run on odd values."""
    ingests = [t for t in BASE_TABLES if t.startswith("ingest.")]
    exports = [t for t in BASE_TABLES if t.startswith("export.")]
    chosen = [draw(st.sampled_from(ingests)), draw(st.sampled_from(exports))]
    chosen += draw(st.lists(st.sampled_from(sorted(BASE_TABLES)), max_size=2))
    data: dict[str, Any] = {}
    entries: list[dict[str, Any]] = []
    for table in chosen:
        stage, name = table.split(".")
        entry = dict(BASE_TABLES[table])
        data.setdefault(stage, {}).setdefault(name, []).append(entry)
        entries.append((table, entry))  # type: ignore[arg-type]
    for top in ("agent", "cache", "aggregate"):
        if draw(st.booleans()):
            data[top] = {}
            entries.append((top, data[top]))  # type: ignore[arg-type]
    for _ in range(draw(st.integers(1, 3))):
        table, entry = draw(st.sampled_from(entries))
        entry[draw(st.sampled_from(keys.get(table, ["x"])))] = draw(NASTY)
    return data
