"""NFLOG layer-2 key fields (``[flow]`` mac, vlan, physdev) in both decoders.

The Python decoder (:class:`NflogL2`) is the reference: for every schema the C aggregator's
flows, keyed on its layer-2 block (``l2`` mask), must be the Python packets summed per full
key (zero-filled to the schema's width, as the cache does), on hand-built messages with the
attributes the kernel sends (NFULA_HWTYPE/HWLEN/HWHEADER, nested NFULA_VLAN, PHYSINDEV and
PHYSOUTDEV, values as recorded on this kernel) and on hypothesis-generated datagrams.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netflow_agent.fragments import DEFAULT_POLICY
from netflow_agent.model import DIRECTION_EGRESS, split_key
from netflow_agent.plugins.ingest_nflog import decoders
from netflow_agent.plugins.ingest_nflog.netlink import NflogDecoder
from netflow_agent.schema import FlowOptions, FlowSchema
from netflow_agent.tunnels import make_parser
from tests.fuzz.strategies import fuzz_settings, nflog_datagrams
from tests.ingest_nflog.test_c_decoder import (
    RECV_NS,
    TAIL,
    UDP,
    _attr,
    _ext,
    _ip4,
    _ip6,
    _summed,
    _tcp,
)
from tests.support.pcapgen import encapsulate
from tests.support.schemas import active_schema

SRC = bytes.fromhex("b2373d841abb")
DST = bytes.fromhex("52e38ddb64db")
OPTIONS = {
    "mac": FlowOptions(mac=True),
    "vlan": FlowOptions(vlan=True),
    "export": FlowOptions(physdev="export"),
    "override": FlowOptions(physdev="override"),
    "all": FlowOptions(mac=True, vlan=True, physdev="export", mpls_labels=2),
    "all-override": FlowOptions(mac=True, vlan=True, physdev="override"),
}


@pytest.fixture
def use_schema() -> Iterator:
    """Make a schema active for the test, then the previous one again."""
    with ExitStack() as stack:
        yield lambda options: stack.enter_context(active_schema(options))


def l2_message(payload: bytes, hook: int = 2, indev: int = 2, outdev: int = 0,
               physin: int = 0, physout: int = 0, hwheader: bytes | None = None,
               vlan: tuple[int, int] | None = None, family: int = socket.AF_INET) -> bytes:
    """An NFULNL_MSG_PACKET in the kernel's attribute order (nfnetlink_log.c)."""
    attrs = [_attr(1, struct.pack(">HBx", 0x0800, hook))]
    for atype, value in ((4, indev), (6, physin), (5, outdev), (7, physout)):
        if value:
            attrs.append(_attr(atype, struct.pack(">I", value)))
    if hwheader is not None:
        attrs += [_attr(15, struct.pack(">H", 1)), _attr(17, struct.pack(">H", 14)),
                  _attr(16, hwheader)]
    attrs.append(_attr(3, struct.pack(">QQ", 1_700_000_000, 250_000)))
    if vlan is not None:  # NLA_F_NESTED; TCI first, as the kernel puts them
        tci, proto = vlan
        nested = _attr(2, struct.pack(">H", tci)) + _attr(1, struct.pack(">H", proto))
        attrs.append(_attr(20 | 0x8000, nested))
    attrs.append(_attr(9, payload))
    body = struct.pack("=BB2s", family, 0, b"\0\x05") + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), 0x400, 0, 0, 0) + body


def python_flows(schema: FlowSchema, datagrams: list[bytes], **opts: Any) -> list[tuple]:
    """``opts``: ``fragments``, ``decapsulate``, ``keep_outer`` as the batchers take them."""
    dec = NflogDecoder(make_parser(opts.get("fragments"), opts.get("decapsulate", ()),
                                   opts.get("keep_outer", False)),
                       l2=decoders.nflog_l2(schema))
    packets: list = []
    for data in datagrams:
        dec.decode(bytearray(data + TAIL), len(data), RECV_NS, packets)
    size = schema.key_size
    return _summed([(k.ljust(size, b"\0"), *rest) for k, *rest in packets])


def c_flows(schema: FlowSchema, datagrams: list[bytes], **opts: Any) -> list[tuple]:
    mask = decoders.l2_mask(schema)
    agg = _ext().Aggregator(**decoders.c_options(opts.get("fragments"),
                                                 opts.get("decapsulate", ()),
                                                 opts.get("keep_outer", False)), l2=mask)
    for data in datagrams:
        agg.feed(bytearray(data + TAIL), len(data), RECV_NS)
    records = agg.take()[0]
    flows = decoders.flows_of(records, mask)
    keys = schema.keys_of(flows)
    return list(zip((bytes(k) for k in keys), flows["packets"].tolist(),
                    flows["octets"].tolist(), flows["start_ns"].tolist(),
                    flows["end_ns"].tolist(), flows["tcp_flags"].tolist(),
                    flows["out_if"].tolist(), strict=True))


def same_flows(schema: FlowSchema, datagrams: list[bytes], **opts: Any) -> list[tuple]:
    py = python_flows(schema, datagrams, **opts)
    assert c_flows(schema, datagrams, **opts) == py
    return py


def fields(schema: FlowSchema, key: bytes) -> dict:
    """The optional fields of a packed key, by name."""
    row = np.frombuffer(key, schema.key_dtype)[0]
    out = {}
    for name in schema.ext_names:
        value = row[name]
        out[name] = bytes(value) if isinstance(value, np.void) else int(value)
    return out


BRIDGED = [  # a bridge forwarding 10.1.0.1 -> 10.2.0.2 from port 3 to port 4 (br0 is 2)
    l2_message(_ip4(17, UDP), indev=2, outdev=2, physin=3, physout=4, hwheader=DST + SRC
               + b"\x08\x00", vlan=(5 << 13 | 42, 0x8100)),
    l2_message(_ip4(17, UDP), indev=2, outdev=2, physin=3, physout=4, hwheader=DST + SRC
               + b"\x08\x00", vlan=(5 << 13 | 42, 0x8100)),
    l2_message(_ip4(17, UDP), indev=2, outdev=2, physin=3, physout=4, hwheader=DST + SRC
               + b"\x08\x00", vlan=(3 << 13 | 10, 0x88A8)),  # another tag: another flow
    l2_message(_ip6(6, _tcp(443, 51000, 0x12)), indev=2, physin=4, hwheader=SRC + DST
               + b"\x86\xdd"),
    l2_message(_ip4(17, UDP), hook=3, indev=0, outdev=5),  # OUTPUT: no MAC, no ports
]


def test_every_field_has_the_kernels_values(use_schema):
    schema = use_schema(OPTIONS["all"])
    flows = same_flows(schema, BRIDGED)
    assert [f[1] for f in flows] == [2, 1, 1, 1]
    got = [fields(schema, f[0]) for f in flows]
    zero_mpls = {"mpls_label_1": 0, "mpls_label_2": 0}  # NFLOG never sees MPLS
    assert got[0] == {"src_mac": SRC, "dst_mac": DST, "ethernet_type": 0x0800, "vlan_id": 42,
                      "vlan_priority": 5, "inner_vlan_id": 0, "inner_vlan_priority": 0,
                      **zero_mpls, "in_physdev": 3, "out_physdev": 4}
    assert (got[1]["vlan_id"], got[1]["vlan_priority"]) == (10, 3)
    assert got[2] == {"src_mac": DST, "dst_mac": SRC, "ethernet_type": 0x86DD, "vlan_id": 0,
                      "vlan_priority": 0, "inner_vlan_id": 0, "inner_vlan_priority": 0,
                      **zero_mpls, "in_physdev": 4, "out_physdev": 0}
    assert got[3] == {n: b"\0" * 6 if n.endswith("mac") else 0 for n in got[3]} | {
        "ethernet_type": 0x0800}
    assert [split_key(f[0]).in_if for f in flows] == [2, 2, 2, 5]  # interfaces unchanged


def test_override_puts_the_bridge_ports_in_place_of_the_interfaces(use_schema):
    schema = use_schema(OPTIONS["override"])
    flows = same_flows(schema, BRIDGED)
    assert schema.key_size == 44  # override adds no key field
    keys = [split_key(f[0]) for f in flows]
    # ingress keyed on the port in, out_if the port out; the tags do not split without vlan
    assert [(k.in_if, f[1], f[6]) for k, f in zip(keys, flows, strict=True)] == [
        (3, 3, 4), (4, 1, 0), (5, 1, 5)]
    assert keys[2].direction == DIRECTION_EGRESS


@pytest.mark.parametrize("name", OPTIONS)
def test_each_option_alone_keys_only_on_its_fields(use_schema, name):
    schema = use_schema(OPTIONS[name])
    flows = same_flows(schema, BRIDGED)
    vlan_on = OPTIONS[name].vlan
    assert len(flows) == (4 if vlan_on else 3)


def test_defaults_ignore_the_layer2_attributes(use_schema):
    schema = use_schema(FlowOptions())
    assert decoders.l2_mask(schema) == 0
    flows = same_flows(schema, BRIDGED)
    assert all(len(f[0]) == 44 for f in flows) and len(flows) == 3


def test_c_records_grow_only_with_layer2_fields(use_schema):
    payload = [BRIDGED[0]]
    for options, size in ((FlowOptions(), 84), (OPTIONS["override"], 84), (OPTIONS["mac"], 108)):
        schema = use_schema(options)
        agg = _ext().Aggregator(l2=decoders.l2_mask(schema))
        agg.feed(bytearray(payload[0]), len(payload[0]), RECV_NS)
        assert len(agg.take()[0]) == size


@fuzz_settings()
@given(st.sampled_from(list(OPTIONS.values())), st.lists(nflog_datagrams(), max_size=3))
def test_fuzzed_datagrams_give_the_same_flows(options, datagrams):
    with active_schema(options) as schema:
        same_flows(schema, datagrams)


def test_only_the_messages_own_packet_gets_the_fields(use_schema):
    """A VXLAN packet with keep_outer: the inner flow has the frame's MACs and ports, the outer
    one zeros; a fragment released after its first one keeps zeros too; both decoders."""
    schema = use_schema(OPTIONS["all"])
    inner = _ip4(17, UDP)
    vxlan = encapsulate(inner, "vxlan", 42, "192.0.2.1", "192.0.2.2")
    first, rest = _ip4(17, UDP, frag=0x2000), _ip4(17, b"\0" * 8, frag=1)
    bridged = {"indev": 2, "outdev": 2, "physin": 3, "physout": 4,
               "hwheader": DST + SRC + b"\x08\x00"}
    datagrams = [l2_message(vxlan, **bridged), l2_message(rest, **bridged),
                 l2_message(first, **bridged)]
    flows = same_flows(schema, datagrams, fragments=DEFAULT_POLICY, decapsulate=("vxlan",),
                       keep_outer=True)
    # the inner packet and the first fragment are the same flow (10.1.0.1:4000 -> :53)
    got = sorted((fields(schema, f[0])["src_mac"], split_key(f[0]).dst_port, f[1])
                 for f in flows)
    assert got == [(b"\0" * 6, 53, 1),  # the early fragment, released with the first's ports
                   (b"\0" * 6, 4789, 1),  # the outer VXLAN flow
                   (SRC, 53, 2)]
