"""bench/ebpf/batch_ops.py: is there a cheaper kernel operation than the drain's lookup-and-delete?

Fills the agent's kernel flow table (the loader's shared hash, preallocated, no per-CPU
slots, ``--maxflows`` entries) with ``--flows`` distinct flows from ``flowgen.c`` (as
``drain.py`` does), then empties it in ``--chunk``-entry steps two ways, alternately:

* ``BPF_MAP_LOOKUP_AND_DELETE_BATCH``, what the drain does;
* ``BPF_MAP_LOOKUP_BATCH`` (read only), then ``BPF_MAP_DELETE_BATCH`` of the keys read: the
  "read the inactive table, then clear it" design (a hash map has no cheaper clear).

Prints the kernel CPU time per entry of each call (thread CPU time around the libbpf call),
medians of ``--runs``. The table's fd is found by its type and size in ``/proc/self/fdinfo``
(the loader does not hand it out).

Run as root: ``python3 bench/ebpf/batch_ops.py [--flows 200000] [--maxflows 524288] [--runs 3]``.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from netflow_agent.netns import NetnsScope  # noqa: E402
from netflow_agent.plugins.ingest_ebpf._loader import KEY_BASE_SIZE, METRICS_SIZE, Loader  # noqa: E402
from netflow_agent.plugins.ingest_ebpf.attach import Attacher  # noqa: E402
from tests.support.flowgen import Flood, build  # noqa: E402
from tests.support.netns import Netns, veth_pair  # noqa: E402

BPF_MAP_TYPE_HASH = 1
LIBBPF = ctypes.CDLL("libbpf.so.1", use_errno=True)


class BatchOpts(ctypes.Structure):
    """``struct bpf_map_batch_opts`` (libbpf 1.1)."""

    _fields_ = [("sz", ctypes.c_size_t), ("elem_flags", ctypes.c_uint64),
                ("flags", ctypes.c_uint64)]


def table_fd(maxflows: int) -> int:
    """The first flow table (flows_a: created first, lowest fd) of this process's loader."""
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            info = Path(f"/proc/self/fdinfo/{fd}").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in info.splitlines() if ":\t" in line)
        if (fields.get("map_type") == str(BPF_MAP_TYPE_HASH)
                and fields.get("max_entries") == str(maxflows)):
            fds.append(int(fd))
    return min(fds)


def walk(fd: int, chunk: int, call: Callable, keep_keys: bool) -> tuple[int, float, list[bytes]]:
    """Walk the whole table with a batch ``call``: entries, CPU seconds, the keys read."""
    keys = ctypes.create_string_buffer(chunk * KEY_BASE_SIZE)
    values = ctypes.create_string_buffer(chunk * METRICS_SIZE)
    opts = BatchOpts(ctypes.sizeof(BatchOpts), 0, 0)
    token, out, first = ctypes.c_uint32(0), ctypes.c_uint32(0), True
    entries, spent, kept = 0, 0.0, []
    while True:
        count = ctypes.c_uint32(chunk)
        started = time.thread_time()
        err = call(fd, None if first else ctypes.byref(token), ctypes.byref(out), keys, values,
                   ctypes.byref(count), ctypes.byref(opts))
        spent += time.thread_time() - started
        entries += count.value
        if keep_keys and count.value:
            kept.append(keys.raw[:count.value * KEY_BASE_SIZE])
        first, token.value = False, out.value
        if err:  # -ENOENT at the end (its last entries are valid)
            return entries, spent, kept


def delete_all(fd: int, chunks: list[bytes]) -> float:
    """``BPF_MAP_DELETE_BATCH`` of every key read: CPU seconds."""
    opts = BatchOpts(ctypes.sizeof(BatchOpts), 0, 0)
    spent = 0.0
    for keys in chunks:
        count = ctypes.c_uint32(len(keys) // KEY_BASE_SIZE)
        started = time.thread_time()
        err = LIBBPF.bpf_map_delete_batch(fd, keys, ctypes.byref(count), ctypes.byref(opts))
        spent += time.thread_time() - started
        if err:
            raise OSError(ctypes.get_errno(), "bpf_map_delete_batch")
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=200_000)
    ap.add_argument("--maxflows", type=int, default=524_288)
    ap.add_argument("--chunk", type=int, default=4096)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Netns() as a, Netns() as b:
        flowgen = build(Path(tmp))
        pair = veth_pair(a, b)
        b.run(["iptables", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "-j", "DROP"])
        loader = Loader(maxflows=args.maxflows, slots=0, prealloc=True, percpu=False)
        loader.set_active(0)
        attacher = Attacher(loader, "tcx", "ingress")
        with NetnsScope(b.name):
            attacher.attach(pair.b.ifindex, pair.b.ifname)
        fd = table_fd(args.maxflows)
        both, read, delete = [], [], []
        for _ in range(args.runs):
            Flood(args.flows, 1, args.flows).send(flowgen, pair.a, pair.b.mac, pair.b.addr)
            n, spent, _keys = walk(fd, args.chunk, LIBBPF.bpf_map_lookup_and_delete_batch, False)
            assert n == args.flows, n
            both.append(spent * 1e6 / n)
            Flood(args.flows, 1, args.flows).send(flowgen, pair.a, pair.b.mac, pair.b.addr)
            n, spent, keys = walk(fd, args.chunk, LIBBPF.bpf_map_lookup_batch, True)
            assert n == args.flows, n
            read.append(spent * 1e6 / n)
            delete.append(delete_all(fd, keys) * 1e6 / n)
        print(f"{args.flows} flows in a {args.maxflows}-entry shared hash, {args.chunk}-entry "
              f"steps, medians of {args.runs} (µs of CPU per entry):")
        print(f"  lookup_and_delete_batch        {statistics.median(both):.3f}")
        print(f"  lookup_batch                   {statistics.median(read):.3f}")
        print(f"  then delete_batch of its keys  {statistics.median(delete):.3f}")
        with NetnsScope(b.name):
            attacher.detach_all()
        loader.close()


if __name__ == "__main__":
    main()
