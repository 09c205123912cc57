"""Type stub of the C extension ``agent/_udpsend.c`` (see its header for the contract)."""

from collections.abc import Sequence

from typing_extensions import Buffer

#: messages per sendmmsg(2) call
CHUNK: int
#: most datagrams (segments) in one UDP GSO send
GSO_SEGMENTS: int
#: most payload bytes in one UDP GSO send
GSO_BYTES: int

def send_burst(fd: int, datagrams: Sequence[bytes | bytearray | memoryview], start: int, count: int,
               gso_max: int = 0, /) -> tuple[int, int, int]: ...

#: send_paced's state: a buffer of PACE_STATE doubles, one index per field
PACE_STATE: int
#: the token bucket: tokens now, when counted (CLOCK_MONOTONIC s), per second, most saved
PACE_TOKENS: int
PACE_STAMP: int
PACE_RATE: int
PACE_BURST: int
#: tokens a wake-up waits for
PACE_WANT: int
#: closing: > 0, stop at this CLOCK_MONOTONIC time (the caller may set it while a call runs)
PACE_DEADLINE: int
#: out: datagrams sent (added to), bursts sent (added to), send-queue fill last and largest
PACE_DONE: int
PACE_BURSTS: int
PACE_FILLED: int
PACE_PEAK: int

def send_paced(fd: int, datagrams: Sequence[bytes | bytearray | memoryview], start: int,
               count: int, gso_max: int, state: Buffer, /) -> tuple[int, int, int, int]: ...
