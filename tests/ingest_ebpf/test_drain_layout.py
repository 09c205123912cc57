"""Privileged: the loader writes drained flows straight into FlowBatch columns (issue 14).

``drain_next(buffer, layout, wall_offset)`` with :func:`record_layout` must give, row for
row, what the flow_record rows of ``drain_next(buffer)`` give through
:func:`decode_rows`: the same flows with the same counters, times in wall-clock ns. Two
identical floods of distinct flows fill the kernel table, one is drained each way; a
malformed layout is refused before anything is deleted, so nothing is lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

from netflow_agent.netns import NetnsScope
from netflow_agent.plugins.ingest_ebpf.attach import Attacher
from netflow_agent.plugins.ingest_ebpf.decode import (
    RECORD_DTYPE,
    decode_rows,
    monotonic_to_wall_offset,
    record_layout,
)
from netflow_agent.schema import active
from tests.support.flowgen import Flood, build
from tests.support.netns import Netns, VethPair, veth_pair

pytestmark = pytest.mark.bpf

FLOOD = Flood(flows=3000, per_flow=2, concurrent=3000)
CHUNK = 512  # several steps: the hash walk's and the per-CPU slots'


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[object, object]]:
    """Name: filled. Scope: module. ``(loader, fill)``: a loaded, attached ``Loader``
    (small slot table: flows go to both the slots and the hash) and a function that sends
    :data:`FLOOD` into its table 0."""
    from netflow_agent.plugins.ingest_ebpf._loader import Loader

    with Netns() as a, Netns() as b:
        flowgen = build(tmp_path_factory.mktemp("flowgen"))
        pair: VethPair = veth_pair(a, b)
        b.run(["iptables", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "-j", "DROP"])
        loader = Loader(maxflows=8192, slots=256, prealloc=True, percpu=False,
                        chunk_rows=CHUNK)
        loader.set_active(0)
        attacher = Attacher(loader, "tcx", "ingress")
        with NetnsScope(b.name):
            attacher.attach(pair.b.ifindex, pair.b.ifname)

        def fill() -> None:
            FLOOD.send(flowgen, pair.a, pair.b.mac, pair.b.addr)

        try:
            yield loader, fill
        finally:
            with NetnsScope(b.name):
                attacher.detach_all()
            loader.close()


def drain_rows(loader) -> np.ndarray:
    """Table 0 as flow_record rows decoded in NumPy (the reference), offset 0."""
    out, chunk, more = [], np.empty(CHUNK, RECORD_DTYPE), True
    loader.drain_begin(0)
    while more:
        rows, err, more = loader.drain_next(chunk)
        assert not err
        out.append(decode_rows(chunk[:rows].copy(), 0))
    return np.concatenate(out)


def drain_columns(loader, offset: int) -> np.ndarray:
    """Table 0 written by the loader straight into FlowBatch rows."""
    out, layout, more = [], record_layout(), True
    loader.drain_begin(0)
    while more:
        dtype = active().record_dtype
        flows = np.full(CHUNK * dtype.itemsize, 0xAB, np.uint8).view(dtype)  # garbage in
        rows, err, more = loader.drain_next(flows, layout, offset)
        assert not err
        out.append(flows[:rows])
    return np.concatenate(out)


def by_key(flows: np.ndarray) -> np.ndarray:
    """Rows sorted by their packed key (the drain order is the kernel's)."""
    return flows[np.argsort(active().keys_of(flows).view(f"S{active().key_size}"))]


def test_columns_equal_the_decoded_rows(filled):
    """Every column but the times is byte for byte the NumPy decode of the same flows; the
    times are the kernel's plus the wall-clock offset; columns the kernel does not fill
    (out_if, end_reason, masks, next hop) are zero whatever the buffer held."""
    loader, fill = filled
    fill()
    reference = by_key(drain_rows(loader))
    fill()
    before = time.time_ns()
    offset = monotonic_to_wall_offset()
    got = by_key(drain_columns(loader, offset))
    after = time.time_ns()
    assert len(reference) == len(got) >= FLOOD.flows  # a flow may sit in two places
    assert got["packets"].sum() == reference["packets"].sum() == FLOOD.packets
    for name in got.dtype.names:
        if name not in ("start_ns", "end_ns"):
            assert got[name].tobytes() == reference[name].tobytes(), name
    assert (got["start_ns"] <= got["end_ns"]).all()
    assert before - 60 * 10**9 < got["start_ns"].min() and got["end_ns"].max() <= after
    for name in ("out_if", "end_reason", "src_mask", "dst_mask"):
        assert not got[name].any()
    assert got["next_hop"].tobytes() == bytes(16 * len(got))


def test_a_malformed_layout_is_refused_before_anything_is_deleted(filled):
    """A layout whose op would write past the row raises ValueError at once; the next call
    with the right layout still gets every packet."""
    loader, fill = filled
    fill()
    good = record_layout()
    bad = bytearray(good)
    bad[8:10] = (60000).to_bytes(2, "little")  # first op's destination: past the row
    flows = np.empty(CHUNK, active().record_dtype)
    loader.drain_begin(0)
    with pytest.raises(ValueError, match="out of bounds"):
        loader.drain_next(flows, bytes(bad), 0)
    with pytest.raises(ValueError, match="whole ops"):
        loader.drain_next(flows, good[:-3], 0)
    assert drain_columns(loader, 0)["packets"].sum() == FLOOD.packets
