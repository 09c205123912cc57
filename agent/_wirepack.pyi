"""Type stub of the C extension ``agent/_wirepack.c`` (see its header for the contract)."""

from array import array
from typing import Any, TypeAlias

import numpy as np

#: any C-contiguous buffer (collections.abc.Buffer needs Python 3.12)
Buffer: TypeAlias = bytes | bytearray | memoryview | array[Any] | np.ndarray[Any, Any]

def pack_rows(records: Buffer, stride: int, ops: Buffer, out: Buffer | None, size: int,
              rows: Buffer | None = None, base_ms: int = 0, base_rest: int = 0) -> Any: ...
def classify(records: Buffer, stride: int, *, version: int, v6_exact: bool, next_hop: int,
             src_mask: int, dst_mask: int, protocol: int, packets: int, octets: int,
             start: int, end: int, v6_weight: int, routed_weight: int, icmp_weight: int
             ) -> tuple[bytes | None, tuple[int, ...], int, int, int, int]: ...
def frame(block: Buffer, start: int, body: int, count: int, head: bytes, seq_at: int,
          seq: int, seq_step: int, middle: bytes, tail: bytes, /) -> list[bytes]: ...
