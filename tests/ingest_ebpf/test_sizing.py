"""Kernel table sizes derived from the cache's capacity, and their memory (no privileges)."""

from __future__ import annotations

from netflow_agent.plugins.ingest_ebpf.sizing import (
    AUTO_MEMORY_BYTES,
    AUTO_TOTAL_BYTES,
    MAX_AUTO_SLOTS,
    MIN_AUTO_SLOTS,
    cpu_slots_size,
    kernel_table_size,
    possible_cpus,
    ring_capacity_packets,
    slot_memory,
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


def test_configured_cpu_slots_win():
    assert cpu_slots_size(4096, 524_288, 2_000_000, False, 256) == 4096
    assert cpu_slots_size(0, 524_288, 2_000_000, False, 2) == 0


def test_derived_cpu_slots_share_the_budget_with_the_hash():
    """"auto": the slots take what the derived hash tables leave of the 288 MiB, per CPU."""
    for percpu in (False, True):
        for ncpu in (1, 2, 4, 16, 64, 256, 1024):
            table = kernel_table_size(0, 2_000_000, percpu, ncpu)
            for fields, precise in ((False, False), (False, True), (True, False)):
                slots = cpu_slots_size("auto", table, 2_000_000, percpu, ncpu, fields, precise)
                assert slots & (slots - 1) == 0
                assert slots <= MAX_AUTO_SLOTS and slots * ncpu <= 2 * table + ncpu * 2
                if slots > MIN_AUTO_SLOTS:  # else the old default: a floor, as before "auto"
                    assert table_memory(table, percpu, ncpu) + slot_memory(
                        slots, ncpu, fields, precise) <= AUTO_TOTAL_BYTES
    shared = kernel_table_size(0, 2_000_000, False, 2)
    # one 64-byte line and a tag byte per slot: 130 MiB; 88-byte slots with precise times: 89
    assert slot_memory(524_288, 2) >> 20 == 130
    assert slot_memory(262_144, 2, precise=True) >> 20 == 89
    assert cpu_slots_size("auto", shared, 2_000_000, False, 2, precise=True) == 262_144
    assert cpu_slots_size("auto", shared, 2_000_000, False, 2, key_fields=True) == 131_072
    assert cpu_slots_size("auto", shared, 2_000_000, False, 64) == 16_384
    assert cpu_slots_size("auto", shared, 2_000_000, False, 256) == 4096  # the floor
    # the per-CPU hash took the budget on 64 CPUs: twice its 65,536 flows, not none
    assert cpu_slots_size("auto", kernel_table_size(0, 2_000_000, True, 64), 2_000_000, True,
                          64) == 2048
    assert cpu_slots_size("auto", kernel_table_size(0, 2_000_000, True, 48), 2_000_000, True,
                          48) == 4096
    assert cpu_slots_size("auto", 100_000, 100_000, False, 2) == 131_072  # the cache's, rounded up
    assert cpu_slots_size("auto", 100_000, 100_000, False, 8) == 32_768  # together 2x the cache
    assert cpu_slots_size("auto", 4096, 0, False, 2) == 4096  # a small explicit hash: small slots
    assert cpu_slots_size("auto", 1000, 1000, False, 2) == 1024
    assert cpu_slots_size("auto", 1_048_576, 0, False, 2) == 4096  # an explicit hash took it all
    assert slot_memory(524_288, 2) + table_memory(shared, False, 2) <= AUTO_TOTAL_BYTES
    # the hash's own derivation keeps its 256 MiB: the slots' larger budget does not grow it
    assert table_memory(shared, False, 2) <= AUTO_MEMORY_BYTES


def test_auto_slots_hold_a_drain_period_of_new_flows_on_2_cpus():
    """W3's flood of new flows reaches ~450k new flows in a drain period on the sender's CPU
    (1 s at ~0.9 Mpps, half the packets new flows). With 262,144 slots per CPU they filled
    and 190-424k flows a run went to the hash (its walk and insert: the program 206-272 ns
    per packet against 221-229 with 524,288, docs/performance.md, seventh stop); the default
    now holds such a period below a 7/8 load, where 8 tag-word probes leave few flows over."""
    shared = kernel_table_size(0, 2_000_000, False, 2)
    slots = cpu_slots_size("auto", shared, 2_000_000, False, 2)
    assert slots == 524_288
    assert 450_000 <= slots * 7 // 8


def test_possible_cpus_reads_ranges(tmp_path):
    f = tmp_path / "possible"
    f.write_text("0-3,6,8-9\n")
    assert possible_cpus(str(f)) == 7
    assert possible_cpus(str(tmp_path / "missing")) == 1


def test_ring_capacity():
    assert ring_capacity_packets(0) == 0
    assert ring_capacity_packets(1) == 4096 // 80  # at least a page
    assert ring_capacity_packets(256) == 256 * 1024 // 80
