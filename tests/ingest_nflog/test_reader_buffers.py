"""The NFLOG group reader thread with the C decoder: row buffers, batches, exact counts.

The reader thread (``GroupReader``) reads one end of a socket pair here instead of a netlink
socket. Datagrams of NFLOG messages arrive every 15 ms with ``batch_ms = 50``, so the sums
are held and most batches go on because their time ran out while no datagram was waiting,
the path a moderate, bursty rate takes. Each batch is dropped by the consumer at once, so
its buffer is free for the next take: the reader must reuse it, not give its buffers back
as if the socket had been idle for a whole poll (which made every batch a fresh mapping).
The reader's waits and reads run in C until a batch is due (``Aggregator.serve``): many
wakeups per batch, and every packet and sequence gap of them in its batches.
"""

from __future__ import annotations

import errno
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from netflow_agent.model import FlowBatch, PacketBatch
from netflow_agent.plugins.ingest_nflog import component
from netflow_agent.plugins.ingest_nflog.component import GroupReader
from netflow_agent.plugins.ingest_nflog.config import Config
from netflow_agent.plugins.ingest_nflog.decoders import ServeResult
from tests.ingest_nflog.test_c_decoder import _many_flows, _sequenced

DATAGRAMS = 30


class _PairSocket:
    """What the reader uses of an ``NflogSocket``, over one end of a datagram socket pair."""

    group = 7

    def __init__(self, sock: socket.socket):
        self.sock = sock

    def unbind_request(self) -> None:  # no netlink here: the reader skips its stop drain
        raise OSError(errno.ENOTCONN, "a socket pair, not NETLINK_NETFILTER")

    def overruns(self) -> int:  # the kernel's drops for this socket: none on a pair
        return 0

    @property
    def rcvbuf(self) -> int:
        return self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    def close(self) -> None:
        self.sock.close()


def _group_reader(ours: socket.socket, batch_ms: int, coalesce_ms: int,
                  decoder: str = "c") -> GroupReader:
    """A reader of ``ours`` (not started)."""
    config = SimpleNamespace(decoder=decoder, decapsulate=(), keep_outer=False,
                             batch_ms=batch_ms, coalesce_ms=coalesce_ms, snaplen=0)
    owner = SimpleNamespace(config=config, fragments=None, name="ingest.nflog[0]",
                            log=logging.getLogger("test_reader_buffers"))
    return GroupReader(owner, _PairSocket(ours), [])


def _reader(ours: socket.socket, batch_ms: int, coalesce_ms: int,
            emit: Callable[[Any], None], decoder: str = "c") -> GroupReader:
    """A started reader of ``ours`` handing its batches to ``emit``."""
    reader = _group_reader(ours, batch_ms, coalesce_ms, decoder)
    reader.start(SimpleNamespace(emit=emit, wait_for_room=lambda limit: None))
    return reader


def _wait_until(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 10
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_batches_sent_on_the_timer_reuse_the_row_buffers() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    flows: list[int] = []  # the consumer keeps only the count: the batch is freed at once
    reader = _reader(ours, 50, 0, lambda batch: flows.append(len(batch.flows)))
    try:
        for i in range(DATAGRAMS):
            theirs.send(_many_flows(40, start=100 * i))
            time.sleep(0.015)
        _wait_until(lambda: sum(flows) >= 40 * DATAGRAMS)
    finally:
        reader.stopping.set()
        reader.thread.join(timeout=10)
        theirs.close()
    assert sum(flows) == 40 * DATAGRAMS
    stats = reader.decoder.stats()
    assert len(flows) >= 4  # batches of several datagrams each, most sent on the timer
    assert stats["row_buffers_new"] <= 2, (flows, stats)  # the pool's two, then reused
    assert stats["row_buffers_reused"] == len(flows) - stats["row_buffers_new"], stats


def test_the_default_hold_sums_a_steady_flow_set_over_200_ms() -> None:
    """With the defaults (``batch_ms`` 200) flows that send every 15 ms reach the pipeline
    as one row each per 200 ms, not one per 50 ms (the default before: four times the rows
    for the cache to merge, a quarter of W1's agent CPU on this VM), and every packet."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    owner = SimpleNamespace(config=Config(group=7, decoder="c"), fragments=None,
                            name="ingest.nflog[0]", log=logging.getLogger("test_reader_buffers"))
    reader = GroupReader(owner, _PairSocket(ours), [])
    rows: list[int] = []
    packets: list[int] = []

    def emit(batch: FlowBatch) -> None:
        rows.append(len(batch.flows))
        packets.append(int(batch.flows["packets"].sum()))

    reader.start(SimpleNamespace(emit=emit, wait_for_room=lambda limit: None))
    datagrams = 60
    try:
        start = time.monotonic()
        for _ in range(datagrams):
            theirs.send(_many_flows(40))  # the same 40 flows each time
            time.sleep(0.015)
        elapsed = time.monotonic() - start
        _wait_until(lambda: sum(packets) >= 40 * datagrams)
    finally:
        reader.stopping.set()
        reader.thread.join(timeout=10)
        theirs.close()
    assert sum(packets) == reader.stats()["packets"] == 40 * datagrams
    assert sum(rows) <= 40 * (elapsed / 0.2 + 2), (rows, elapsed)


def test_one_batch_gathers_many_wakeups_and_keeps_every_packet_and_gap() -> None:
    """With a long ``batch_ms`` the reader wakes for every datagram but runs its Python (and
    the pipeline gets a batch) far less often; the batches hold every packet received, and
    the packets of the datagrams lost on the way are their sequence gaps, exactly."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    datagrams = _sequenced(DATAGRAMS, 20, lost={4, 17, 18})
    batches: list[tuple[int, int]] = []  # (packets, dropped packets) of each batch
    reader = _reader(ours, 1000, 1, lambda batch: batches.append(
        (int(batch.flows["packets"].sum()), batch.dropped_packets)))
    try:
        for d in datagrams:
            theirs.send(d)
            time.sleep(0.005)
        _wait_until(lambda: sum(b[0] for b in batches) >= 20 * len(datagrams))
    finally:
        reader.stopping.set()
        reader.thread.join(timeout=10)
        theirs.close()
    stats = reader.stats()
    assert sum(b[0] for b in batches) == stats["packets"] == 20 * len(datagrams)
    assert sum(b[1] for b in batches) == 3 * 20  # the lost datagrams' packets
    assert stats["batches"] == len(datagrams)
    assert stats["wakeups"] > len(batches), (stats, batches)


def _packets(batch: FlowBatch | PacketBatch) -> int:
    """The packets of either decoder's batch."""
    if isinstance(batch, FlowBatch):
        return int(batch.flows["packets"].sum())
    return len(batch.packets)


@pytest.mark.parametrize(("decoder", "batch_ms", "coalesce_ms", "every_s", "count"), [
    ("c", 0, 20, 0.002, 250),  # the sums due at every read: the pause still follows it
    ("python", 0, 20, 0.002, 250),
    ("c", 1000, 500, 0.02, 80),  # a pause longer than serve()'s 0.2 s call bound
])
def test_coalesce_ms_paces_the_wakeups(decoder: str, batch_ms: int, coalesce_ms: int,
                                       every_s: float, count: int) -> None:
    """After a read that emptied the socket the reader waits ``coalesce_ms`` before it reads
    again, whether or not the sums went on in between and however long the pause: a steady
    trickle of datagrams wakes it at most once per pause (plus the first wakeup; no round
    here reaches its 64-datagram bound), and every packet arrives."""
    stats, elapsed = _trickle(batch_ms, coalesce_ms, every_s, count, decoder)
    assert 1 <= stats["wakeups"] <= elapsed * 1000 / coalesce_ms + 1, (stats, elapsed)


def _trickle(batch_ms: int, coalesce_ms: int, every_s: float, count: int,
             decoder: str = "c") -> tuple[dict, float]:
    """Send ``count`` one-packet datagrams ``every_s`` apart to a reader with these settings;
    check every packet arrived with no sequence gap and the thread stopped. :return: the
    reader's stats and the seconds the trickle took."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    got: list[int] = []
    reader = _reader(ours, batch_ms, coalesce_ms, lambda b: got.append(_packets(b)), decoder)
    try:
        start = time.monotonic()
        for d in _sequenced(count, 1, lost=set()):
            theirs.send(d)
            time.sleep(every_s)
        _wait_until(lambda: sum(got) >= count)
        elapsed = time.monotonic() - start
    finally:
        reader.stopping.set()
        reader.thread.join(timeout=10)
        theirs.close()
    stats = reader.stats()
    assert sum(got) == stats["packets"] == count and stats["seq_gaps"] == 0
    assert not reader.thread.is_alive()
    return stats, elapsed


def test_default_reader_wakes_at_most_50_times_a_second_under_a_trickle() -> None:
    """With the defaults, a datagram every 2 ms (as at ~30 kpps with 64-packet batches)
    wakes the reader at most 50 times a second: each wakeup costs the reader CPU (~20 us
    of system time on a VM, docs/performance.md), so the pause after a read that emptied
    the socket gathers the batches of 20 ms; every packet still arrives."""
    defaults = Config(group=7)
    stats, elapsed = _trickle(defaults.batch_ms, defaults.coalesce_ms, 0.002, 250)
    assert 1 <= stats["wakeups"] <= elapsed * 50 + 1, (stats, elapsed)


def test_held_sums_go_on_at_stop_also_when_unbind_fails() -> None:
    """The UNBIND request fails (a socket pair here; a closed netlink socket in life): no
    stop drain, but the sums held for a long ``batch_ms`` still reach the pipeline."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    got: list[int] = []
    reader = _reader(ours, 60_000, 0, lambda b: got.append(_packets(b)))
    try:
        for d in _sequenced(4, 5, lost=set()):
            theirs.send(d)
        _wait_until(lambda: reader.stats()["packets"] == 20)  # read, held, not due
        assert sum(got) == 0
    finally:
        reader.stopping.set()
        reader.thread.join(timeout=10)
        theirs.close()
    assert sum(got) == 20


def test_a_failed_wait_is_logged_as_a_poll_error(caplog: pytest.LogCaptureFixture,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """serve() says its errno is the wait's: the log names poll, not recv."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, theirs:
        reader = _group_reader(ours, 50, 0)
        failed = ServeResult(0, 0, 0, 0, 0, errno.EINVAL, False, 0, False, True, False)
        monkeypatch.setattr(reader.decoder, "serve", lambda *args: failed)
        monkeypatch.setattr(component, "_POLL_S", 0.001)  # the pause after an error
        with caplog.at_level(logging.WARNING):
            assert reader._serve(-1)
    assert "group 7: poll: [Errno 22]" in caplog.text and "recv" not in caplog.text
    assert reader.stats()["recv_errors"] == 1


_DROP_WHILE_WAITING = """
import socket, sys, time
from netflow_agent import privileges
from tests.ingest_nflog.test_c_decoder import _sequenced
from tests.ingest_nflog.test_reader_buffers import _packets, _reader, _wait_until

def emit(batch):  # runs on the reader thread, right after it parsed the datagram
    status = open("/proc/thread-self/status").read().splitlines()
    permitted = next(line.split()[1] for line in status if line.startswith("CapPrm:"))
    seen.append((_packets(batch), int(permitted, 16)))

seen = []
privileges.prepare()  # as the agent does: threads keep root's permitted set at the switch
ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
reader = _reader(ours, 0, 0, emit, sys.argv[1])
time.sleep(0.05)  # the reader waits for the socket
privileges.drop(privileges.resolve("nobody"), [])
theirs.send(_sequenced(1, 3, lost=set())[0])
_wait_until(lambda: seen)
reader.stopping.set()
reader.thread.join(timeout=10)
print(seen)
"""


@pytest.mark.parametrize("decoder", ["c", "python"])
def test_the_reader_follows_a_drop_of_root_before_it_parses(decoder: str) -> None:
    """Root is dropped while the reader waits for the socket (as ``agent`` does after the
    start): the next datagram is parsed by a thread that already gave up root's permitted
    capabilities (``privileges.follow`` before handling input), not up to a serve() call
    later. In a child process: the drop cannot be undone."""
    out = subprocess.run([sys.executable, "-c", _DROP_WHILE_WAITING, decoder],
                         capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[(3, 0)]", out.stdout  # 3 packets, no capability left


def test_the_reader_gives_the_aggregator_the_hold_it_serves_with() -> None:
    """Append mode decides on cycles of the reader's own hold (``_HOLD_FLOWS``, also
    ``serve``'s): one constant, not a copy in C."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with ours, theirs:
        reader = _group_reader(ours, 50, 0)
        assert reader.decoder.aggregator.hold == component._HOLD_FLOWS > 0
