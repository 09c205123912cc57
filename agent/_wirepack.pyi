"""Type stub of the C extension ``agent/_wirepack.c`` (see its header for the contract)."""

from array import array
from typing import Any, TypeAlias

import numpy as np

#: any C-contiguous buffer (collections.abc.Buffer needs Python 3.12)
Buffer: TypeAlias = bytes | bytearray | memoryview | array[Any] | np.ndarray[Any, Any]

def pack_rows(records: Buffer, stride: int, ops: Buffer, out: Buffer, size: int,
              rows: Buffer | None = None, base: int = 0) -> None: ...
def frame(block: Buffer, start: int, body: int, count: int, head: bytes, seq_at: int,
          seq: int, seq_step: int, middle: bytes, tail: bytes, /) -> list[bytes]: ...
