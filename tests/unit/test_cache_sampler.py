"""``[cache] sampler`` inside the cache: what is kept, what is counted, what is declared."""

from __future__ import annotations

import random

import numpy as np
import pytest

from netflow_agent._flowindex import hash_select
from netflow_agent.model import (
    SAMPLING_DETERMINISTIC,
    SAMPLING_HASH,
    FlowBatch,
    FlowDelta,
    Sampling,
)
from netflow_agent.runtime import RunContext
from netflow_agent.sampler import hash_select_rows, hash_selects, key_ops, parse_sampler
from netflow_agent.schema import active
from netflow_agent.stages.cache import CacheConfig, FlowCache
from netflow_agent.stages.flowtable import record_layout
from tests.support.aggregation import SEED_RULES
from tests.unit.test_aggregate import per_key_rewrite, random_keys
from tests.unit.test_cache import T0, S, feed, key

N = 4


def _split(n: int) -> tuple[list[int], list[int]]:
    """Source ports 1..n whose key ``hash:N`` selects, and those it does not."""
    ports = range(1, n + 1)
    return ([p for p in ports if hash_selects(key(p), N)],
            [p for p in ports if not hash_selects(key(p), N)])


def test_parse_accepts_the_three_modes_and_refuses_the_rest():
    assert parse_sampler("") is None
    assert parse_sampler("deterministic:2") == ("deterministic", 2)
    assert parse_sampler("hash:16383") == ("hash", 16383)
    for bad in ("hash", "random:1", "random:16384", "every:10", "hash:ten"):
        with pytest.raises(ValueError):
            parse_sampler(bad)
    assert CacheConfig(sampler="hash:0").check()[0].path == "sampler"


def test_hash_ignores_interface_tos_and_direction():
    k = key(7)
    other = k[:2] + b"\x08\x01" + b"\x00\x00\x00\x09" + k[8:]  # tos 8, egress, ifindex 9
    assert all(hash_selects(k, n) == hash_selects(other, n) for n in range(2, 200))


def test_hash_discards_unselected_packets_on_entry_and_counts_them_apart():
    selected, unselected = _split(200)
    c = FlowCache(CacheConfig(sampler=f"hash:{N}"))
    feed(c, *[(key(p), 100, 0, T0, 0) for p in range(1, 201) for _ in range(2)])
    assert c.active_flows == len(selected)
    st = c.stats
    assert (st.sampler_discarded_packets, st.sampler_discarded_bytes) == \
        (2 * len(unselected), 200 * len(unselected))
    assert (st.drop_packets, st.new, st.traffic_packets) == (0, len(selected), 2 * len(selected))
    out = c.agent_cache_expire(now_ns=T0, force=True)
    assert sorted(r.src_port for r in out) == selected
    assert {(r.packets, r.octets) for r in out} == {(2, 200)}  # exact, not scaled


def test_hash_applies_to_flow_deltas_from_kernel_maps():
    selected, unselected = _split(50)
    c = FlowCache(CacheConfig(sampler=f"hash:{N}"))
    c.agent_cache_flows(batch=FlowBatch("ebpf", [FlowDelta(key(p), 3, 300, T0, T0)
                                                 for p in range(1, 51)]), now_ns=0)
    assert c.active_flows == len(selected)
    assert c.stats.sampler_discarded_packets == 3 * len(unselected)
    assert c.stats.drop_packets == 0


def test_deterministic_exports_every_nth_expired_flow():
    c = FlowCache(CacheConfig(sampler=f"deterministic:{N}"))
    feed(c, *[(key(p), 100, 0, T0, 0) for p in range(1, 41)])
    assert c.active_flows == 40  # selection happens at export
    out = c.agent_cache_expire(now_ns=T0, force=True)
    assert [r.src_port for r in out] == list(range(N, 41, N))
    assert (c.stats.exported_flows, c.stats.sampler_unselected_flows) == (10, 30)


def test_random_exports_a_binomial_share():
    c = FlowCache(CacheConfig(sampler=f"random:{N}"))
    feed(c, *[(key(p), 100, 0, T0, 0) for p in range(1, 4001)])
    out = c.agent_cache_expire(now_ns=T0, force=True)
    assert 800 <= len(out) <= 1200  # mean 1000, sd 27: over 7 sd each side
    assert c.stats.sampler_unselected_flows == 4000 - len(out)


def test_the_cache_declares_flow_sampling_and_reload_changes_it():
    ctx = RunContext()
    c = FlowCache(CacheConfig(sampler=f"hash:{N}"))
    c.agent_start(context=ctx)
    assert ctx.sampling() == Sampling(N, SAMPLING_HASH, flows=True)
    c.reconfigure(CacheConfig(sampler="deterministic:8"))
    assert ctx.sampling() == Sampling(8, SAMPLING_DETERMINISTIC, flows=True)
    c.reconfigure(CacheConfig())
    assert ctx.sampling() is None and c.sampler is None


@pytest.mark.parametrize("sampler", ["deterministic:2", "random:3"])
def test_a_forced_scan_in_parts_takes_every_flow_out_while_sampling(sampler):
    """At stop the core calls again while a part holds exactly its limit: a sampler that
    thinned each part made the first part short, and the rest of the table was never
    exported. Every part but the last is now exactly the limit, and the table ends empty."""
    c = FlowCache(CacheConfig(sampler=sampler))
    feed(c, *[(key(p), 60, 0, T0, 0) for p in range(1, 1001)])
    sizes = []
    while True:
        sizes.append(len(c.agent_cache_expire(now_ns=T0, force=True, limit=100)))
        if sizes[-1] != 100:
            break
    assert c.active_flows == 0
    st = c.stats
    assert sum(sizes) == st.exported_flows
    assert st.exported_flows + st.sampler_unselected_flows == 1000
    if sampler.startswith("deterministic"):
        assert sizes == [100] * 5 + [0]


# --- the batch hash (C) against the per-key hash ---------------------------------------------

def test_the_batch_hash_keeps_exactly_the_keys_hash_selects_keeps():
    """The cache hashes whole batches in C: the kept set must stay the documented one (the
    same flows on every agent of a fleet and across restarts)."""
    rng = random.Random(5)
    keys = [rng.randbytes(44) for _ in range(20_000)] + random_keys(5000, seed=5)
    packed = np.frombuffer(b"".join(keys), "V44")
    for n in (2, 3, 4, 10, 100, 1000, 16383):
        got = hash_select_rows(packed, key_ops(0, 44), n)
        assert got.tolist() == [hash_selects(k, n) for k in keys]
    wide = np.frombuffer(b"".join(k + b"\x00\x64\xaa\xbb" for k in keys), "V48")
    assert hash_select_rows(wide, key_ops(0, 48), 7).tolist() == [
        hash_selects(k, 7) for k in keys]


def test_the_batch_hash_reads_record_rows_as_their_packed_keys():
    keys = random_keys(5000, seed=9)
    flows = FlowBatch("ebpf", [FlowDelta(k, 1, 60, T0, T0) for k in keys]).flows
    layout = record_layout(flows.dtype, active().key_dtype)
    assert layout is not None
    assert hash_select_rows(flows, layout.ops, 10).tolist() == [hash_selects(k, 10) for k in keys]


@pytest.mark.parametrize("path", ["packets", "deltas"])
def test_hash_with_rules_keeps_the_flows_whose_aggregated_key_it_selects(path):
    keys = random_keys(3000, seed=11, directions=1)
    kept = {new for new, _ in (per_key_rewrite(SEED_RULES, k) for k in keys)
            if hash_selects(new, N)}
    c = FlowCache(CacheConfig(sampler=f"hash:{N}", aggregation=SEED_RULES))
    if path == "packets":
        feed(c, *[(k, 60, 0, T0, 0) for k in keys])
    else:
        c.agent_cache_flows(batch=FlowBatch("ebpf", [FlowDelta(k, 1, 60, T0, T0)
                                                     for k in keys]), now_ns=0)
    got = {r.key() for r in c.agent_cache_expire(now_ns=T0, force=True)}
    assert got == kept and 0 < len(kept) < len(keys)
    assert c.stats.sampler_discarded_packets + c.stats.traffic_packets == len(keys)
    assert c.stats.sampler_discarded_bytes + c.stats.traffic_bytes == 60 * len(keys)


@pytest.mark.parametrize("path", ["packets", "deltas"])
def test_a_restored_flow_the_hash_does_not_select_keeps_counting(path):
    """Decided on a key's miss only: a flow the table holds (restored, or from before the
    sampler changed) takes its packets even when the hash would not select its key."""
    _selected, unselected = _split(40)
    plain = FlowCache(CacheConfig())
    feed(plain, *[(key(p), 100, 0, T0, 0) for p in unselected])
    c = FlowCache(CacheConfig(sampler=f"hash:{N}"))
    c.restore(plain.dump())
    more = [(key(p), 100, 0, T0 + 1, 0) for p in unselected + [1000 + p for p in unselected]]
    if path == "packets":
        feed(c, *more)
    else:
        c.agent_cache_flows(batch=FlowBatch("ebpf", [FlowDelta(k, 1, 100, t, t)
                                                     for k, _n, _f, t, _o in more]), now_ns=0)
    out = c.agent_cache_expire(now_ns=T0, force=True)
    assert {r.src_port: r.packets for r in out} == {p: 2 for p in unselected} | {
        1000 + p: 1 for p in unselected if hash_selects(key(1000 + p), N)}


@pytest.mark.parametrize("path", ["packets", "deltas"])
def test_flows_held_when_hash_sampling_starts_on_reload_keep_counting(path):
    """No sampler, then ``hash:N`` on reload: the flows the table holds keep taking their
    packets, those of keys the hash refuses included; new refused keys are discarded."""
    _selected, unselected = _split(40)
    c = FlowCache(CacheConfig())
    feed(c, *[(key(p), 100, 0, T0, 0) for p in unselected])
    c.reconfigure(CacheConfig(sampler=f"hash:{N}"))
    more = [key(p) for p in unselected + [1000 + p for p in unselected]]
    if path == "packets":
        feed(c, *[(k, 100, 0, T0 + 1, 0) for k in more])
    else:
        c.agent_cache_flows(batch=FlowBatch("ebpf", [FlowDelta(k, 1, 100, T0 + 1, T0 + 1)
                                                     for k in more]), now_ns=0)
    out = c.agent_cache_expire(now_ns=T0, force=True)
    assert {r.src_port: r.packets for r in out} == {p: 2 for p in unselected} | {
        1000 + p: 1 for p in unselected if hash_selects(key(1000 + p), N)}


def _lookups(c: FlowCache, monkeypatch) -> list[int]:
    """The sizes of the cache's lookups that insert nothing (those of refused keys)."""
    calls: list[int] = []
    real = c.table.lookup

    def spy(keys, insert=True, limit=0):
        if not insert:
            calls.append(len(keys))
        return real(keys, insert, limit)

    monkeypatch.setattr(c.table, "lookup", spy)
    return calls


@pytest.mark.parametrize("start", ["restore", "reload"])
def test_refused_keys_are_no_longer_looked_up_once_the_held_flows_have_left(
        start, monkeypatch):
    """A busy table never empties: once every flow held at a restore or a sampler change
    has been exported, a key the hash refuses is discarded without a lookup."""
    selected, unselected = _split(40)
    busy = key(selected[0])
    plain = FlowCache(CacheConfig(inactive_timeout=10, active_timeout=60))
    feed(plain, *[(key(p), 100, 0, T0, 0) for p in unselected[:3]])
    config = CacheConfig(sampler=f"hash:{N}", inactive_timeout=10, active_timeout=60)
    if start == "restore":
        c = FlowCache(config)
        c.restore(plain.dump())
    else:
        c = plain
        c.reconfigure(config)
    calls = _lookups(c, monkeypatch)
    refused = [key(1000 + p) for p in unselected if not hash_selects(key(1000 + p), N)]
    out = []
    for s in range(0, 30, 5):  # the busy flow keeps the table from ever emptying
        feed(c, (busy, 100, 0, T0 + s * S, 0), *[(k, 100, 0, T0 + s * S, 0) for k in refused])
        out += c.agent_cache_expire(now_ns=T0 + s * S, force=False)
        if s == 5:
            assert calls  # held flows in the table: refused keys are looked up
            calls.clear()
    assert sorted(r.src_port for r in out) == unselected[:3]  # idle at T0 + 10 s
    assert calls == [len(refused)]  # the batch at 10 s, before the scan that exports them
    assert c.active_flows == 1
    assert c.stats.sampler_discarded_packets == 6 * len(refused)


def test_the_batch_hash_refuses_an_interval_it_cannot_take():
    rows = np.frombuffer(b"".join(random_keys(3, seed=1)), "V44")
    ops = key_ops(0, 44)
    for interval in (0, -4):
        with pytest.raises(ValueError, match="interval"):
            hash_select(rows, 44, ops, interval)
    with pytest.raises(OverflowError):  # not wrapped to 4
        hash_select(rows, 44, ops, 2**64 + 4)


def test_the_batch_hash_refuses_ops_that_place_a_key_past_the_largest_key():
    """An op's destination sets the width of the key built per row: one at 0xFFFFFFF0
    would allocate ~4 GB."""
    rows = np.frombuffer(b"".join(random_keys(3, seed=1)), "V44")
    far = np.array([[0, 0, 44, 0], [0, 0xFFFFFFF0, 4, 0]], np.uint32).tobytes()
    with pytest.raises(ValueError, match="ops"):
        hash_select(rows, 44, far, N)
    wide = np.array([[0, 0, 44, 0], [0, 65531, 4, 0]], np.uint32).tobytes()  # ends at 65535
    assert len(hash_select(rows, 44, wide, N)) == 3
