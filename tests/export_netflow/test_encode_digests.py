"""The export encoders' bytes, pinned: v5, v9 (32/64-bit counters) and IPFIX (ms, µs,
selectorId) datagrams of seeded random flows hash to the SHA-256 digests main's encoders
gave at 4f6f381, before the encode path moved to C (``_wirepack.classify``, records packed
straight into bytes, v5 through ``pack_rows``).

The flows mix what changes the path through the encoders: IPv4/IPv6 (and an unknown IP
version), routed rows (next hop or only a prefix length), ICMP/ICMPv6, counters over 32 bits
(v9/v5 split them), zero and equal start times, end reasons; with the default schema and
with MAC/VLAN/MPLS fields (the schema's columns, NumPy's path), in one batch and cut into
parts, with the template refresh every few packets so templates interleave with data.
A digest that changes means the wire changed: decode both outputs before updating it.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from netflow_agent.api import FlowBatch, FlowSchema, Sampling
from netflow_agent.plugins.export_ipfix import ipfix
from netflow_agent.plugins.export_netflow import v5, v9
from netflow_agent.plugins.export_netflow.state import ExportState
from netflow_agent.plugins.export_netflow.v5 import Tally
from netflow_agent.schema import FlowOptions, active
from tests.support.schemas import active_schema

T0 = 1_764_537_000_123_456_789
L2 = FlowOptions(mac=True, vlan=True, mpls_labels=2)


def random_batch(schema: FlowSchema, n: int, seed: int) -> FlowBatch:
    """``n`` seeded random flows of ``schema``'s columns (see the module docstring)."""
    rng = np.random.default_rng(seed)
    f = schema.empty(n)
    f["ip_version"] = rng.choice([4, 4, 4, 6, 6, 5], n)
    f["protocol"] = rng.choice([6, 17, 1, 58, 47], n)
    f["tos"] = rng.integers(0, 256, n)
    f["direction"] = rng.integers(0, 2, n)
    f["in_if"] = rng.choice([1, 2, 70000, 2**32 - 1], n)
    f["out_if"] = rng.choice([0, 3, 4], n)
    f["src_port"] = rng.integers(0, 65536, n)
    f["dst_port"] = rng.integers(0, 65536, n)
    for column in ("src_addr", "dst_addr"):
        f[column] = [bytes(b) for b in rng.integers(0, 256, (n, 16), np.uint8)]
    routed = rng.integers(0, 4, n)  # 0: none, 1: next hop, 2: masks only, 3: both
    hops = rng.integers(0, 256, (n, 16), np.uint8)
    f["next_hop"] = [bytes(h) if r in (1, 3) else bytes(16)
                     for h, r in zip(hops, routed, strict=True)]
    f["src_mask"] = np.where(routed >= 2, rng.integers(0, 129, n), 0)
    f["dst_mask"] = np.where(routed == 2, rng.integers(1, 129, n), 0)
    big = rng.integers(0, 8, n) == 0  # some counters over 32 bits
    f["packets"] = np.where(big, rng.integers(2**32, 2**34, n), rng.integers(1, 10**6, n))
    f["octets"] = np.where(big, rng.integers(2**32, 2**40, n), rng.integers(40, 10**9, n))
    start = T0 - rng.integers(0, 600 * 10**9, n)
    f["start_ns"] = np.where(rng.integers(0, 50, n) == 0, 0, start)
    f["end_ns"] = start + rng.integers(0, 60 * 10**9, n)
    f["tcp_flags"] = rng.integers(0, 256, n)
    f["end_reason"] = rng.integers(0, 6, n)
    for name in sorted(set(f.dtype.names or ()) & {"src_mac", "dst_mac"}):
        f[name] = [bytes(b) for b in rng.integers(0, 256, (n, 6), np.uint8)]
    for name in sorted(set(f.dtype.names or ()) & {"vlan_id", "inner_vlan_id", "ethernet_type",
                                            "vlan_priority", "inner_vlan_priority",
                                            "mpls_label_1", "mpls_label_2"}):
        info = np.iinfo(f.dtype[name])
        f[name] = rng.integers(0, min(int(info.max), 2**20), n)
    return FlowBatch("test", f)


def parts(batch: FlowBatch, rows: int) -> list[FlowBatch]:
    flows = batch.flows
    return [FlowBatch("test", flows[i:i + rows]) for i in range(0, len(flows), rows)]


def digest(datagrams: list[bytes]) -> str:
    h = hashlib.sha256()
    for d in datagrams:
        h.update(len(d).to_bytes(4, "big"))
        h.update(d)
    return h.hexdigest()


def v9_datagrams(batch: FlowBatch, counters64: bool, part_rows: int) -> list[bytes]:
    state = ExportState(boot_ns=T0 - 3_600_000_000_123, source_id=77)
    templates = v9.flow_templates(counters64)
    policy = v9.RefreshPolicy(mtu=1400, refresh_packets=7)
    options = (v9.sampling_options(Sampling(10), 77)
               + v9.interface_names_options({1: "eth0", 2: "wan-uplink0", 70000: "x"}))
    out: list[bytes] = []
    for i, part in enumerate(parts(batch, part_rows)):
        tally = Tally()
        out += v9.encode_flows(part, state, templates, policy, T0 + i * 10**9,
                               counters64=counters64, tally=tally, options=options)
        out.append(repr((tally.records, tally.split, tally.skipped)).encode())
    return out


def v5_datagrams(batch: FlowBatch, part_rows: int) -> list[bytes]:
    state = ExportState(boot_ns=T0 - 3_600_000_000_123, source_id=3, engine_type=1)
    state.sampling_interval = v5.sampling_field(Sampling(100))
    out: list[bytes] = []
    for i, part in enumerate(parts(batch, part_rows)):
        tally = Tally()
        out += v5.encode_flows(part, state, T0 + i * 10**9, tally)
        out.append(repr((tally.records, tally.split, tally.skipped)).encode())
    return out


def ipfix_datagrams(batch: FlowBatch, micro: bool, selector: int, part_rows: int,
                    refresh: int = 5) -> list[bytes]:
    session = ipfix.Session(9, refresh_packets=refresh)
    layouts = ipfix.flow_layouts(micro, selector_id=selector)
    errors: list[str] = []
    out: list[bytes] = []
    for i, part in enumerate(parts(batch, part_rows)):
        groups = ipfix.encode_flow_groups(part, lambda r, e: errors.append(str(e)), layouts)
        out += [m.data for m in ipfix.encode_messages(
            session, groups, export_time=T0 // 10**9 + i, max_length=1400, now_ns=i)]
    out.append(repr(errors).encode())
    return out


def ipfix_with_negative_time(batch: FlowBatch) -> list[bytes]:
    """A flow time before 1970: dropped and reported by the ms templates."""
    flows = batch.flows.copy()
    flows["start_ns"][5] = -1_500_000
    return ipfix_datagrams(FlowBatch("test", flows), False, 0, 1000)


CASES = {
    "v9-32": lambda b: v9_datagrams(b, False, 1000),
    "v9-64": lambda b: v9_datagrams(b, True, 1000),
    "v9-32-one": lambda b: v9_datagrams(b, False, 5000),
    "v5": lambda b: v5_datagrams(b, 700),
    "ipfix-ms": lambda b: ipfix_datagrams(b, False, 0, 1000),
    "ipfix-us": lambda b: ipfix_datagrams(b, True, 0, 1000),
    "ipfix-sel": lambda b: ipfix_datagrams(b, False, 3, 5000),
    "ipfix-neg": ipfix_with_negative_time,
    "ipfix-tcp": lambda b: ipfix_datagrams(b, False, 0, 5000, refresh=0),
}

#: main's digests at 4f6f381 (default schema; MAC, VLAN and MPLS fields); v5's and v9's
#: since s31-encode-fix: a start of 0 (before the exporter's boot) is First 0, not
#: (0 - boot) mod 2**32 ms, far after the header's sysUpTime; every other byte is 4f6f381's
DIGESTS: dict[tuple[str, str], str] = {
    ("ipfix-ms", "default"): "cb86b120f95be8437a786e02df4ca4a1bf0cc1b573b862784662c8aead19dca8",
    ("ipfix-neg", "default"): "14262bd21898119e5bf65f755d7387226cafa3eee37edc20d2f623d3d1dec9c8",
    ("ipfix-sel", "default"): "ad983f7b098c33a3bd5f2c9cc02c5f52182a65628932355db08644d578551c61",
    ("ipfix-tcp", "default"): "7541c2c26c18ea780efd8e68fbd7bf849705a479d2af4c2623e39aa0432f0429",
    ("ipfix-us", "default"): "cdbae09935cfb6230ddb2b0ef46e88a26b2faa62dda294344039131416aa7cef",
    ("v5", "default"): "4133bd9864fe850f89bd8f59eca303a99e6ed3a1f263bd637cb41027addb97c7",
    ("v9-32", "default"): "cdc6e62eeade504baccbb6113001cb4a2aa38f94ae8333ffbea397e67a5fa21d",
    ("v9-32-one", "default"): "1db83ba26e2d5c442fb2c0ae5f53c6c0c93791894a6863e38f2caa2b53dd66f0",
    ("v9-64", "default"): "26b058683230fb8dc8eede7025307900ac37e85922a73f035fadfd44d590379b",
    ("ipfix-ms", "l2"): "a61e678b95016ba99ef0c535103f0e796f48d6d566b504fc9259d932946a2358",
    ("ipfix-neg", "l2"): "c05b2762f8cf7e827f19693e4d4827c5a07b82554a42373defe9adb8ffb403e5",
    ("ipfix-sel", "l2"): "0d33b3c856da0ad9c25deae01c181a4f10734b0c3ae358ea01ebda2bba0d21c8",
    ("ipfix-tcp", "l2"): "0b53bba901e85f927e475574500f103f5b3d8ba6c99f854cc2198a1c77a7f60c",
    ("ipfix-us", "l2"): "bfe443abe8c946fa4afd3924484dbd7d60c811b098deae23c4df74c349076d0c",
    ("v5", "l2"): "4133bd9864fe850f89bd8f59eca303a99e6ed3a1f263bd637cb41027addb97c7",
    ("v9-32", "l2"): "29d084b8e8fcdabf3842c0971ac6fa335a693c860d8b35f70f606f6b85221daf",
    ("v9-32-one", "l2"): "59915b9c7db7a156c1eac87a2e0c39adf418cfc6862c02ee080c6a712b4bb1aa",
    ("v9-64", "l2"): "ec0a52eaa15db182355dff58f6394e631ab684adc9daf14670dbd804ae6cdbbe",
}


@pytest.mark.parametrize("schema_name", ["default", "l2"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_encoders_write_main_s_bytes(case, schema_name):
    options = FlowOptions() if schema_name == "default" else L2
    with active_schema(options):
        batch = random_batch(active(), 3000, seed=14)
        assert digest(CASES[case](batch)) == DIGESTS[(case, schema_name)]
