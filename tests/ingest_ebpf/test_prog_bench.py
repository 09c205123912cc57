"""The program-cost benches of bench/ebpf: what they measure is the program they claim to.

``prog_cost.py --new-only`` inserts many distinct flows into the flow tables with
``BPF_PROG_TEST_RUN`` and runs each again; its harness fails unless the tables then hold every
packet with sane times (new flows take the tick clock, shared and per-CPU hash, slots or not).
The same harness checks the early-drain trigger: the shared fill count the program adds to in
steps of 64 inserts per CPU is off by less than a step per CPU, and the drain is
asked for exactly when it reaches the threshold.
``progstats.py`` attributes programs to an agent by the BPF program fds its processes hold
and reads their counters (slot packets, hash inserts) from the program's own map.
Only counts and ids are asserted, never times.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from netflow_agent.plugins.ingest_ebpf._loader import Loader
from netflow_agent.plugins.ingest_ebpf.decode import COUNTER_NAMES

BENCH = Path(__file__).resolve().parents[2] / "bench" / "ebpf"
sys.path.insert(0, str(BENCH))

from prog_cost import NEW_VARIANTS, build  # noqa: E402  (bench/ebpf/prog_cost.py)
from progstats import HASH_NEW, SLOT_PACKETS, counters, prog_ids  # noqa: E402

pytestmark = pytest.mark.bpf


def test_new_flow_bench_accounts_every_packet():
    out = subprocess.run([sys.executable, str(BENCH / "prog_cost.py"), "--new-only", "--runs",
                          "1", "--new-flows", "6000"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines()
            if line.startswith("| ") and "slots" in line]
    assert len(rows) == len(NEW_VARIANTS), out.stdout
    for row in rows:
        cells = [float(c) for c in row.strip("|").split("|")[1:]]
        assert len(cells) == 4 and min(cells) > 0, row  # fresh table, then after a drain


@pytest.mark.parametrize("slots, table, flows, steady", [
    (0, 16384, 9000, 0),     # threshold 8,192 in steps: crossed, signalled
    (0, 16384, 8000, 1),     # below it (after a drain): no signal
    (4096, 16384, 12000, 1),  # slots take some flows, the hash the rest
    (0, 4096, 2100, 0),      # a small threshold (2,048): every insert counted
])
def test_early_drain_trigger_counts_in_steps(tmp_path, slots, table, flows, steady):
    exe, _ = build(tmp_path)
    out = subprocess.run([str(exe), "--new", str(slots), str(table), str(flows), "0",
                          str(steady)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_progstats_finds_the_programs_a_process_holds():
    loader = Loader(maxflows=1024, slots=64)
    try:
        ours = set(loader.prog_ids().values())
        assert ours and ours <= prog_ids({os.getpid()})
        assert not ours & prog_ids({os.getppid()})
    finally:
        loader.close()


def test_progstats_reads_the_program_counters():
    """The counters progstats reports are the program's flow_stats, summed over the CPUs:
    what the loader's counters() says (all zero on a program nothing ran). The ingress and
    egress programs read the same map (so progstats shows its totals once per agent)."""
    loader = Loader(maxflows=1024, slots=64)
    try:
        reads = {}
        for name, prog_id in loader.prog_ids().items():
            show = subprocess.run(["bpftool", "-j", "prog", "show", "id", str(prog_id)],
                                  capture_output=True, text=True, check=True).stdout
            reads[name] = counters(json.loads(show)["map_ids"])
        ingress, egress = reads["flow_tc_ingress"], reads["flow_tc_egress"]
        assert ingress is not None and egress is not None and ingress[0] == egress[0]
        got = ingress[1]
        assert got[:len(loader.counters())] == list(loader.counters())
        assert got[SLOT_PACKETS] == 0
        assert (COUNTER_NAMES[SLOT_PACKETS], COUNTER_NAMES[HASH_NEW]) == ("slot_packets",
                                                                          "hash_new")
    finally:
        loader.close()
