"""Sizes of the eBPF ingest's kernel tables and overflow ring, and what they cost in memory.

Owns the arithmetic behind ``maxflows = 0`` (derive the kernel table from ``[cache] maxflows``
within :data:`AUTO_MEMORY_BYTES`) and the early-drain limits. Memory per flow entry was read
from ``bpftool map show`` (``bytes_memlock``) on kernel 6.18: a per-CPU hash entry costs
120 bytes plus 40 per possible CPU, a shared one 152; preallocated tables cost that for every
entry at load.
"""

from __future__ import annotations

from pathlib import Path

#: kernel table size when ``[cache] maxflows`` is unlimited (ipt_NETFLOW's default maxflows)
DEFAULT_FLOW_CAPACITY = 2_000_000
#: most flows a kernel table may hold (the config's maximum)
MAX_KERNEL_FLOWS = 2**24
#: memory the two kernel tables may take together when their size is derived (maxflows = 0)
AUTO_MEMORY_BYTES = 256 << 20
#: smallest derived table (the old fixed default)
MIN_AUTO_FLOWS = 65536
#: bytes one overflow-ring event takes: struct overflow_event + the ring's 8-byte header
RING_EVENT_BYTES = 72 + 8


def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    """CPUs the kernel may ever bring online (per-CPU maps have a value for each): "0-3,6"."""
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return 1
    count = 0
    for part in text.split(","):
        first, _, last = part.partition("-")
        count += int(last or first) - int(first) + 1
    return max(count, 1)


def entry_bytes(percpu: bool, ncpu: int) -> int:
    """Kernel memory of one flow-table entry (key, element, bucket, values)."""
    return 120 + 40 * ncpu if percpu else 152


def table_memory(maxflows: int, percpu: bool, ncpu: int) -> int:
    """Kernel memory of both tables of ``maxflows`` entries (preallocated: all of it at load)."""
    return 2 * maxflows * entry_bytes(percpu, ncpu)


def kernel_table_size(configured: int, flow_capacity: int, percpu: bool, ncpu: int) -> int:
    """The kernel flow table size: ``maxflows`` if set, else derived.

    Derived: the cache's flow capacity (the table never needs more flows than the cache keeps),
    at most what fits both tables in :data:`AUTO_MEMORY_BYTES` (rounded down to a power of two,
    the kernel's bucket count), at least :data:`MIN_AUTO_FLOWS`.

    :param configured: ``[[ingest.ebpf]] maxflows`` (0 = derive it).
    :param flow_capacity: :meth:`agent.runtime.RunContext.flow_capacity` (0 = unlimited or
        unknown).
    """
    if configured:
        return configured
    fits = AUTO_MEMORY_BYTES // (2 * entry_bytes(percpu, ncpu))
    power = 1 << (fits.bit_length() - 1)
    return min(flow_capacity or DEFAULT_FLOW_CAPACITY, max(power, MIN_AUTO_FLOWS),
               MAX_KERNEL_FLOWS)


def ring_capacity_packets(ring_kb: int) -> int:
    """Packets the overflow ring holds: its size is rounded up to a power of two, >= a page."""
    if not ring_kb:
        return 0
    size = 4096
    while size < ring_kb * 1024:
        size <<= 1
    return size // RING_EVENT_BYTES
