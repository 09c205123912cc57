"""tests/support/pcapgen.py: exact ground truth, every link type and format, read back by tshark."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest

from tests.support import require_tool
from tests.support.pcapgen import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_RAW,
    SAMPLE_EPOCH_NS,
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_SYN,
    FlowSpec,
    PcapBuilder,
    ip_of_frame,
    read_frames,
    truth_from_file,
)
from tests.support.truth import FlowId, parse_ip

ROOT = Path(__file__).resolve().parents[2]


def mixed_builder(**kwargs) -> PcapBuilder:
    """Every packet kind the agent must account, with sizes easy to check by hand."""
    b = PcapBuilder(**kwargs)
    b.add(FlowSpec("udp", "10.0.0.1", "10.0.0.2", 1000, 7000, packets=3, payload=40))
    b.add(
        FlowSpec(
            "tcp", "fd00::1", "fd00::2", 40000, 80, packets=4, payload=100, ext_headers=(0, 60)
        )
    )
    b.add(FlowSpec("icmp", "10.0.0.1", "10.0.0.2", packets=2, payload=56))
    b.add(FlowSpec("icmpv6", "fd00::1", "fd00::2", packets=2, payload=8, icmp_type=128))
    b.add(
        FlowSpec("udp", "10.0.0.1", "10.0.0.3", 5000, 6000, packets=2, payload=3000, fragment=1400)
    )
    b.add(FlowSpec("udp", "fd00::1", "fd00::3", 5000, 6000, packets=1, payload=3000, fragment=1400))
    b.add_truncated()
    return b


def test_truth_by_construction_is_exact() -> None:
    truth = mixed_builder().truth
    t = truth.table()
    assert t[FlowId.make(17, "10.0.0.1", "10.0.0.2", 1000, 7000)] == (3, 3 * (20 + 8 + 40))
    # two 8-byte extension headers in front of TCP
    tcp6 = truth.flows[FlowId.make(6, "fd00::1", "fd00::2", 40000, 80)]
    assert (tcp6.packets, tcp6.bytes) == (4, 4 * (40 + 16 + 20 + 100))
    assert tcp6.tcp_flags == TCP_SYN | TCP_PSH | TCP_ACK | TCP_FIN
    assert t[FlowId.make(1, "10.0.0.1", "10.0.0.2", 0, 8 << 8)] == (2, 2 * 84)
    assert t[FlowId.make(58, "fd00::1", "fd00::2", 0, 128 << 8)] == (2, 2 * 56)
    # IPv4 fragments: 3008 bytes of UDP in 1400 + 1400 + 208; only the first has ports
    assert t[FlowId.make(17, "10.0.0.1", "10.0.0.3", 5000, 6000)] == (2, 2 * 1420)
    assert t[FlowId.make(17, "10.0.0.1", "10.0.0.3", 0, 0)] == (4, 2 * (1420 + 228))
    # IPv6 fragments carry an 8-byte fragment header
    assert t[FlowId.make(17, "fd00::1", "fd00::3", 5000, 6000)] == (1, 1448)
    assert t[FlowId.make(17, "fd00::1", "fd00::3", 0, 0)] == (2, 1448 + 256)
    assert (truth.frag, truth.trunc) == (9, 1)


LINK_VARIANTS = [
    (LINKTYPE_ETHERNET, ()),
    (LINKTYPE_ETHERNET, (100,)),
    (LINKTYPE_ETHERNET, (100, 200)),
    (LINKTYPE_LINUX_SLL, ()),
    (LINKTYPE_LINUX_SLL2, ()),
    (LINKTYPE_RAW, ()),
    (LINKTYPE_IPV4, ()),
]


@pytest.mark.parametrize("fmt", ["pcap", "pcapng"])
@pytest.mark.parametrize(("linktype", "vlans"), LINK_VARIANTS)
def test_reader_recovers_the_same_truth(
    tmp_path: Path, fmt: str, linktype: int, vlans: tuple[int, ...]
) -> None:
    b = mixed_builder(linktype=linktype, vlans=vlans)
    if linktype == LINKTYPE_IPV4:  # IPv4-only link type
        b = PcapBuilder(linktype=linktype)
        b.add(FlowSpec("tcp", "10.0.0.1", "10.0.0.2", 1, 2, packets=3, payload=5))
    path = tmp_path / f"x.{fmt}"
    truth = b.write(path, fmt=fmt, nanosecond=fmt == "pcapng")
    again = truth_from_file(path)
    assert again.table() == truth.table()
    assert (again.frag, again.trunc) == (truth.frag, truth.trunc)
    frames = list(read_frames(path))
    assert [f.ts_ns for f in frames] == [ts for ts, _, _ in b.frames()]
    assert {f.linktype for f in frames} == {linktype}


def test_snaplen_keeps_truth(tmp_path: Path) -> None:
    b = mixed_builder(snaplen=96)  # enough for Ethernet + IPv6 + 2 extensions + TCP
    truth = b.write(tmp_path / "snap.pcap")
    frames = list(read_frames(tmp_path / "snap.pcap"))
    assert max(len(f.data) for f in frames) == 96 and max(f.orig_len for f in frames) > 96
    for f in frames:  # the IP header's total length still gives the full byte count
        ip = ip_of_frame(f)
        assert ip is not None
    assert truth_from_file(tmp_path / "snap.pcap").table() == truth.table()


def _tshark_fields(path: Path, *fields: str) -> list[list[str]]:
    require_tool("tshark")
    cmd = [
        "tshark",
        "-n",
        "-r",
        str(path),
        "-o",
        "ip.check_checksum:TRUE",
        "-o",
        "tcp.check_checksum:TRUE",
        "-o",
        "udp.check_checksum:TRUE",
        "-o",
        "ip.defragment:FALSE",
        "-o",
        "ipv6.defragment:FALSE",
        "-T",
        "fields",
        "-E",
        "separator=|",
    ]
    for f in fields:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [line.split("|") for line in out.splitlines()]


@pytest.mark.parametrize(
    ("linktype", "vlans", "fmt"),
    [
        (LINKTYPE_ETHERNET, (100, 200), "pcapng"),
        (LINKTYPE_LINUX_SLL2, (), "pcap"),
        (LINKTYPE_LINUX_SLL, (), "pcapng"),
    ],
)
def test_tshark_agrees(tmp_path: Path, linktype: int, vlans: tuple[int, ...], fmt: str) -> None:
    b = mixed_builder(linktype=linktype, vlans=vlans)
    path = tmp_path / f"t.{fmt}"
    b.write(path, fmt=fmt)
    rows = _tshark_fields(
        path,
        "frame.number",
        "ieee8021ad.id",
        "vlan.id",
        "ip.len",
        "ipv6.plen",
        "_ws.expert.severity",
        "_ws.expert.message",
    )
    assert len(rows) == len(b.packets)
    errors = [r for r in rows if any(int(s) >= 0x800000 for s in r[5].split(",") if s)]
    # the only error is the deliberately truncated packet (IHL 4), which is the last one
    assert [r[0] for r in errors] == [str(len(rows))]
    assert "header length" in errors[0][6]
    if vlans:  # outer 802.1ad service tag, inner 802.1Q tag
        assert {(r[1], r[2]) for r in rows} == {("100", "200")}
    lengths = sum(int(r[3]) if r[3] else 40 + int(r[4]) for r in rows[:-1])
    assert lengths == b.truth.bytes


def test_sample_pcap_is_reproducible_and_clean(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "make_sample", ROOT / "scripts/make_sample_pcap.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    fresh = tmp_path / "sample.pcap"
    truth = module.sample_builder().write(fresh)
    committed = ROOT / "examples" / "sample.pcap"
    assert committed.read_bytes() == fresh.read_bytes(), "run scripts/make_sample_pcap.py"
    assert truth_from_file(committed).table() == truth.table()
    assert 20 <= truth.packets <= 60 and len(truth.flows) >= 6
    assert {f.ip_version for f in truth.flows} == {4, 6}
    assert min(ts for ts, _ in module.sample_builder().packets) == SAMPLE_EPOCH_NS


def test_parse_ip_rejects_bad_headers() -> None:
    assert parse_ip(b"") is None
    assert parse_ip(bytes([0x44]) + bytes(19)) is None  # IHL 4
    assert parse_ip(bytes([0x60]) + bytes(20)) is None  # IPv6 shorter than 40 bytes


ENCAPSULATED = {  # builder arguments -> protocols tshark must see, outermost first
    "qinq-9100": ({"vlans": (10, 20), "vlan_tpids": (0x9100, 0x8100)},
                  "vlan:ethertype:vlan:ethertype:ip:udp"),
    "mpls-2": ({"mpls": (16, 1000)}, "mpls:ip:udp"),
    "pppoe": ({"pppoe_session": 7, "vlans": (3,)}, "vlan:ethertype:pppoes:ppp:ip:udp"),
    "gre-key": ({"tunnel": "gre-key", "tunnel_id": 9}, "ip:gre:ip:udp"),
    "gre-teb": ({"tunnel": "gre-teb", "tunnel_id": 9}, "ip:gre:eth:ethertype:ip:udp"),
    "erspan2": ({"tunnel": "erspan2", "tunnel_id": 9}, "ip:gre:erspan:eth:ethertype:ip:udp"),
    "erspan3": ({"tunnel": "erspan3", "tunnel_id": 9}, "ip:gre:erspan:eth:ethertype:ip:udp"),
    "vxlan": ({"tunnel": "vxlan", "tunnel_id": 9}, "ip:udp:vxlan:eth:ethertype:ip:udp"),
    "geneve": ({"tunnel": "geneve", "tunnel_id": 9}, "ip:udp:geneve:eth:ethertype:ip:udp"),
    "ipip-6in4": ({"tunnel": "ipip", "tunnel_outer": ("192.0.2.1", "192.0.2.2")},
                  "ip:ipv6:udp"),
}


@pytest.mark.parametrize("kwargs,chain", ENCAPSULATED.values(), ids=ENCAPSULATED.keys())
def test_encapsulations_decode_in_tshark(tmp_path, kwargs, chain):
    """tshark, an independent dissector, finds the inner UDP packet where pcapgen put it."""
    tshark = require_tool("tshark")
    src = "fd00::1" if chain.endswith("ipv6:udp") else "10.0.0.1"
    dst = "fd00::2" if src.startswith("fd") else "10.0.0.2"
    b = PcapBuilder(**kwargs)
    b.add(FlowSpec("udp", src, dst, 1111, 2222, packets=2, payload=30))
    b.write(tmp_path / "e.pcap")
    out = subprocess.run([tshark, "-r", str(tmp_path / "e.pcap"), "-T", "fields",
                          "-E", "separator=|", "-e", "frame.protocols", "-e", "ip.src",
                          "-e", "ipv6.src", "-e", "udp.dstport", "-e", "mpls.label",
                          "-e", "vxlan.vni", "-e", "geneve.vni", "-e", "erspan.spanid",
                          "-e", "gre.key"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(out) == 2
    protocols, ip4, ip6, dport, labels, vni, gvni, span, key = out[0].split("|")
    assert chain in protocols, protocols
    assert (ip6 or ip4).split(",")[-1] == src and dport.split(",")[-1] == "2222"
    assert labels in ("", "16,1000")
    assert {vni, gvni, span, key} <= {"", "9", "0x000009", "0x00000009"}
