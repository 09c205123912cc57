"""Privileged: the flow programs' stack stays well inside the verifier's 512 bytes everywhere.

The verifier adds up the frames of every BPF-to-BPF call chain and refuses a program past
512 bytes. 6.18 rounds each frame up to 16 bytes, but older kernels (5.x, 6.1, 6.6) and the
interpreter round it up to 32, so a program 16 bytes from the limit here may not load at all
there. The programs are loaded with every feature the loader offers on (slots with 8 probes,
sampling, the overflow ring, early drains, fragment tracking, all four tunnels with
keep_outer, every ``[flow]`` key field and 10 MPLS labels: 152-byte slots), the same without
key fields (64-byte line slots, and 88-byte ones with the precise clock) and the defaults; the
verifier's statistics (``Loader(verifier_stats=True)``: ``stack depth 216+0+...``, one frame
per function in the program's order) and the call graph of the translated program (``bpftool
prog dump xlated``: each function's start, its BPF-to-BPF calls) give every call chain, which
with 32-byte frames must stay at 480 bytes or less: a margin of a frame for later changes.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.ingest_ebpf.test_decode import loader_module

pytestmark = pytest.mark.bpf

#: the verifier's stack, and what a call chain may take of it with 32-byte frames
STACK_LIMIT, MARGIN_LIMIT = 512, 480
PROGRAMS = ("flow_tc_ingress", "flow_tc_egress", "flow_xdp")
CALL = re.compile(r"call pc[+-]\d+#bpf_prog_[0-9a-f]+_(\w+)")


def everything_on(ext) -> dict[str, object]:
    """Loader knobs with every option the program has turned on."""
    return {
        "maxflows": 4096, "sampling": 2, "overflow_ring_bytes": 1 << 16, "slots": 64,
        "probes": 8, "fill_threshold": 1000, "frag_table": 1024,
        "decap": ext.TUNNEL_GRE | ext.TUNNEL_VXLAN | ext.TUNNEL_GENEVE | ext.TUNNEL_IPIP,
        "keep_outer": True, "l2_fields": ext.L2_MAC | ext.L2_VLAN | ext.L2_TUNNEL_ID,
        "mpls_labels": 10,
    }  # fmt: skip


def line_slots(ext, precise: bool = False) -> dict[str, object]:
    """:func:`everything_on` without ``[flow]`` key fields: the slots are 64-byte lines (88
    bytes with ``precise``), and the deepest chain (all four tunnels with keep_outer) is 448
    bytes with 32-byte frames, about 558,000 instructions to verify (the tc programs)."""
    knobs = everything_on(ext)
    knobs.update(l2_fields=0, mpls_labels=0, precise_clock=precise)
    return knobs


#: config name -> (its loader knobs, the slot bytes it loads: which slot program is verified)
CONFIGS = {
    "defaults": (lambda ext: {}, 0),
    "everything on": (everything_on, 152),
    "line slots": (line_slots, 64),
    "line slots, precise clock": (lambda ext: line_slots(ext, precise=True), 88),
}


def stack_frames(stats: str) -> list[int]:
    """The frames of the verifier's "stack depth a+b+c" line, in the program's order."""
    match = re.search(r"^stack depth ([\d+]+)$", stats, re.MULTILINE)
    assert match, f"no stack depth in the verifier's statistics: {stats!r}"
    return [int(part) for part in match.group(1).split("+")]


def call_graph(prog_id: int) -> tuple[list[str], dict[str, set[str]]]:
    """The functions of a loaded program in its order (the first is the program) and the
    functions each one calls, from its translated instructions."""
    dump = subprocess.run(["bpftool", "-j", "prog", "dump", "xlated", "id", str(prog_id)],
                          capture_output=True, text=True, check=True).stdout
    order: list[str] = []
    calls: dict[str, set[str]] = {}
    for insn in json.loads(dump):
        if "proto" in insn:  # the first instruction of a function (its BTF func_info)
            name = re.search(r"(\w+)\(", insn["proto"])
            assert name, insn["proto"]
            order.append(name.group(1))
            calls[order[-1]] = set()
        if (call := CALL.search(insn.get("disasm", ""))) is not None:
            calls[order[-1]].add(call.group(1))
        elif "call pc" in insn.get("disasm", ""):
            pytest.fail(f"a BPF-to-BPF call without its callee's name (no JIT?): {insn}")
    return order, calls


def deepest_chain(frames: dict[str, int], calls: dict[str, set[str]], start: str,
                  ) -> tuple[int, list[str]]:
    """The call chain from ``start`` with the most stack, each frame rounded up to 32 bytes
    (at least 32, as the verifier rounds an empty frame too)."""
    own = -(-max(frames[start], 1) // 32) * 32
    below = [deepest_chain(frames, calls, callee) for callee in calls[start]]
    depth, chain = max(below, default=(0, []))
    return own + depth, [start, *chain]


def measure(slot_bytes: int, **knobs: object) -> dict[str, tuple[int, list[str], str]]:
    """Per program: the deepest chain's bytes (32-byte frames), the chain, the stack line;
    the loader's slots must be ``slot_bytes`` each (0: no slots)."""
    ext = loader_module()
    loader = ext.Loader(verifier_stats=True, **knobs)
    try:
        info = loader.slot_info()
        assert (info["slot_bytes"] if info["slots"] else 0) == slot_bytes, info
        stats, ids = loader.verifier_stats(), loader.prog_ids()
        out = {}
        for name in PROGRAMS:
            order, calls = call_graph(ids[name])
            sizes = stack_frames(stats[name])
            assert order[0] == name and len(order) == len(sizes), (order, sizes)
            depth, chain = deepest_chain(dict(zip(order, sizes, strict=True)), calls, name)
            line = re.search(r"^stack depth .*$", stats[name], re.MULTILINE)
            out[name] = (depth, chain, line.group(0) if line else "")
        return out
    finally:
        loader.close()


@pytest.mark.parametrize("config", list(CONFIGS))
def test_every_call_chain_fits_the_stack_with_32_byte_frames(config):
    """Every program's deepest call chain takes at most 480 of the 512 bytes with each frame
    rounded up to 32 bytes (the program with both pkt_info structs on its stack and every
    feature on was exactly 512 there: 384 + slot_account's 128), with each slot layout: none,
    the whole key's 152 bytes, the 64-byte line and the precise clock's 88."""
    knobs_of, slot_bytes = CONFIGS[config]
    for name, (depth, chain, line) in measure(slot_bytes, **knobs_of(loader_module())).items():
        assert depth <= MARGIN_LIMIT < STACK_LIMIT, (
            f"{name} ({config}): {' -> '.join(chain)} takes {depth} bytes with 32-byte "
            f"frames ({line}), over {MARGIN_LIMIT}")


def test_verifier_stats_need_the_option():
    """The statistics are kept only when asked for (a buffer per program)."""
    ext = loader_module()
    loader = ext.Loader()
    try:
        with pytest.raises(RuntimeError, match="verifier_stats=True"):
            loader.verifier_stats()
    finally:
        loader.close()
