"""Kernel table sizes derived from the cache's capacity, and their memory (no privileges)."""

from __future__ import annotations

from netflow_agent.plugins.ingest_ebpf.sizing import (
    AUTO_MEMORY_BYTES,
    kernel_table_size,
    possible_cpus,
    ring_capacity_packets,
    table_memory,
)


def test_configured_maxflows_wins():
    assert kernel_table_size(4096, 2_000_000, True, 2) == 4096


def test_derived_from_the_cache_within_the_memory_budget():
    assert kernel_table_size(0, 100_000, True, 2) == 100_000  # the cache's capacity
    big = kernel_table_size(0, 2_000_000, True, 2)  # the default cache: 2M flows
    assert big == 524_288
    assert table_memory(big, True, 2) <= AUTO_MEMORY_BYTES
    assert table_memory(big * 2, True, 2) > AUTO_MEMORY_BYTES
    assert kernel_table_size(0, 0, True, 2) == big  # unlimited cache: the same bound
    assert kernel_table_size(0, 0, True, 256) == 65_536  # many CPUs: the floor


def test_possible_cpus_reads_ranges(tmp_path):
    f = tmp_path / "possible"
    f.write_text("0-3,6,8-9\n")
    assert possible_cpus(str(f)) == 7
    assert possible_cpus(str(tmp_path / "missing")) == 1


def test_ring_capacity():
    assert ring_capacity_packets(0) == 0
    assert ring_capacity_packets(1) == 4096 // 80  # at least a page
    assert ring_capacity_packets(256) == 256 * 1024 // 80
