"""The C library, loaded once, for the few calls Python has no wrapper for (``setns``,
``capget``/``capset``, ``prctl``, ``mallopt``, ``malloc_trim``).

``ctypes.CDLL`` is a dlopen plus symbol lookups on every call: an idle eBPF ingest that
rescanned interfaces in a namespace spent a quarter of its CPU there when each caller loaded
it anew. ``use_errno`` is on, so callers read failures with ``ctypes.get_errno()``.
"""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def libc() -> ctypes.CDLL:
    """The process's C library (``CDLL(None)``: the symbols already linked in)."""
    return ctypes.CDLL(None, use_errno=True)
