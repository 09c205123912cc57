"""NFLOG ingest benchmark: the agent and pmacct's uacctd on the same NFLOG traffic (root).

``python3 bench/nflog/run.py [--seconds 3] [--runs 3] [--flows 1] [--decoder auto]``

Two namespaces joined by a quiet veth; ``bench/ebpf/blast.c`` (compiled here; sendmmsg, 64-byte
frames; ``sport`` mode: one source port per flow, one destination port) floods UDP from one
into the other for a bounded time. The receiver's nft input chain logs the flood to group 1
(agent) and/or group 2 (uacctd), same rule text. Scenarios per round:

* ``baseline``: no rules; ``rules``: both rules, no listener;
* ``agent`` / ``uacctd``: one rule and its listener; ``both``: both, side by side.

Reported per listener: share of logged packets accounted (rule counter vs what the listener
counted), CPU seconds per million logged packets (utime+stime of its process tree during the
flood, from /proc), and the sender's rate relative to ``baseline``. Medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.agentproc import Agent, nflog_counters  # noqa: E402
from tests.support.netns import Netns, end_process, veth_pair  # noqa: E402

PORT = 7000
PAYLOAD = 18  # 14 + 20 + 8 + 18 = 60-byte frame (64 on a real wire with FCS)
NLBUFSIZ = int(os.environ.get("NFA_BENCH_NLBUFSIZ", "0"))  # 0: the agent sizes it
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """utime+stime of ``pid`` and all its descendants (threads included)."""
    total = 0.0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
            for task in Path(f"/proc/{p}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def _rules(ns: Netns, groups: list[int]) -> None:
    ns.run(["nft", "delete", "table", "inet", "bench"], check=False)
    if not groups:
        return
    lines = ["table inet bench {", "  chain input { type filter hook input priority 0;"]
    lines += [f"    udp dport {PORT} counter log group {g} snaplen 128 queue-threshold 64"
              for g in groups]
    ns.run(["nft", "-f", "-"], input="\n".join(lines + ["  }", "}"]) + "\n")


def _logged(ns: Netns) -> dict[int, int]:
    out = json.loads(ns.run(["nft", "-j", "list", "table", "inet", "bench"]).stdout)
    counts = {}
    for item in out["nftables"]:
        exprs = item.get("rule", {}).get("expr", [])
        group = next((e["log"]["group"] for e in exprs if "log" in e), None)
        packets = next((e["counter"]["packets"] for e in exprs if "counter" in e), 0)
        if group is not None:
            counts[group] = packets
    return counts


def _start_uacctd(ns: Netns, work: Path) -> tuple[subprocess.Popen, Path]:
    out = work / "uacctd.csv"
    out.unlink(missing_ok=True)
    conf = work / "uacctd.conf"
    conf.write_text(f"""daemonize: false
uacctd_group: 2
uacctd_nl_size: 65536
uacctd_threshold: 64
snaplen: 128
plugins: print
aggregate: src_host, dst_host, src_port, dst_port, proto
print_output: csv
print_output_file: {out}
print_output_file_append: true
print_refresh_time: 1
plugin_pipe_size: 67108864
plugin_buffer_size: 65536
""")
    proc = ns.popen(["uacctd", "-f", str(conf)], stdout=subprocess.DEVNULL)
    time.sleep(1.0)
    if proc.poll() is not None:
        raise RuntimeError(f"uacctd exited: {proc.stderr.read() if proc.stderr else ''}")
    return proc, out


def _uacctd_packets(csv: Path) -> int:
    total = 0
    if not csv.exists():
        return 0
    header: list[str] = []
    for line in csv.read_text().splitlines():
        cells = line.split(",")
        if "PACKETS" in cells:
            header = cells
            continue
        if header and len(cells) == len(header):
            total += int(cells[header.index("PACKETS")])
    return total


def one_run(scenario: str, a: Netns, b: Netns, dst: str, seconds: float,
            work: Path, blast: str, flows: int = 1, decoder: str = "auto") -> dict:
    groups = {"baseline": [], "rules": [1, 2], "agent": [1], "uacctd": [2],
              "both": [1, 2]}[scenario]
    _rules(b, groups)
    agent = uacctd = None
    if scenario in ("agent", "both"):
        agent = Agent.in_dir(work, f'[[ingest.nflog]]\ngroup = 1\nnetns = "{b.name}"\n'
                             f'qthreshold = 64\nnlbufsiz = {NLBUFSIZ}\nrcvbuf = 33554432\n'
                             f'decoder = "{decoder}"\n'
                             '[[export.log]]\npath = "/dev/null"\n'
                             ).start("reading NFLOG group")
    if scenario in ("uacctd", "both"):
        uacctd, csv = _start_uacctd(b, work)
    cpu0 = {"agent": _cpu_seconds(agent.proc.pid) if agent else 0.0,
            "uacctd": _cpu_seconds(uacctd.pid) if uacctd else 0.0}
    out = a.run([blast, dst, str(PORT), str(flows), str(seconds), "50000000", str(PAYLOAD),
                 "sport"]).stdout.split()
    sent, elapsed = int(out[0]), float(out[1])
    time.sleep(1.5)  # let listeners finish the backlog
    cpu = {"agent": _cpu_seconds(agent.proc.pid) - cpu0["agent"] if agent else 0.0,
           "uacctd": _cpu_seconds(uacctd.pid) - cpu0["uacctd"] if uacctd else 0.0}
    logged = _logged(b) if groups else {}
    res = {"scenario": scenario, "sent": sent, "pps": sent / elapsed, "logged": logged}
    if agent:
        agent.stop()
        c = nflog_counters(agent.log())
        res["agent"] = {"accounted": c["packets"], "lost": c["seq_gaps"], "cpu_s": cpu["agent"]}
    if uacctd:
        time.sleep(1.2)  # one more print refresh
        end_process(uacctd)
        res["uacctd"] = {"accounted": _uacctd_packets(csv), "cpu_s": cpu["uacctd"]}
    return res


def summarize(results: list[dict]) -> dict:
    base = statistics.median(r["pps"] for r in results if r["scenario"] == "baseline")
    table: dict = {"baseline_pps": base}
    for scen in ("rules", "agent", "uacctd", "both"):
        rs = [r for r in results if r["scenario"] == scen]
        row: dict = {"pps": statistics.median(r["pps"] for r in rs),
                     "rate_vs_baseline": statistics.median(r["pps"] for r in rs) / base}
        for who, group in (("agent", 1), ("uacctd", 2)):
            if who in rs[0]:
                row[who] = {
                    "accounted_share": statistics.median(
                        r[who]["accounted"] / max(1, r["logged"][group]) for r in rs),
                    "cpu_s_per_mpkt": statistics.median(
                        r[who]["cpu_s"] / max(1e-9, r["logged"][group] / 1e6) for r in rs),
                    "logged_median": statistics.median(r["logged"][group] for r in rs)}
        table[scen] = row
    return table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--flows", type=int, default=1, help="UDP flows (source ports), 1-256")
    ap.add_argument("--decoder", default="auto", choices=["auto", "c", "python"],
                    help="the agent's [[ingest.nflog]] decoder")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nfa-bench-nflog-"))
    blast = str(work / "blast")
    subprocess.run(["cc", "-O2", "-o", blast, str(ROOT / "bench" / "ebpf" / "blast.c")],
                   check=True)
    results = []
    with Netns() as a, Netns() as b:
        pair = veth_pair(a, b)
        sink = b.popen([sys.executable, "-c", "import socket,time;s=socket.socket();"
                        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                        f"s.bind(('0.0.0.0',{PORT}));print('ready',flush=True);time.sleep(3600)"])
        try:
            for _ in range(args.runs):
                for scen in ("baseline", "rules", "agent", "uacctd", "both"):
                    r = one_run(scen, a, b, pair.b.addr, args.seconds, work, blast,
                                args.flows, args.decoder)
                    print(json.dumps(r), flush=True)
                    results.append(r)
        finally:
            end_process(sink)
    print(json.dumps(summarize(results), indent=1))


if __name__ == "__main__":
    main()
