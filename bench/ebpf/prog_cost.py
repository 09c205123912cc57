"""bench/ebpf/prog_cost.py: the flow program's own cost per packet, with BPF_PROG_TEST_RUN.

No network and no sender: the kernel runs ``flow_tc_ingress`` on a 60-byte UDP frame
``--repeat`` times per flow and reports the mean run time, so variants compare to within a
nanosecond where the veth flood (``run.py``) moves by a percent. Variants: per-CPU slots on
or off (``cpu_slots``), tick or precise clock (``timestamps``), 1 or 1,000 flows; the empty
TCX program (``empty.bpf.c``) is the test-run loop's own cost, subtracted in the last column.
Medians of ``--runs``. This is the hot-cache figure: in the flood, cache misses add to it
(``run.py --bpf-stats`` measures that).

Run as root: ``python3 bench/ebpf/prog_cost.py [--runs 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BPF_DIR = HERE.parents[1] / "plugins" / "ingest_ebpf" / "bpf"

VARIANTS = [  # (label, slots, precise clock)
    ("slots 4096, tick clock (default)", 4096, 0),
    ("slots 4096, precise clock", 4096, 1),
    ("no slots (hash only), tick clock", 0, 0),
    ("no slots, precise clock (before)", 0, 1),
]


def build(tmp: Path) -> tuple[Path, Path]:
    """The agent's object and skeleton, the harness, and the empty program's object."""
    subprocess.run(["make", "-s", "-C", str(BPF_DIR), f"OUTPUT={tmp}"], check=True)
    exe = tmp / "prog_cost"
    subprocess.run(["gcc", "-O2", f"-I{tmp}", "-o", str(exe), str(HERE / "prog_cost.c"),
                    "-lbpf"], check=True)
    empty = tmp / "empty.bpf.o"
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu",
                    "-c", str(HERE / "empty.bpf.c"), "-o", str(empty)], check=True)
    return exe, empty


EMPTY_RUN = """
import ctypes, sys
lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
lib.bpf_object__open.restype = ctypes.c_void_p
lib.bpf_object__find_program_by_name.restype = ctypes.c_void_p
obj = lib.bpf_object__open(sys.argv[1].encode())
assert obj and lib.bpf_object__load(ctypes.c_void_p(obj)) == 0
prog = lib.bpf_object__find_program_by_name(ctypes.c_void_p(obj), b"empty_tc")
fd = lib.bpf_program__fd(ctypes.c_void_p(prog))

class Opts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("data_in", ctypes.c_void_p),
                ("data_out", ctypes.c_void_p), ("data_size_in", ctypes.c_uint32),
                ("data_size_out", ctypes.c_uint32), ("ctx_in", ctypes.c_void_p),
                ("ctx_out", ctypes.c_void_p), ("ctx_size_in", ctypes.c_uint32),
                ("ctx_size_out", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("repeat", ctypes.c_int), ("duration", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32)]

frame = ctypes.create_string_buffer(b"\\x02" * 12 + b"\\x08\\x00" + b"\\x00" * 46, 60)
opts = Opts(sz=ctypes.sizeof(Opts), data_in=ctypes.addressof(frame), data_size_in=60,
            repeat=int(sys.argv[2]))
assert lib.bpf_prog_test_run_opts(fd, ctypes.byref(opts)) == 0
print(opts.duration)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=2_000_000, help="runs per measurement")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nfa-prog-cost-") as t:
        exe, empty = build(Path(t))
        floor = statistics.median(
            float(subprocess.run([sys.executable, "-c", EMPTY_RUN, str(empty),
                                  str(args.repeat)], capture_output=True, text=True,
                                 check=True).stdout) for _ in range(args.runs))
        print(f"empty TCX program (test-run loop): {floor:.1f} ns/run\n")
        print("| variant | 1 flow, ns/run | 1,000 flows, ns/run | program, ns (1,000 flows "
              "- empty) |")
        print("|---|---|---|---|")
        for label, slots, precise in VARIANTS:
            cells = []
            for flows in (1, 1000):
                runs = [float(subprocess.run(
                    [str(exe), str(slots), str(precise), str(flows),
                     str(max(1, args.repeat // flows))],
                    capture_output=True, text=True, check=True).stdout)
                    for _ in range(args.runs)]
                cells.append(statistics.median(runs))
            print(f"| {label} | {cells[0]:.1f} | {cells[1]:.1f} | {cells[1] - floor:.1f} |")


if __name__ == "__main__":
    main()
