"""glibc's heap settings for the agent: its mmap threshold, and a reuse window for parts.

This module owns the agent's calls to ``mallopt(3)`` and ``malloc_trim(3)``:

* :func:`pin`: the agent pins ``M_MMAP_THRESHOLD`` at :data:`MMAP_THRESHOLD` (128 KiB,
  glibc's starting value, which glibc otherwise raises up to 32 MB as big blocks are freed):
  a flow table's columns and a drain's batches are then their own mappings and go back to
  the kernel when freed, so RSS follows the flows (docs/performance-history.md, "Flow cache"). It
  pins ``M_TRIM_THRESHOLD`` at :data:`TRIM_THRESHOLD` too: setting either stops glibc's
  dynamic adjustment, which would otherwise leave the trim threshold wherever glibc had
  raised it by then (twice the largest mapped block freed before the call).
* :func:`trim`: give the heap's free pages back (once started).
* :func:`reuse_parts`: while the stop's forced scan hands the whole table over in parts
  (``agent.loop.EXPORT_ROWS`` flows each), the threshold is
  raised to :data:`PART_MMAP_THRESHOLD` and freed heap is kept up to
  :data:`PART_TRIM_THRESHOLD`, so each part's arrays (the cache's rows, the encoders'
  copies and packed records, 0.1-1.2 MB each) reuse the blocks the previous part freed
  instead of being fresh mappings whose pages fault in and are unmapped again, part after
  part (a fifth of the stop's CPU). The heap then holds about one part's working set, the
  same memory the mappings held while a part was alive; afterwards the pinned settings
  return (and, unless the process is about to exit, the free heap is trimmed). The agent
  opens it for the stop's final scan (agent.loop), when the ingests have stopped, and,
  trimmed when it closes, around the export of a timed scan's slices when a scan exports
  more than one (a mass expiry), not for a cache hand-over. The threshold is process-wide:
  a block of 128 KiB-4 MiB another thread allocates inside the window is a heap block too,
  and one it frees after the trim stays in its heap until glibc trims there (at once when
  it lies at the top: the trim threshold is back at 128 KiB). The ingests' big buffers
  are allocated once and reused across batches (the eBPF ingest's pool of up to three
  drain-step arrays, kept across drains; the NFLOG decoder's row buffers, kept until
  the reader is idle), so that is rare; a step array beyond the pool (all three still
  queued) or a batch copied out of a short step is still allocated inside the window.
* :func:`faulted_in` / :func:`note_faulted_in`: inside that window, the address ranges
  whose pages were already faulted in (a part's rows populated by ``madvise``,
  agent/stages/cache.py): the next part's rows reuse the block the last part freed, and
  populating pages that are in costs as much as a fault each (~120 µs per 0.8 MB part,
  measured at the stop), for nothing. A range glibc gave back meanwhile (it trims only
  above :data:`PART_TRIM_THRESHOLD`) would merely fault in as it is written.

Nothing here acts unless :func:`pin` ran (the agent's ``run`` command): a library user or a
test keeps glibc's own heap behaviour.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from netflow_agent.libc import libc

#: mallopt(3) parameters
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
#: the agent's mmap threshold: blocks at least this large are their own mapping
MMAP_THRESHOLD = 128 << 10
#: the agent's trim threshold: glibc's starting value (free heap above it goes back)
TRIM_THRESHOLD = 128 << 10
#: during a forced scan: a part's arrays (at most ~1.2 MB at 8192 rows) come from the heap
PART_MMAP_THRESHOLD = 4 << 20
#: during a forced scan: free heap kept for the next part before glibc trims it
PART_TRIM_THRESHOLD = 8 << 20

_state = {"pinned": False}
#: inside :func:`reuse_parts`: (start, end) address ranges known to be faulted in
_faulted: list[tuple[int, int]] = []
#: most ranges remembered (a part's rows are one; a few blocks take turns at most)
_FAULTED_MAX = 8
#: open :func:`reuse_parts` windows (nested ones keep the outermost's settings)
_window = {"depth": 0}


def _mallopt(param: int, value: int) -> bool:
    try:
        return bool(libc().mallopt(param, value))
    except (OSError, AttributeError):  # not glibc
        return False


def pin() -> None:
    """Pin the mmap and trim thresholds at :data:`MMAP_THRESHOLD` and
    :data:`TRIM_THRESHOLD` (the agent's settings, what :func:`reuse_parts` restores)."""
    _state["pinned"] = (_mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                        and _mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def trim() -> None:
    """Give the heap's free pages back to the kernel."""
    try:
        libc().malloc_trim(0)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def reuse_parts(release: bool = True) -> Iterator[None]:
    """Inside: a forced scan's parts reuse heap blocks (see the module's docstring).

    Reentrant: a window opened inside another changes nothing and closes nothing (the
    outermost one restores the settings, with its ``release``).

    :param release: trim the free heap afterwards; ``False`` when the process exits next
        (the stop), where trimming would only cost CPU.
    """
    if not _state["pinned"]:
        yield
        return
    if _window["depth"]:  # nested: the outer window keeps the settings and the ranges
        _window["depth"] += 1
        try:
            yield
        finally:
            _window["depth"] -= 1
        return
    _mallopt(M_TRIM_THRESHOLD, PART_TRIM_THRESHOLD)
    _mallopt(M_MMAP_THRESHOLD, PART_MMAP_THRESHOLD)
    _faulted.clear()
    _window["depth"] = 1
    try:
        yield
    finally:
        _window["depth"] = 0
        _faulted.clear()
        _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        _mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        if release:
            trim()


def faulted_in(start: int, end: int) -> bool:
    """Whether the pages of ``[start, end)`` were faulted in earlier in this
    :func:`reuse_parts` window (always ``False`` outside one)."""
    return _window["depth"] > 0 and any(a <= start and end <= b for a, b in _faulted)


def note_faulted_in(start: int, end: int) -> None:
    """Remember that ``[start, end)`` is faulted in, for the rest of this :func:`reuse_parts`
    window (nothing outside one: there a part's rows are a fresh mapping each time)."""
    if _window["depth"]:
        if len(_faulted) >= _FAULTED_MAX:
            del _faulted[0]
        _faulted.append((start, end))
