"""bench/compare: the agent (NFLOG and eBPF) side by side with softflowd, pmacct and fprobe.

One command, as root::

    python bench/compare/run.py [--rounds 2] [--seconds 3] [--flows 1000] [--only ...]

Every observer gets the same known traffic in the same invocation (rounds interleaved, medians
reported): ``blast`` (``bench/ebpf/blast.c``: sendmmsg, one core, bounded by ``--seconds`` and
``--max-packets``) floods 64-byte UDP frames, packet ``k`` to port ``BASE + k % flows``,
through a veth between two fresh namespaces; so the generator's count gives the exact ground
truth of every flow. The receiving namespace drops the packets in an nftables prerouting
chain at priority -300, after packet taps and tc have seen them; observers that read NFLOG get
a ``log group`` rule in front of that drop (its cost is theirs). Observers:

* ``none``: nothing attached (the sender's unobserved rate);
* ``agent-nflog``: ``agent`` with ``[[ingest.nflog]]``;
* ``agent-ebpf``: ``agent`` with ``[[ingest.ebpf]]`` (TCX, ingress);
* ``softflowd``: libpcap on the interface;
* ``pmacctd``: pmacct's libpcap daemon with the ``nfprobe`` plugin;
* ``uacctd``: pmacct's NFLOG daemon with the ``nfprobe`` plugin;
* ``fprobe``: libpcap, NetFlow v5 (it has no v9), with a 64 MB capture buffer.

The pmacct daemons and fprobe expire idle flows after 1 s (their defaults hold flows for
minutes and pmacct's nfprobe does not flush on SIGTERM under uacctd); softflowd is told
``softflowctl expire-all``; the agent exports everything on SIGTERM. NFLOG readers get a
32 MB socket buffer.

Each observer exports NetFlow to its own ``nfcapd``; ``nfdump`` output is compared flow by
flow with the ground truth. Reported per observer: sender rate and its ratio to ``none``;
share of sent packets accounted (per flow, never more than was sent) and share of flows whose
packet count is exactly right; CPU seconds (user + system of the observer's whole process
tree, during the flood and the drain after it) per million packets sent; peak RSS (sum of
``VmHWM`` over its processes). Traffic stays inside the namespaces created here; everything
started is stopped by PID and the namespaces are deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.netns import Netns, end_process, veth_pair  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
BASE_PORT = 20000
PAYLOAD = 18  # 14 + 20 + 8 + 18 = 60-byte frame (64 on a wire with FCS)
GROUP = 7  # NFLOG group (per namespace)
NFCAPD_PORT = 9995
SETTLE_S = 2.0  # after the flood, before stopping: the NFLOG queue and libpcap buffers drain


# --- processes -------------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, float, int]]:
    """pid -> (parent pid, CPU seconds, VmHWM KiB) for every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        hwm = next((int(line.split()[1]) for line in status.splitlines()
                    if line.startswith("VmHWM:")), 0)
        out[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK, hwm)
    return out


def tree_usage(root_pid: int) -> tuple[float, int]:
    """CPU seconds and summed peak RSS (KiB) of ``root_pid`` and its descendants."""
    table = _proc_table()
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        pid = frontier.pop()
        for child, (parent, _cpu, _hwm) in table.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    cpu = sum(table[p][1] for p in tree if p in table)
    rss = sum(table[p][2] for p in tree if p in table)
    return cpu, rss


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- observers -------------------------------------------------------------------------------


class Observer:
    """Nothing attached; subclasses start a probe and an nfcapd for it."""

    name = "none"
    nflog = False  # needs the NFLOG rule

    def __init__(self, b: Netns, ifname: str, tmp: Path):
        self.b, self.ifname, self.tmp = b, ifname, tmp
        self.proc: subprocess.Popen | None = None
        self.nfcapd: subprocess.Popen | None = None
        self.dir = tmp / "nfcapd"

    def start(self) -> None:
        """Start the collector, then the probe."""

    def _start_nfcapd(self) -> None:
        self.dir.mkdir()
        self.nfcapd = self.popen(["nfcapd", "-w", str(self.dir), "-b", "127.0.0.1",
                                  "-p", str(NFCAPD_PORT)], "nfcapd")
        time.sleep(0.3)

    def popen(self, cmd: list[str], name: str, **kwargs) -> subprocess.Popen:  # type: ignore[no-untyped-def]
        """Start ``cmd`` in the namespace with its output in a log file (a full pipe blocks)."""
        log = open(self.tmp / f"{name}.out", "w")  # noqa: SIM115 - the child keeps it
        kwargs.setdefault("stdout", log)
        return self.b.popen(cmd, stderr=subprocess.STDOUT if kwargs["stdout"] is log else log,
                            **kwargs)

    def usage(self) -> tuple[float, int]:
        return tree_usage(self.proc.pid) if self.proc else (0.0, 0)

    def stop(self) -> None:
        """Make the probe export everything, stop it, then stop the collector."""
        if self.proc is not None:
            end_process(self.proc, timeout=30)
        if self.nfcapd is not None:
            time.sleep(1.0)  # the last datagrams
            self.nfcapd.send_signal(signal.SIGTERM)
            self.nfcapd.wait(timeout=20)

    def per_flow(self, flows: int) -> Counter[int] | None:
        """Packets per destination port, from nfdump."""
        if self.nfcapd is None:
            return None
        out = subprocess.run(
            ["nfdump", "-R", str(self.dir), "-N", "-q", "-o", "fmt:%dp %pkt",
             f"proto udp and dst port >= {BASE_PORT} and dst port < {BASE_PORT + flows}"],
            capture_output=True, text=True, check=False).stdout
        got: Counter[int] = Counter()
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
                got[int(parts[0])] += int(parts[1])
        return got


class Agent(Observer):
    ingest = ""

    def start(self) -> None:
        self._start_nfcapd()
        conf = self.tmp / "agent.toml"
        conf.write_text(f"""
[agent]
control_socket = ""
[cache]
inactive_timeout = 60
{self.ingest}
[[export.netflow]]
destination = ["127.0.0.1:{NFCAPD_PORT}"]
protocol = 9
""")
        # inside the namespace, so its exports reach the nfcapd there
        self.proc = self.popen([sys.executable, "-m", "netflow_agent.cli", "--log-level", "info",
                                "-c", str(conf)], "agent", stdout=subprocess.DEVNULL, cwd=ROOT)
        self.log = self.tmp / "agent.out"
        wait_for(lambda: self.ready in self.log.read_text() or self.proc.poll() is not None,
                 30, f"{self.name} to start")
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited: {self.log.read_text()}")


class AgentNflog(Agent):
    name = "agent-nflog"
    nflog = True
    ready = "reading NFLOG group"
    ingest = f"[[ingest.nflog]]\ngroup = {GROUP}\nrcvbuf = 33554432\n"


class AgentEbpf(Agent):
    name = "agent-ebpf"
    ready = "attached"

    @property
    def ingest(self) -> str:  # type: ignore[override]
        return (f'[[ingest.ebpf]]\ninterfaces = ["{self.ifname}"]\nmode = "tcx"\n'
                f'direction = "ingress"\npoll_interval_ms = 500\n')


class Softflowd(Observer):
    name = "softflowd"

    def start(self) -> None:
        self._start_nfcapd()
        self.ctl = self.tmp / "softflowd.ctl"
        self.proc = self.popen(["softflowd", "-d", "-i", self.ifname, "-n",
                                f"127.0.0.1:{NFCAPD_PORT}", "-v", "9", "-c", str(self.ctl),
                                "-p", str(self.tmp / "softflowd.pid")], "softflowd")
        time.sleep(1.5)

    def stop(self) -> None:
        """softflowd exports its table on ``softflowctl expire-all``, not on SIGTERM."""
        self.b.run(["softflowctl", "-c", str(self.ctl), "expire-all"], check=False)
        time.sleep(1.0)
        super().stop()


class Pmacct(Observer):
    daemon = "pmacctd"

    def start(self) -> None:
        self._start_nfcapd()
        conf = self.tmp / f"{self.daemon}.conf"
        source = (f"pcap_interface: {self.ifname}\nsnaplen: 128\n" if self.daemon == "pmacctd"
                  else f"uacctd_group: {GROUP}\nuacctd_nl_size: 33554432\nsnaplen: 128\n")
        conf.write_text(f"""daemonize: false
{source}plugins: nfprobe
nfprobe_receiver: 127.0.0.1:{NFCAPD_PORT}
nfprobe_version: 9
nfprobe_timeouts: udp=1:general=1:expint=1
aggregate: src_host, dst_host, src_port, dst_port, proto, tos
plugin_pipe_size: 20480000
plugin_buffer_size: 20480
""")
        self.proc = self.popen([self.daemon, "-f", str(conf)], self.daemon)
        time.sleep(1.5)


class Pmacctd(Pmacct):
    name = "pmacctd"


class Uacctd(Pmacct):
    name = "uacctd"
    daemon = "uacctd"
    nflog = True


class Fprobe(Observer):
    name = "fprobe"

    def start(self) -> None:
        self._start_nfcapd()
        # -l 2: log to stdout and stay in the foreground; idle flows expire after 1 s;
        # -B/-q: a 64 MB capture buffer and a long queue (the defaults lose ~90 % here)
        self.proc = self.popen(["fprobe", "-l", "2", "-B", "65536", "-q", "10000", "-i",
                                self.ifname, "-f", "udp", "-d", "1", "-s", "1",
                                f"127.0.0.1:{NFCAPD_PORT}"], "fprobe")
        time.sleep(1.5)

    def stop(self) -> None:
        time.sleep(3.0)  # fprobe exports idle flows at its scans; it drops its table on exit
        super().stop()


OBSERVERS = {cls.name: cls for cls in
             (Observer, AgentNflog, AgentEbpf, Softflowd, Pmacctd, Uacctd, Fprobe)}


# --- one run ---------------------------------------------------------------------------------


def _ruleset(flows: int, nflog: bool) -> str:
    ports = f"{BASE_PORT}-{BASE_PORT + flows - 1}"
    log = (f"    udp dport {ports} log group {GROUP} snaplen 128 queue-threshold 64\n"
           if nflog else "")
    return (f"table inet nfacompare {{\n  chain pre {{ type filter hook prerouting priority "
            f"-300; policy accept;\n{log}    udp dport {ports} drop\n  }}\n}}\n")


def truth(sent: int, flows: int) -> Counter[int]:
    """Packets per destination port: packet k went to BASE_PORT + k % flows."""
    return Counter({BASE_PORT + i: sent // flows + (1 if i < sent % flows else 0)
                    for i in range(flows) if sent // flows or i < sent % flows})


def one_run(kind: str, args: argparse.Namespace, blast: str) -> dict:
    with Netns() as a, Netns() as b, tempfile.TemporaryDirectory(prefix="nfa-cmp-") as t:
        pair = veth_pair(a, b)
        observer = OBSERVERS[kind](b, pair.b.ifname, Path(t))
        b.run(["nft", "-f", "-"], input=_ruleset(args.flows, observer.nflog))
        observer.start()
        try:
            cpu0, _ = observer.usage()
            out = a.run(["timeout", str(args.seconds + 10), blast, pair.b.addr,
                         str(BASE_PORT), str(args.flows), str(args.seconds),
                         str(args.max_packets), str(PAYLOAD)],
                        timeout=args.seconds + 20).stdout.split()
            time.sleep(SETTLE_S)
            cpu1, rss = observer.usage()
        finally:
            observer.stop()
        sent, elapsed = int(out[0]), float(out[1])
        got = observer.per_flow(args.flows)
    want = truth(sent, args.flows)
    result = {"sent": sent, "pps": sent / elapsed, "elapsed": elapsed, "cpu_s": cpu1 - cpu0,
              "rss_kb": rss}
    if got is not None:
        result["accounted"] = sum(min(got[p], n) for p, n in want.items())
        result["over"] = sum(max(0, got[p] - want.get(p, 0)) for p in got)
        result["flows_exact"] = sum(1 for p, n in want.items() if got[p] == n)
        result["flows"] = len(want)
    return result


def summarise(results: dict[str, list[dict]]) -> list[dict]:
    base = statistics.median(r["pps"] for r in results["none"]) if results.get("none") else 0
    rows = []
    for kind, runs in results.items():
        if not runs:
            continue
        acc = [r["accounted"] / r["sent"] for r in runs if "accounted" in r]
        exact = [r["flows_exact"] / r["flows"] for r in runs if "flows_exact" in r]
        pps = statistics.median(r["pps"] for r in runs)
        rows.append({
            "observer": kind, "kpps": pps / 1000, "ratio": pps / base if base else None,
            "packets": statistics.median(acc) if acc else None,
            "flows": statistics.median(exact) if exact else None,
            "over": max((r.get("over", 0) for r in runs), default=0),
            "cpu_s_per_mpkt": statistics.median(r["cpu_s"] / r["sent"] * 1e6 for r in runs),
            "rss_mb": statistics.median(r["rss_kb"] for r in runs) / 1024,
            "runs": len(runs),
        })
    return rows


def table(rows: list[dict]) -> str:
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.3f} %"

    lines = ["| observer | sender kpps | vs none | packets accounted | flows exact "
             "| CPU s / M packets | peak RSS MB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        cpu = "-" if r["observer"] == "none" else f"{r['cpu_s_per_mpkt']:.2f}"
        rss = "-" if r["observer"] == "none" else f"{r['rss_mb']:.0f}"
        over = f" (+{r['over']} extra)" if r["over"] else ""
        lines.append(f"| {r['observer']} | {r['kpps']:.0f} | {ratio} | {pct(r['packets'])}"
                     f"{over} | {pct(r['flows'])} | {cpu} | {rss} |")
    return "\n".join(lines)


def build_blast(tmp: Path) -> str:
    out = tmp / "blast"
    subprocess.run([shutil.which("gcc") or "cc", "-O2", "-o", str(out),
                    str(ROOT / "bench" / "ebpf" / "blast.c")], check=True)
    return str(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0, help="flood length per run")
    ap.add_argument("--max-packets", type=int, default=3_000_000, help="flood bound per run")
    ap.add_argument("--flows", type=int, default=1000)
    ap.add_argument("--only", nargs="*", default=[k for k in OBSERVERS if k != "none"])
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--table-from", help="print the table of raw results saved by --json")
    args = ap.parse_args()
    if args.table_from:
        print(table(summarise(json.loads(Path(args.table_from).read_text()))))
        return 0
    if os.geteuid() != 0:
        print("bench/compare needs root (network namespaces, NFLOG, BPF)", file=sys.stderr)
        return 2
    missing = [t for t in ("nfcapd", "nfdump", "softflowd", "softflowctl", "pmacctd", "uacctd",
                           "fprobe", "nft") if shutil.which(t) is None]
    if missing:
        print(f"missing tools: {', '.join(missing)} (see README set-up)", file=sys.stderr)
    kinds = ["none"] + [k for k in args.only if k in OBSERVERS and k != "none"
                        and not (k in ("softflowd", "pmacctd", "uacctd", "fprobe")
                                 and shutil.which(k) is None)]
    results: dict[str, list[dict]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        blast = build_blast(Path(tmp))
        for rnd in range(args.rounds):
            for kind in kinds:
                try:
                    r = one_run(kind, args, blast)
                except Exception as exc:  # one broken tool must not hide the others' rows
                    print(f"round {rnd} {kind}: failed: {exc}", file=sys.stderr, flush=True)
                    continue
                results[kind].append(r)
                print(f"round {rnd} {kind:12s} {json.dumps(r)}", file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(f"flood: {args.flows} UDP flows, 64-byte frames, {args.seconds:g} s or "
          f"{args.max_packets} packets per run, {args.rounds} round(s), medians")
    print(table(summarise(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
