"""Type stub of the C extension ``agent/_udpsend.c`` (see its header for the contract)."""

from collections.abc import Sequence

#: datagrams per sendmmsg(2) call
CHUNK: int

def send_burst(fd: int, datagrams: Sequence[bytes | bytearray | memoryview], start: int, count: int,
               /) -> tuple[int, int]: ...
