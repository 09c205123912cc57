"""netflow_agent._flowindex.FlowIndex: the cache's C key -> slot index, against a dict model."""

from __future__ import annotations

import os
import subprocess
import sys
from array import array
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netflow_agent._flowindex import FlowIndex, siphash

KS = 44  # today's packed flow key (agent/model.py)


class Model:
    """What FlowIndex must do, in Python: a dict, lowest-free-slot reuse, numbering restarts
    when empty."""

    def __init__(self) -> None:
        self.slots: dict[bytes, int] = {}
        self.free: set[int] = set()
        self.high = 0

    def lookup(self, keys: list[bytes], insert: bool, limit: int) -> tuple[list[int], list[int]]:
        out, new = [], []
        for k in keys:
            slot = self.slots.get(k, -1)
            fresh = 0
            if slot < 0 and insert and not (limit and len(self.slots) >= limit):
                slot = min(self.free) if self.free else self.high
                self.free.discard(slot)
                self.high = max(self.high, slot + 1)
                self.slots[k] = slot
                fresh = 1
            out.append(slot)
            new.append(fresh)
        return out, new

    def remove(self, slots: list[int]) -> None:
        by_slot = {v: k for k, v in self.slots.items()}
        for s in set(slots):
            del self.slots[by_slot[s]]
            self.free.add(s)
        if not self.slots:
            self.free.clear()
            self.high = 0


def _keys(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n * KS, dtype=np.uint8).tobytes()


def _split(raw: bytes, ks: int = KS) -> list[bytes]:
    return [raw[i:i + ks] for i in range(0, len(raw), ks)]


def _lookup(index: FlowIndex, keys: list[bytes], **kw: object) -> tuple[list[int], list[int]]:
    slots, new = index.lookup(b"".join(keys), **kw)
    return list(slots), list(new)


# a small key alphabet so batches repeat keys and later batches find earlier ones
_KEY = st.sampled_from([bytes([i]) * 3 + bytes([j]) for i in range(6) for j in range(6)])
_OP = st.one_of(
    st.tuples(st.just("lookup"), st.lists(_KEY, max_size=40), st.booleans(),
              st.integers(0, 30)),
    st.tuples(st.just("remove"), st.lists(st.integers(0, 100), max_size=20)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_OP, max_size=30))
def test_matches_the_dict_model(ops: list[tuple]) -> None:
    """Every slot, new flag, length, slot_count and key equals the model's, op after op."""
    index, model = FlowIndex(4), Model()
    for op in ops:
        if op[0] == "lookup":
            _, keys, insert, limit = op
            assert _lookup(index, keys, insert=insert, limit=limit) == model.lookup(
                keys, insert, limit)
        else:
            used = sorted(model.slots.values())
            chosen = [used[i % len(used)] for i in op[1]] if used else []
            index.remove(array("q", chosen))
            model.remove(chosen)
        assert len(index) == len(model.slots)
        assert index.slot_count == model.high
        occupied = list(index.occupied())
        assert occupied == sorted(model.slots.values())
        assert _split(index.keys(array("q", occupied)), 4) == sorted(
            model.slots, key=model.slots.__getitem__)


def test_duplicates_in_a_batch_share_one_slot_and_are_new_once() -> None:
    index = FlowIndex(KS)
    a, b = _split(_keys(2))
    slots, new = _lookup(index, [a, b, a, a, b])
    assert slots == [0, 1, 0, 0, 1]
    assert new == [1, 1, 0, 0, 0]
    assert _lookup(index, [b, a]) == ([1, 0], [0, 0])
    assert len(index) == 2


def test_limit_refuses_new_keys_but_finds_present_ones() -> None:
    """maxflows: beyond the limit new keys get -1 and are not inserted."""
    index = FlowIndex(KS)
    keys = _split(_keys(5))
    slots, new = _lookup(index, keys[:3] + keys[:3], limit=2)
    assert slots == [0, 1, -1, 0, 1, -1]
    assert new == [1, 1, 0, 0, 0, 0]
    assert len(index) == 2
    assert _lookup(index, keys[3:], limit=3) == ([2, -1], [1, 0])


def test_lookup_without_insert_changes_nothing() -> None:
    index = FlowIndex(KS)
    keys = _split(_keys(3))
    _lookup(index, keys[:1])
    assert _lookup(index, keys, insert=False) == ([0, -1, -1], [0, 0, 0])
    assert len(index) == 1 and index.slot_count == 1


def test_removed_slots_are_reused_lowest_first() -> None:
    index = FlowIndex(KS)
    keys = _split(_keys(8))
    _lookup(index, keys[:6])
    index.remove(np.array([4, 1, 3], dtype=np.int64))
    assert len(index) == 3 and index.slot_count == 6
    assert list(index.occupied()) == [0, 2, 5]
    assert _lookup(index, keys[6:] + keys[1:2]) == ([1, 3, 4], [1, 1, 1])
    assert _lookup(index, keys[3:4]) == ([6], [1])  # no free slot below: the next one


def test_free_slots_far_apart_are_reused_lowest_first() -> None:
    """In a large index (free slots in many words of the in-use bitmap and of its summary),
    new keys take the freed slots in ascending order, then continue at slot_count."""
    n = 300_000
    index = FlowIndex(KS)
    index.lookup(_keys(n, seed=11))
    rng = np.random.default_rng(5)
    freed = np.sort(rng.choice(n - 1, 3000, replace=False)).astype(np.int64)
    index.remove(freed[::-1].copy())
    index.remove(freed[:0])
    fresh = _keys(2000, seed=12)
    first = np.frombuffer(index.lookup(fresh)[0], dtype=np.int64)
    assert np.array_equal(first, freed[:2000])
    held = next(i for i in range(n) if i not in set(freed.tolist()))  # a slot never freed
    index.remove(np.array([freed[5], held], dtype=np.int64))  # below the lowest free slot
    more = np.frombuffer(index.lookup(_keys(1005, seed=13))[0], dtype=np.int64)
    rest = freed[2000:].tolist()  # 1000 slots still free
    assert more.tolist() == sorted([int(freed[5]), held]) + rest + [n, n + 1, n + 2]
    assert len(index) == index.slot_count == n + 3


def test_occupied_with_a_limit_gives_the_lowest_slots() -> None:
    """A forced expiry takes the table out in steps: occupied(limit) is the lowest slots."""
    index = FlowIndex(KS)
    _lookup(index, _split(_keys(200)))
    index.remove(np.array([0, 3, 64, 65, 130], dtype=np.int64))
    everything = list(index.occupied())
    assert list(index.occupied(0)) == everything and len(everything) == 195
    assert list(index.occupied(4)) == [1, 2, 4, 5]
    assert list(index.occupied(70)) == everything[:70] and 66 in everything[:70]
    assert list(index.occupied(1000)) == everything
    with pytest.raises(ValueError):
        index.occupied(-1)


def test_occupied_from_a_start_slot() -> None:
    """occupied(limit, start): the lowest slots at or above ``start`` (a drain's next part),
    fewer when fewer are left."""
    index = FlowIndex(KS)
    _lookup(index, _split(_keys(200)))
    index.remove(np.array([3, 64, 65, 130], dtype=np.int64))
    assert list(index.occupied(3, start=2)) == [2, 4, 5]
    assert list(index.occupied(3, start=63)) == [63, 66, 67]
    assert list(index.occupied(0, start=197)) == [197, 198, 199]
    assert list(index.occupied(10, start=198)) == [198, 199]
    assert list(index.occupied(5, start=400)) == []
    with pytest.raises(ValueError, match="start: -1 is negative"):
        index.occupied(1, start=-1)


def test_take_keep_copies_the_keys_and_removes_nothing() -> None:
    index = FlowIndex(KS)
    raw = _split(_keys(5))
    _lookup(index, raw)
    rows = np.zeros(2, dtype=[("key", f"V{KS}"), ("packets", "u8")])
    index.take(np.array([4, 1], np.int64), rows, rows.itemsize, True)
    assert rows["key"].tolist() == [raw[4], raw[1]] and len(index) == 5
    assert _lookup(index, [raw[4], raw[1]], insert=False) == ([4, 1], [0, 0])
    with pytest.raises(ValueError, match="holds no key"):
        index.take(np.array([7], np.int64), rows, rows.itemsize, True)


def test_clear_takes_every_key_out_at_once() -> None:
    """clear() leaves the index as removing every slot would: no key found, numbering
    restarts at 0, the same keys inserted again get the same slots."""
    index = FlowIndex(KS)
    raw = _split(_keys(5000))
    first, _ = _lookup(index, raw)
    index.remove(np.array([17, 4000], np.int64))
    index.clear()
    assert len(index) == 0 and index.slot_count == 0 and list(index.occupied()) == []
    assert _lookup(index, raw[:3], insert=False) == ([-1] * 3, [0] * 3)
    assert _lookup(index, raw) == (first, [1] * 5000)
    index.clear()
    index.clear()  # an empty index too
    assert len(index) == 0


def _emptied(index: FlowIndex, raw: list[bytes], slots: np.ndarray) -> None:
    """``index`` after a take of every key: empty, numbering from 0, no key found, the same
    keys inserted again get slots 0.. in order."""
    assert len(index) == 0 and index.slot_count == 0 and list(index.occupied()) == []
    assert _lookup(index, raw[:50], insert=False) == ([-1] * 50, [0] * 50)
    assert _lookup(index, raw) == (list(range(len(raw))), [1] * len(raw))


@pytest.mark.parametrize("stride", [KS, 100])
def test_a_take_of_every_key_in_order_empties_the_index_as_one_by_one(stride: int) -> None:
    """A take naming every key, ascending (a timed scan that takes the whole table; the
    index clears at once) copies each key and leaves the index as removing them one at a
    time does; a remove() of every key too."""
    raw = _split(_keys(6000, seed=5))
    index, one_by_one = FlowIndex(KS), FlowIndex(KS)
    _lookup(index, raw)
    _lookup(one_by_one, raw)
    for part in (raw[:2000], raw[2000:2001]):  # holes: the taken slots are not 0..n-1
        slots, _ = _lookup(index, part, insert=False)
        index.remove(array("q", slots))
        one_by_one.remove(array("q", slots))
    every = np.frombuffer(index.occupied(), np.int64).copy()
    into = np.zeros(len(every) * stride, np.uint8)
    index.take(every, into, stride)
    rows = into.reshape(len(every), stride)[:, :KS]
    assert [bytes(r) for r in rows] == [raw[int(s)] for s in every]
    for slot in every[::-1]:  # descending, one per call: the key after key removal
        one_by_one.remove(array("q", [slot]))
    _emptied(index, raw, every)
    _emptied(one_by_one, raw, every)
    index.remove(np.frombuffer(index.occupied(), np.int64).copy())
    _emptied(index, raw, every)


@pytest.mark.parametrize("case", ["all but one", "descending", "a repeat", "few keys"])
def test_a_take_of_nearly_every_key_removes_exactly_those(case: str) -> None:
    """Slots that do not name every key once in ascending order (or too few keys for the
    buckets: a table that shrank) are removed key by key: the others stay found."""
    raw = _split(_keys(5000, seed=6))
    index = FlowIndex(KS)
    slots, _ = _lookup(index, raw)
    if case == "few keys":  # 5000 keys grew the buckets; 100 are left, all taken
        index.remove(array("q", slots[100:]))
        slots, raw = slots[:100], raw[:100]
    taken = {"all but one": slots[:-1], "descending": slots[::-1], "few keys": slots,
             "a repeat": [*slots[:-1], slots[-2]]}[case]
    into = np.zeros(len(taken) * KS, np.uint8)
    index.take(np.array(taken, np.int64), into)
    assert _split(into.tobytes()) == [raw[s] for s in taken]
    left = sorted(set(slots) - set(taken))
    assert list(index.occupied()) == left and len(index) == len(left)
    assert _lookup(index, raw, insert=False)[0] == [s if s in left else -1 for s in slots]


def test_a_removed_key_is_gone_and_others_stay_found() -> None:
    """Backward-shift deletion keeps every other key reachable, at any load."""
    index = FlowIndex(KS)
    keys = _split(_keys(5000, seed=3))
    slots, _ = _lookup(index, keys)
    gone = slots[::3]
    index.remove(array("q", gone))
    found, _ = _lookup(index, keys, insert=False)
    assert found == [-1 if i % 3 == 0 else s for i, s in enumerate(slots)]


def test_empty_index_restarts_numbering() -> None:
    index = FlowIndex(KS)
    keys = _split(_keys(3))
    _lookup(index, keys)
    index.remove(index.occupied())
    assert len(index) == 0 and index.slot_count == 0
    assert _lookup(index, keys[2:]) == ([0], [1])


def test_remove_is_all_or_nothing_and_once_per_slot() -> None:
    index = FlowIndex(KS)
    _lookup(index, _split(_keys(4)))
    with pytest.raises(ValueError, match=r"slots: slot 9 \(row 1\) holds no key"):
        index.remove(array("q", [0, 9]))
    assert len(index) == 4
    index.remove(array("q", [2, 2, 2]))
    assert list(index.occupied()) == [0, 1, 3]
    with pytest.raises(ValueError, match="slot 2 .* holds no key"):
        index.keys(array("q", [2]))


def test_take_copies_the_keys_into_a_buffer_and_removes_them() -> None:
    """take(slots, into) = keys(slots) written into a caller's buffer + remove(slots), in any
    order, a repeated slot copied each time and removed once."""
    index = FlowIndex(KS)
    raw = _keys(300)
    _lookup(index, _split(raw))
    slots = np.array([299, 5, 7, 5, 0], np.int64)
    into = np.zeros(len(slots) * KS, np.uint8)
    index.take(slots, into)
    assert into.tobytes() == b"".join(_split(raw)[s] for s in slots.tolist())
    assert len(index) == 296
    assert set(index.occupied().tolist()) == set(range(300)) - {0, 5, 7, 299}
    assert _lookup(index, [_split(raw)[8]], insert=False) == ([8], [0])
    index.take(np.array([1, 1], np.int64), into[:2 * KS])  # the last key: numbering restarts
    assert into[:2 * KS].tobytes() == _split(raw)[1] * 2


def test_take_with_a_stride_writes_each_key_into_its_row() -> None:
    """take(slots, records, itemsize): each key at the start of its row of a record array,
    the rest of the row untouched."""
    index = FlowIndex(KS)
    raw = _split(_keys(3))
    _lookup(index, raw)
    rows = np.full(2, 7, dtype=[("key", f"V{KS}"), ("packets", "u8")])
    index.take(np.array([2, 0], np.int64), rows, rows.itemsize)
    assert rows["key"].tolist() == [raw[2], raw[0]] and rows["packets"].tolist() == [7, 7]
    assert list(index.occupied()) == [1]


def test_take_is_all_or_nothing() -> None:
    index = FlowIndex(KS)
    _lookup(index, _split(_keys(4)))
    into = np.zeros(2 * KS, np.uint8)
    with pytest.raises(ValueError, match=r"slots: slot 9 \(row 1\) holds no key"):
        index.take(np.array([0, 9], np.int64), into)
    with pytest.raises(ValueError, match=f"into: {KS} bytes for 2 keys of {KS} bytes at a"):
        index.take(np.array([0, 1], np.int64), into[:KS])
    with pytest.raises(ValueError, match=f"stride: 4 is less than the key size {KS}"):
        index.take(np.array([0, 1], np.int64), into, 4)
    with pytest.raises((TypeError, BufferError)):
        index.take(np.array([0, 1], np.int64), bytes(2 * KS))  # read-only
    assert len(index) == 4 and not into.any()


def test_structured_array_key_column_is_a_key_buffer() -> None:
    """A batch's key column viewed as V<key_size> is exactly the packed keys."""
    batch = np.zeros(3, dtype=[("key", f"V{KS}"), ("packets", "u8")])
    raw = _keys(3)
    batch["key"] = np.frombuffer(raw, dtype=f"V{KS}")
    index = FlowIndex(KS)
    slots, new = index.lookup(np.ascontiguousarray(batch["key"]))
    assert np.frombuffer(slots, dtype=np.int64).tolist() == [0, 1, 2]
    assert np.frombuffer(new, dtype=np.uint8).sum() == 3
    assert index.keys(np.asarray(slots)) == raw


def test_growth_past_a_million_keys() -> None:
    """1M distinct keys in batches: all found again, distinct slots, keys round-trip, the
    load factor bounded, C memory within its documented worst case per flow (slot storage
    just grown by half: 1.5 x (44 + 4.1) B, plus 4-byte buckets at 35 % load: 11.4 B). The
    buckets' slot field widens on the way (slot + 1 needs 7 bits at first, 21 at the end)
    while keys are in the index: every key is still found."""
    n = 1_050_000
    raw = _keys(n, seed=7)
    index = FlowIndex(KS)
    step = 64 * 1024 * KS
    parts = [np.frombuffer(index.lookup(raw[i:i + step])[0], dtype=np.int64)
             for i in range(0, len(raw), step)]
    slots = np.concatenate(parts)
    distinct = len(set(_split(raw)))  # random 44-byte keys: no repeats expected, but exact
    assert len(index) == distinct == index.slot_count
    assert len(np.unique(slots)) == distinct
    again, new = index.lookup(raw, insert=False)
    assert np.array_equal(np.frombuffer(again, dtype=np.int64), slots)
    assert not any(new)
    assert index.keys(slots) == raw
    assert len(index) <= 0.7 * index.bucket_count
    assert index.memory_bytes() / len(index) < 1.5 * (KS + 4.13) + 4 / 0.35
    # at this size: 2**21 4-byte buckets (8 B per flow) and 64 x 1.5**24 = 1.08M slots of
    # 48.13 B (49.4 B per flow); 8-byte buckets and a per-slot heap entry made it 69.5 B
    assert index.bucket_count == 2**21
    assert index.memory_bytes() / len(index) < 58
    index.remove(slots[::2].copy())
    found = np.frombuffer(index.lookup(raw, insert=False)[0], dtype=np.int64)
    assert (found[::2] == -1).all() and np.array_equal(found[1::2], slots[1::2])


def _smaps_kb(field: str) -> int:
    text = Path("/proc/self/smaps_rollup").read_text()
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith(field))


def _thp_fallbacks() -> int:
    for line in Path("/proc/vmstat").read_text().splitlines():
        if line.startswith("thp_fault_fallback "):
            return int(line.split()[1])
    return 0


def test_a_large_index_faults_its_keys_in_as_huge_pages() -> None:
    """Where THP is available (``madvise`` or ``always``), the keys of an index past 16 MiB
    of them (~380k flows of 44-byte keys; here 24k of 1 KiB) fault in as transparent huge
    pages, 2 MiB at a time instead of 512 faults of 4 KiB (each ~2.4 us on a VM); RSS is
    what 4 KiB pages would take plus at most one partly filled huge page per array."""
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        pytest.skip("no transparent huge pages here")
    if "[never]" in mode:
        pytest.skip("transparent huge pages are off")
    ks, n = 1024, 24_000
    raw = _keys(n * ks // KS + 1, seed=3)[:n * ks]  # (its NumPy array is freed by now)
    index = FlowIndex(ks)
    huge, rss, fallbacks = _smaps_kb("AnonHugePages:"), _smaps_kb("Rss:"), _thp_fallbacks()
    for i in range(0, len(raw), 1024 * ks):
        index.lookup(raw[i:i + 1024 * ks])
    assert len(index) == n
    grown_huge, grown_rss = _smaps_kb("AnonHugePages:") - huge, _smaps_kb("Rss:") - rss
    if grown_huge < 8 << 10 and _thp_fallbacks() > fallbacks:
        pytest.skip("the kernel had no free huge page for some faults (fragmented memory)")
    assert grown_huge >= 8 << 10  # the keys' 2 MiB ranges from 16 to 24 MiB at least
    assert grown_rss * 1024 <= index.memory_bytes() + 2 * (2 << 20)
    assert index.keys(np.frombuffer(index.lookup(raw, insert=False)[0], np.int64)) == raw


_ADDRESS_SPACE_RUN = """
import os, resource, sys
from netflow_agent._flowindex import FlowIndex
ks, n = 44, 1_000_000
raw = os.urandom(ks * n)
size = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:"))
limit = (size + int(sys.argv[1]) * 1024) * 1024
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
index = FlowIndex(ks)
try:
    for i in range(0, len(raw), 4096 * ks):
        index.lookup(raw[i:i + 4096 * ks])
except MemoryError:
    pass
print(len(index))
"""


def test_a_million_keys_fit_the_address_space_they_need() -> None:
    """Under an address-space limit (the agent runs under ``prlimit --as``), 1M keys of 44
    bytes (57 MiB of C memory, ~62 MiB of address space at the peak of a growth) fit in
    75 MiB over the process's size: growing a block past 16 MiB must not need its old and
    new address space plus 2 MiB at once (that made MemoryError come at 716,800 keys)."""
    out = subprocess.run([sys.executable, "-c", _ADDRESS_SPACE_RUN, "75"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert int(out) == 1_000_000


_SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <sys/mman.h>
/* The kernel's mremap(MREMAP_FIXED) unmaps its destination, then can still fail (ENOMEM);
 * here another thread maps a page there in between. */
static int armed;
void *victim;
void arm(void) { armed = 1; }
void *mremap(void *old, size_t old_len, size_t new_len, int flags, ...)
{
    static void *(*real)(void *, size_t, size_t, int, ...);
    void *to = NULL;
    va_list ap;

    if (!real)
        real = (void *(*)(void *, size_t, size_t, int, ...))dlsym(RTLD_NEXT, "mremap");
    va_start(ap, flags);
    if (flags & MREMAP_FIXED)
        to = va_arg(ap, void *);
    va_end(ap);
    if (armed && (flags & MREMAP_FIXED)) {
        armed = 0;
        munmap(to, new_len);
        victim = mmap(to, 4096, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        errno = ENOMEM;
        return MAP_FAILED;
    }
    return real(old, old_len, new_len, flags, to);
}
"""

_RACE_RUN = """
import ctypes, sys
from netflow_agent._flowindex import FlowIndex
shim = ctypes.CDLL(sys.argv[1])
ks = 1024
keys = b"".join(i.to_bytes(8, "little") * (ks // 8) for i in range(22_000))
index = FlowIndex(ks)
index.lookup(keys[:12_000 * ks])  # 12 MiB of keys: below the 16 MiB of huge blocks
shim.arm()
try:
    index.lookup(keys[12_000 * ks:])  # grows the keys past 16 MiB: onto an aligned reservation
except MemoryError:
    pass
victim = ctypes.c_void_p.in_dll(shim, "victim").value
mapped = any(int(a, 16) <= victim < int(b, 16)
             for a, b in (line.split()[0].split("-") for line in open("/proc/self/maps")))
found = sum(s >= 0 for s in memoryview(index.lookup(keys, insert=False)[0]).cast("B").cast("q"))
print(hex(victim), mapped, len(index), found)
"""


def test_a_failed_move_onto_a_reservation_unmaps_no_other_mapping(tmp_path: Path) -> None:
    """A mremap(MREMAP_FIXED) that fails after the kernel unmapped its destination (here
    injected: an LD_PRELOAD shim, with a page of "another thread" mapped there meanwhile)
    leaves that page mapped, and the index grows anyway where the kernel puts it."""
    src, shim = tmp_path / "shim.c", tmp_path / "shim.so"
    src.write_text(_SHIM)
    try:
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(shim), str(src), "-ldl"],
                       check=True, capture_output=True, timeout=60)
    except OSError as exc:
        pytest.skip(f"no C compiler to build the shim: {exc}")
    env = {**os.environ, "LD_PRELOAD": str(shim)}
    out = subprocess.run([sys.executable, "-c", _RACE_RUN, str(shim)], env=env,
                         capture_output=True, text=True, timeout=120).stdout.split()
    assert out[0] != "0x0", "the shim never saw an aligned move"
    assert out[1:] == ["True", "22000", "22000"]


def test_clear_and_reuse_past_the_huge_buckets() -> None:
    """An index whose buckets are huge (2 MiB: 2**19 of them, over 183k flows) cleared and
    filled again: no key found after the clear, the same keys get the same slots again, and
    a third of them more keeps every key found."""
    raw = _keys(250_000, seed=11)
    index = FlowIndex(KS)
    first = index.lookup(raw[:200_000 * KS])[0]
    assert index.bucket_count >= 2**19
    index.clear()
    assert len(index) == 0 and index.slot_count == 0
    assert np.all(np.frombuffer(index.lookup(raw, insert=False)[0], np.int64) == -1)
    again, new = index.lookup(raw[:200_000 * KS])
    assert bytes(again) == bytes(first) and bytes(new).count(1) == 200_000
    slots, new = index.lookup(raw)
    assert bytes(new).count(1) == 50_000 and len(index) == 250_000
    assert index.keys(np.frombuffer(slots, np.int64)) == raw


def test_capacity_preallocates() -> None:
    small, big = FlowIndex(KS), FlowIndex(KS, capacity=100_000)
    assert big.bucket_count * 0.7 >= 100_000 > small.bucket_count
    assert big.memory_bytes() > 100_000 * KS
    assert len(big) == 0 and big.slot_count == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: FlowIndex(0), "key_size: 0"),
        (lambda: FlowIndex(KS, capacity=-1), "capacity: -1"),
        (lambda: FlowIndex(KS).lookup(b"x" * 45), "keys: buffer of 45 bytes"),
        (lambda: FlowIndex(KS).lookup(b"x" * KS, limit=-1), "limit: -1"),
        (lambda: FlowIndex(KS).remove(b"x" * 12), "slots: buffer of 12 bytes"),
        (lambda: FlowIndex(KS).remove(np.zeros(2, dtype=np.int32)), "slots: need int64"),
        (lambda: FlowIndex(KS).keys(array("q", [-1])), "slots: slot -1"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_non_contiguous_keys_are_refused() -> None:
    batch = np.zeros(2, dtype=[("key", f"V{KS}"), ("packets", "u8")])
    with pytest.raises((ValueError, BufferError), match="contiguous"):
        FlowIndex(KS).lookup(batch["key"])


def _siphash_in_new_process(data: bytes) -> int:
    code = f"from netflow_agent._flowindex import siphash; print(siphash({data!r}))"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout)


def test_hash_key_is_random_per_process() -> None:
    """Keys crafted to collide under one process's hash do not collide under another's."""
    key = bytes(range(KS))
    assert siphash(key) == siphash(key)
    assert len({siphash(key), _siphash_in_new_process(key), _siphash_in_new_process(key)}) == 3


def test_take_refuses_a_stride_that_would_wrap_and_an_output_over_its_slots():
    """Refused before anything leaves the index: a stride so large its product wraps (it
    once passed the size check), and an output buffer that overlaps the slot numbers."""
    idx = FlowIndex(8)
    slots, _new = idx.lookup(b"".join(i.to_bytes(8, "big") for i in range(3)))
    slots = np.frombuffer(slots, np.int64).copy()
    with pytest.raises(ValueError, match="stride"):
        idx.take(slots, bytearray(8), 2**63 - 1)
    shared = np.zeros(8, np.int64)
    shared[:3] = slots
    with pytest.raises(ValueError, match="overlaps"):
        idx.take(shared[:3], shared[2:].view(np.uint8))  # its first key over the last slot
    assert len(idx) == 3
