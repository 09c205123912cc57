"""Seeded random layouts through the C record packer and row classifier, each against its
NumPy reference: ``_wirepack.pack_rows`` (copies, byte swaps, zeros; with and without row
numbers; into a new bytes object or a prefilled buffer) and ``wire.classify_rows``.

The layouts reach every loop of ``pack_rows``: 1- to 17-byte copies and swaps (its 1/2/4/8/
16-byte and any-length cases), up to 100 ops (past the 64 it compiles on the stack), records
past 512 bytes (where it stops tracking which bytes the ops cover and zeroes the whole
record), and records some of whose bytes no op writes (zeros in a new bytes object, left as
they were in ``out``).
"""

from __future__ import annotations

import numpy as np
import pytest

from netflow_agent import _wirepack, wire
from netflow_agent.schema import active

_COPY, _SWAP, _ZERO = 0, 1, 2


def random_layout(rng: np.random.Generator) -> tuple[int, int, np.ndarray]:
    """A row stride, a record size and 0-100 (src, dst, len, kind) ops inside both."""
    stride = int(rng.integers(17, 120))
    size = int(rng.choice([int(rng.integers(1, 80)), int(rng.integers(500, 700))]))
    nops = int(rng.choice([0, int(rng.integers(1, 12)), int(rng.integers(60, 101))]))
    ops = []
    for _ in range(nops):
        length = int(rng.integers(1, min(17, size) + 1))
        kind = int(rng.choice([_COPY, _SWAP, _ZERO]))
        ops.append((int(rng.integers(0, stride - length + 1)),
                    int(rng.integers(0, size - length + 1)), length, kind))
    return stride, size, np.array(ops, np.uint32).reshape(-1, 4)


def reference(records: np.ndarray, stride: int, ops: np.ndarray, size: int,
              rows: np.ndarray | None, prefill: np.ndarray | None) -> bytes:
    """What pack_rows writes, op by op over every record in NumPy."""
    table = records.reshape(-1, stride)
    picked = table if rows is None else table[rows]
    out = (np.zeros((len(picked), size), np.uint8) if prefill is None
           else prefill.reshape(len(picked), size).copy())
    for src, dst, length, kind in ops.tolist():
        if kind == _ZERO:
            out[:, dst:dst + length] = 0
        elif kind == _COPY:
            out[:, dst:dst + length] = picked[:, src:src + length]
        else:
            out[:, dst:dst + length] = picked[:, src:src + length][:, ::-1]
    return out.tobytes()


@pytest.mark.parametrize("seed", range(6))
def test_pack_rows_writes_numpys_records_for_random_layouts(seed):
    rng = np.random.default_rng(seed)
    reached_big = reached_many = False
    for _ in range(40):
        stride, size, ops = random_layout(rng)
        reached_big |= size > 512
        reached_many |= len(ops) > 64
        n = int(rng.integers(0, 150))
        records = rng.integers(0, 256, n * stride, np.uint8)
        rows = None
        if rng.random() < 0.5 and n:
            rows = rng.integers(0, n, int(rng.integers(0, 2 * n)), dtype=np.int64)
        m = n if rows is None else len(rows)
        got = _wirepack.pack_rows(records, stride, ops.tobytes(), None, size, rows)
        assert got == reference(records, stride, ops, size, rows, None), (stride, size)
        prefill = rng.integers(0, 256, m * size, np.uint8)
        out = prefill.copy()
        assert _wirepack.pack_rows(records, stride, ops.tobytes(), out, size, rows) is None
        assert out.tobytes() == reference(records, stride, ops, size, rows, prefill)
    assert reached_big and reached_many


def classify_input(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """Random rows of the active schema; ``kind`` narrows them (IPv6 only, one class)."""
    flows = active().empty(n)
    flows["ip_version"] = rng.choice([4, 6, 0, 5, 255], n)
    flows["protocol"] = rng.choice([1, 58, 6, 17, 47], n)
    hops = rng.integers(0, 256, (n, 16), np.uint8)
    hops[rng.random(n) < 0.6] = 0
    hops[rng.random(n) < 0.1, :15] = 0
    flows["next_hop"] = [bytes(h) for h in hops]
    flows["src_mask"] = np.where(rng.random(n) < 0.2, rng.integers(0, 129, n), 0)
    flows["dst_mask"] = np.where(rng.random(n) < 0.1, rng.integers(0, 129, n), 0)
    flows["packets"] = rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True)
    flows["octets"] = rng.integers(0, 2**40, n, dtype=np.uint64)
    int64 = np.iinfo(np.int64)
    flows["start_ns"] = np.where(rng.random(n) < 0.2, 0,
                                 rng.integers(int64.min, int64.max, n, endpoint=True))
    flows["end_ns"] = rng.integers(int64.min, int64.max, n, endpoint=True)
    if kind == "v6":
        flows["ip_version"] = 6
    elif kind == "one":
        flows["ip_version"], flows["protocol"] = 4, 6
        flows["next_hop"], flows["src_mask"], flows["dst_mask"] = bytes(16), 0, 0
    return flows


def same(got: wire.RowClasses, want: wire.RowClasses) -> None:
    assert (got.latest, got.earliest, got.lowest, got.largest) == (
        want.latest, want.earliest, want.lowest, want.largest)
    assert list(got.rows) == list(want.rows)
    for cls, rows in want.rows.items():
        mine = got.rows[cls]
        assert (mine is None) == (rows is None), cls
        if rows is not None:
            assert mine.tolist() == rows.tolist(), cls


WEIGHTS = [(0, 0, 0), (1, 0, 0), (1, 2, 0), (1, 2, 4), (4, 2, 1), (7, 0, 0), (0, 3, 4)]


@pytest.mark.parametrize("kind", ["mixed", "v6", "one", "empty"])
def test_classify_rows_in_c_is_numpys_for_random_rows(kind):
    rng = np.random.default_rng(["mixed", "v6", "one", "empty"].index(kind))
    for trial in range(25):
        n = 0 if kind == "empty" else int(rng.integers(1, 300))
        flows = classify_input(rng, n, kind)
        v6, routed, icmp = WEIGHTS[trial % len(WEIGHTS)]
        exact = bool(rng.random() < 0.5)
        want = wire._classify_numpy(flows, v6, routed, icmp, exact)
        same(wire.classify_rows(flows, v6=v6, routed=routed, icmp=icmp, v6_exact=exact), want)
        if n > 1:  # a strided view: NumPy's path, the C answer of its contiguous copy
            view = flows[::2]
            assert not view.flags.c_contiguous
            same(wire.classify_rows(view, v6=v6, routed=routed, icmp=icmp, v6_exact=exact),
                 wire.classify_rows(np.ascontiguousarray(view), v6=v6, routed=routed,
                                    icmp=icmp, v6_exact=exact))
