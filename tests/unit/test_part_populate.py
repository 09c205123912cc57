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
    calls = mock.Mock()
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
