"""The floor of NFLOG ingest on this machine: what receiving alone costs, per packet (root).

``python bench/nflog/floor.py --workload w1 --rounds 3``

Each run builds bench/compare's topology (sender -- router -- sink namespaces, veth), its
``log group`` rule in the router's prerouting chain (``snaplen 128 queue-threshold 64``, as
bench/compare) unless the scenario has none, and sends the workload's bounded flood
(``flowgen``, :data:`bench.compare.run.WORKLOADS`) while one scenario observes:

* ``none``: no rule (the sender's unobserved rate);
* ``rule``: the rule, nobody bound to the group (the kernel finds no instance);
* ``recv``: ``floor_reader.c`` receives the datagrams and discards them;
* ``walk``: the same plus the walk of every netlink message and attribute (NFULA_SEQ read,
  so its ``messages + seq_gaps`` must equal the packets that reached the hook);
* ``agent``: the agent itself (bench/compare's ``agent-nflog``: reader, cache, export).

``recv`` and ``walk`` use the agent's socket code and settings: :class:`NflogSocket` opened in
the router namespace with the default ``rcvbuf`` and ``NETLINK_NO_ENOBUFS``, bound with the
defaults' ``snaplen``, ``qthreshold``, ``nlbufsiz`` (``Config.batch_buffer()``), flush timeout
and ``NFULNL_CFG_F_SEQ``, copy mode PACKET; the reader's loop is the agent's (ppoll, up to 8
datagrams per ``recvmmsg()`` into buffers of the agent's size, rounds of at most 64 datagrams
or 1 MiB, ``coalesce_ms`` pause after a round that emptied the socket).

Reported per scenario (medians over rounds, min-max): the observer's CPU per packet sent
(``recv``/``walk``: user + system of the reader process, from ``getrusage`` at its exit, which
is idle but for the flood; ``agent``: bench/compare's ``cpu_s``, flood to exit, and its flood
phase alone), the sender's rate and its ratio to ``none`` in the same round, and for ``walk``
the bytes per message and the attribute chain of a message (type:length). Every flood is
bounded; namespaces and processes are removed by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.compare.run import (  # noqa: E402
    DST4,
    DST6,
    GROUP,
    OBSERVERS,
    WORKLOADS,
    prepare,
    process_cpu_s,
    wait_settled,
)
from netflow_agent.plugins.ingest_nflog.config import NLBUFSIZ_MAX, Config  # noqa: E402
from netflow_agent.plugins.ingest_nflog.netlink import NflogSocket  # noqa: E402
from tests.support.flowgen import build, rx_dropped  # noqa: E402
from tests.support.netns import routed_topology  # noqa: E402

SCENARIOS = ("none", "rule", "recv", "walk", "agent")
RECV_BATCH = 8  # datagrams per recvmmsg(), as _nflog.c


def build_reader(directory: Path) -> str:
    """Compile floor_reader.c into ``directory``; the executable's path."""
    out = directory / "floor_reader"
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(out),
                    str(Path(__file__).with_name("floor_reader.c"))], check=True)
    return str(out)


def run_reader(mode: str, reader: str, topo, cfg: Config, send) -> dict:  # type: ignore[no-untyped-def]
    """Bind the group as the agent does, run the floor reader through the flood."""
    sock = NflogSocket(GROUP, topo.router_ns.name, cfg.rcvbuf)
    try:
        sock.bind(cfg.snaplen, cfg.qthreshold, cfg.batch_buffer(),
                  max(1, cfg.flush_timeout_ms // 10))
        fd = sock.sock.fileno()
        bufsize = max(NLBUFSIZ_MAX, cfg.snaplen or 65535) + 4096  # GroupReader.buf
        proc = subprocess.Popen([reader, mode, str(RECV_BATCH), str(bufsize),
                                 str(cfg.coalesce_ms), str(fd)], pass_fds=(fd,),
                                stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(0.2)
            cpu0 = process_cpu_s(proc.pid) or 0.0
            out = send()
            out["flood_cpu_s"] = (process_cpu_s(proc.pid) or 0.0) - cpu0
            time.sleep(0.5)  # the kernel's last partial batch (flush timeout 100 ms)
        finally:
            proc.send_signal(signal.SIGTERM)
            stdout, _ = proc.communicate(timeout=30)
        got = json.loads(stdout)
        out.update(got, cpu_s=got["user_s"] + got["sys_s"] - cpu0)
        return out
    finally:
        sock.close()


def run_agent(topo, tmp: Path, cfg: Config, explicit: bool, send) -> dict:  # type: ignore[no-untyped-def]
    """bench/compare's agent-nflog observer through the flood, until it exited."""
    observer = OBSERVERS["agent-nflog"](topo, tmp)
    if explicit:  # the agent's own default otherwise (it reads its config in its process)
        observer.ingest = f"{observer.ingest}coalesce_ms = {cfg.coalesce_ms}\n"
    observer.start()
    try:
        assert observer.usage is not None
        cpu0 = observer.usage.sample()
        out = send()
        out["flood_cpu_s"] = observer.usage.sample(find=False) - cpu0
        wait_settled(observer.ns, observer.usage, "agent")
        observer.flush()
        out["cpu_s"] = observer.usage.cpu_s() - cpu0
    finally:
        observer.stop()
    out.update({k: v for k, v in observer.counted().items() if k in ("traffic", "dropped")})
    return out


def one_run(scenario: str, flood, flowgen: str, reader: str, seconds: float,  # type: ignore[no-untyped-def]
            coalesce_ms: int | None = None) -> dict:
    """One flood through a fresh topology with ``scenario`` observing (``coalesce_ms``: the
    readers' pause instead of the default's)."""
    cfg = Config(group=GROUP) if coalesce_ms is None else Config(group=GROUP,
                                                                  coalesce_ms=coalesce_ms)
    with routed_topology() as topo, tempfile.TemporaryDirectory(prefix="nfa-floor-") as t:
        prepare(topo, scenario != "none")
        before = rx_dropped(topo.router_client)

        def send() -> dict:
            sent, elapsed = flood.send_timed(flowgen, topo.client, topo.router_client.mac,
                                             DST4, DST6, seconds=seconds)
            return {"sent": sent, "pps": sent / elapsed}

        if scenario in ("recv", "walk"):
            out = run_reader(scenario, reader, topo, cfg, send)
        elif scenario == "agent":
            out = run_agent(topo, Path(t), cfg, coalesce_ms is not None, send)
        else:
            out = send()
        out["before_hook"] = rx_dropped(topo.router_client) - before
        return out


def summary(results: dict[str, list[dict]]) -> str:
    """One line per scenario: medians (min-max) over the rounds."""
    def med(values: list[float]) -> str:
        return (f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"
                if values else "-")

    none = results.get("none", [])
    lines = []
    for scenario, runs in results.items():
        us = [r["cpu_s"] / r["sent"] * 1e6 for r in runs if "cpu_s" in r]
        flood = [r["flood_cpu_s"] / r["sent"] * 1e6 for r in runs if "flood_cpu_s" in r]
        ratio = [r["pps"] / n["pps"] for r, n in zip(runs, none, strict=False)]
        line = (f"{scenario:11s} observer {med(us)} us/packet (flood phase {med(flood)}); "
                f"sender {statistics.median(r['pps'] for r in runs) / 1e3:.0f} kpps, "
                f"vs none {med(ratio)}")
        last = runs[-1]
        if "bytes" in last:
            line += f"; {last['bytes'] / last['sent']:.0f} bytes read/packet"
        if last.get("messages"):
            exact = all(r["messages"] + r["seq_gaps"] == r["sent"] - r["before_hook"]
                        for r in runs)
            line += f", exact {exact}, attrs (type:len) {last['attrs']}"
        elif "traffic" in last:
            exact = all(r["traffic"] + r["dropped"] == r["sent"] - r["before_hook"]
                        for r in runs)
            line += f"; exact {exact}"
        lines.append(line)
    return "\n".join(lines)


def name(scenario: str, pause: int | None) -> str:
    """A scenario's name in the results, with its pause when not the default."""
    return scenario if pause is None or scenario in ("none", "rule") else f"{scenario}/{pause}ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="w1", choices=sorted(WORKLOADS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    ap.add_argument("--seconds", type=float, default=60, help="bound of each flood")
    ap.add_argument("--coalesce-ms", type=int, nargs="+", default=[None],
                    help="the readers' pause after a round that emptied the socket (default: "
                    "the agent's); several values alternate within each round")
    ap.add_argument("--json", help="write the raw results here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: namespaces, nftables, NFLOG")
    flood = WORKLOADS[args.workload]
    runs = list(dict.fromkeys((s, None if s in ("none", "rule") else c)
                              for s in args.only for c in args.coalesce_ms))
    results: dict[str, list[dict]] = {name(s, c): [] for s, c in runs}
    with tempfile.TemporaryDirectory(prefix="nfa-floor-build-") as tmp:
        flowgen, reader = build(Path(tmp)), build_reader(Path(tmp))
        for n in range(args.rounds):
            for scenario, pause in runs:
                r = one_run(scenario, flood, flowgen, reader, args.seconds, pause)
                results[name(scenario, pause)].append(r)
                print(f"round {n} {args.workload} {name(scenario, pause)} {json.dumps(r)}",
                      file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    print(summary(results))


if __name__ == "__main__":
    main()
