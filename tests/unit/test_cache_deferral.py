"""Expiry spread over scans (issue 14, item 3): a scan's ``limit`` defers due flows, it never
loses or splits them.

``agent_cache_expire(now, force=False, limit=N)`` returns at most ``N`` due flows, the most
overdue first; the others stay in the table with their times, counters and FIN/RST mark and
leave in later scans; ``limit < 0`` takes none. ``expiry_deferred`` and the oldest one's due
time are in the cache's counters.
"""

from __future__ import annotations

from netflow_agent.model import END_ACTIVE, END_IDLE, END_OF_FLOW, TCP_FIN
from netflow_agent.stages.cache import MAX_DEFER_S, CacheConfig, FlowCache
from tests.unit.test_cache import T0, S, feed, key


def test_a_limited_scan_takes_the_most_overdue_and_keeps_the_rest_due():
    c = FlowCache(CacheConfig(inactive_timeout=15))
    feed(c, *[(key(1000 + i), 100 + i, 0, T0 + i * S, 0) for i in range(10)])
    now = T0 + 40 * S  # all ten idle; flow 1000 has been due longest
    first = c.agent_cache_expire(now_ns=now, force=False, limit=4)
    assert sorted(r.src_port for r in first) == [1000, 1001, 1002, 1003]
    st = c.counters()
    assert (st["expiry_deferred"], st["deferred_scans"], c.active_flows) == (6, 1, 6)
    assert st["expiry_deferred_since_ns"] == T0 + 4 * S + 15 * S  # flow 1004's due time
    none = c.agent_cache_expire(now_ns=now, force=False, limit=-1)  # no room at all
    assert len(none) == 0 and c.counters()["expiry_deferred"] == 6
    rest = c.agent_cache_expire(now_ns=now + S, force=False, limit=100)
    assert sorted(r.src_port for r in rest) == list(range(1004, 1010))
    out = list(first) + list(rest)
    assert {r.end_reason for r in out} == {END_IDLE}
    assert sorted((r.src_port, r.packets, r.octets, r.start_ns) for r in out) == [
        (1000 + i, 1, 100 + i, T0 + i * S) for i in range(10)]  # exactly once, unchanged
    assert (c.active_flows, c.counters()["expiry_deferred"]) == (0, 0)


def test_a_deferred_fin_flow_keeps_its_end_reason():
    c = FlowCache(CacheConfig(inactive_timeout=15))
    feed(c, (key(1), 100, 0, T0, 0), (key(2, proto=6), 40, TCP_FIN, T0 + 16 * S, 0))
    (idle,) = c.agent_cache_expire(now_ns=T0 + 17 * S, force=False, limit=1)
    assert (idle.src_port, idle.end_reason) == (1, END_IDLE)  # due since T0+15, the FIN T0+16
    (fin,) = c.agent_cache_expire(now_ns=T0 + 18 * S, force=False, limit=1)
    assert (fin.src_port, fin.end_reason) == (2, END_OF_FLOW)


def test_a_fin_flow_due_first_leaves_first():
    c = FlowCache(CacheConfig(inactive_timeout=15))
    feed(c, (key(1), 100, 0, T0, 0), (key(2, proto=6), 40, TCP_FIN, T0 + S, 0))
    (fin,) = c.agent_cache_expire(now_ns=T0 + 2 * S, force=False, limit=1)
    assert fin.end_reason == END_OF_FLOW  # the idle flow is not due yet
    (idle,) = c.agent_cache_expire(now_ns=T0 + 16 * S, force=False, limit=1)
    assert idle.src_port == 1


def test_a_packet_for_a_deferred_idle_flow_is_added_to_it():
    """ipt_NETFLOW-like: a flow the scan did not reach yet is still the flow in the table;
    its new packet is counted in it and, no longer idle, it waits for its next timeout."""
    c = FlowCache(CacheConfig(inactive_timeout=15))
    feed(c, (key(1), 100, 0, T0, 0), (key(2), 100, 0, T0 + S, 0))
    (taken,) = c.agent_cache_expire(now_ns=T0 + 20 * S, force=False, limit=1)
    assert taken.src_port == 1
    feed(c, (key(2), 60, 0, T0 + 21 * S, 0))
    assert len(c.agent_cache_expire(now_ns=T0 + 22 * S, force=False, limit=10)) == 0
    assert c.counters()["expiry_deferred"] == 0
    (later,) = c.agent_cache_expire(now_ns=T0 + 40 * S, force=False, limit=10)
    assert (later.packets, later.octets, later.start_ns, later.end_ns) == (
        2, 160, T0 + S, T0 + 21 * S)


def test_a_forced_scan_takes_deferred_flows_too():
    c = FlowCache(CacheConfig(inactive_timeout=15))
    feed(c, *[(key(1000 + i), 100, 0, T0, 0) for i in range(5)])
    assert len(c.agent_cache_expire(now_ns=T0 + 16 * S, force=False, limit=2)) == 2
    assert len(c.agent_cache_expire(now_ns=T0 + 16 * S, force=True, limit=0)) == 3
    assert c.active_flows == 0


def test_a_flow_waits_for_room_at_most_max_defer_s():
    """A stuck or slow exporter cannot hold due flows forever: past MAX_DEFER_S overdue a
    flow leaves anyway (an exporter without room then counts it lost)."""
    c = FlowCache(CacheConfig(inactive_timeout=15))
    feed(c, (key(1), 100, 0, T0, 0), (key(2), 100, 0, T0 + 30 * S, 0))
    due1 = T0 + 15 * S
    assert len(c.agent_cache_expire(now_ns=due1 + S, force=False, limit=-1)) == 0
    assert c.counters()["expiry_deferred"] == 1
    late = due1 + MAX_DEFER_S * S  # flow 1 has waited long enough, flow 2 not
    (gone,) = c.agent_cache_expire(now_ns=late, force=False, limit=-1)
    assert (gone.src_port, gone.packets) == (1, 1)
    assert c.counters()["expiry_deferred"] == 1  # flow 2 still waits


def test_deferring_half_of_maxflows_lets_everything_due_leave():
    """Deferred flows would fill the table and refuse new flows: all due flows leave."""
    c = FlowCache(CacheConfig(inactive_timeout=15, maxflows=10))
    feed(c, *[(key(1000 + i), 100, 0, T0, 0) for i in range(8)])
    assert len(c.agent_cache_expire(now_ns=T0 + 16 * S, force=False, limit=4)) == 4
    assert c.counters()["expiry_deferred"] == 4  # 4 deferred: not more than half of 10
    feed(c, *[(key(2000 + i), 100, 0, T0 + S, 0) for i in range(6)])
    out = c.agent_cache_expire(now_ns=T0 + 17 * S, force=False, limit=2)
    assert len(out) == 10 and c.counters()["expiry_deferred"] == 0  # 8 would wait: > 5


def test_a_fin_flow_due_by_its_times_leaves_once_with_the_time_reason():
    """Exactly once: a flow that saw FIN and is idle (or too old) too is one record, its
    flowEndReason the timeout (the scan finds it due by its times first), not also an
    end-of-flow record for the same flow."""
    c = FlowCache(CacheConfig(inactive_timeout=15, active_timeout=60))
    feed(c, (key(1, proto=6), 40, TCP_FIN, T0, 0),  # idle since T0+15
         (key(2, proto=6), 40, 0, T0, 0), (key(2, proto=6), 40, TCP_FIN, T0 + 55 * S, 0))
    out = list(c.agent_cache_expire(now_ns=T0 + 61 * S, force=False))
    assert sorted((r.src_port, r.end_reason) for r in out) == [(1, END_IDLE), (2, END_ACTIVE)]
    assert c.active_flows == 0
    assert len(c.agent_cache_expire(now_ns=T0 + 62 * S, force=False)) == 0


def test_a_limited_scan_of_mixed_reasons_gives_each_taken_flow_its_own_reason():
    """The taken flows are not the lowest slots: each keeps the reason it was due for."""
    c = FlowCache(CacheConfig(inactive_timeout=15, active_timeout=60))
    feed(c, (key(1, proto=6), 40, TCP_FIN, T0 + 70 * S, 0),  # slot 0: FIN, due at T0+70
         (key(2), 100, 0, T0 + 40 * S, 0),  # slot 1: idle, due since T0+55
         (key(3), 100, 0, T0, 0), (key(3), 100, 0, T0 + 65 * S, 0))  # slot 2: active, T0+60
    first = c.agent_cache_expire(now_ns=T0 + 71 * S, force=False, limit=2)
    assert [(r.src_port, r.end_reason) for r in first] == [(2, END_IDLE), (3, END_ACTIVE)]
    (fin,) = c.agent_cache_expire(now_ns=T0 + 72 * S, force=False, limit=2)
    assert (fin.src_port, fin.end_reason) == (1, END_OF_FLOW)


def test_a_fin_flow_in_a_lower_slot_than_a_due_flow_leaves_in_slot_order():
    c = FlowCache(CacheConfig(inactive_timeout=15))
    feed(c, (key(1, proto=6), 40, TCP_FIN, T0 + 20 * S, 0),  # slot 0: FIN, not idle
         (key(2), 100, 0, T0, 0))  # slot 1: idle
    out = c.agent_cache_expire(now_ns=T0 + 21 * S, force=False)
    assert [(r.src_port, r.end_reason) for r in out] == [(1, END_OF_FLOW), (2, END_IDLE)]
