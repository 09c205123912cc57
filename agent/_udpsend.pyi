"""Type stub of the C extension ``agent/_udpsend.c`` (see its header for the contract)."""

from collections.abc import Sequence

#: messages per sendmmsg(2) call
CHUNK: int
#: most datagrams (segments) in one UDP GSO send
GSO_SEGMENTS: int
#: most payload bytes in one UDP GSO send
GSO_BYTES: int

def send_burst(fd: int, datagrams: Sequence[bytes | bytearray | memoryview], start: int, count: int,
               gso_max: int = 0, /) -> tuple[int, int, int]: ...
