"""``[flow]`` MAC, VLAN and MPLS fields from replayed captures (issue 15 items 1-3).

Each capture comes from ``tests.support.pcapgen`` with known tags, labels and addresses; the
real pipeline replays it with the fields on and every exported flow must carry exactly those
values, with the packets and bytes of the ground truth. With the fields off the same captures
give the classic records (no optional field set).
"""

from __future__ import annotations

import pytest

from netflow_agent.schema import default_schema, set_active
from netflow_agent.testing import build_agent, collecting_plugin_module
from tests.support.pcapgen import (
    LINKTYPE_LINUX_SLL,
    LINKTYPE_RAW,
    TPID_8021Q,
    FlowSpec,
    PcapBuilder,
    write_pcap,
)
from tests.support.truth import FlowId

SRC_MAC = "02:00:00:00:00:01"  # tests.support.pcapgen.link_header's Ethernet addresses
DST_MAC = "02:00:00:00:00:02"
ALL_ON = "[flow]\nmac = true\nvlan = true\nmpls_labels = 3\n"


@pytest.fixture(autouse=True)
def _default_schema_afterwards():
    """The agent makes its [flow] schema the process's: give the next test the default."""
    yield
    set_active(default_schema())


def capture(**link) -> PcapBuilder:  # type: ignore[no-untyped-def]
    """Two IPv4 flows and one IPv6 flow in the link layer ``link`` describes."""
    b = PcapBuilder(**link)
    b.add(FlowSpec("udp", "10.1.0.1", "10.1.0.2", 5000, 53, packets=4, payload=33))
    b.add(FlowSpec("tcp", "10.1.0.1", "10.1.0.3", 40000, 80, packets=5, payload=700))
    b.add(FlowSpec("tcp", "fd00::2", "fd00::1", 443, 50000, packets=3, payload=500))
    return b


def replay(tmp_path, builder: PcapBuilder, flow: str = ALL_ON) -> list[dict]:  # type: ignore[no-untyped-def]
    """Replay the builder's capture; the exported records as dicts, after checking that
    packets and bytes per flow are the ground truth's."""
    path = tmp_path / "c.pcap"
    truth = builder.write(path)
    agent = build_agent(f'{flow}\n[[ingest.pcap]]\npath = "{path}"\n[[export.collect]]\n',
                        tmp_path, [collecting_plugin_module])
    agent.pipeline.run()
    agent.finish()  # exports what the cache still holds
    records = [r.to_dict() for r in agent["export.collect[0]"].flows]
    got = {FlowId.make(d["protocol"], d["src_addr"], d["dst_addr"], d["src_port"],
                       d["dst_port"]): (d["packets"], d["octets"]) for d in records}
    assert got == truth.table()
    return records


def l2_of(record: dict) -> dict:
    """The optional layer-2 fields a record carries (absent and all-zero left out)."""
    names = ("src_mac", "dst_mac", "ethernet_type", "vlan_id", "vlan_priority",
             "inner_vlan_id", "inner_vlan_priority", "mpls_labels")
    return {n: record[n] for n in names if record.get(n) not in (None, NO_MAC)}


def ethertype(record: dict) -> int:
    return 0x86DD if record["ip_version"] == 6 else 0x0800


NO_MAC = "00:00:00:00:00:00"
MACS = {"src_mac": SRC_MAC, "dst_mac": DST_MAC}


def entry(label: int, tc: int = 0, bottom: bool = False) -> int:
    """mplsLabelStackSection's 3 bytes: label << 4 | TC << 1 | S."""
    return label << 4 | tc << 1 | int(bottom)


CASES = {
    "ethernet": ({}, {}),
    "vlan": ({"vlans": (100,), "vlan_pcps": (5,)}, {"vlan_id": 100, "vlan_priority": 5}),
    "qinq": ({"vlans": (10, 20), "vlan_pcps": (3, 6)},
             {"vlan_id": 10, "vlan_priority": 3, "inner_vlan_id": 20, "inner_vlan_priority": 6}),
    "mpls-1": ({"mpls": (16,), "mpls_tc": 2}, {"mpls_labels": [entry(16, 2, True)]}),
    "mpls-2": ({"mpls": (16, 1048575)}, {"mpls_labels": [entry(16), entry(1048575, 0, True)]}),
    "vlan-mpls-4": ({"vlans": (7,), "mpls": (3, 17, 18, 19)},
                    {"vlan_id": 7, "mpls_labels": [entry(3), entry(17), entry(18)]}),
}


@pytest.mark.parametrize("link,want", CASES.values(), ids=CASES.keys())
def test_ethernet_captures_give_their_macs_tags_and_labels(tmp_path, link, want):
    for record in replay(tmp_path, capture(**link)):
        assert l2_of(record) == {**MACS, "ethernet_type": ethertype(record), **want}


def test_sll_gives_the_source_mac_only(tmp_path):
    for record in replay(tmp_path, capture(linktype=LINKTYPE_LINUX_SLL, mpls=(16,))):
        assert l2_of(record) == {"src_mac": SRC_MAC, "ethernet_type": ethertype(record),
                                 "mpls_labels": [entry(16, 0, True)]}


def test_raw_ip_has_no_link_layer_but_its_ethertype(tmp_path):
    for record in replay(tmp_path, capture(linktype=LINKTYPE_RAW)):
        assert l2_of(record) == {"ethernet_type": ethertype(record)}


def test_tags_and_labels_split_flows_when_on(tmp_path):
    """Two VLANs with the same 5-tuples are two flows each with vlan on, one without."""
    b = capture(vlans=(100,))
    b2 = capture(vlans=(200,), vlan_tpids=(TPID_8021Q,))
    path = tmp_path / "two.pcap"
    frames = b.frames() + [(ts + 1, f, n) for ts, f, n in b2.frames()]
    write_pcap(path, 1, sorted(frames, key=lambda f: f[0]))
    counts = {}
    for flow in ("[flow]\nvlan = true\n", ""):
        agent = build_agent(f'{flow}\n[[ingest.pcap]]\npath = "{path}"\n[[export.collect]]\n',
                            tmp_path, [collecting_plugin_module])
        agent.pipeline.run()
        agent.finish()  # exports what the cache still holds
        records = [r.to_dict() for r in agent["export.collect[0]"].flows]
        counts[bool(flow)] = (len(records), sum(r["packets"] for r in records),
                              sorted({r.get("vlan_id", 0) for r in records}))
    assert counts[True] == (6, 24, [100, 200])
    assert counts[False] == (3, 24, [0])


@pytest.mark.parametrize("flow", ["", "[flow]\nmpls_labels = 0\nmac = true\n"],
                         ids=["defaults", "mac-only"])
def test_mpls_frames_are_accounted_by_their_inner_ip_without_labels(tmp_path, flow):
    for record in replay(tmp_path, capture(mpls=(16, 17)), flow):
        assert "mpls_labels" not in record
        assert ("src_mac" in record) == bool(flow)
