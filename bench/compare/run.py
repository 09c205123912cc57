"""bench/compare: the agent (eBPF and NFLOG) side by side with softflowd, pmacctd and uacctd.

Issue 14's three workloads, every observer, rounds interleaved, one command (root)::

    python bench/compare/run.py --workload w1 w2 w3 --rounds 3 --json /tmp/compare.json

(``--table-from /tmp/compare.json`` reprints the tables; ``--append`` adds rounds to those
already in ``--json``, measured with the same ``--ebpf-set`` and ``--cache-set`` options (each
result records them); ``--cache-set aggregation=[\"0.0.0.0/0=32\"]`` gives both agents a
``[cache]`` option; ``--only agent-ebpf softflowd`` picks observers, ``fprobe`` is
optional; ``--workload smoke`` is a few-second check of the harness.)

Traffic: ``flowgen`` (``bench/ebpf/flowgen.c``, via ``tests/support/flowgen.py``) sends raw
Ethernet frames at its top rate from a sender namespace through a router namespace to a sink
namespace that drops them. Flows differ in source and destination address (4096 destinations),
ports and protocol: IPv4 and IPv6, UDP, TCP and ICMP echo (:class:`Flood` ``mix=True``). Its
schedule gives the exact truth of every flow, also when a flood is cut short by its time bound
(``--seconds``). Workloads (:data:`WORKLOADS`):

* ``w1``: 100k flows, 2M packets (20 each), 4k concurrent;
* ``w2``: 200k flows, 600k packets (3 each), 100k concurrent;
* ``w3``: 1M flows of 1-3 packets (2M packets), 200k concurrent: a flood of new flows.

Every observer runs in the router namespace and watches its ingress interface: the router's
nftables prerouting chain (priority -300) has a ``log group`` rule for the NFLOG readers only.

* ``none``: nothing attached (the sender's unobserved rate);
* ``empty-hook`` (not run by default): the empty program (``bench/ebpf/empty.bpf.c``) at the
  agent's hook, TCX ingress: the hook's own floor, no work done; ``empty-tc``: the same
  program as a legacy clsact filter (``tc ... bpf da``, the agent's ``mode = "tc"``). Their
  rows say the program's mean run time in ``--json`` (``hook_ns``) when BPF run-time stats are
  on (``bench/ebpf/progstats.py``);
* ``agent-ebpf``: ``agent`` with ``[[ingest.ebpf]]`` on the interface, ingress, its defaults;
* ``agent-nflog``: ``agent`` with ``[[ingest.nflog]]`` reading the group, its defaults;
* ``softflowd``: libpcap, ``-m 1048576`` flows;
* ``pmacctd``: pmacct's libpcap daemon, ``nfprobe`` plugin, 1M flows, 1 s timeouts;
* ``uacctd``: pmacct's NFLOG daemon, same plugin settings;
* ``fprobe`` (optional, not run by default): libpcap, NetFlow v5, so it cannot report IPv6.

Each observer exports NetFlow (v9; fprobe v5) to its own ``nfcapd`` in the router namespace.
After the flood (and ``--linger`` seconds more, to make the observer's own timeouts expire its
whole table while it runs) the harness waits until the observer is settled (no datagram reaches
the collector and the observer uses almost no CPU for 2 s), makes it export everything (agent:
SIGTERM; softflowd: ``softflowctl expire-all``; pmacct and fprobe: their 1 s timeouts), waits
until the collector has read everything, then compares nfdump's records with the truth flow by
flow, keyed by the full 5-tuple (protocol, addresses, ports; ICMP flows by their addresses, as
observers carry ICMP type and code differently). Reported per workload and observer (medians
over rounds): sender rate and its ratio to ``none``; share of sent packets accounted (per flow,
never more than sent; the worst round's too when it is lower) and of flows exactly right;
packets the kernel dropped before any hook (``rx_dropped`` of the interface); per round, the
agent's own counted drops (the ingest's and cache's, plus the packets of flow records the
exporter counted lost) and its balance ``sent - before hook - packets in exported flows -
counted drops`` (0 when every packet is accounted); datagrams the collector's socket dropped;
CPU (user + system of the observer's process tree from the start of the flood to its exit:
sampled from each process's CPU-time clock in ns, exact from ``wait4`` at the end) per
million packets sent and per thousand flows; peak RSS (sum of ``VmHWM`` over its processes)
and its split: the peak ``RssAnon`` (heap, stacks) and the ``RssFile`` (mapped files:
libraries) at that sample; the load average at each run's start.
The raw results (``--json``, and each ``round ...`` line on stderr) also split the observer's
CPU into phases (``cpu_phases``: ``flood``, ``settle`` with ``settle_s`` its wait, and ``stop``:
the flush and exit) and the flood's and settle's CPU by thread (``cpu_threads``, from the
scheduler's run time in ``schedstat``: 0.1 ms steps where ``stat`` counts 10 ms ticks).
Every flood is bounded in packets and seconds; everything started is stopped by PID and the
namespaces are deleted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.agentproc import nflog_counters  # noqa: E402
from tests.support.flowgen import DESTINATIONS, Flood, build, rx_dropped  # noqa: E402
from tests.support.netns import Netns, RoutedTopology, routed_topology  # noqa: E402


def _load_ebpf_bench():  # type: ignore[no-untyped-def]
    """bench/ebpf/run.py by path (``import run`` here would find this script itself)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ebpf_bench", ROOT / "bench/ebpf/run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


EBPF_BENCH = _load_ebpf_bench()  # empty.bpf.c's build, the TCX attach, BPF run stats

TICK = os.sysconf("SC_CLK_TCK")
GROUP = 7  # NFLOG group (per namespace)
NFCAPD_PORT = 9995
DST4, DST6 = "10.200.0.0", "fd00:c8::"  # the sink's address ranges (DESTINATIONS each)
WORKLOADS = {
    "w1": Flood(100_000, 20, 4_000, mix=True),
    "w2": Flood(200_000, 3, 100_000, mix=True),
    "w3": Flood(1_000_000, 1, 200_000, per_flow_max=3, mix=True),
    "smoke": Flood(3_000, 1, 1_000, per_flow_max=3, mix=True),
}
QUIET_S = 2.0  # settled: no datagram and (almost) no CPU for this long
SETTLE_TIMEOUT_S = 300.0
Key = tuple[int, str, str, int, int]  # protocol, source, destination, ports


# --- processes -------------------------------------------------------------------------------


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                out[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return out


def _read_usage(pid: int) -> tuple[float, int, int, int] | None:
    """CPU seconds (user + system), VmHWM, RssAnon and RssFile (KiB) of one process; None once
    it is gone. The CPU is :func:`process_cpu_s`'s (ns); when that clock cannot be read the
    process was reaped after ``status`` was read: gone too. (Falling back to ``stat``'s ticks
    there made its CPU go backwards, up to 10 ms below the last ns sample.)"""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kb = {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in status.splitlines())
          if k in ("VmHWM", "RssAnon", "RssFile")}
    cpu = process_cpu_s(pid)
    if cpu is None:
        return None
    return cpu, kb.get("VmHWM", 0), kb.get("RssAnon", 0), kb.get("RssFile", 0)


def process_cpu_s(pid: int) -> float | None:
    """The CPU seconds of process ``pid`` so far, every thread's including those that ended,
    in ns steps: its CPU-time clock (``clock_getcpuclockid(3)``'s id, which glibc computes
    the same way: ``CPUCLOCK_SCHED`` of the whole process), the scheduler's run time that
    ``wait4``'s user + system time adds up to at the end. ``stat``'s ticks (10 ms) each
    truncate: a phase boundary read from them lost 0-20 ms (10 on average) to the next
    phase, which went to the stop phase of every run. None when it cannot be read (the
    process is gone)."""
    try:
        return time.clock_gettime((~pid << 3) | 2)
    except OSError:
        return None


class Usage:
    """CPU seconds and peak RSS of a process tree: sampled (:func:`_read_usage`) every 0.2 s
    while it runs (per process, the last CPU and the highest ``VmHWM`` seen; the tree's members are
    looked up every second), and at its end the exact CPU of the root and its reaped children
    from ``wait4``. Per process too, the highest ``RssAnon`` sampled and the ``RssFile`` of that
    sample: which part of the peak is the heap and which is mapped files (libraries)."""

    def __init__(self, pid: int):
        self.pid = pid
        self.tree = {pid}
        self.cpu: dict[int, float] = {}
        self.hwm: dict[int, int] = {}
        self.anon: dict[int, tuple[int, int]] = {}  # pid -> (peak RssAnon, RssFile then)
        self.final: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(0.2):
            self.sample(find=n % 5 == 0)
            n += 1

    def sample(self, find: bool = True) -> float:
        """Read the tree now (``find``: look for new descendants first); its CPU so far."""
        if find:
            parents = _parents()
            frontier = list(self.tree)
            while frontier:
                parent = frontier.pop()
                children = [p for p, pp in parents.items() if pp == parent and p not in self.tree]
                self.tree.update(children)
                frontier.extend(children)
        for pid in list(self.tree):
            now = _read_usage(pid)
            if now is not None:
                self.cpu[pid] = now[0]
                self.hwm[pid] = max(self.hwm.get(pid, 0), now[1])
                if now[2] >= self.anon.get(pid, (0, 0))[0]:
                    self.anon[pid] = now[2], now[3]
        return self.cpu_s()

    def cpu_s(self) -> float:
        sampled = sum(self.cpu.values())
        return sampled if self.final is None else max(self.final, sampled)

    def rss_kb(self) -> int:
        return sum(self.hwm.values())

    def rss_split_kb(self) -> tuple[int, int]:
        """Peak ``RssAnon`` and the ``RssFile`` at that sample, summed over the tree."""
        return (sum(a for a, _f in self.anon.values()), sum(f for _a, f in self.anon.values()))

    def ended(self, rusage: object) -> None:
        """The root exited: stop sampling, keep ``wait4``'s totals."""
        self._stop.set()
        self._thread.join()
        self.final = rusage.ru_utime + rusage.ru_stime  # type: ignore[attr-defined]


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of ``pid``, keyed ``name/tid`` (``main`` for the main
    thread; Python does not name its threads in the kernel); empty once it is gone. From
    ``schedstat`` (the scheduler's run time in ns: a flood phase of 0.1 s is ten of the
    ``stat`` ticks, too coarse to compare builds), else user + system ticks."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
                name = "main" if int(tid) == pid else (
                    f'{stat[stat.index("(") + 1:stat.rindex(")")]}/{tid}')
                out[name] = out.get(name, 0.0) + _task_cpu(pid, tid, stat)
    return out


def _task_cpu(pid: int, tid: str, stat: str) -> float:
    """One thread's CPU seconds: ``schedstat``'s run time, else ``stat``'s ticks."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        run_ns = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        if run_ns:
            return run_ns / 1e9
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _minus(now: dict[str, float], then: dict[str, float]) -> dict[str, float]:
    return {k: round(v - then.get(k, 0.0), 4) for k, v in now.items()
            if round(v - then.get(k, 0.0), 4)}


def end_tree(proc: subprocess.Popen, usage: Usage | None, timeout: float) -> None:
    """SIGTERM ``proc`` (by PID), reap it with ``wait4`` (SIGKILL after ``timeout``)."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            if usage is not None:
                usage.ended(rusage)
            return
        if time.monotonic() > deadline:
            proc.kill()
            deadline = float("inf")
        time.sleep(0.05)


def udp_counters(ns: Netns) -> dict[str, int]:
    """The namespace's ``Udp:`` counters (InDatagrams counts datagrams a socket has read)."""
    lines = [ln.split() for ln in ns.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
             if ln.startswith("Udp:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:]), strict=True))


def wait_settled(ns: Netns, usage: Usage | None, what: str) -> None:
    """Wait until no datagram is read in ``ns`` and the tree uses < 5 % CPU for QUIET_S."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    last = (udp_counters(ns)["InDatagrams"], usage.sample() if usage else 0.0)
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < QUIET_S:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not settle in {SETTLE_TIMEOUT_S:.0f} s")
        time.sleep(0.25)
        now = (udp_counters(ns)["InDatagrams"], usage.sample() if usage else 0.0)
        if now[0] != last[0] or now[1] - last[1] > 0.05 * QUIET_S:
            last, quiet_since = now, time.monotonic()


def wait_log(path: Path, text: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{path.stem} did not start: {path.read_text()[-2000:]}")
        time.sleep(0.05)


# --- observers -------------------------------------------------------------------------------


class Observer:
    """Nothing attached; subclasses start a probe (in the router) and an nfcapd for it."""

    name = "none"
    nflog = False  # needs the NFLOG rule
    ready = ""  # a line the probe logs when it is ready (else: a fixed start-up wait)
    stop_timeout = 30.0

    def __init__(self, topo: RoutedTopology, tmp: Path):
        self.ns, self.ifname, self.tmp = topo.router_ns, topo.router_client.ifname, tmp
        self.proc: subprocess.Popen | None = None
        self.usage: Usage | None = None
        self.nfcapd: subprocess.Popen | None = None
        self.dir = tmp / "nfcapd"

    def command(self) -> list[str]:
        """The probe's command line (written config files first)."""
        return []

    def start(self) -> None:
        """Start the collector, then the probe; return when the probe is ready."""
        cmd = self.command()
        if not cmd:
            return
        self.dir.mkdir()
        self.nfcapd = self.popen(["nfcapd", "-w", str(self.dir), "-b", "127.0.0.1", "-p",
                                  str(NFCAPD_PORT), "-B", str(64 << 20)], "nfcapd")
        self.proc = self.popen(cmd, self.name)
        self.usage = Usage(self.proc.pid)
        log = self.tmp / f"{self.name}.out"
        if self.ready:
            wait_log(log, self.ready, self.proc)
        else:
            time.sleep(1.5)
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {log.read_text()[-2000:]}")

    def popen(self, cmd: list[str], name: str) -> subprocess.Popen:
        """Start ``cmd`` in the router with its output in a log file (a full pipe blocks)."""
        log = open(self.tmp / f"{name}.out", "w")  # noqa: SIM115 - the child keeps it
        return self.ns.popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)

    def flush(self) -> None:
        """Make the probe export what it still holds (after the flood has settled)."""

    def stop(self) -> None:
        """Stop the probe (exact CPU), let the collector read the last datagrams, stop it."""
        if self.proc is not None:
            end_tree(self.proc, self.usage, self.stop_timeout)
        if self.nfcapd is not None:
            wait_settled(self.ns, None, "nfcapd")
            end_tree(self.nfcapd, None, 30)

    def counted(self) -> dict[str, int]:
        """What the probe itself counted at its end (agent: traffic, drops, lost records)."""
        return {}

    def per_flow(self) -> Counter[Key] | None:
        """Packets per 5-tuple in the collector's files (None: nothing observed)."""
        if self.nfcapd is None:
            return None
        out = subprocess.run(["nfdump", "-R", str(self.dir), "-o", "csv", GENERATED],
                             capture_output=True, text=True, check=True).stdout
        return parse_csv(out)


#: nfdump filter: flows of the generator's sources (not a namespace's own IPv6 chatter)
GENERATED = "src net 10.128.0.0/9 or src net fd00:80::/64"
ICMP = (1, 58)


def key(proto: int, src: str, dst: str, sport: int, dport: int) -> Key:
    """A flow's comparison key. ICMP flows are keyed by their addresses (every generated
    flow has its own source): observers carry type and code differently (softflowd leaves
    ICMPv6's out)."""
    return (proto, src, dst, 0, 0) if proto in ICMP else (proto, src, dst, sport, dport)


def parse_csv(text: str) -> Counter[Key]:
    """nfdump ``-o csv`` lines (with their header) -> packets per :func:`key`."""
    got: Counter[Key] = Counter()
    columns: list[str] = []
    for line in text.splitlines():
        parts = line.split(",")
        if parts[0] == "ts":
            columns = parts
            continue
        if not columns or len(parts) < len(columns):
            continue
        row = dict(zip(columns, parts, strict=False))
        proto = int(row["pr"]) if row["pr"].isdigit() else PROTO_NAMES.get(row["pr"], -1)
        got[key(proto, row["sa"], row["da"], int(row["sp"]), int(row["dp"]))] += int(row["ipkt"])
    return got


PROTO_NAMES = {"ICMP": 1, "TCP": 6, "UDP": 17, "ICMP6": 58}


class Agent(Observer):
    ingest = ""
    stop_timeout = 300.0  # the last export of up to 1M flows, paced
    #: ``[[export.netflow]] backlog`` (``--backlog``; 0: the agent's default)
    backlog = 0
    #: ``--cache-set`` options (TOML lines) of the ``[cache]`` section, e.g. aggregation rules
    cache: list[str] = []

    def command(self) -> list[str]:
        conf = self.tmp / "agent.toml"
        cache = "".join(f"{line}\n" for line in self.cache)
        conf.write_text(f"""
[agent]
control_socket = ""
{f"[cache]{chr(10)}{cache}" if cache else ""}
{self.ingest}
[[export.netflow]]
destination = ["127.0.0.1:{NFCAPD_PORT}"]
protocol = 9
{f"backlog = {self.backlog}" if self.backlog else ""}
""")
        return [sys.executable, "-m", "netflow_agent.cli", "--log-level", "info", "-c",
                str(conf)]

    def flush(self) -> None:
        """The agent exports everything on SIGTERM."""
        if self.proc is not None:
            end_tree(self.proc, self.usage, self.stop_timeout)

    def counted(self) -> dict[str, int]:
        text = (self.tmp / f"{self.name}.out").read_text()
        out = {}
        if match := SUMMARY.search(text):
            out["traffic"], out["dropped"] = int(match[1]), int(match[2])
            out["sampler_discarded"] = int(match[3] or 0)  # hash:N, on entry
        lost = LOST.findall(text)
        out["lost_records"] = sum(int(records) for records, _packets in lost)
        # packets of records the exporter could not send are counted drops too: the agent
        # accounted them (traffic) but no collector will see them
        out["lost_packets"] = sum(int(packets) for _records, packets in lost)
        if "dropped" in out:
            out["dropped"] += out["lost_packets"]
        out.update({f"nflog_{k}": v for k, v in nflog_counters(text).items()})
        return out


SUMMARY = re.compile(r"stopped; .*traffic (\d+) packets.*dropped (\d+) packets"
                     r"(?:.*sampler discarded (\d+) packets)?")
LOST = re.compile(r"datagrams sent, (\d+) records lost \((\d+) packets")


class AgentEbpf(Agent):
    name = "agent-ebpf"
    ready = "attached"
    #: ``--ebpf-set`` options (TOML lines) added to the section, e.g. ``cpu_slots = 524288``
    options: list[str] = []

    @property
    def ingest(self) -> str:  # type: ignore[override]
        return (f'[[ingest.ebpf]]\ninterfaces = ["{self.ifname}"]\ndirection = "ingress"\n'
                + "".join(f"{line}\n" for line in self.options))


class AgentNflog(Agent):
    name = "agent-nflog"
    nflog = True
    ready = "reading NFLOG group"
    ingest = f"[[ingest.nflog]]\ngroup = {GROUP}\n"


class EmptyHook(Observer):
    """The empty program at TCX ingress of the observed interface: what the hook itself
    costs the sender (the program returns ``TCX_NEXT`` at once). No collector, no process:
    the attachment goes with the router's veth."""

    name = "empty-hook"

    def start(self) -> None:
        """Mount a private bpffs, pin the empty program there and attach it; a start that
        fails unmounts it (one_run calls stop() only once start() returned)."""
        bpffs = self.tmp / "bpffs"
        bpffs.mkdir()
        subprocess.run(["mount", "-t", "bpf", "bpf", str(bpffs)], check=True)
        self.bpffs = bpffs
        try:
            self.load(bpffs / "empty")
        except BaseException:
            self.stop()
            raise

    def load(self, pin: Path) -> None:
        """Build and load the empty program, pinned at ``pin``, and attach it."""
        obj = EBPF_BENCH.build_empty_program(self.tmp)
        subprocess.run(["bpftool", "prog", "load", str(obj), str(pin), "type", "tc"], check=True)
        self.prog_id = json.loads(subprocess.run(
            ["bpftool", "-j", "prog", "show", "pinned", str(pin)], capture_output=True,
            text=True, check=True).stdout)["id"]
        self.attach(obj, pin)

    def attach(self, obj: Path, pin: Path) -> None:
        """TCX ingress, as the agent attaches (bpftool 7.1 cannot: libbpf's call)."""
        self.ns.run([sys.executable, "-c", EBPF_BENCH.TCX_ATTACH, str(pin), self.ifname])

    def stop(self) -> None:
        """The pin goes with the mount; the attachment with the veth."""
        if hasattr(self, "bpffs"):
            subprocess.run(["umount", str(self.bpffs)], check=False)

    def counted(self) -> dict[str, int]:
        """The program's run count and mean ns per run (0 unless BPF stats are on)."""
        time_ns, runs = EBPF_BENCH.bpf_run_stats({self.prog_id})
        return {"hook_runs": runs, "hook_ns": round(time_ns / runs, 1) if runs else 0}


class EmptyTc(EmptyHook):
    """The empty program as a legacy tc clsact ingress filter (the agent's ``mode = "tc"``)."""

    name = "empty-tc"

    def attach(self, obj: Path, pin: Path) -> None:
        self.ns.run(["tc", "qdisc", "add", "dev", self.ifname, "clsact"])
        self.ns.run(["tc", "filter", "add", "dev", self.ifname, "ingress", "bpf",
                     "object-pinned", str(pin), "direct-action"])


class Softflowd(Observer):
    name = "softflowd"

    def command(self) -> list[str]:
        self.ctl = self.tmp / "softflowd.ctl"
        return ["softflowd", "-d", "-i", self.ifname, "-m", "1048576", "-n",
                f"127.0.0.1:{NFCAPD_PORT}", "-v", "9", "-c", str(self.ctl),
                "-p", str(self.tmp / "softflowd.pid")]

    def flush(self) -> None:
        """softflowd exports its table on ``softflowctl expire-all``, not on SIGTERM."""
        self.ns.run(["softflowctl", "-c", str(self.ctl), "expire-all"], check=False)
        wait_settled(self.ns, self.usage, self.name)


class Pmacct(Observer):
    daemon = "pmacctd"

    def command(self) -> list[str]:
        conf = self.tmp / f"{self.daemon}.conf"
        source = (f"pcap_interface: {self.ifname}\n" if self.daemon == "pmacctd"
                  else f"uacctd_group: {GROUP}\nuacctd_nl_size: 33554432\n")
        conf.write_text(f"""daemonize: false
{source}snaplen: 128
plugins: nfprobe
nfprobe_receiver: 127.0.0.1:{NFCAPD_PORT}
nfprobe_version: 9
nfprobe_maxflows: 1048576
nfprobe_timeouts: tcp=1:tcp.rst=1:tcp.fin=1:udp=1:icmp=1:general=1:maxlife=600:expint=1
aggregate: src_host, dst_host, src_port, dst_port, proto, tos
plugin_pipe_size: 20480000
plugin_buffer_size: 20480
""")
        return [self.daemon, "-f", str(conf)]


class Pmacctd(Pmacct):
    name = "pmacctd"


class Uacctd(Pmacct):
    name = "uacctd"
    daemon = "uacctd"
    nflog = True


class Fprobe(Observer):
    name = "fprobe"

    def command(self) -> list[str]:
        # -l 2: log to stdout and stay in the foreground; idle flows expire after 1 s;
        # -B/-q: a 64 MB capture buffer and a long queue (the defaults lose most packets)
        return ["fprobe", "-l", "2", "-B", "65536", "-q", "10000", "-i", self.ifname, "-d", "1",
                "-s", "1", f"127.0.0.1:{NFCAPD_PORT}"]

    def stop(self) -> None:
        time.sleep(3.0)  # fprobe exports idle flows at its scans; it drops its table on exit
        super().stop()


OBSERVERS = {cls.name: cls for cls in
             (Observer, EmptyHook, EmptyTc, AgentEbpf, AgentNflog, Softflowd, Pmacctd, Uacctd,
              Fprobe)}
DEFAULT_OBSERVERS = [k for k in OBSERVERS if k not in ("none", "fprobe", "empty-hook",
                                                       "empty-tc")]
PEERS = ("softflowd", "pmacctd", "uacctd", "fprobe")


# --- one run ---------------------------------------------------------------------------------


def prepare(topo: RoutedTopology, nflog: bool) -> None:
    """Routes to the sink's address ranges, the sink's drop, the NFLOG rule if wanted."""
    router, sink = topo.router_ns, topo.server
    prefix4 = f"{DST4}/{32 - (DESTINATIONS - 1).bit_length()}"
    prefix6 = f"{DST6}/{128 - (DESTINATIONS - 1).bit_length()}"
    router.run(["ip", "route", "add", prefix4, "via", sink.addr])
    router.run(["ip", "-6", "route", "add", prefix6, "via", sink.addr6])
    sink.ns.run(["nft", "-f", "-"], input=(
        f"table inet nfasink {{\n  chain pre {{ type filter hook prerouting priority -300; "
        f'policy accept;\n    iifname "{sink.ifname}" drop\n  }}\n}}\n'))
    if nflog:
        router.run(["nft", "-f", "-"], input=(
            f"table inet nfacompare {{\n  chain pre {{ type filter hook prerouting priority "
            f'-300; policy accept;\n    iifname "{topo.router_client.ifname}" log group '
            f"{GROUP} snaplen 128 queue-threshold 64\n  }}\n}}\n"))


def one_run(kind: str, flood: Flood, args: argparse.Namespace, flowgen: str,
            truths: dict[tuple[Flood, int], dict[Key, int]]) -> dict:
    """Flood through a fresh topology with ``kind`` observing; the raw figures of the run
    (``truths`` caches the truth of the last workload and packet count)."""
    with routed_topology() as topo, tempfile.TemporaryDirectory(prefix="nfa-cmp-") as t:
        load = os.getloadavg()[0]  # the machine is shared: how busy it was
        observer = OBSERVERS[kind](topo, Path(t))
        phases: dict[str, float] = {}
        threads: dict[str, dict[str, float]] = {}
        prepare(topo, observer.nflog)
        observer.start()
        spy = profile(observer, args.profile, f"{flood_name(flood)}-{kind}")
        try:
            before = rx_dropped(topo.router_client)
            cpu0 = observer.usage.sample() if observer.usage else 0.0
            pid = observer.proc.pid if observer.proc is not None else 0
            threads0 = thread_cpu(pid) if pid else {}
            sent, elapsed = flood.send_timed(flowgen, topo.client, topo.router_client.mac, DST4,
                                             DST6, seconds=args.seconds)
            if observer.proc is not None:
                assert observer.usage is not None
                # phases of the observer's CPU: flood, settling (idle wait), final flush
                phases["flood"] = observer.usage.sample(find=False) - cpu0
                threads1 = thread_cpu(pid)
                time.sleep(args.linger)  # let the probe's own timeouts expire its table
                settle0 = time.monotonic()
                wait_settled(observer.ns, observer.usage, kind)
                phases["settle_s"] = time.monotonic() - settle0
                phases["settle"] = observer.usage.sample(find=False) - cpu0 - phases["flood"]
                threads2 = thread_cpu(pid)
                threads = {"flood": _minus(threads1, threads0),
                           "settle": _minus(threads2, threads1)}
                observer.flush()
        finally:
            observer.stop()
            if spy is not None:
                spy.wait(timeout=60)
            keep_logs(Path(t), args.keep_logs, f"{flood_name(flood)}-{kind}")
        before_hook = rx_dropped(topo.router_client) - before
        collector_drops = udp_counters(topo.router_ns)["RcvbufErrors"]
        got = observer.per_flow()
        result = {"sent": sent, "pps": sent / elapsed, "elapsed": elapsed, "load": load,
                  "before_hook": before_hook, **observer.counted()}
        if observer.usage is not None:
            anon_kb, file_kb = observer.usage.rss_split_kb()
            result.update(cpu_s=observer.usage.cpu_s() - cpu0, rss_kb=observer.usage.rss_kb(),
                          rss_anon_kb=anon_kb, rss_file_kb=file_kb,
                          collector_drops=collector_drops)
            if phases:  # what the exit (final flush) took: the rest
                phases["stop"] = result["cpu_s"] - phases["flood"] - phases["settle"]
                result["cpu_phases"] = {k: round(v, 3) for k, v in phases.items()}
                result["cpu_threads"] = threads
    if (flood, sent) not in truths:
        truths.clear()  # one workload's truth at a time (1M flows: a few hundred MB)
        truths[(flood, sent)] = {key(f.proto, f.src, f.dst, f.sport, f.dport): n
                                 for f, (n, _b) in flood.truth(DST4, DST6, sent).items()}
    result.update(compare(truths[(flood, sent)], got))
    return result


def flood_name(flood: Flood) -> str:
    """The workload's name in :data:`WORKLOADS` (profile file names)."""
    return next((n for n, f in WORKLOADS.items() if f is flood), "flood")


def profile(observer: Observer, into: str | None, name: str) -> subprocess.Popen | None:
    """Attach py-spy to an agent observer (``--profile DIR``): collapsed stacks of the
    whole run in DIR/NAME.txt, for flamegraph.pl or speedscope. Needs ``pip install
    py-spy``; peers (C programs) are not profiled."""
    if not into or observer.proc is None or not isinstance(observer, Agent):
        return None
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    Path(into).mkdir(parents=True, exist_ok=True)
    out = Path(into) / f"{name}.txt"
    return subprocess.Popen([spy, "record", "--pid", str(observer.proc.pid), "--rate", "250",
                             "--format", "raw", "--output", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def keep_logs(tmp: Path, into: str | None, name: str) -> None:
    """Copy the run's probe and collector logs to ``--keep-logs DIR`` (NAME-<log>.out,
    numbered when a name repeats over rounds)."""
    if not into:
        return
    Path(into).mkdir(parents=True, exist_ok=True)
    for log in tmp.glob("*.out"):
        n = 0
        while (dest := Path(into) / f"{name}-{log.stem}.{n}.out").exists():
            n += 1
        shutil.copyfile(log, dest)


def compare(want: dict[Key, int], got: Counter[Key] | None) -> dict[str, int]:
    """Flow-by-flow comparison of exported packets (``got``) with the truth (``want``)."""
    out = {"flows_sent": len(want)}
    if got is None:
        return out
    out["exported"] = sum(got.values())
    out["accounted"] = sum(min(got.get(k, 0), n) for k, n in want.items())
    out["over"] = sum(max(0, n - want.get(k, 0)) for k, n in got.items())
    out["flows_exact"] = sum(1 for k, n in want.items() if got.get(k, 0) == n)
    return out


# --- report ----------------------------------------------------------------------------------


def summarise(results: dict[str, list[dict]]) -> list[dict]:
    """One row per observer: medians over its rounds (the worst share of packets accounted;
    the agent's counted drops and balances: every round)."""
    base = statistics.median(r["pps"] for r in results["none"]) if results.get("none") else 0
    rows = []
    for kind, runs in results.items():
        if not runs:
            continue

        def med(field: str, scale: str = "sent", runs: list[dict] = runs) -> float | None:
            """Median of ``field`` (per ``scale``, e.g. per packet sent) over the rounds."""
            vals = [r[field] / (r[scale] if scale else 1) for r in runs if field in r]
            return statistics.median(vals) if vals else None

        pps = statistics.median(r["pps"] for r in runs)
        balances = [r["sent"] - r["before_hook"] - r["exported"] - r["dropped"]
                    - r.get("sampler_discarded", 0)
                    for r in runs if "dropped" in r and "exported" in r]
        rows.append({
            "observer": kind, "kpps": pps / 1000, "ratio": pps / base if base else None,
            "packets": med("accounted"), "flows": med("flows_exact", "flows_sent"),
            "packets_min": min((r["accounted"] / r["sent"] for r in runs if "accounted" in r),
                               default=None),
            "over": max((r.get("over", 0) for r in runs), default=0),
            "before_hook": med("before_hook", ""),
            "dropped": [r["dropped"] for r in runs if "dropped" in r],
            "lost_records": max((r.get("lost_records", 0) for r in runs), default=0),
            "balances": balances, "collector_drops": med("collector_drops", ""),
            "cpu_s_per_mpkt": med("cpu_s", "sent") and med("cpu_s", "sent") * 1e6,  # type: ignore[operator]
            "cpu_ms_per_kflow": med("cpu_s", "flows_sent") and med("cpu_s", "flows_sent") * 1e6,  # type: ignore[operator]
            "rss_mb": rss / 1024 if (rss := med("rss_kb", "")) is not None else None,
            "runs": len(runs),
            "anon_mb": _mb(med("rss_anon_kb", "")), "file_mb": _mb(med("rss_file_kb", "")),
        })
    return rows


def _mb(kb: float | None) -> float | None:
    return None if kb is None else kb / 1024


def _fmt(x: float | None, spec: str, scale: float = 1) -> str:
    return "-" if x is None else format(x * scale, spec)


def table(rows: list[dict]) -> str:
    lines = ["| observer | sender kpps | vs none | packets accounted | flows exact | before hook "
             "| counted drops | balance | collector drops | CPU s / M packets "
             "| CPU ms / 1k flows | peak RSS MB (anon + file) |", "|---" * 12 + "|"]
    for r in rows:
        over = f" (+{r['over']} extra)" if r["over"] else ""
        lost = f" ({r['lost_records']} records lost)" if r["lost_records"] else ""
        balance = " / ".join(str(b) for b in r["balances"]) or "-"
        dropped = " / ".join(str(d) for d in r["dropped"]) or "-"
        worst = (f" (min {100 * r['packets_min']:.3f} %)"
                 if r["packets_min"] is not None and r["packets_min"] < r["packets"] else "")
        observed = r["observer"] != "none"
        lines.append(
            f"| {r['observer']} | {r['kpps']:.0f} | {_fmt(r['ratio'], '.2f')} "
            f"| {_fmt(r['packets'], '.3f', 100)} %{worst}{over} "
            f"| {_fmt(r['flows'], '.3f', 100)} % | {_fmt(r['before_hook'], '.0f')} | {dropped} "
            f"| {balance}{lost} | {_fmt(r['collector_drops'], '.0f')} "
            f"| {_fmt(r['cpu_s_per_mpkt'] if observed else None, '.2f')} "
            f"| {_fmt(r['cpu_ms_per_kflow'] if observed else None, '.2f')} "
            f"| {_fmt(r['rss_mb'] if observed else None, '.1f')}{_split(r) if observed else ''} |")
    return "\n".join(lines).replace("- %", "-")


def _split(row: dict) -> str:
    """`` (anon + file)`` MB of the peak, when the results have them."""
    if row.get("anon_mb") is None:
        return ""
    return f" ({row['anon_mb']:.1f} + {row['file_mb']:.1f})"


def describe(name: str, flood: Flood) -> str:
    per = (f"{flood.per_flow}-{flood.per_flow_max}" if flood.per_flow_max > flood.per_flow
           else str(flood.per_flow))
    return (f"{name}: {flood.flows:,} flows of {per} packets ({flood.packets:,}), "
            f"{flood.concurrent:,} concurrent, IPv4+IPv6 UDP/TCP/ICMP")


def report(results: dict[str, dict[str, list[dict]]]) -> str:
    out = []
    for name, by_kind in results.items():
        rounds = max((len(r) for r in by_kind.values()), default=0)
        loads = [r["load"] for runs in by_kind.values() for r in runs if "load" in r]
        busy = f", load average {min(loads):.1f}-{max(loads):.1f}" if loads else ""
        out += [f"{describe(name, WORKLOADS[name])}; {rounds} round(s), medians{busy}", "",
                table(summarise(by_kind)), ""]
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--ebpf-set`` and ``--cache-set`` options validated
    (:func:`ebpf_option`, :func:`cache_option`)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", nargs="+", choices=WORKLOADS, default=["w1", "w2", "w3"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=60.0, help="time bound of each flood")
    ap.add_argument("--linger", type=float, default=0.0, metavar="S",
                    help="after the flood, wait S seconds before settling and stopping the "
                    "probe (e.g. 20: past the agent's 15 s inactive timeout, so its whole "
                    "table expires at once while it runs, the burst its export pacing must "
                    "absorb; without it the stop's final export takes the table)")
    ap.add_argument("--backlog", type=int, default=0, metavar="N",
                    help="the agent exporter's paced backlog in datagrams (default: the "
                    "agent's, 30000); with --linger, a small one shows whether a mass expiry "
                    "is spread over scans or overflows the backlog (counted)")
    ap.add_argument("--only", nargs="*", choices=OBSERVERS, default=DEFAULT_OBSERVERS)
    ap.add_argument("--json", help="also write the raw results here (after every run)")
    ap.add_argument("--append", action="store_true",
                    help="add this invocation's rounds to the results already in --json")
    ap.add_argument("--table-from", help="print the tables of raw results saved by --json")
    ap.add_argument("--keep-logs", metavar="DIR",
                    help="keep each run's probe and collector logs in DIR")
    ap.add_argument("--profile", metavar="DIR",
                    help="attach py-spy to the agent: collapsed stacks per run in DIR")
    ap.add_argument("--ebpf-set", action="append", default=[], metavar="KEY=VALUE",
                    type=ebpf_option,
                    help="an [[ingest.ebpf]] option for agent-ebpf (a TOML value; repeat for "
                    "more), e.g. cpu_slots=524288: a variant against the defaults; checked "
                    "as the agent would before any flood, recorded in each --json result")
    ap.add_argument("--cache-set", action="append", default=[], metavar="KEY=VALUE",
                    type=cache_option,
                    help="a [cache] option for both agents (a TOML value; repeat for more), "
                    "e.g. 'aggregation=[\"0.0.0.0/0=32\", \"::/0=128\"]': rules that match "
                    "every address and change none, so every flow stays exact; checked as "
                    "the agent would, recorded in each --json result")
    args = ap.parse_args(argv)
    for flag, lines in (("--ebpf-set", args.ebpf_set), ("--cache-set", args.cache_set)):
        try:
            tomllib.loads("\n".join(lines))
        except tomllib.TOMLDecodeError as exc:
            ap.error(f"{flag}: {exc} (a key set twice?)")
    return args


#: [[ingest.ebpf]] keys the harness sets itself (the observed interface, ingress only)
EBPF_FIXED_KEYS = ("interfaces", "direction")


def ebpf_option(text: str) -> str:
    """``--ebpf-set KEY=VALUE`` as the TOML line it adds to agent-ebpf's section, refused at
    argument parsing (before any flood) unless ``[[ingest.ebpf]]`` takes it as the agent
    would (its config class: type, bounds, checks such as a power of two)."""
    from netflow_agent.plugins.ingest_ebpf.config import Config

    return section_option(text, Config, "[[ingest.ebpf]]",
                          {"interfaces": ["eth0"], "direction": "ingress"})


def cache_option(text: str) -> str:
    """``--cache-set KEY=VALUE`` as the TOML line it adds to the agents' ``[cache]``, refused
    at argument parsing unless :class:`~agent.stages.cache.CacheConfig` takes it (an
    aggregation rule that does not parse, a sampler out of range)."""
    from netflow_agent.stages.cache import CacheConfig

    return section_option(text, CacheConfig, "[cache]", {})


def section_option(text: str, config: type, section: str, fixed: dict) -> str:
    """``KEY=VALUE`` as a TOML line of ``section``, checked by its ``config`` class as the
    agent would check it (``fixed``: the keys the harness sets itself, and their values)."""
    from netflow_agent.config.convert import convert

    key, sep, value = (part.strip() for part in text.partition("="))
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"'{text}': expected KEY=VALUE (a TOML value)")
    if key in fixed:
        raise argparse.ArgumentTypeError(f"'{text}': the harness sets {key} itself")
    line = f"{key} = {value}"
    try:
        table = tomllib.loads(line)
    except tomllib.TOMLDecodeError as exc:
        raise argparse.ArgumentTypeError(f"'{text}': not a TOML key = value ({exc})") from exc
    if list(table) != [key]:
        raise argparse.ArgumentTypeError(f"'{text}': {key} is not an {section} key")
    _, issues = convert(config, {**fixed, **table}, section.strip("[]"))  # and its check()
    errors = [i.format() for i in issues if i.severity == "error"]
    if errors:
        raise argparse.ArgumentTypeError(f"'{text}': {'; '.join(errors)}")
    return line


def appended(path: Path, ebpf_set: list[str], cache_set: list[str] | None = None) -> dict:
    """The results already in ``path`` for ``--append``: refused (SystemExit) when they were
    measured with other ``--ebpf-set`` or ``--cache-set`` options (none recorded: the
    defaults; in any order: each key is set once)."""
    old = json.loads(path.read_text())
    for name, by_kind in old.items():
        for kind, runs in by_kind.items():
            for r in runs:
                for field, want in (("ebpf_set", ebpf_set), ("cache_set", cache_set or [])):
                    if sorted(r.get(field, [])) != sorted(want):
                        flag = "--" + field.replace("_", "-")
                        raise SystemExit(f"--append: {path} holds {name} {kind} runs with "
                                         f"{flag} {r.get(field, [])}, not {want}: "
                                         "write another --json")
    return old


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    Agent.backlog = args.backlog
    AgentEbpf.options = args.ebpf_set
    Agent.cache = args.cache_set
    if args.table_from:
        print(report(json.loads(Path(args.table_from).read_text())))
        return 0
    if os.geteuid() != 0:
        print("bench/compare needs root (network namespaces, NFLOG, BPF)", file=sys.stderr)
        return 2
    missing = [t for t in ("nfcapd", "nfdump", "nft", *PEERS) if shutil.which(t) is None]
    if missing:
        print(f"missing tools (their rows are skipped): {', '.join(missing)}", file=sys.stderr)
    kinds = ["none"] + [k for k in args.only if k != "none" and k not in missing]
    results = {w: {k: [] for k in kinds} for w in args.workload}  # type: ignore[var-annotated]
    if args.append and args.json and Path(args.json).exists():
        for name, by_kind in appended(Path(args.json), args.ebpf_set,
                                      args.cache_set).items():
            for kind, runs in by_kind.items():
                results.setdefault(name, {}).setdefault(kind, []).extend(runs)
    truths: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        flowgen = build(Path(tmp))
        for rnd in range(args.rounds):
            for name in args.workload:
                for kind in kinds:
                    try:
                        r = one_run(kind, WORKLOADS[name], args, flowgen, truths)
                    except Exception as exc:  # one broken tool must not hide the others' rows
                        print(f"round {rnd} {name} {kind}: failed: {exc}", file=sys.stderr,
                              flush=True)
                        continue
                    r["ebpf_set"] = args.ebpf_set  # what agent-ebpf ran with
                    r["cache_set"] = args.cache_set  # what both agents' [cache] had
                    results[name][kind].append(r)
                    print(f"round {rnd} {name} {kind:12s} {json.dumps(r)}", file=sys.stderr,
                          flush=True)
                    if args.json:
                        Path(args.json).write_text(json.dumps(results, indent=1))
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
