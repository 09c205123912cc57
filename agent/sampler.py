"""ipt_NETFLOW's flow sampler (``[cache] sampler``): which flows the cache keeps and exports.

RFC 7014 *flow* sampling, with ipt_NETFLOW's ``sampler=`` meaning:

* ``deterministic:N`` exports every N-th flow that expires (systematic count-based);
* ``random:N`` exports each expiring flow with probability 1/N (random n-out-of-N);
* ``hash:N`` keeps a flow only when the hash of its key selects it, decided per packet as it
  enters the cache, so unselected flows never take a slot (the cache hashes a whole batch at
  once in C: :func:`hash_select_rows`). The hash is fixed so that every
  agent of a fleet selects the same flows: CRC-32 (IEEE 802.3, as ``zlib.crc32``) over the
  packed key's IP version and protocol bytes followed by its ports and addresses (network
  order, 16 bytes each, IPv4 zero-padded; TOS, direction, interface and the optional
  ``[flow]`` fields are left out), selected when ``crc % N == 0``.

N is 2..16383 (the NetFlow v5 header's 14 bits, ipt_NETFLOW's limit). Packet and byte counters
of selected flows are exact; collectors scale by N from the announcement (the cache declares
the sampling through ``RunContext.declare_sampling``).
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field

import numpy as np

from netflow_agent._flowindex import hash_select
from netflow_agent.model import (
    SAMPLING_DETERMINISTIC,
    SAMPLING_HASH,
    SAMPLING_RANDOM,
    FlowBatch,
)

__all__ = ["FlowSampler", "INTERVAL_MAX", "INTERVAL_MIN", "hash_select_rows", "hash_selects",
           "key_ops", "parse_sampler"]

INTERVAL_MIN = 2
INTERVAL_MAX = 16383
#: sampler mode -> samplingAlgorithm value announced (v5 header mode bits, IE 35)
MODES = {"deterministic": SAMPLING_DETERMINISTIC, "random": SAMPLING_RANDOM,
         "hash": SAMPLING_HASH}



def parse_sampler(text: str) -> tuple[str, int] | None:
    """``"mode:N"`` -> ``(mode, N)``; ``""`` -> ``None`` (every flow).

    :raises ValueError: unknown mode, N not an integer in 2..16383.
    """
    if not text:
        return None
    mode, sep, number = text.partition(":")
    if mode not in MODES or not sep:
        raise ValueError(f"sampler {text!r}: expected \"deterministic:N\", \"random:N\" or "
                         f"\"hash:N\" (N {INTERVAL_MIN}..{INTERVAL_MAX}), or \"\" for none")
    try:
        interval = int(number)
    except ValueError:
        interval = 0
    if not INTERVAL_MIN <= interval <= INTERVAL_MAX:
        raise ValueError(f"sampler {text!r}: N must be an integer {INTERVAL_MIN}.."
                         f"{INTERVAL_MAX} (the NetFlow v5 header's 14 bits)")
    return mode, interval


def hash_selects(key: bytes, interval: int) -> bool:
    """Whether ``hash:interval`` keeps the flow with packed ``key`` (see the module doc)."""
    return zlib.crc32(key[8:44], zlib.crc32(key[:2])) % interval == 0


def hash_select_rows(rows: np.ndarray, ops: bytes, interval: int) -> np.ndarray:
    """:func:`hash_selects` of every row's key at once, in C (``agent/_flowindex.c``'s
    ``hash_select``, the same CRC-32): a bool per row of the C-contiguous array ``rows``,
    each row's key packed by ``ops`` (a :class:`~agent.stages.flowtable.RecordLayout`'s, or
    :func:`key_ops` for a packed key inside each row)."""
    return np.frombuffer(hash_select(rows, rows.dtype.itemsize, ops, interval), np.bool_)


def key_ops(offset: int, size: int) -> bytes:
    """The ``ops`` of :func:`hash_select_rows` for rows holding a packed key of ``size``
    bytes at byte ``offset`` (an array of packed keys: ``key_ops(0, key_size)``)."""
    return np.array([offset, 0, size, 0], np.uint32).tobytes()


@dataclass
class FlowSampler:
    """The sampler of one cache: hash selection per packet (the cache selects a batch's new
    keys with :func:`hash_select_rows`), count or random at export."""

    mode: str
    interval: int
    rng: random.Random = field(default_factory=random.Random)
    _count: int = 0

    @property
    def algorithm(self) -> int:
        """The samplingAlgorithm value announced for this mode."""
        return MODES[self.mode]

    def __str__(self) -> str:
        return f"{self.mode}:{self.interval}"

    def selects_key(self, key: bytes) -> bool:
        """Per-flow-delta check for the flow ingests: ``hash`` selection, else ``True``."""
        return self.mode != "hash" or hash_selects(key, self.interval)

    def select_batch(self, batch: FlowBatch) -> FlowBatch:
        """Deterministic/random selection of a batch of expired flows, by a mask (no object
        per flow); ``hash`` keeps them all (it decided on entry)."""
        n = len(batch)
        if self.mode == "hash" or not n:
            return batch
        if self.mode == "deterministic":  # every interval-th flow, counting across scans
            positions = np.arange(self._count + 1, self._count + n + 1)
            mask = positions % self.interval == 0
            self._count = (self._count + n) % self.interval
        else:
            mask = np.array([self.rng.randrange(self.interval) == 0 for _ in range(n)], bool)
        return FlowBatch(batch.source, batch.flows[mask], schema=batch.schema)
