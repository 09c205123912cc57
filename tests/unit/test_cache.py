"""Flow cache semantics (ipt_NETFLOW): timeouts, FIN/RST, maxflows, counters."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from netflow_agent.model import (
    END_ACTIVE,
    END_FORCED,
    END_IDLE,
    END_OF_FLOW,
    TCP_ACK,
    TCP_FIN,
    TCP_RST,
    TCP_SYN,
    FlowBatch,
    FlowDelta,
    PacketBatch,
    make_key,
)
from netflow_agent.schema import FlowOptions
from netflow_agent.stages.cache import CacheConfig, FlowCache, _key_swaps
from tests.support.schemas import active_schema

S = 1_000_000_000
T0 = 1_700_000_000 * S


def key(sport: int = 1000, proto: int = 17, dst: str = "10.0.0.2") -> bytes:
    return make_key(4, proto, socket.inet_aton("10.0.0.1"), socket.inet_aton(dst), sport, 53)


def feed(cache: FlowCache, *packets: tuple[bytes, int, int, int, int]) -> None:
    cache.agent_cache_packets(batch=PacketBatch("test", list(packets)), now_ns=0)


def test_packets_and_bytes_accumulate_per_key():
    c = FlowCache(CacheConfig())
    feed(c, (key(1), 100, 0, T0, 0), (key(1), 50, 0, T0 + S, 7), (key(2), 60, 0, T0, 0))
    recs = {r.src_port: r for r in c.agent_cache_expire(now_ns=T0 + 2 * S, force=True)}
    assert (recs[1].packets, recs[1].octets, recs[1].out_if) == (2, 150, 7)
    assert (recs[1].start_ns, recs[1].end_ns) == (T0, T0 + S)
    assert (recs[2].packets, recs[2].octets) == (1, 60)
    assert all(r.end_reason == END_FORCED for r in recs.values())
    assert c.active_flows == 0


def test_inactive_timeout_exports_idle_flows_only():
    c = FlowCache(CacheConfig(inactive_timeout=15))
    feed(c, (key(1), 100, 0, T0, 0), (key(2), 100, 0, T0 + 10 * S, 0))
    assert c.agent_cache_expire(now_ns=T0 + 14 * S, force=False) == []
    out = c.agent_cache_expire(now_ns=T0 + 15 * S, force=False)
    assert [(r.src_port, r.end_reason) for r in out] == [(1, END_IDLE)]
    assert c.active_flows == 1


def test_active_timeout_exports_long_flows_and_restarts_them():
    # a packet every 5 s: never idle; exported at T0+60 s (active), then it restarts
    c2 = FlowCache(CacheConfig(inactive_timeout=15, active_timeout=60))
    exported = []
    for s in range(0, 70, 5):
        feed(c2, (key(1), 10, 0, T0 + s * S, 0))
        exported += c2.agent_cache_expire(now_ns=T0 + s * S, force=False)
    assert [(r.packets, r.end_reason) for r in exported] == [(13, END_ACTIVE)]
    rest = c2.agent_cache_expire(now_ns=T0 + 70 * S, force=True)
    assert sum(r.packets for r in exported + rest) == 14


def test_fin_and_rst_end_a_flow_at_the_next_scan():
    c = FlowCache(CacheConfig())
    tcp1, tcp2 = key(1, proto=6), key(2, proto=6)
    feed(c, (tcp1, 60, TCP_SYN, T0, 0), (tcp1, 52, TCP_ACK, T0, 0),
         (tcp1, 52, TCP_FIN | TCP_ACK, T0 + S, 0), (tcp2, 40, TCP_RST, T0, 0),
         (key(3), 40, 0, T0, 0))
    out = c.agent_cache_expire(now_ns=T0 + 2 * S, force=False)
    got = {r.src_port: (r.packets, r.tcp_flags, r.end_reason) for r in out}
    assert got == {1: (3, TCP_SYN | TCP_ACK | TCP_FIN, END_OF_FLOW), 2: (1, TCP_RST, END_OF_FLOW)}
    assert c.active_flows == 1


def test_fin_marks_across_forced_parts_and_reused_slots():
    """A forced take in parts (the stop: agent/loop.py's EXPORT_ROWS) ends FIN/RST flows as
    END_OF_FLOW part after part; a slot it freed and a new flow without FIN reuses is not
    taken for FIN at the next scan, and one with FIN is."""
    c = FlowCache(CacheConfig())
    feed(c, *[(key(p, proto=6), 60, TCP_FIN if p % 2 else TCP_ACK, T0, 0) for p in range(6)])
    first = c.agent_cache_expire(now_ns=T0, force=True, limit=4)
    assert [(r.src_port, r.end_reason) for r in first] == [
        (0, END_FORCED), (1, END_OF_FLOW), (2, END_FORCED), (3, END_OF_FLOW)]
    # slots 0-3 are free again, lowest first: 10 reuses slot 0, 12 slot 1 (a FIN flow's)
    feed(c, (key(10, proto=6), 60, TCP_ACK, T0 + S, 0), (key(12, proto=6), 60, TCP_ACK, T0 + S, 0),
         (key(11, proto=6), 60, TCP_RST, T0 + S, 0))
    scan = c.agent_cache_expire(now_ns=T0 + S, force=False)
    assert {r.src_port: r.end_reason for r in scan} == {5: END_OF_FLOW, 11: END_OF_FLOW}
    out = c.agent_cache_expire(now_ns=T0 + 2 * S, force=True)
    assert {r.src_port: r.end_reason for r in out} == {4: END_FORCED, 10: END_FORCED,
                                                        12: END_FORCED}
    assert not c.ending and c.active_flows == 0


def _per_flow_part(c: FlowCache, limit: int) -> np.ndarray:
    """A forced part as the cache took it before drains: the lowest occupied slots taken
    and freed one by one (FlowTable.take), end reasons from their flags."""
    slots = c.table.occupied(limit)
    reasons = np.where(c.table.flags[slots] & (TCP_FIN | TCP_RST), END_OF_FLOW, END_FORCED)
    return c._take(slots, reasons.astype(np.uint8)).flows


def test_forced_parts_are_the_rows_of_the_per_flow_take_and_the_cache_goes_on():
    """The forced scan drains the table (freed at once, not per flow): every part holds the
    same rows, in the same order, as taking and freeing the lowest flows part after part,
    with holes left by a timed scan and FIN flows; afterwards (a cache hand-over) new
    flows are cached, scanned and counted as in an emptied table."""
    packets = [(key(p, proto=6 if p % 3 else 17), 60 + p, TCP_FIN if p % 7 == 0 else TCP_ACK,
                T0 + (p % 5) * S, p % 4) for p in range(2000)]
    drained, taken = FlowCache(CacheConfig()), FlowCache(CacheConfig())
    for c in (drained, taken):
        feed(c, *packets)
        assert len(c.agent_cache_expire(now_ns=T0 + S, force=False)) == 286  # FIN: holes
    parts, before = [], []
    while not parts or len(parts[-1]) == 300:
        parts.append(drained.agent_cache_expire(now_ns=T0 + 9 * S, force=True, limit=300).flows)
    while len(taken.table):
        before.append(_per_flow_part(taken, 300))
    assert [p.tobytes() for p in parts if len(p)] == [p.tobytes() for p in before]
    assert drained.active_flows == 0 and drained.stats.exported_flows == 2000
    feed(drained, (key(9000), 100, 0, T0 + 10 * S, 0), (key(9001), 100, TCP_FIN, T0 + 10 * S, 0))
    assert drained.active_flows == 2 and drained.table.occupied().tolist() == [0, 1]
    assert drained.mem_traffic() == (2, 200)
    (ended,) = drained.agent_cache_expire(now_ns=T0 + 11 * S, force=False)
    assert (ended.src_port, ended.end_reason) == (9001, END_OF_FLOW)


def test_stats_between_and_after_forced_parts_read_the_drain_without_settling_it():
    """The stop's forced scan in parts with the statistics read between parts (IPFIX's
    options-template timer) and after the last (the final summary): every flow leaves
    exactly once, nothing is freed by those reads, and they count what they count after
    the drained flows are freed (active flows, MemTraf, memory)."""
    packets = [(key(p, proto=6), 60 + p, TCP_FIN if p % 7 == 0 else TCP_ACK, T0, 0)
               for p in range(2000)]
    c = FlowCache(CacheConfig())
    feed(c, *packets)
    assert len(c.agent_cache_expire(now_ns=T0 + S, force=False)) == 286  # holes
    ports, seen = [], []
    while not ports or len(ports[-1]) == 300:
        ports.append(c.agent_cache_expire(now_ns=T0 + 9 * S, force=True, limit=300).flows)
        seen.append((c.counters(), c.table.drained, len(c.table.index)))
    out = np.concatenate(ports)
    assert sorted(out["src_port"].tolist()) == [p for p in range(2000) if p % 7]
    for n, (mid, drained, held) in enumerate(seen):  # the index keeps them all: none freed
        assert (drained, held) == (min(300 * (n + 1), 1714), 1714)
        left = [p for p in range(2000) if p % 7][300 * (n + 1):]
        assert mid["active_flows"] == len(left)
        assert (mid["memtraf_packets"], mid["memtraf_bytes"]) == (len(left),
                                                                  sum(60 + p for p in left))
    mid = seen[2][0]
    partial = FlowCache(CacheConfig())  # the same state, settled: the drain's rest freed
    feed(partial, *packets)
    partial.agent_cache_expire(now_ns=T0 + S, force=False)
    for _ in range(3):
        partial.agent_cache_expire(now_ns=T0 + 9 * S, force=True, limit=300)
    partial.table.settle()
    assert partial.table.drained == 0
    settled = partial.counters()
    for name in ("active_flows", "memtraf_packets", "memtraf_bytes", "hash_mem_bytes",
                 "flows_mem_bytes", "slots"):
        assert mid[name] == settled[name], name
    c.table.settle()
    assert (c.mem_traffic(), c.active_flows) == ((0, 0), 0)


def test_maxflows_drops_new_flows_and_counts_them_exactly():
    c = FlowCache(CacheConfig(maxflows=3))
    packets = [(key(p), 100, 0, T0, 0) for p in range(10)] + [(key(0), 100, 0, T0, 0)]
    feed(c, *packets)
    st = c.stats
    assert c.active_flows == 3
    assert st.maxflows == 7 and st.drop_packets == 7 and st.drop_bytes == 700
    assert st.traffic_packets == 4 and st.traffic_bytes == 400
    assert st.search == 11 and st.new == 3 and st.found == 1
    out = c.agent_cache_expire(now_ns=T0, force=True)
    assert sum(r.packets for r in out) + st.drop_packets == len(packets)


def test_maxflows_zero_is_unlimited():
    c = FlowCache(CacheConfig(maxflows=0))
    feed(c, *[(key(p), 1, 0, T0, 0) for p in range(5000)])
    assert c.active_flows == 5000 and c.stats.drop_packets == 0


def test_trunc_and_frag_counters_come_from_the_batch():
    c = FlowCache(CacheConfig())
    c.agent_cache_packets(batch=PacketBatch("t", [], trunc=2, frag=3, dropped_packets=4,
                                            dropped_bytes=400), now_ns=0)
    st = c.stats
    assert (st.trunc, st.frag, st.drop_packets, st.drop_bytes) == (2, 3, 6, 400)


def test_flow_deltas_merge_with_min_start_and_max_end():
    c = FlowCache(CacheConfig())
    k = key(9, proto=6)
    c.agent_cache_flows(batch=FlowBatch("ebpf", [FlowDelta(k, 3, 300, T0 + S, T0 + 2 * S, 2)]),
                        now_ns=0)
    c.agent_cache_flows(batch=FlowBatch("ebpf", [FlowDelta(k, 2, 200, T0, T0 + 3 * S, 0x10)]),
                        now_ns=0)
    (r,) = c.agent_cache_expire(now_ns=T0, force=True)
    assert (r.packets, r.octets, r.start_ns, r.end_ns, r.tcp_flags) == (5, 500, T0, T0 + 3 * S,
                                                                      0x12)


def test_slots_are_reused_after_expiry():
    c = FlowCache(CacheConfig(hashsize=1024))
    for round_ in range(3):
        feed(c, *[(key(p), 1, 0, T0 + round_ * 100 * S, 0) for p in range(1000)])
        assert len(c.agent_cache_expire(now_ns=T0 + (round_ * 100 + 50) * S, force=False)) == 1000
    assert c.counters()["slots"] == 1024  # the freed slots were reused


def test_stats_report_memtraf_and_peak():
    c = FlowCache(CacheConfig())
    feed(c, (key(1), 100, 0, T0, 0), (key(2), 50, 0, T0, 0))
    st = c.agent_collect_stats()
    assert st["active_flows"] == 2 and st["peak_flows"] == 2
    assert (st["memtraf_packets"], st["memtraf_bytes"]) == (2, 150)


def test_egress_flows_are_keyed_on_their_interface_and_reported_as_egress():
    from netflow_agent.model import DIRECTION_EGRESS

    c = FlowCache(CacheConfig())
    src, dst = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
    out2 = make_key(4, 17, src, dst, 1, 2, in_if=2, direction=DIRECTION_EGRESS)
    out3 = make_key(4, 17, src, dst, 1, 2, in_if=3, direction=DIRECTION_EGRESS)
    feed(c, (out2, 100, 0, T0, 7), (out3, 100, 0, T0, 0), (key(1), 100, 0, T0, 9))
    recs = sorted(c.agent_cache_expire(now_ns=T0, force=True), key=lambda r: r.out_if)
    assert [(r.direction, r.in_if, r.out_if) for r in recs] == [
        (DIRECTION_EGRESS, 7, 2), (DIRECTION_EGRESS, 0, 3), (0, 0, 9)]


def test_delta_batch_with_repeated_keys_and_maxflows_counts_exactly():
    """One drain: a key twice (one flow, new once), then a flow beyond maxflows (refused,
    its packets counted as maxflows drops), then the first key again."""
    c = FlowCache(CacheConfig(maxflows=2))
    a, b, x = key(1, proto=6), key(2), key(3)
    c.agent_cache_flows(batch=FlowBatch("ebpf", [
        FlowDelta(a, 2, 200, T0 + S, T0 + S, TCP_SYN), FlowDelta(b, 1, 50, T0, T0),
        FlowDelta(x, 4, 400, T0, T0), FlowDelta(a, 3, 300, T0, T0 + 2 * S, TCP_FIN)]),
        now_ns=0)
    st = c.stats
    assert (st.search, st.new, st.found, st.maxflows) == (4, 2, 1, 4)
    assert (st.drop_packets, st.drop_bytes, st.traffic_packets) == (4, 400, 6)
    assert st.peak_flows == 2 and st.peak_ns == T0  # b's start made the table reach 2
    out = {r.src_port: r for r in c.agent_cache_expire(now_ns=T0 + 3 * S, force=False)}
    assert set(out) == {1}  # FIN: ends at the next scan; b is not idle yet
    assert (out[1].packets, out[1].octets, out[1].start_ns, out[1].end_ns) == (
        5, 500, T0, T0 + 2 * S)
    assert out[1].tcp_flags == TCP_SYN | TCP_FIN and out[1].end_reason == END_OF_FLOW


def test_delta_batches_of_every_size_merge_exactly_one_after_another():
    """Batches of 5,000, 30 and 20,000 rows (the cache packs the keys of batches up to 16,384
    rows into one reused buffer, larger ones into their own): each flow gets exactly its
    packets, a smaller batch after a larger one takes none of the earlier keys, and the large
    one is counted as itself."""
    c = FlowCache(CacheConfig(maxflows=0))
    sizes = (5000, 30, 20000)
    for size in sizes:  # flow i of a batch: sport i, `size` packets each
        c.agent_cache_flows(batch=FlowBatch("ebpf", [
            FlowDelta(key(i, dst=f"10.1.{size >> 8 & 255}.{size & 255}"), size, size,
                      T0, T0) for i in range(size)]), now_ns=0)
    assert c.stats.new == sum(sizes) and c.stats.traffic_packets == sum(s * s for s in sizes)
    out = c.agent_cache_expire(now_ns=T0, force=True)
    by_dst: dict[bytes, list[int]] = {}
    for r in out:
        by_dst.setdefault(r.dst_addr, []).append(r.packets)
    assert {dst: (len(p), set(p)) for dst, p in by_dst.items()} == {
        socket.inet_aton(f"10.1.{s >> 8 & 255}.{s & 255}"): (s, {s}) for s in sizes}


def test_a_flow_costs_about_a_hundred_bytes_at_100k_flows():
    """The table keeps no Python object per flow: the key index (C) and the columns
    together stay near 110 bytes per flow, and `agent stats` reports them."""
    c = FlowCache(CacheConfig(maxflows=0))
    batch = [(make_key(4, 6, i.to_bytes(4, "big"), bytes(4), i & 0xFFFF, 80), 60, 0, T0, 0)
             for i in range(100_000)]
    for i in range(0, len(batch), 4096):
        feed(c, *batch[i:i + 4096])
    st = c.counters()
    assert st["active_flows"] == 100_000
    assert st["hash_mem_bytes"] / 100_000 < 110
    assert st["flows_mem_bytes"] / 100_000 < 160
    assert st["flows_mem_bytes"] > st["hash_mem_bytes"]


@pytest.mark.parametrize("options", [FlowOptions(),
                                     FlowOptions(mac=True, vlan=True, mpls_labels=2)])
def test_taken_flows_keep_every_key_field(options):
    """The forced take copies each packed key into its row and swaps the big-endian fields
    in place: every key column, multi-byte ones included, comes out as it went in."""
    with active_schema(options) as schema:
        flows = schema.empty(3)
        for f in schema.key_fields:
            width = flows.dtype[f.name].itemsize
            for row in range(3):  # a distinct value in every byte of every field and row
                raw = bytes((row * 64 + width * 7 + i + 1) & 0xFF for i in range(width))
                flows[f.name][row] = (raw if flows.dtype[f.name].kind == "V" else
                                      int.from_bytes(raw, "little"))
        flows["direction"] = 0  # ingress: in_if is the key's interface as it is
        flows["packets"], flows["start_ns"], flows["end_ns"] = 1, T0, T0
        c = FlowCache(CacheConfig())
        c.agent_cache_flows(FlowBatch("test", flows), now_ns=T0)
        out = c.agent_cache_expire(now_ns=T0, force=True).flows
        assert len(out) == 3
        for name in schema.key_names:
            assert sorted(out[name].tolist()) == sorted(flows[name].tolist()), name


def test_a_record_laid_out_unlike_the_key_takes_the_cast():
    key = np.dtype([("a", "u1"), ("b", ">u2")])
    assert _key_swaps(key, np.dtype([("a", "u1"), ("b", "<u2"), ("v", "u8")])) == ("b",)
    assert _key_swaps(key, np.dtype([("a", "u1"), ("b", "<u4")])) is None
    assert _key_swaps(key, np.dtype([("b", "<u2"), ("a", "u1")])) is None


def _filled(n: int, last_ns, fin: bool = True) -> FlowCache:
    """``n`` flows, each seen once at ``last_ns(i)``; with ``fin`` every tenth (a TCP one)
    carries FIN."""
    c = FlowCache(CacheConfig(maxflows=0, inactive_timeout=15, active_timeout=60))
    batch = [(make_key(4, 6 if i % 2 else 17, i.to_bytes(4, "big"), bytes(4), i & 0xFFFF, 80),
              60, TCP_FIN if fin and i % 5 == 4 and i % 2 else 0, last_ns(i), 0)
             for i in range(n)]
    for i in range(0, n, 4096):
        feed(c, *batch[i:i + 4096])
    return c


def test_a_scan_of_a_big_table_allocates_no_column_sized_temporaries():
    """A timed scan compares the columns a step at a time into reused buffers: at 200k flows
    none of them due it allocates ~130 KB at most, where whole-column comparisons took
    ~600 KB (fresh mappings, faulted in at every scan of every second)."""
    import tracemalloc

    c = _filled(200_000, lambda i: T0 + 10 * S, fin=False)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        assert c.agent_cache_expire(now_ns=T0 + 11 * S, force=False) == []
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 160_000
    assert c.active_flows == 200_000


def test_a_scan_in_steps_takes_idle_active_and_ended_flows_in_slot_order():
    """Over several steps of the scan (70k slots), each due flow leaves once, in slot order,
    with its reason: idle before active, FIN/RST for the rest; the others stay."""
    n = 70_000
    c = _filled(n, lambda i: T0 + (i % 3) * S, fin=False)
    # flows 1, 2 (mod 3) seen again at T0 + 50 s: active since T0, not idle
    feed(c, *[(make_key(4, 6 if i % 2 else 17, i.to_bytes(4, "big"), bytes(4), i & 0xFFFF, 80),
               60, 0, T0 + 50 * S, 0) for i in range(n) if i % 3 and i < 30_000])
    out = c.agent_cache_expire(now_ns=T0 + 62 * S, force=False).flows
    sports = out["src_port"].astype(np.int64)
    addrs = np.frombuffer(out["src_addr"].tobytes(), np.uint8).reshape(-1, 16)[:, :4]
    index = addrs.astype(np.int64) @ np.array([1 << 24, 1 << 16, 1 << 8, 1])
    assert (sports == (index & 0xFFFF)).all()
    want = {}
    for i in range(n):
        if i % 3 == 0 or i >= 30_000:
            want[i] = END_IDLE  # last seen at T0 + 0-2 s: idle at T0 + 62 s
        else:
            want[i] = END_ACTIVE  # since T0 + 1-2 s, seen at T0 + 50 s
    assert dict(zip(index.tolist(), out["end_reason"].tolist(), strict=True)) == want
    assert c.active_flows == 0
    # ended flows: not due by time, their FIN ends them at the next scan
    c = _filled(n, lambda i: T0)
    out = c.agent_cache_expire(now_ns=T0 + S, force=False).flows
    assert len(out) == len([i for i in range(n) if i % 5 == 4 and i % 2])
    assert (out["end_reason"] == END_OF_FLOW).all()
    assert (np.diff(out["src_port"].astype(np.int64)) != 0).all()
    assert c.active_flows == n - len(out)


def test_a_timed_scan_reports_egress_flows_as_the_forced_one_does():
    from netflow_agent.model import DIRECTION_EGRESS

    src, dst = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
    out2 = make_key(4, 17, src, dst, 1, 2, in_if=2, direction=DIRECTION_EGRESS)
    out3 = make_key(4, 17, src, dst, 1, 2, in_if=3, direction=DIRECTION_EGRESS)
    got = []
    for force in (True, False):
        c = FlowCache(CacheConfig(inactive_timeout=15))
        feed(c, (out2, 100, 0, T0, 7), (out3, 100, 0, T0, 0), (key(1), 100, 0, T0, 9))
        recs = c.agent_cache_expire(now_ns=T0 + 20 * S, force=force)
        got.append(sorted((r.direction, r.in_if, r.out_if, r.packets) for r in recs))
    assert got[0] == got[1] == [(0, 0, 9, 1), (DIRECTION_EGRESS, 0, 3, 1),
                                (DIRECTION_EGRESS, 7, 2, 1)]
