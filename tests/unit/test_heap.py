"""agent.heap: the forced scan's parts reuse heap blocks, and export the same bytes.

Each case runs ``tests.support.heapstop`` in a process of its own (``mallopt`` settings last
for the whole process).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from netflow_agent.libc import libc

ROOT = Path(__file__).resolve().parents[2]


def child(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "tests.support.heapstop", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


needs_mallinfo2 = pytest.mark.skipif(not hasattr(libc(), "mallinfo2"),
                                     reason="glibc before 2.33 (or not glibc): no mallinfo2")


@needs_mallinfo2
def test_part_sized_blocks_come_from_the_heap_only_during_the_reuse():
    # pinned: a 1 MiB array is its own mapping (RSS returns when freed); inside the forced
    # scan's window it is a heap block (reused by the next part); afterwards a mapping again,
    # also after a window left by an exception; unpinned (tests, library users) no change
    assert child("mallinfo") == {"unpinned_inside": True, "pinned": True, "inside": False,
                                 "after": True, "after_failure": True}


def test_a_stop_with_reused_part_buffers_exports_the_same_bytes():
    # 60k varied flows: 8 parts, each reusing the blocks the previous part freed (dirty, not
    # the zeroed pages of a fresh mapping); the datagrams must not change by one byte
    reused, plain = child("stop", "reuse", "60000"), child("stop", "plain", "60000")
    assert reused["exported"] == plain["exported"] == 60000
    assert reused["lost"] == plain["lost"] == 0
    assert reused["datagrams"] == reused["sent"] > 2000
    assert reused["windows"] == plain["windows"] == [False]  # the stop's, without a trim
    assert reused == plain


def test_a_timed_scan_of_many_slices_encodes_them_in_the_reuse_window():
    # a mass expiry (60k idle flows, 8 slices) in a timed scan: its slices reuse heap blocks
    # as the stop's parts do (one window, trimmed after, the ingests running meanwhile), and
    # the datagrams are the same bytes as without the reuse
    reused, plain = child("scan", "reuse", "60000"), child("scan", "plain", "60000")
    assert reused["exported"] == plain["exported"] == 60000
    assert reused["lost"] == plain["lost"] == 0
    assert reused["datagrams"] == reused["sent"] > 2000
    assert reused["windows"] == plain["windows"] == [True, False]  # the scan's, the stop's
    assert reused == plain
