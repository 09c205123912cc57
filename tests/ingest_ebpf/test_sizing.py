"""Kernel table sizes derived from the cache's capacity, and their memory (no privileges)."""

from __future__ import annotations

import logging
import random

import pytest

from netflow_agent.plugins.ingest_ebpf.sizing import (
    AUTO_MEMORY_BYTES,
    AUTO_TOTAL_BYTES,
    MAX_AUTO_SLOTS,
    MEMORY_SHARE,
    MIN_AUTO_FLOWS,
    MIN_AUTO_SLOTS,
    cpu_slots_size,
    kernel_sizes,
    kernel_table_size,
    mem_total,
    possible_cpus,
    ring_capacity_packets,
    slot_memory,
    table_memory,
)

GiB = 1 << 30


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
        for ncpu in (1, 2, 3, 4, 6, 8, 16, 64, 256, 1024):
            table = kernel_table_size(0, 2_000_000, percpu, ncpu)
            for fields, precise in ((False, False), (False, True), (True, False)):
                slots = cpu_slots_size("auto", table, 2_000_000, percpu, ncpu, fields, precise)
                assert slots & (slots - 1) == 0
                # together at most twice the table, rounded up to a power of two per CPU
                # (up to twice that again on 3 or 6 CPUs)
                assert slots <= MAX_AUTO_SLOTS and slots * ncpu < 2 * (2 * table + ncpu)
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


def overflow_share(flows: int, slots: int, seed: int = 14) -> float:
    """Share of ``flows`` distinct new flows that find no slot in one CPU's ``slots``, placed
    as slot_probe() (bpf/flow.bpf.c) places them: a random 64-bit slot hash, home slot
    ``h & mask``, its tag the top byte of ``h`` times an odd constant (1-255), up to 8 probes
    within the home's group of 8 (one tag word) from the home on; a free slot (tag 0) is
    taken, a slot with another tag skipped, one with the same tag holds the flow only if its
    key is the flow's; all taken: the flow goes to the hash."""
    rnd, mask = random.Random(seed), slots - 1
    tags, keys = bytearray(slots), [0] * slots
    over = 0
    for flow in range(1, flows + 1):
        h = rnd.getrandbits(64)
        home, tag = h & mask, ((h * 0x9E3779B97F4A7C15) & (2**64 - 1)) >> 56 or 1
        for i in range(8):
            pos = (home & ~7) | ((home + i) & 7)
            if not tags[pos]:
                tags[pos], keys[pos] = tag, flow
                break
            if tags[pos] == tag and keys[pos] == flow:
                break
        else:
            over += 1
    return over / flows


def test_auto_slots_hold_a_drain_period_of_new_flows_on_2_cpus():
    """W3's flood of new flows reaches ~450k new flows in a drain period on the sender's CPU
    (1 s at ~0.9 Mpps, half the packets new flows). With 262,144 slots per CPU they filled
    and 190-424k flows a run went to the hash (its walk and insert: the program 206-272 ns
    per packet against 221-229 with 524,288, docs/performance.md, seventh stop). Placed as
    the program places them, 450k flows leave 9 % for the hash in the 524,288 slots "auto"
    gives 2 CPUs, 42 % in 262,144."""
    shared = kernel_table_size(0, 2_000_000, False, 2)
    slots = cpu_slots_size("auto", shared, 2_000_000, False, 2)
    assert slots == 524_288
    assert overflow_share(450_000, slots) < 0.10
    assert overflow_share(450_000, 262_144) > 0.40
    assert overflow_share(200_000, slots) < 0.01  # a lighter flood: 0.2 %


#: (CPUs, MemTotal) -> MiB of kernel memory of the derived hash tables and line slots
#: (shared map, the default cache): capped at 1/8 of the memory below 2.25 GB, else 288 MiB
MEMORY_TABLE = [
    (4, 1 * GiB, 108),  # a small router: 262,144 flows, 65,536 slots per CPU (282 uncapped)
    (2, 1 * GiB, 108),
    (1, GiB // 2, 54),
    (1, GiB // 4, 27),  # the floors: 65,536 flows, 65,536 slots
    (4, 2 * GiB, 217),
    (8, 4 * GiB, 282),
    (2, 24 * GiB, 282),  # this machine: as before the cap
    (4, 0, 282),  # MemTotal unknown: no cap
]


@pytest.mark.parametrize(("ncpu", "mem", "mib"), MEMORY_TABLE)
def test_auto_budget_is_a_share_of_the_host_memory(ncpu, mem, mib):
    sizes = kernel_sizes(0, "auto", 2_000_000, False, ncpu=ncpu, mem_bytes=mem)
    assert sizes.total_bytes >> 20 == mib
    if mem:
        assert sizes.total_bytes <= mem // MEMORY_SHARE and not sizes.over_share()


def test_the_cap_keeps_the_derived_sizes_within_the_share():
    for percpu in (False, True):
        for ncpu in (1, 2, 3, 4, 6, 8, 16):
            for mem in (GiB // 2, GiB, 2 * GiB, 3 * GiB, 16 * GiB):
                sizes = kernel_sizes(0, "auto", 2_000_000, percpu, ncpu=ncpu, mem_bytes=mem)
                if sizes.maxflows > MIN_AUTO_FLOWS and sizes.cpu_slots > MIN_AUTO_SLOTS:
                    assert sizes.total_bytes <= min(mem // MEMORY_SHARE, AUTO_TOTAL_BYTES)
                else:  # the floors, as before the cap (the start warns then)
                    assert sizes.over_share() or sizes.total_bytes <= mem // MEMORY_SHARE
    big = kernel_sizes(0, "auto", 2_000_000, False, ncpu=2, mem_bytes=24 * GiB)
    assert (big.maxflows, big.cpu_slots) == (524_288, 524_288)  # as without the cap


def test_explicit_sizes_are_kept_and_flagged_over_the_share():
    sizes = kernel_sizes(524_288, 262_144, 2_000_000, False, ncpu=4, mem_bytes=GiB)
    assert (sizes.maxflows, sizes.cpu_slots) == (524_288, 262_144)
    assert sizes.total_bytes >> 20 == 282 and sizes.over_share()
    assert "kernel tables 152 MiB" in sizes.describe()
    assert "slots 130 MiB (262144 per CPU on 4 CPUs)" in sizes.describe()


def test_mem_total_reads_meminfo(tmp_path):
    f = tmp_path / "meminfo"
    f.write_text("MemTotal:        1015812 kB\nMemFree:          123456 kB\n")
    assert mem_total(str(f)) == 1015812 * 1024
    assert mem_total(str(tmp_path / "missing"), str(tmp_path / "no-cgroup")) == 0
    assert mem_total("/proc/meminfo") > 0


def test_possible_cpus_reads_ranges(tmp_path):
    f = tmp_path / "possible"
    f.write_text("0-3,6,8-9\n")
    assert possible_cpus(str(f)) == 7
    assert possible_cpus(str(tmp_path / "missing")) == 1


def test_ring_capacity():
    assert ring_capacity_packets(0) == 0
    assert ring_capacity_packets(1) == 4096 // 80  # at least a page
    assert ring_capacity_packets(256) == 256 * 1024 // 80


def cgroup_tree(tmp_path, proc_line: str, files: dict[str, str], v2: str = "sys-fs-cgroup",
                v1: str = "sys-fs-cgroup/memory") -> tuple[str, str]:
    """A fake ``/proc/self/cgroup`` holding ``proc_line`` and a ``/proc/self/mountinfo`` that
    mounts cgroup2 at ``v2`` and the v1 memory controller at ``v1`` (under ``tmp_path``), with
    ``files`` (path under ``tmp_path/sys-fs-cgroup`` -> content): the paths :func:`mem_total`
    reads them from."""
    proc = tmp_path / "cgroup"
    proc.write_text(proc_line + "\n")
    root = tmp_path / "sys-fs-cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    mounts = tmp_path / "mountinfo"
    mounts.write_text(
        f"22 27 0:21 / /proc rw,relatime - proc proc rw\n"
        f"31 23 0:28 / {tmp_path}/sys-fs-cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        f"35 31 0:32 / {tmp_path}/{v1} rw,relatime shared:9 - cgroup cgroup rw,memory\n"
        f"40 31 0:37 / {tmp_path}/sys-fs-cgroup/systemd rw - cgroup cgroup rw,name=systemd\n"
        f"41 31 0:38 / {tmp_path}/{v2} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n")
    return str(proc), str(mounts)


def meminfo(tmp_path, kib: int) -> str:
    f = tmp_path / "meminfo"
    f.write_text(f"MemTotal:        {kib} kB\n")
    return str(f)


def test_a_v2_cgroup_limit_of_a_parent_caps_the_memory(tmp_path):
    """systemd's MemoryMax= on the slice, the service's own cgroup unlimited ("max")."""
    proc, root = cgroup_tree(tmp_path, "0::/system.slice/netflow-agent.service", {
        "system.slice/memory.max": f"{512 << 20}\n",
        "system.slice/netflow-agent.service/memory.max": "max\n",
    })
    assert mem_total(meminfo(tmp_path, 24 << 20), proc, root) == 512 << 20
    # and the derived sizes follow: 1/8 of 512 MiB
    sizes = kernel_sizes(0, "auto", 0, False, ncpu=2,
                         mem_bytes=mem_total(meminfo(tmp_path, 24 << 20), proc, root))
    assert sizes.total_bytes <= (512 << 20) // 8 and sizes.mem_bytes == 512 << 20


def test_unlimited_cgroups_leave_memtotal(tmp_path):
    proc, root = cgroup_tree(tmp_path, "0::/a/b", {"a/memory.max": "max\n",
                                                   "a/b/memory.max": "max\n"})
    assert mem_total(meminfo(tmp_path, 1 << 20), proc, root) == 1 << 30
    # a limit above the host's memory does not raise it
    proc, root = cgroup_tree(tmp_path, "0::/c", {"c/memory.max": f"{64 << 30}\n"})
    assert mem_total(meminfo(tmp_path, 1 << 20), proc, root) == 1 << 30


def test_a_v1_memory_controller_limit_caps_the_memory(tmp_path):
    proc, root = cgroup_tree(tmp_path, "4:memory:/docker/abc\n0::/", {
        "memory/docker/abc/memory.limit_in_bytes": f"{256 << 20}\n",
        "memory/memory.limit_in_bytes": "9223372036854771712\n",
    })
    assert mem_total(meminfo(tmp_path, 1 << 20), proc, root) == 256 << 20
    # v1's "unlimited" is no limit, not 8 EiB of memory, even with MemTotal unknown
    proc, root = cgroup_tree(tmp_path, "4:memory:/", {
        "memory/memory.limit_in_bytes": "9223372036854771712\n"})
    assert mem_total(str(tmp_path / "missing"), proc, root) == 0


def test_unreadable_meminfo_logs_and_keeps_the_cgroup_limit(tmp_path, caplog):
    proc, root = cgroup_tree(tmp_path, "0::/", {"memory.max": f"{2 << 30}\n"})
    with caplog.at_level(logging.DEBUG, logger="agent.ingest.ebpf"):
        assert mem_total(str(tmp_path / "missing"), proc, root) == 2 << 30
    assert "cannot read MemTotal" in caplog.text


def test_a_hybrid_hosts_cgroup2_is_found_from_mountinfo(tmp_path):
    """systemd's hybrid layout: cgroup2 at /sys/fs/cgroup/unified, not /sys/fs/cgroup."""
    proc, mounts = cgroup_tree(tmp_path, "0::/system.slice/a.service", {
        "unified/system.slice/memory.max": f"{512 << 20}\n",
        "system.slice/memory.max": f"{64 << 20}\n",  # not a cgroup2 file on this host
    }, v2="sys-fs-cgroup/unified")
    assert mem_total(meminfo(tmp_path, 24 << 20), proc, mounts) == 512 << 20


def test_the_v1_memory_controller_is_found_where_it_is_mounted(tmp_path):
    proc, mounts = cgroup_tree(tmp_path, "4:memory:/docker/abc", {
        "memory,cpu/docker/abc/memory.limit_in_bytes": f"{256 << 20}\n",
    }, v1="sys-fs-cgroup/memory,cpu")
    assert mem_total(meminfo(tmp_path, 1 << 20), proc, mounts) == 256 << 20


def test_without_mountinfo_the_usual_mount_points_are_read(tmp_path):
    proc, _ = cgroup_tree(tmp_path, "0::/a", {"a/memory.max": f"{300 << 20}\n"})
    root = str(tmp_path / "sys-fs-cgroup")
    assert mem_total(meminfo(tmp_path, 1 << 20), proc, str(tmp_path / "none"), root) == 300 << 20


def test_a_cgroup_outside_the_namespace_root_gives_no_limit(tmp_path):
    """/proc/self/cgroup says /../../b for a process outside its cgroup namespace's root: the
    visible root's memory.max is another cgroup's limit, not this process's."""
    proc, mounts = cgroup_tree(tmp_path, "0::/../../b", {"memory.max": f"{128 << 20}\n"})
    assert mem_total(meminfo(tmp_path, 1 << 20), proc, mounts) == 1 << 30
