"""The stop's parts skip populating a heap block the forced scan's window populated before
(agent.heap.faulted_in); a timed scan's parts, fresh mappings, are populated every time."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest

from netflow_agent import heap
from netflow_agent.stages import cache


@pytest.fixture
def madvise(monkeypatch):
    """The cache's madvise calls, counted; the heap as the agent pins it, without changing
    this process's malloc settings."""
    calls = mock.Mock(return_value=0)
    monkeypatch.setattr(cache, "libc", lambda: mock.Mock(madvise=calls))
    monkeypatch.setattr(heap, "_mallopt", lambda param, value: True)
    monkeypatch.setitem(heap._state, "pinned", True)
    return calls


def test_a_block_populated_in_the_window_is_not_populated_again(madvise):
    part = np.zeros(8192, [("x", "V100")])  # a part's rows: 0.8 MB
    inner = part[: len(part) // 2]  # the smaller last part in the same block
    with heap.reuse_parts(release=False):
        cache._populated(part)
        cache._populated(part)
        cache._populated(inner)
        assert madvise.call_count == 1
        other = np.zeros(8192, [("x", "V100")])
        cache._populated(other)  # another block: populated
        assert madvise.call_count == 2
    cache._populated(part)  # after the window (a timed scan): every time, as before
    cache._populated(part)
    assert madvise.call_count == 4
    with heap.reuse_parts(release=False):  # a new window knows nothing yet
        cache._populated(part)
        assert madvise.call_count == 5


def test_small_arrays_are_never_advised(madvise):
    with heap.reuse_parts(release=False):
        cache._populated(np.zeros(10, np.uint8))
    assert madvise.call_count == 0


def test_a_block_whose_advice_failed_is_advised_again(madvise):
    """A kernel without MADV_POPULATE_WRITE refuses it (-1): the block is not recorded as
    populated, so the next part asks again rather than trusting pages that are not in."""
    madvise.return_value = -1
    part = np.zeros(8192, [("x", "V100")])
    with heap.reuse_parts(release=False):
        cache._populated(part)
        cache._populated(part)
        assert madvise.call_count == 2


def test_a_nested_window_keeps_the_outer_one_open(madvise, monkeypatch):
    """reuse_parts inside reuse_parts: the inner one neither resets nor closes the outer
    window (its ranges stay known, the part settings stay until the outer one ends, one
    trim at its end), and the pinned settings return once."""
    settings = []
    monkeypatch.setattr(heap, "_mallopt", lambda param, value: settings.append(value) or True)
    trims = mock.Mock()
    monkeypatch.setattr(heap, "trim", trims)
    part = np.zeros(8192, [("x", "V100")])
    with heap.reuse_parts():
        cache._populated(part)
        with heap.reuse_parts():
            cache._populated(part)  # known from the outer window: not advised again
        assert heap.faulted_in(*_pages(part))  # the inner window's end closed nothing
        cache._populated(part)
        assert madvise.call_count == 1 and trims.call_count == 0
        assert settings == [heap.PART_TRIM_THRESHOLD, heap.PART_MMAP_THRESHOLD]
    assert not heap.faulted_in(*_pages(part))
    assert settings[2:] == [heap.MMAP_THRESHOLD, heap.TRIM_THRESHOLD]
    assert trims.call_count == 1


def _pages(a: np.ndarray) -> tuple[int, int]:
    return a.ctypes.data, a.ctypes.data + a.nbytes
