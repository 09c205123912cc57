"""``_nflog.Aggregator.serve``, the NFLOG reader's wait-read-pause loop in C: the pause after a
round that emptied the socket (``coalesce_ms``) carries over to the next call, a round that
stopped at its bound does not pause, the counts are live while a call runs, a change of the
effective UID ends the call before it reads, and a failed wait says so.

One end of a datagram socket pair stands in for the netlink socket (``serve`` only needs a
non-blocking socket); the datagrams are NFLOG messages as the kernel sends them.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
from typing import Any

import pytest

from netflow_agent.plugins.ingest_nflog.decoders import ServeResult
from tests.ingest_nflog.test_c_decoder import _ext, _sequenced
from tests.ingest_nflog.test_reader_buffers import _wait_until


def _serve(agg: Any, fd: int, timeout_ms: float = 5000, due_ms: float = 0,
           pause_ms: float = 0, hold: int = 1 << 20, max_datagrams: int = 64,
           euid: int = -1) -> ServeResult:
    return ServeResult(*agg.serve(fd, timeout_ms, due_ms, pause_ms, hold, max_datagrams,
                                  1 << 20, 65536, euid))


def test_the_pause_after_an_emptying_round_outlives_the_call(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """A round that makes the sums due ends the call at once, but the next read still waits
    ``pause_ms`` after it: calls that end before the pause has passed read nothing (their
    end comes first, so the caller sees its stop flag), the call after it reads."""
    reader, writer = pair
    agg = _ext().Aggregator()
    first, second = _sequenced(2, 4, lost=set())
    writer.send(first)
    due = _serve(agg, reader.fileno(), pause_ms=1000)  # due_ms 0: due after the read
    assert (due.datagrams, due.rounds, due.timed_out) == (1, 1, False)
    agg.take()
    writer.send(second)
    for _ in range(2):
        early = _serve(agg, reader.fileno(), timeout_ms=50, pause_ms=1000)
        assert (early.datagrams, early.rounds, early.timed_out) == (0, 0, False)
    late = _serve(agg, reader.fileno(), pause_ms=1000)
    assert (late.datagrams, late.rounds, late.packets) == (1, 1, 4)
    assert agg.seq_gaps == 0 and agg.pending == 4


def test_a_round_stopped_at_its_bound_does_not_pause(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """More waiting than a round reads: the next call reads the rest at once; only the round
    that emptied the socket makes the next read wait."""
    reader, writer = pair
    agg = _ext().Aggregator()
    for datagram in _sequenced(5, 2, lost=set()):
        writer.send(datagram)
    got = [_serve(agg, reader.fileno(), timeout_ms=50, pause_ms=1000, max_datagrams=2)
           for _ in range(4)]
    assert [(r.datagrams, r.full) for r in got] == [(2, True), (2, True), (1, False), (0, False)]
    assert agg.read_datagrams == 5 and agg.read_packets == 10 and agg.read_rounds == 3


def test_counts_are_live_while_serve_runs(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """``read_packets``/``read_datagrams``/``read_rounds`` follow each datagram while a call
    holds the sums (``agent stats`` mid-flood agrees with ``messages``), and match the
    call's own result when it returns."""
    reader, writer = pair
    agg = _ext().Aggregator()
    datagrams = _sequenced(6, 4, lost=set())  # a flow per packet
    results: list[ServeResult] = []
    serving = threading.Thread(target=lambda: results.append(
        _serve(agg, reader.fileno(), timeout_ms=30_000, due_ms=60_000, hold=21)))
    serving.start()
    try:
        for datagram in datagrams[:5]:
            writer.send(datagram)
        _wait_until(lambda: agg.read_packets == 20)
        assert serving.is_alive()  # 20 flows held, not due: the call still runs
        assert (agg.read_packets, agg.read_datagrams, agg.messages) == (20, 5, 20)
        assert 1 <= agg.read_rounds <= 5
    finally:
        writer.send(datagrams[5])  # 24 flows >= hold: the call returns
        serving.join(timeout=10)
    (got,) = results
    assert (got.datagrams, got.packets, got.rounds) == (6, 24, agg.read_rounds)
    assert (agg.read_datagrams, agg.read_packets, agg.read_enobufs, agg.read_cut) == (6, 24, 0, 0)


def test_serve_returns_before_reading_once_the_effective_uid_changed(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """``euid``: the UID the caller's thread last followed; another one means root was
    dropped since, so the call returns at the wakeup without reading (the thread then gives
    up root's capabilities before any packet is parsed)."""
    reader, writer = pair
    agg = _ext().Aggregator()
    writer.send(_sequenced(1, 3, lost=set())[0])
    moved = _serve(agg, reader.fileno(), euid=os.geteuid() + 1)
    assert moved.euid_changed and (moved.datagrams, moved.rounds, agg.messages) == (0, 0, 0)
    same = _serve(agg, reader.fileno(), euid=os.geteuid())
    assert not same.euid_changed and (same.datagrams, same.packets) == (1, 3)


_POLL_FAILS = """
import resource, socket
from netflow_agent.plugins.ingest_nflog import _nflog
reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
reader.setblocking(False)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (0, hard))  # ppoll: nfds > RLIMIT_NOFILE, EINVAL
got = _nflog.Aggregator().serve(reader.fileno(), 50, 0, 0, 1, 1, 1, 65536)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
print(got[5], got[9])
"""


def test_a_failed_wait_is_reported_as_the_poll_s() -> None:
    """A ppoll error comes back with its errno and ``poll_failed`` (the reader logs it as a
    poll error, not a receive error). In a child: the limit that makes ppoll fail would
    make this process's next open fail too."""
    _ext()
    out = subprocess.run([sys.executable, "-c", _POLL_FAILS], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    assert out == [str(errno.EINVAL), "1"]


def test_longest_probe_refuses_while_a_call_owns_the_table(
        pair: tuple[socket.socket, socket.socket]) -> None:
    """serve() (and feed) change the flow table with the GIL released, and a table that
    grows is reallocated: reading ``longest_probe`` meanwhile would walk freed memory, so it
    raises as take() does; once the call is back it reads again."""
    reader, writer = pair
    agg = _ext().Aggregator()
    datagrams = _sequenced(2, 4, lost=set())
    results: list[ServeResult] = []
    serving = threading.Thread(target=lambda: results.append(
        _serve(agg, reader.fileno(), timeout_ms=30_000, due_ms=60_000, hold=5)))
    serving.start()
    try:
        writer.send(datagrams[0])
        _wait_until(lambda: agg.read_packets == 4)
        assert serving.is_alive() and agg.read_packets == 4  # 4 flows held, the call runs
        with pytest.raises(RuntimeError, match="is running on this object"):
            _ = agg.longest_probe
    finally:
        writer.send(datagrams[1])  # flows >= hold: the call returns
        serving.join(timeout=10)
    assert results and not serving.is_alive()
    assert agg.longest_probe >= 0
