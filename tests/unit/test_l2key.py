"""agent/l2key.py: the per-packet packer gives the bytes the schema's own packer gives."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from netflow_agent.l2key import L2KeyPacker
from netflow_agent.schema import FlowOptions, FlowSchema

macs = st.binary(min_size=6, max_size=6)
tags = st.lists(st.tuples(st.sampled_from([0x8100, 0x88A8]), st.integers(0, 4095),
                          st.integers(0, 7)), max_size=3)
stacks = st.lists(st.integers(0, 2**32 - 1), max_size=12)
options = st.builds(FlowOptions, mac=st.booleans(), vlan=st.booleans(),
                    mpls_labels=st.integers(0, 10),
                    physdev=st.sampled_from(["", "export", "override"]),
                    tunnel_id=st.booleans())


@given(options, st.sampled_from([4, 6]), macs, macs, tags, stacks, st.integers(0, 2**32 - 1),
       st.integers(0, 2**32 - 1))
def test_packer_matches_pack_ext(opts, version, src, dst, vlans, mpls, phys_in, phys_out):
    schema = FlowSchema.build(opts)
    values: dict[str, int | bytes] = {
        "src_mac": src, "dst_mac": dst, "ethernet_type": 0x0800 if version == 4 else 0x86DD,
        "in_physdev": phys_in, "out_physdev": phys_out}
    for prefix, (_tpid, vid, pcp) in zip(("vlan", "inner_vlan"), vlans, strict=False):
        values[f"{prefix}_id"], values[f"{prefix}_priority"] = vid, pcp
    for n, e in enumerate(mpls[:10], 1):
        values[f"mpls_label_{n}"] = e >> 8
    packer = L2KeyPacker(schema)
    got = packer.pack(version, src, dst, vlans, mpls, phys_in, phys_out)
    assert packer.active == bool(set(schema.ext_names) - {"tunnel_id"})
    # without layer-2 fields the key stays short: the cache zero-fills it
    assert got == (schema.pack_ext(values) if packer.active else b"")
    assert packer.pack(version, src, dst, vlans, mpls, phys_in, phys_out) == got  # memo


def test_defaults_pack_nothing():
    packer = L2KeyPacker(FlowSchema())
    assert not packer.active
    assert packer.pack(4, b"\1" * 6, b"\2" * 6, ((0x8100, 5, 1),), (0x10140,)) == b""
