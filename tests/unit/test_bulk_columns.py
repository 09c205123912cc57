"""The bulk column moves of the export path: grouping rows per template, packing keys and
taking flows out of the cache, each checked against the obvious per-field way."""

from __future__ import annotations

import numpy as np

from netflow_agent.model import FlowBatch
from netflow_agent.schema import FlowOptions
from netflow_agent.stages.cache import CacheConfig, FlowCache
from netflow_agent.wire import group_rows, rows_of
from tests.support.schemas import active_schema

L2 = FlowOptions(mac=True, vlan=True, mpls_labels=2)  # key fields after the 44-byte base


def test_group_rows_is_one_stable_mask_per_class():
    classes = np.array([3, 0, 3, 1, 0, 3, 3], np.int64)
    groups = group_rows(classes)
    assert list(groups) == [0, 1, 3]
    for c, rows in groups.items():
        assert rows is not None and rows.tolist() == np.flatnonzero(classes == c).tolist()


def test_group_rows_of_one_class_copies_nothing():
    flows = np.arange(5)
    groups = group_rows(np.full(5, 7, np.uint8))
    assert groups == {7: None} and rows_of(flows, groups[7]) is flows
    assert group_rows(np.zeros(0, np.uint8)) == {}


def random_flows(schema, n: int, seed: int = 7) -> np.ndarray:
    """Key fields of random bytes (every field differs per row), plausible counters."""
    rng = np.random.default_rng(seed)
    flows = schema.empty(n)
    raw = rng.integers(0, 256, n * schema.key_size, dtype=np.uint8).tobytes()
    keys = np.frombuffer(raw, schema.key_dtype)
    for f in schema.key_fields:  # the per-field reference way
        flows[f.name] = keys[f.name]
    flows["ip_version"] = np.where(rng.random(n) < 0.5, 4, 6)
    flows["direction"] = 0
    flows["packets"], flows["octets"] = 1 + np.arange(n), 100 * (1 + np.arange(n))
    flows["start_ns"], flows["end_ns"] = 10**18, 10**18 + 5
    return flows


def test_keys_of_packs_every_key_field_big_endian():
    with active_schema(L2) as schema:
        flows = random_flows(schema, 500)
        keys = np.frombuffer(schema.keys_of(flows).tobytes(), schema.key_dtype)
        for f in schema.key_fields:
            assert np.array_equal(keys[f.name], flows[f.name]), f.name


def test_expired_flows_carry_their_keys_and_counters():
    with active_schema(L2) as schema:
        flows = random_flows(schema, 500)
        cache = FlowCache(CacheConfig(maxflows=0))
        cache.agent_cache_flows(batch=FlowBatch("t", flows), now_ns=10**18)
        out = cache.agent_cache_expire(now_ns=10**18, force=True).flows
        out = out[np.argsort(out["packets"])]  # slot order -> input order
        for f in (*schema.key_fields, *schema.value_fields):
            assert np.array_equal(out[f.name], flows[f.name]), f.name
