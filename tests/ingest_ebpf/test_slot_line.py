"""Privileged: the default per-CPU slot is one 64-byte cache line (issue 14, sender rate).

Without ``[flow]`` key fields and with tick timestamps a slot is ``struct flow_slot_line``: the
base key, 32-bit packet and byte counters and 32-bit times (bpf/flow.h). The loader's program
runs here through ``BPF_PROG_TEST_RUN`` (no network): one UDP frame posing as a GSO skb of
65,535 segments, thousands of times, so its flow's bytes pass 2^32 within one drain period.
The slot must stop at the last packet that fits and the rest go to the hash, every packet and
byte accounted; the drain restores the slot's 32-bit times to CLOCK_MONOTONIC nanoseconds.
"""

from __future__ import annotations

import ctypes
import os
import struct
import time

import pytest

from netflow_agent.plugins.ingest_ebpf import sizing
from netflow_agent.plugins.ingest_ebpf.decode import COUNTER_NAMES
from tests.ingest_ebpf.test_slot_probes import drain, on_cpu

pytestmark = pytest.mark.bpf

SLOT_PACKETS = COUNTER_NAMES.index("slot_packets")
HASH_NEW = COUNTER_NAMES.index("hash_new")
SEGS = 65535  # the frame's gso_segs: a packet of SEGS wire segments
RUNS = 3000  # test runs: RUNS * bytes per run passes 2^32 (about 2,340 runs fit)
U32 = (1 << 32) - 1
SKB_SIZE, GSO_SEGS_OFF = 192, 164  # struct __sk_buff (6.x): its size, offsetof(gso_segs)


class RunOpts(ctypes.Structure):
    """libbpf's ``struct bpf_test_run_opts``."""

    _fields_ = [("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p),
                ("data_out", ctypes.c_void_p), ("data_size_in", ctypes.c_uint32),
                ("data_size_out", ctypes.c_uint32), ("ctx_in", ctypes.c_void_p),
                ("ctx_out", ctypes.c_void_p), ("ctx_size_in", ctypes.c_uint32),
                ("ctx_size_out", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("repeat", ctypes.c_int), ("duration", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32)]


def udp_frame() -> bytes:
    """A 60-byte Ethernet + IPv4 + UDP frame (18 payload bytes), 10.9.0.1:4000 -> 10.9.0.2:53."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 46, 1, 0, 64, 17, 0, bytes([10, 9, 0, 1]),
                     bytes([10, 9, 0, 2]))
    udp = struct.pack("!HHHH", 4000, 53, 26, 0)
    return bytes(6) + bytes([2, 0, 0, 0, 0, 1]) + b"\x08\x00" + ip + udp + bytes(18)


def run_gso(loader, repeat: int) -> None:
    """Run the loader's tc ingress program ``repeat`` times on :func:`udp_frame` as a GSO skb
    of :data:`SEGS` segments."""
    libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
    fd = libbpf.bpf_prog_get_fd_by_id(loader.prog_ids()["flow_tc_ingress"])
    assert fd >= 0, ctypes.get_errno()
    frame, ctx = udp_frame(), ctypes.create_string_buffer(SKB_SIZE)
    struct.pack_into("I", ctx, GSO_SEGS_OFF, SEGS)
    data = ctypes.create_string_buffer(frame, len(frame))
    opts = RunOpts(sz=ctypes.sizeof(RunOpts), data_in=ctypes.addressof(data),
                       data_size_in=len(frame), ctx_in=ctypes.addressof(ctx),
                       ctx_size_in=SKB_SIZE, repeat=repeat)
    try:
        err = libbpf.bpf_prog_test_run_opts(fd, ctypes.byref(opts))
        assert err == 0, -err
    finally:
        os.close(fd)


def loader_for(**kwargs: object):  # type: ignore[no-untyped-def]
    from netflow_agent.plugins.ingest_ebpf._loader import Loader

    loader = Loader(maxflows=1024, prealloc=True, percpu=False, slots=4096, **kwargs)
    loader.set_active(0)
    return loader


@pytest.mark.parametrize("kwargs, size", [({}, 64), ({"precise_clock": True}, 88),
                                          ({"l2_fields": 1}, 152)])
def test_slot_size_by_key_and_clock(kwargs, size):
    """One cache line by default; 88 bytes with precise (64-bit) times; the whole key's 152
    with ``[flow]`` key fields (here MAC addresses). The ``cpu_slots = "auto"`` budget
    (sizing.py) counts the same bytes, plus the slot's tag."""
    loader = loader_for(**kwargs)
    try:
        assert loader.slot_info()["slot_bytes"] == size
    finally:
        loader.close()
    budgeted = sizing.slot_bytes("l2_fields" in kwargs, bool(kwargs.get("precise_clock")))
    assert budgeted - sizing.TAG_BYTES == size


@pytest.mark.parametrize("precise", [False, True])
def test_counters_past_32_bits_go_to_the_hash(precise):
    """3,000 runs of a 65,535-segment packet (1.8 MB each): in a line slot the flow's bytes
    stop at the last packet below 2^32 and the later packets go to the hash, two rows of one
    flow that add up to every packet and byte; the 88-byte slot (precise timestamps) has
    64-bit counters and keeps them all. Times come back as CLOCK_MONOTONIC ns within the
    run (the tick clock: within a jiffy before it, 1.024 us units)."""
    loader = loader_for(precise_clock=precise)
    try:
        t0 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        with on_cpu(min(os.sched_getaffinity(0))):  # the repeats may not migrate: one slot
            run_gso(loader, RUNS)
        t1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        counters = loader.counters()
        rows = drain(loader, chunk=64)
    finally:
        loader.close()
    per_run = 46 + (SEGS - 1) * 28  # the GSO skb's bytes: its IP length + (segs - 1) headers
    assert len({(bytes(r["saddr"]), int(r["sport"])) for r in rows}) == 1
    assert int(rows["packets"].sum()) == RUNS * SEGS
    assert int(rows["bytes"].sum()) == RUNS * per_run
    assert counters[SLOT_PACKETS] == (RUNS * SEGS if precise else U32 // per_run * SEGS)
    if precise:
        assert len(rows) == 1 and counters[HASH_NEW] == 0
    else:
        slot = rows[rows["packets"] == counters[SLOT_PACKETS]]
        assert len(rows) == 2 and len(slot) == 1 and counters[HASH_NEW] == 1
        assert U32 - per_run < int(slot["bytes"][0]) <= U32
    jiffy = 10_000_000  # HZ >= 100
    assert (t0 - jiffy - 1024 <= rows["first_ns"]).all()
    assert (rows["first_ns"] <= rows["last_ns"]).all() and (rows["last_ns"] <= t1).all()


MINUTE = 60 * 10**9
UNIT = 1 << 10  # SLOT_TIME_SHIFT: a slot time's unit, 1.024 us


def slot_time(ns: int) -> int:
    """What the program writes into a line slot for CLOCK_MONOTONIC ``ns``."""
    return (ns >> 10) & U32


@pytest.mark.parametrize("uptime_min", [10, 80, 5000])
def test_slot_time_ahead_of_the_drain_clock_is_the_drain_clock(uptime_min):
    """A program may write a slot after the drain read its clock (membarrier refused: the
    drain waits 5 ms only). That time comes back as the drain's clock, neither 73 minutes
    early nor (uptime below 73 minutes) centuries ahead; earlier times come back exact to a
    unit, across the 32-bit wrap too."""
    from netflow_agent.plugins.ingest_ebpf._loader import line_time

    now = uptime_min * MINUTE + 123_456
    for ahead_ns in (UNIT, 5_000_000, 1_000_000_000):
        assert line_time(slot_time(now + ahead_ns), now) == now
    for back_ns in (0, UNIT, 5_000_000, 30 * MINUTE, 37 * MINUTE, 70 * MINUTE):
        back_ns = min(back_ns, now)
        restored = line_time(slot_time(now - back_ns), now)
        assert abs(restored - (now - back_ns)) < UNIT
        assert restored <= now


def test_slot_time_before_boot_is_clamped():
    """A time more than the clock's own age behind it (not a slot this boot wrote) is not
    wrapped past zero into the future: boot, 0."""
    from netflow_agent.plugins.ingest_ebpf._loader import line_time

    now = 10 * MINUTE
    assert line_time(slot_time(now) - (1 << 31) & U32, now) == 0
    assert line_time(slot_time(now) - (1 << 31) + 5 & U32, now) == 0
