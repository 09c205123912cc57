"""bench/ebpf/prog_cost.py: the flow program's own cost per packet, with BPF_PROG_TEST_RUN.

No network and no sender: the kernel runs ``flow_tc_ingress`` on a 60-byte UDP frame
``--repeat`` times per flow and reports the mean run time, so variants compare to within a
nanosecond where the veth flood (``run.py``) moves by a percent. Variants: per-CPU slots on
or off (``cpu_slots``), tick or precise clock (``timestamps``), fragment tracking and
``decapsulate`` on plain, VXLAN and fragment frames, ``[flow]`` MAC/VLAN/MPLS/tunnel id
fields on plain, 802.1Q-tagged and MPLS frames, 1 or 1,000 flows; the empty
TCX program (``empty.bpf.c``) is the test-run loop's own cost, subtracted in the last column.
Medians of ``--runs``. This is the hot-cache figure: in the flood, cache misses add to it
(``run.py --bpf-stats`` and ``progstats.py`` measure that).

Then new flows against known ones (:data:`NEW_VARIANTS`: slot counts and probes, 1 probe
being the direct-mapped slots before issue 14's probing): ``--new-flows`` distinct flows
(default 200,000, W2's concurrency) each run once into tables of 524,288 (the derived size on
2 CPUs), then each once again; one run per test-run call, so the empty program's one-run
figure is subtracted. The harness checks that the tables then hold every packet (it fails
otherwise). Two orders: a fresh table with the flows run in order (elements handed out and
found again in memory order, as in a flood's first drain interval), and "after a drain": the
table filled and emptied once first (its free list in the drain's order) and the flows run in
a shuffled order (neither elements nor buckets walked in memory order, as after the first
drain). ``--new-only`` prints only this table.

Run as root: ``python3 bench/ebpf/prog_cost.py [--runs 5] [--new-flows 200000] [--new-only]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import build_empty_program  # noqa: E402  (bench/ebpf/run.py)

BPF_DIR = HERE.parents[1] / "plugins" / "ingest_ebpf" / "bpf"

VARIANTS = [  # (label, slots, precise clock[, fragments track, decapsulate bits, frame[,
    #             keep_outer[, [flow] L2_* bits, mpls_labels]]])
    ("slots 4096, tick clock (default)", 4096, 0),
    ("slots 4096, precise clock", 4096, 1),
    ("no slots (hash only), tick clock", 0, 0),
    ("no slots, precise clock (before)", 0, 1),
    # frames: 0 plain UDP, 1 the same inside VXLAN, 2 a non-first IPv4 fragment (prog_cost.c)
    ('default, fragments = "track", plain UDP', 4096, 0, 1, 0, 0),
    ('default, fragments = "track", non-first fragment', 4096, 0, 1, 0, 2),
    ('default, fragments = "ports0", non-first fragment', 4096, 0, 0, 0, 2),
    ("default + decapsulate (all four), plain UDP", 4096, 0, 1, 15, 0),
    ("default + decapsulate (all four), UDP in VXLAN", 4096, 0, 1, 15, 1),
    ("default, no decapsulate, UDP in VXLAN", 4096, 0, 1, 0, 1),
    ("default + decapsulate + keep_outer, UDP in VXLAN", 4096, 0, 1, 15, 1, 1),
    # [flow] fields (L2_MAC 1 | L2_VLAN 2 | L2_TUNNEL_ID 4, MPLS label stack entries);
    # frames: 3 the plain UDP with an 802.1Q tag, 4 behind two MPLS labels
    ("default, 802.1Q-tagged UDP", 4096, 0, 1, 0, 3, 0, 0, 0),
    ("default, MPLS (2 labels) UDP", 4096, 0, 1, 0, 4, 0, 0, 0),
    ("mac + vlan, plain UDP", 4096, 0, 1, 0, 0, 0, 3, 0),
    ("mac + vlan, 802.1Q-tagged UDP", 4096, 0, 1, 0, 3, 0, 3, 0),
    ("mac + vlan + mpls_labels 3, MPLS (2 labels) UDP", 4096, 0, 1, 0, 4, 0, 3, 3),
    ("mac + vlan, no slots (hash only), plain UDP", 0, 0, 1, 0, 0, 0, 3, 0),
    ("decapsulate + tunnel_id, UDP in VXLAN", 4096, 0, 1, 15, 1, 0, 4, 0),
]


NEW_VARIANTS = [  # (label, slots per CPU, per-CPU hash, slot probes)
    ("slots 4096, 1 probe, shared hash (before)", 4096, 0, 1),
    ("slots 4096, 4 probes", 4096, 0, 4),
    ("slots 131072, 4 probes", 131072, 0, 4),
    ("slots 262144 (auto on 2 CPUs before), 1 probe", 262144, 0, 1),
    ("slots 262144, 2 probes", 262144, 0, 2),
    ("slots 262144, 4 probes", 262144, 0, 4),
    ("slots 262144, 8 probes", 262144, 0, 8),
    ("slots 524288 (auto, 2 CPUs), 8 probes (default)", 524288, 0, 8),
    ("slots 524288, 8 probes, per-CPU hash", 524288, 1, 8),
    ("no slots, shared hash", 0, 0, 1),
]
NEW_TABLE = 524288


def build(tmp: Path) -> tuple[Path, Path]:
    """The agent's object and skeleton, the harness, and the empty program's object."""
    subprocess.run(["make", "-s", "-C", str(BPF_DIR), f"OUTPUT={tmp}"], check=True)
    exe = tmp / "prog_cost"
    subprocess.run(["gcc", "-O2", f"-I{tmp}", f"-I{BPF_DIR}", "-o", str(exe),
                    str(HERE / "prog_cost.c"),
                    "-lbpf"], check=True)
    return exe, build_empty_program(tmp)


def measure(exe: Path, *args: object) -> float:
    """One run of the harness: mean ns per program run."""
    return float(subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True,
                                check=True).stdout)


def new_flows(exe: Path, empty: Path, runs: int, flows: int) -> None:
    """The table of :data:`NEW_VARIANTS`: ns per run of a new and of a known flow."""
    floor = statistics.median(measure(exe, "--empty", empty, 1) for _ in range(runs))
    print(f"\n{flows:,} flows, table {NEW_TABLE:,}; empty program, one run per call: "
          f"{floor:.1f} ns\n")
    print("| variant | new flow, ns | known flow, ns | after a drain: new, ns | known, ns |")
    print("|---|---|---|---|---|")
    for label, slots, percpu, probes in NEW_VARIANTS:
        cells = []
        for steady in (0, 1):
            runs_out = [subprocess.run([str(exe), "--new", str(slots), str(NEW_TABLE),
                                        str(flows), str(percpu), str(steady), str(probes)],
                                       capture_output=True, text=True,
                                       check=True).stdout.split() for _ in range(runs)]
            cells += [statistics.median(float(r[i]) for r in runs_out) - floor
                      for i in (0, 1)]
        print(f"| {label} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=2_000_000, help="runs per measurement")
    ap.add_argument("--new-flows", type=int, default=200_000,
                    help="distinct flows of the new-flow table")
    ap.add_argument("--new-only", action="store_true", help="only the new-flow table")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nfa-prog-cost-") as t:
        exe, empty = build(Path(t))
        if args.new_only:
            new_flows(exe, empty, args.runs, args.new_flows)
            return
        floor = statistics.median(measure(exe, "--empty", empty, args.repeat)
                                  for _ in range(args.runs))
        print(f"empty TCX program (test-run loop): {floor:.1f} ns/run\n")
        print("| variant | 1 flow, ns/run | 1,000 flows, ns/run | program, ns (1,000 flows "
              "- empty) |")
        print("|---|---|---|---|")
        for label, slots, precise, *options in VARIANTS:
            cells = []
            for flows in (1, 1000):
                runs = [measure(exe, slots, precise, flows, max(1, args.repeat // flows),
                                *options) for _ in range(args.runs)]
                cells.append(statistics.median(runs))
            print(f"| {label} | {cells[0]:.1f} | {cells[1]:.1f} | {cells[1] - floor:.1f} |")
        new_flows(exe, empty, args.runs, args.new_flows)


if __name__ == "__main__":
    main()
