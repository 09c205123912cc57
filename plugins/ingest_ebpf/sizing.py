"""Sizes of the eBPF ingest's kernel tables, per-CPU slots and overflow ring, and their memory.

Owns the arithmetic behind ``maxflows = 0`` (derive the kernel table from ``[cache] maxflows``
within :data:`AUTO_MEMORY_BYTES`), behind ``cpu_slots = "auto"`` (the per-CPU slots take what
the hash tables leave of :data:`AUTO_TOTAL_BYTES`), both within :data:`MEMORY_SHARE` of the
memory this process may use (the host's, or its memory cgroup's limit), and the early-drain
limits. Memory per
flow entry was read from ``bpftool map show`` (``bytes_memlock``) on kernel 6.18: a per-CPU
hash entry costs 120 bytes plus 40 per possible CPU, a shared one 152; preallocated tables
cost that for every entry at load.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("agent.ingest.ebpf")

#: kernel table size when ``[cache] maxflows`` is unlimited (ipt_NETFLOW's default maxflows)
DEFAULT_FLOW_CAPACITY = 2_000_000
#: most flows a kernel table may hold (the config's maximum)
MAX_KERNEL_FLOWS = 2**24
#: memory the two kernel tables may take together when their size is derived (maxflows = 0)
AUTO_MEMORY_BYTES = 256 << 20
#: memory the derived hash tables and per-CPU slots (``cpu_slots = "auto"``) take together:
#: on 2 CPUs the 152 MiB of hash tables leave the slots 136 MiB, 524,288 line slots per CPU,
#: enough for a drain period of a flood of new flows at the sender's top rate (~450k new flows
#: per second on one CPU; docs/performance.md, "issue 14, seventh stop")
AUTO_TOTAL_BYTES = 288 << 20
#: the derived hash tables and slots take together at most 1/MEMORY_SHARE of the memory
#: available to the agent (``MemTotal`` or its cgroup's limit): ipt_NETFLOW and conntrack
#: size their hash from RAM too. The kernel memory of BPF maps is never swapped, so on a 1 GB
#: router the full 288 MiB would be over a quarter of it; hosts with 2.25 GB or more keep the
#: full budget
MEMORY_SHARE = 8
#: smallest derived table (the old fixed default)
MIN_AUTO_FLOWS = 65536
#: bytes of one per-CPU slot (bpf/flow.h ``flow_slot_size()``): one cache line by default
#: (``struct flow_slot_line``: the base key, 32-bit counters and times), the metrics and the
#: base key with ``timestamps = "precise"``, the whole key with ``[flow]`` optional key fields
SLOT_LINE_BYTES, SLOT_BYTES, SLOT_EXT_BYTES = 64, 88, 152
#: bytes of one slot's tag (maps ``tags_a``/``tags_b``, bpf/maps.h)
TAG_BYTES = 1
#: most per-CPU slots ``cpu_slots = "auto"`` gives a CPU (32 MiB per table and CPU with
#: line slots, 44 MiB with precise timestamps)
MAX_AUTO_SLOTS = 524288
#: fewest derived per-CPU slots: the fixed default before "auto" (what hosts with so many
#: CPUs that the budget leaves less still get, as they did)
MIN_AUTO_SLOTS = 4096
#: cgroup v1 shows "no limit" as the largest page count in bytes (9223372036854771712 with
#: 4 KiB pages): limits from here up are none
V1_UNLIMITED = 1 << 62
#: where cgroups are mounted when ``/proc/self/mountinfo`` does not say
CGROUP_ROOT = "/sys/fs/cgroup"
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


def mem_total(path: str = "/proc/meminfo", proc_cgroup: str = "/proc/self/cgroup",
              mountinfo: str = "/proc/self/mountinfo", cgroup_root: str = CGROUP_ROOT) -> int:
    """The memory this process may use in bytes: the host's (``MemTotal``), or less when its
    memory cgroup is limited (:func:`cgroup_memory_limit`: a container, systemd's
    ``MemoryMax=``; kernels >= 5.11 charge BPF maps to the cgroup, and older ones are capped by
    it too, conservatively); 0 when unknown (no cap)."""
    host = 0
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    host = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError) as exc:
        log.debug("cannot read MemTotal from %s (%s): the sizes are not capped by it", path,
                  exc)
    limit = cgroup_memory_limit(proc_cgroup, mountinfo, cgroup_root)
    return min([n for n in (host, limit) if n], default=0)


def cgroup_memory_limit(proc_cgroup: str = "/proc/self/cgroup",
                        mountinfo: str = "/proc/self/mountinfo",
                        cgroup_root: str = CGROUP_ROOT) -> int:
    """The tightest memory limit of this process's cgroup and its parents in bytes, 0 = none.

    cgroup v2 (``0::/path`` in ``proc_cgroup``): ``memory.max`` of each (``max`` = unlimited)
    under the cgroup2 mount; v1 (the ``memory`` controller's line): ``memory.limit_in_bytes``
    under that controller's mount. The mounts come from ``mountinfo`` (a hybrid host has
    cgroup2 at ``/sys/fs/cgroup/unified``), else ``cgroup_root`` and its ``memory/``. A cgroup
    whose file is not visible (not mounted) is skipped, and a line whose path leads outside
    this cgroup namespace (``/../..``) gives no limit: none of the visible cgroups holds this
    process.
    """
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return 0
    v2, v1 = cgroup_mounts(mountinfo)
    limits = []
    for line in lines:
        _, controllers, rel = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":
            base, name = Path(v2 or cgroup_root), "memory.max"
        elif "memory" in controllers.split(","):
            base, name = Path(v1 or f"{cgroup_root}/memory"), "memory.limit_in_bytes"
        else:
            continue
        limits += [n for d in _cgroup_and_parents(base, rel) if (n := _read_limit(d / name))]
    return min(limits, default=0)


def cgroup_mounts(mountinfo: str = "/proc/self/mountinfo") -> tuple[str, str]:
    """Where the cgroup2 hierarchy and the v1 ``memory`` controller are mounted ("" = not
    found, or ``mountinfo`` unreadable), from ``/proc/self/mountinfo``'s lines: ``ID PARENT
    DEV ROOT MOUNTPOINT OPTIONS... - FSTYPE SOURCE SUPEROPTIONS``."""
    v2 = v1 = ""
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return v2, v1
    for line in lines:
        fields, _, tail = line.partition(" - ")
        before, after = fields.split(" "), tail.split(" ")
        if len(before) < 5 or len(after) < 3:
            continue
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), before[4])  # \040: " "
        fstype, options = after[0], after[2]
        if fstype == "cgroup2" and not v2:
            v2 = point
        elif fstype == "cgroup" and "memory" in options.split(",") and not v1:
            v1 = point
    return v2, v1


def _cgroup_and_parents(base: Path, rel: str) -> list[Path]:
    """The directories of cgroup ``rel`` under ``base`` and of its parents up to ``base``;
    none when ``rel`` leads outside it (a cgroup beyond this namespace's root, whose limits
    are not visible here)."""
    parts = [p for p in rel.split("/") if p]
    if ".." in parts:
        return []
    return [base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1)]


def _read_limit(path: Path) -> int:
    """A cgroup memory limit file's bytes, 0 for none (``max``, v1's "unlimited" near 2^63,
    absent, unreadable)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return 0
    limit = int(text) if text.isdigit() else 0
    return limit if limit < V1_UNLIMITED else 0


def auto_budget(mem_bytes: int) -> int:
    """Memory the derived hash tables and slots take together: :data:`AUTO_TOTAL_BYTES`, at
    most ``mem_bytes`` / :data:`MEMORY_SHARE` (``mem_bytes`` 0 = unknown: no cap)."""
    if not mem_bytes:
        return AUTO_TOTAL_BYTES
    return min(AUTO_TOTAL_BYTES, mem_bytes // MEMORY_SHARE)


def entry_bytes(percpu: bool, ncpu: int) -> int:
    """Kernel memory of one flow-table entry (key, element, bucket, values)."""
    return 120 + 40 * ncpu if percpu else 152


def table_memory(maxflows: int, percpu: bool, ncpu: int) -> int:
    """Kernel memory of both tables of ``maxflows`` entries (preallocated: all of it at load)."""
    return 2 * maxflows * entry_bytes(percpu, ncpu)


def kernel_table_size(configured: int, flow_capacity: int, percpu: bool, ncpu: int,
                      mem_bytes: int = 0) -> int:
    """The kernel flow table size: ``maxflows`` if set, else derived.

    Derived: the cache's flow capacity (the table never needs more flows than the cache keeps),
    at most what fits both tables in :data:`AUTO_MEMORY_BYTES` (rounded down to a power of two,
    the kernel's bucket count), at least :data:`MIN_AUTO_FLOWS`. On a host whose memory caps
    the budget (:func:`auto_budget`) the hash keeps its share of it (256/288).

    :param configured: ``[[ingest.ebpf]] maxflows`` (0 = derive it).
    :param flow_capacity: :meth:`agent.runtime.RunContext.flow_capacity` (0 = unlimited or
        unknown).
    :param mem_bytes: the memory available to the agent (``MemTotal`` or its cgroup's
        limit: :func:`mem_total`; 0 = unknown, no cap).
    """
    if configured:
        return configured
    budget = AUTO_MEMORY_BYTES * auto_budget(mem_bytes) // AUTO_TOTAL_BYTES
    fits = budget // (2 * entry_bytes(percpu, ncpu))
    power = 1 << (fits.bit_length() - 1)
    return min(flow_capacity or DEFAULT_FLOW_CAPACITY, max(power, MIN_AUTO_FLOWS),
               MAX_KERNEL_FLOWS)


def slot_bytes(key_fields: bool, precise: bool = False) -> int:
    """Bytes of one slot and its tag: :data:`SLOT_EXT_BYTES` with ``[flow]`` key fields in
    the kernel key, :data:`SLOT_BYTES` with precise timestamps, else :data:`SLOT_LINE_BYTES`,
    plus :data:`TAG_BYTES`."""
    size = SLOT_EXT_BYTES if key_fields else SLOT_BYTES if precise else SLOT_LINE_BYTES
    return size + TAG_BYTES


def slot_memory(slots: int, ncpu: int, key_fields: bool = False, precise: bool = False) -> int:
    """Kernel memory of both slot arrays and their tags: ``slots`` entries per possible CPU
    each."""
    return 2 * slots * ncpu * slot_bytes(key_fields, precise)


def cpu_slots_size(configured: int | str, maxflows: int, flow_capacity: int, percpu: bool,
                   ncpu: int, key_fields: bool = False, precise: bool = False,
                   mem_bytes: int = 0) -> int:
    """The per-CPU slots: ``cpu_slots`` if a number, else (``"auto"``) derived.

    Derived: what the two hash tables of ``maxflows`` leave of :data:`AUTO_TOTAL_BYTES` (less
    on a host with under 2.25 GB: :func:`auto_budget`),
    split over both slot arrays and the possible CPUs, rounded down to a power of two, at
    least :data:`MIN_AUTO_SLOTS` (the old fixed default, for hosts with so many CPUs that the
    budget leaves less) and at most :data:`MAX_AUTO_SLOTS`; then, lower still if need be, all
    CPUs together at most twice the smaller of the cache's flow capacity and ``maxflows``
    (per CPU rounded up to a power of two: up to twice that again on, say, 6 CPUs), so a
    small cache or kernel table keeps the slots small too. On 2 CPUs with the default cache and the
    shared map: 524,288 per CPU, 130 MiB with their tags beside the 152 MiB of the hash tables
    (262,144 with precise timestamps: 88-byte slots, 89 MiB; 131,072 with ``[flow]`` key
    fields: 152-byte slots); 16,384 on 64 CPUs.

    :param configured: ``[[ingest.ebpf]] cpu_slots`` (``"auto"`` = derive it).
    :param maxflows: the hash table size in use (:func:`kernel_table_size`).
    :param key_fields: the kernel key holds ``[flow]`` optional fields (whole-key slots).
    :param precise: ``timestamps = "precise"`` (88-byte slots with 64-bit times).
    :param mem_bytes: the memory available to the agent (``MemTotal`` or its cgroup's
        limit: :func:`mem_total`; 0 = unknown, no cap).
    """
    if isinstance(configured, int):
        return configured
    left = auto_budget(mem_bytes) - table_memory(maxflows, percpu, ncpu)
    fits = max(left // (2 * ncpu * slot_bytes(key_fields, precise)), MIN_AUTO_SLOTS)
    flows = min(flow_capacity or maxflows, maxflows)
    cap = min(MAX_AUTO_SLOTS, _power_above(max(-(-2 * flows // ncpu), 1)))
    return min(1 << (fits.bit_length() - 1), cap)


def _power_above(n: int) -> int:
    """The smallest power of two >= ``n`` (``n`` >= 1)."""
    return 1 << (n - 1).bit_length()


def ring_capacity_packets(ring_kb: int) -> int:
    """Packets the overflow ring holds: its size is rounded up to a power of two, >= a page."""
    if not ring_kb:
        return 0
    size = 4096
    while size < ring_kb * 1024:
        size <<= 1
    return size // RING_EVENT_BYTES


@dataclass(frozen=True)
class KernelSizes:
    """The kernel tables an ``[[ingest.ebpf]]`` instance creates on this host, and their
    memory: what the start log line, ``agent stats`` (``kernel_memory_bytes``), ``--dry-run``
    and a failed map creation say."""

    maxflows: int
    cpu_slots: int
    ncpu: int
    table_bytes: int
    slot_bytes: int
    #: :func:`auto_budget` of this host: the derived sizes stay within it
    budget_bytes: int
    #: the memory available to the agent (``MemTotal`` or its cgroup's limit; 0 = unknown)
    mem_bytes: int

    @property
    def total_bytes(self) -> int:
        """Kernel memory of the hash tables and slots together."""
        return self.table_bytes + self.slot_bytes

    def describe(self) -> str:
        """``kernel tables X MiB + slots Y MiB (N per CPU on C CPUs)``."""
        return (f"kernel tables {self.table_bytes >> 20} MiB ({self.maxflows} flows each) "
                f"+ slots {self.slot_bytes >> 20} MiB ({self.cpu_slots} per CPU on "
                f"{self.ncpu} CPUs)")

    def over_share(self) -> bool:
        """The tables take more than 1/:data:`MEMORY_SHARE` of the memory available to the
        agent (``MemTotal`` or its cgroup's limit)."""
        return bool(self.mem_bytes) and self.total_bytes > self.mem_bytes // MEMORY_SHARE


def kernel_sizes(maxflows: int, cpu_slots: int | str, flow_capacity: int, percpu: bool,
                 key_fields: bool = False, precise: bool = False, ncpu: int = 0,
                 mem_bytes: int = -1) -> KernelSizes:
    """The sizes :func:`kernel_table_size` and :func:`cpu_slots_size` derive from the
    configured ``maxflows`` and ``cpu_slots``, with their memory.

    :param ncpu: possible CPUs (0 = this host's, :func:`possible_cpus`).
    :param mem_bytes: the memory available to the agent (``MemTotal`` or its cgroup's
        limit; -1 = read it, :func:`mem_total`; 0 = unknown).
    """
    ncpu = ncpu or possible_cpus()
    mem_bytes = mem_total() if mem_bytes < 0 else mem_bytes
    flows = kernel_table_size(maxflows, flow_capacity, percpu, ncpu, mem_bytes)
    slots = cpu_slots_size(cpu_slots, flows, flow_capacity, percpu, ncpu, key_fields, precise,
                           mem_bytes)
    return KernelSizes(flows, slots, ncpu, table_memory(flows, percpu, ncpu),
                       slot_memory(slots, ncpu, key_fields, precise), auto_budget(mem_bytes),
                       mem_bytes)
