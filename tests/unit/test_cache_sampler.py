"""``[cache] sampler`` inside the cache: what is kept, what is counted, what is declared."""

from __future__ import annotations

import pytest

from netflow_agent.model import (
    SAMPLING_DETERMINISTIC,
    SAMPLING_HASH,
    FlowBatch,
    FlowDelta,
    Sampling,
)
from netflow_agent.runtime import RunContext
from netflow_agent.sampler import hash_selects, parse_sampler
from netflow_agent.stages.cache import CacheConfig, FlowCache
from tests.unit.test_cache import T0, feed, key

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
