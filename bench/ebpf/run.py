"""bench/ebpf: how much a flood through a veth costs, and how much of it is accounted.

Scenarios, run in turn in the same invocation (rounds interleaved, medians reported), each
observing the receiving end of one veth link between two fresh namespaces:

* ``none``: nothing attached (the sender's unobserved rate);
* ``empty-tcx``: a TCX program that returns at once (``empty.bpf.c``): what any tc observer
  costs before it does any work;
* ``agent``: ``agent`` with ``[[ingest.ebpf]]`` (TCX, both directions) exporting JSON lines;
* ``agent-hash``: the same with ``cpu_slots = 0`` (every packet walks the hash table);
* ``agent-shared``: the same with ``map_type = "shared"`` (one hash, atomic adds);
* ``softflowd``: softflowd on the interface (libpcap) exporting NetFlow v9 to nfcapd;
* ``pmacctd``: pmacctd (libpcap) with the nfprobe plugin exporting NetFlow v9 to nfcapd.

The sender is ``blast.c`` (sendmmsg, one core, bounded by ``--seconds`` and ``--max-packets``),
64-byte frames to ``--flows`` UDP ports; the receiver drops them in its raw PREROUTING table
(after tc, XDP and packet taps have seen them) so no socket work skews the numbers.
Reported per scenario: sender rate (and ratio to ``none``), share of sent packets the tool
accounted, the tool's CPU seconds (user+system, all its processes) during the flood, CPU
seconds per million packets, and CPU as % of one core. With ``--bpf-stats``, the agent's BPF
programs' own run time (``BPF_ENABLE_STATS``, held only during the flood) is reported too:
that work runs in the sender's softirq and is not in the agent's process CPU. The libpcap
tools' kernel-side copy cost is likewise only visible in the sender ratio.

Run as root: ``python3 bench/ebpf/run.py [--rounds 3] [--seconds 5] [--flows 1000]``.
Traffic stays inside the namespaces created here.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.netns import Netns, end_process, veth_pair  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
BASE_PORT = 20000
PAYLOAD = 18  # 14 + 20 + 8 + 18 = 60-byte frame (64 on a real wire with FCS)


def build_empty_program(tmp: Path) -> Path:
    """Compile ``empty.bpf.c`` (the floor peer) into ``tmp``; returns the object's path."""
    obj = tmp / "empty.bpf.o"
    multiarch = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True,
                               check=True).stdout.strip()  # asm/types.h lives there (Debian)
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", f"-I/usr/include/{multiarch}", "-c",
                    str(Path(__file__).with_name("empty.bpf.c")), "-o", str(obj)], check=True)
    return obj


def build_blast(tmp: Path) -> str:
    out = tmp / "blast"
    subprocess.run(["gcc", "-O2", "-o", str(out), str(Path(__file__).with_name("blast.c"))],
                   check=True)
    return str(out)


def process_tree_cpu(root_pid: int) -> float:
    """User+system CPU seconds of ``root_pid`` and all its descendants."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / TICK
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(times.get(pid, 0.0) for pid in tree)


class Tool:
    """One observer: start, CPU, stop, packets it accounted."""

    name = "none"

    def __init__(self, a: Netns, b: Netns, ifname: str, tmp: Path, flows: int):
        self.a, self.b, self.ifname, self.tmp, self.flows = a, b, ifname, tmp, flows
        self.proc: subprocess.Popen | None = None

    def start(self) -> None: ...

    def cpu(self) -> float:
        return process_tree_cpu(self.proc.pid) if self.proc else 0.0

    def stop(self) -> None:
        if self.proc is not None:
            end_process(self.proc, timeout=30)

    def accounted(self) -> int | None:
        return None

    def kernel_stats(self) -> tuple[int, int]:
        """BPF ``(run_time_ns, run_cnt)`` of this tool's programs (none by default)."""
        return (0, 0)


def bpf_run_stats(prog_ids: set[int]) -> tuple[int, int]:
    """``(run_time_ns, run_cnt)`` summed over the given programs (needs stats enabled)."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True,
                         check=True).stdout
    progs = [p for p in json.loads(out) if p["id"] in prog_ids]
    return (sum(p.get("run_time_ns", 0) for p in progs),
            sum(p.get("run_cnt", 0) for p in progs))


class BpfStats:
    """``BPF_ENABLE_STATS(BPF_STATS_RUN_TIME)``: per-program run time while the fd is open.

    Process-scoped (no sysctl is changed): the kernel stops counting when the fd is closed.
    """

    def __enter__(self) -> BpfStats:
        import ctypes

        self.fd = ctypes.CDLL("libbpf.so.1", use_errno=True).bpf_enable_stats(0)
        if self.fd < 0:
            raise OSError(-self.fd, "BPF_ENABLE_STATS")
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


class Agent(Tool):
    name = "agent"
    mode = "tcx"
    map_type = "percpu"
    extra = ""

    def kernel_stats(self) -> tuple[int, int]:
        """The agent's programs' ``(run_time_ns, run_cnt)`` so far."""
        found = re.search(r"loaded BPF programs (\{.*?\})", self.log.read_text())
        if found is None:
            raise RuntimeError("the agent did not log its BPF program ids")
        return bpf_run_stats(set(ast.literal_eval(found.group(1)).values()))

    def start(self) -> None:
        self.out = self.tmp / "agent.jsonl"
        conf = self.tmp / "agent.toml"
        conf.write_text(f"""
[[ingest.ebpf]]
interfaces = ["{self.ifname}"]
netns = "{self.b.name}"
mode = "{self.mode}"
map_type = "{self.map_type}"
{self.extra}

[[export.log]]
path = "{self.out}"
""")
        self.log = self.tmp / "agent.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "netflow_agent.cli", "--log-level", "info", "-c", str(conf)],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "w"), cwd=ROOT)  # noqa: SIM115
        deadline = time.monotonic() + 20
        while "attached" not in self.log.read_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"agent did not attach: {self.log.read_text()}")
            time.sleep(0.05)

    def accounted(self) -> int:
        total = 0
        for line in self.out.read_text().splitlines():
            r = json.loads(line)
            if r.get("protocol") == 17 and BASE_PORT <= r["dst_port"] < BASE_PORT + self.flows:
                total += r["packets"]
        return total


class AgentShared(Agent):
    """The agent with one shared hash and atomic adds instead of the per-CPU hash."""

    name = "agent-shared"
    map_type = "shared"


TCX_ATTACH = """
import ctypes, socket, sys
lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
fd = lib.bpf_obj_get(sys.argv[1].encode())
err = lib.bpf_prog_attach(fd, socket.if_nametoindex(sys.argv[2]), 46, 0)  # BPF_TCX_INGRESS
sys.exit(f"TCX attach failed: {err}" if fd < 0 or err else 0)
"""


class EmptyTcx(Tool):
    """A TCX program that only returns ``TCX_NEXT``: the floor any tc observer pays here."""

    name = "empty-tcx"

    def start(self) -> None:
        obj = build_empty_program(self.tmp)
        self.fs = self.tmp / "bpffs"
        self.fs.mkdir()
        subprocess.run(["mount", "-t", "bpf", "bpf", str(self.fs)], check=True)
        pin = self.fs / "empty"
        subprocess.run(["bpftool", "prog", "load", str(obj), str(pin), "type", "tc"], check=True)
        prog = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "pinned", str(pin)],
                                         capture_output=True, text=True, check=True).stdout)
        self.prog_id = prog["id"]
        # bpftool 7.1 cannot attach TCX: libbpf's bpf_prog_attach(fd, ifindex, BPF_TCX_INGRESS)
        self.b.run([sys.executable, "-c", TCX_ATTACH, str(pin), self.ifname])

    def kernel_stats(self) -> tuple[int, int]:
        return bpf_run_stats({self.prog_id})

    def stop(self) -> None:
        """The namespace's veth takes the attachment with it; the pin goes with the mount."""
        subprocess.run(["umount", str(self.fs)], check=True)


class NfcapdTool(Tool):
    """A libpcap probe exporting NetFlow v9 to an nfcapd in the same namespace."""

    def start(self) -> None:
        self.dir = self.tmp / f"{self.name}-nfcapd"
        self.dir.mkdir()
        self.port = 9995
        self.nfcapd = self.b.popen(["nfcapd", "-w", str(self.dir), "-b", "127.0.0.1",
                                    "-p", str(self.port)])
        time.sleep(0.5)
        self.proc = self.b.popen(self.command())
        time.sleep(1.5)  # pcap open and first poll

    def command(self) -> list[str]:
        raise NotImplementedError

    def stop(self) -> None:
        super().stop()
        time.sleep(1.0)  # last export datagrams
        self.nfcapd.send_signal(signal.SIGTERM)
        self.nfcapd.wait(timeout=20)

    def accounted(self) -> int:
        out = subprocess.run(
            ["nfdump", "-R", str(self.dir), "-N", "-q", "-o", "fmt:%pkt",
             f"proto udp and dst port >= {BASE_PORT} and dst port < {BASE_PORT + self.flows}"],
            capture_output=True, text=True).stdout
        return sum(int(x) for x in out.split() if x.isdigit())


class Softflowd(NfcapdTool):
    name = "softflowd"

    def command(self) -> list[str]:
        return ["softflowd", "-d", "-i", self.ifname, "-n", f"127.0.0.1:{self.port}",
                "-v", "9", "-c", str(self.tmp / "softflowd.ctl"),
                "-p", str(self.tmp / "softflowd.pid")]

    def stop(self) -> None:
        """softflowd exports its table on ``softflowctl expire-all``, not on SIGTERM."""
        self.b.run(["softflowctl", "-c", str(self.tmp / "softflowd.ctl"), "expire-all"],
                   check=False)
        time.sleep(1.0)
        super().stop()


class Pmacctd(NfcapdTool):
    name = "pmacctd"

    def command(self) -> list[str]:
        conf = self.tmp / "pmacctd.conf"
        conf.write_text(f"""daemonize: false
pcap_interface: {self.ifname}
snaplen: 128
plugins: nfprobe
nfprobe_receiver: 127.0.0.1:{self.port}
nfprobe_version: 9
aggregate: src_host, dst_host, src_port, dst_port, proto, tos
plugin_pipe_size: 20480000
plugin_buffer_size: 20480
""")
        return ["pmacctd", "-f", str(conf)]


class AgentXdp(Agent):
    """The agent with ``mode = "xdp"`` (ingress only; veth then receives through NAPI)."""

    name = "agent-xdp"
    mode = "xdp"
    extra = 'direction = "ingress"'


class AgentHashOnly(Agent):
    """The agent without per-CPU slots: every packet walks the kernel hash table."""

    name = "agent-hash"
    extra = "cpu_slots = 0"


TOOLS = {"none": Tool, "empty-tcx": EmptyTcx, "agent": Agent, "agent-hash": AgentHashOnly,
         "agent-xdp": AgentXdp,          "agent-shared": AgentShared, "softflowd": Softflowd,
         "pmacctd": Pmacctd}


def one_run(kind: str, args: argparse.Namespace, blast: str) -> dict:
    with Netns() as a, Netns() as b, tempfile.TemporaryDirectory(prefix="nfa-bench-") as t:
        pair = veth_pair(a, b)
        b.run(["iptables", "-t", "raw", "-A", "PREROUTING", "-p", "udp", "--dport",
               f"{BASE_PORT}:{BASE_PORT + args.flows - 1}", "-j", "DROP"])
        tool = TOOLS[kind](a, b, pair.b.ifname, Path(t), args.flows)
        tool.start()
        time.sleep(args.settle)  # start-up work (imports, first scans) is not flood work
        stats = args.bpf_stats and isinstance(tool, (Agent, EmptyTcx))
        with BpfStats() if stats else contextlib.nullcontext():
            k0 = tool.kernel_stats()
            cpu0 = tool.cpu()
            pin = ["taskset", "-c", str(args.pin)] if args.pin is not None else []
            out = a.run([*pin, "timeout", str(args.seconds + 10), blast, pair.b.addr,
                         str(BASE_PORT), str(args.flows), str(args.seconds),
                         str(args.max_packets), str(PAYLOAD)]).stdout.split()
            cpu = tool.cpu() - cpu0
            k1 = tool.kernel_stats() if stats else k0
        tool.stop()
        sent, elapsed = int(out[0]), float(out[1])
        accounted = tool.accounted()
        return {"sent": sent, "pps": sent / elapsed, "cpu_s": cpu, "elapsed": elapsed,
                "accounted": accounted, "bpf_ns": k1[0] - k0[0], "bpf_runs": k1[1] - k0[1]}


def summarise(results: dict[str, list[dict]]) -> list[dict]:
    base = statistics.median(r["pps"] for r in results["none"])
    rows = []
    for kind, runs in results.items():
        shares = [r["accounted"] / r["sent"] for r in runs if r["accounted"] is not None]
        rows.append({
            "scenario": kind,
            "kpps": statistics.median(r["pps"] for r in runs) / 1000,
            "ratio": statistics.median(r["pps"] for r in runs) / base,
            "accounted": statistics.median(shares) if shares else None,
            "cpu_s_per_mpkt": statistics.median(r["cpu_s"] / r["sent"] * 1e6 for r in runs),
            "core_pct": statistics.median(100 * r["cpu_s"] / r["elapsed"] for r in runs),
            "bpf_ns_per_run": statistics.median(r["bpf_ns"] / r["bpf_runs"] if r["bpf_runs"]
                                                else 0 for r in runs),
            "bpf_s_per_mpkt": statistics.median(r["bpf_ns"] / 1e9 / r["sent"] * 1e6
                                                for r in runs),
            "runs": len(runs),
        })
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--max-packets", type=int, default=5_000_000)
    ap.add_argument("--flows", type=int, default=1000)
    ap.add_argument("--only", nargs="*", default=list(TOOLS))
    ap.add_argument("--bpf-stats", action="store_true",
                    help="measure the BPF programs' run time (BPF_ENABLE_STATS adds two clock "
                         "reads per run, so sender ratios of such runs are pessimistic)")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds between a tool's start and the flood, for every tool")
    ap.add_argument("--pin", type=int, metavar="CPU",
                    help="run the sender (and so the receive path it drives) on CPU and "
                         "everything else, the observers included, on the other CPUs")
    ap.add_argument("--json", help="write raw results here")
    args = ap.parse_args()
    if args.pin is not None:
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)) - {args.pin})
    with tempfile.TemporaryDirectory() as tmp:
        blast = build_blast(Path(tmp))
        results: dict[str, list[dict]] = {k: [] for k in ["none", *args.only] if k in TOOLS}
        for rnd in range(args.rounds):
            for kind in results:
                r = one_run(kind, args, blast)
                results[kind].append(r)
                print(f"round {rnd} {kind:10s} {r}", file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print("| scenario | sender kpps | vs none | accounted | userspace CPU s / Mpkt "
          "| % of a core | BPF ns / run | BPF CPU s / Mpkt |")
    print("|---|---|---|---|---|---|---|---|")
    for row in summarise(results):
        acc = f"{100 * row['accounted']:.2f} %" if row["accounted"] is not None else "-"
        print(f"| {row['scenario']} | {row['kpps']:.0f} | {row['ratio']:.3f} | {acc} | "
              f"{row['cpu_s_per_mpkt']:.3f} | {row['core_pct']:.1f} | "
              f"{row['bpf_ns_per_run']:.0f} | {row['bpf_s_per_mpkt']:.3f} |")


if __name__ == "__main__":
    main()
