"""bench/ebpf/sendercpu.py's analysis of a system-wide profile, on made-up samples.

A flood is one of the command's ``flowgen`` processes; its samples (and ``ksoftirqd``'s on
its CPU) are the sender's time, split by the first stack frame that names a part of the path;
other processes on its CPU meanwhile are time the sender did not have. Another engineer's
``flowgen`` (not the command's) is no flood of ours.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ebpf"


def _sendercpu() -> ModuleType:
    """bench/ebpf/sendercpu.py by path, under its own name; what it imports from bench/ebpf
    (progstats, and bench/ebpf/run.py as ``run``) and its sys.path entry do not outlive the
    load, so no other test finds a module named ``run``."""
    path, modules = list(sys.path), set(sys.modules)
    spec = importlib.util.spec_from_file_location("bench_ebpf_sendercpu", BENCH / "sendercpu.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
        for name in set(sys.modules) - modules - {spec.name}:
            if BENCH in Path(getattr(sys.modules[name], "__file__", None) or "/").parents:
                del sys.modules[name]
    return module


_SENDERCPU = _sendercpu()
analyse, parse_head, part_of, report = (_SENDERCPU.analyse, _SENDERCPU.parse_head,
                                        _SENDERCPU.part_of, _SENDERCPU.report)

PROG = "bpf_prog_0123456789abcdef_slot_account"


def test_parse_head_keeps_spaces_in_command_names():
    assert parse_head("   kworker/u8:0-ev 123/456 [001] 69643.894953: ") == (
        "kworker/u8:0-ev", 123, 1, 69643.894953)
    assert parse_head("Web Content 77 [000] 1.5:") == ("Web Content", 77, 0, 1.5)
    assert parse_head("garbage") is None


def test_part_of_takes_the_first_named_frame_from_the_leaf():
    assert part_of(["lookup_nulls_elem_raw", "htab_map_update_elem", PROG]) == "bpf: hash map"
    assert part_of([PROG, "tcx_run", "__netif_receive_skb_core"]) == "bpf: program"
    assert part_of(["fib6_table_lookup", "ip6_route_input", "ipv6_rcv"]) == "router: forward"
    assert part_of(["0x7f00", "[unknown]"]) == "user / other"


def test_floods_are_the_commands_flowgens_and_others_on_their_cpu_are_counted():
    samples = []
    for i in range(10):  # our flood: 10 samples on CPU 0, 4 of them in the program
        stack = [PROG] if i < 4 else ["veth_xmit"]
        samples.append(("flowgen", 10, 0, 1.0 + i * 0.001, stack))
    samples.append(("ksoftirqd/0", 15, 0, 1.0025, ["ip_forward"]))  # its deferred softirq
    samples.append(("python", 20, 0, 1.0035, ["do_syscall_64"]))  # the agent on its CPU
    samples.append(("python3", 30, 0, 1.0045, ["x"]))  # someone else's process
    samples.append(("swapper", 0, 0, 1.0055, ["default_idle"]))
    samples.append(("python", 20, 1, 1.0055, ["x"]))  # on the other CPU
    samples.append(("flowgen", 99, 1, 1.003, ["veth_xmit"]))  # another engineer's flowgen
    mine = {10: "flowgen", 20: "python"}
    (flood,), others = analyse(samples, mine)
    assert flood.pid == 10 and flood.samples == 11
    assert flood.parts["bpf: program"] == 4 and flood.parts["router: forward"] == 1
    assert others[10] == {"mine: python": 1, "other: python3": 1, "idle": 1,
                          "(the other CPU busy)": 1}
    text = report([flood], others, ["w3-agent"], [1000], 1000.0, 5)
    # one sample is 1 ms: 1,000 ns per packet of 1,000 packets; the flood spans 9 ms
    assert "## w3-agent" in text and "wall 9000 ns per packet" in text
    assert "on its CPU 11000; other work on that CPU 2000, idle 1000" in text
    assert "| bpf: program | 4000 | 36.4 % |" in text
