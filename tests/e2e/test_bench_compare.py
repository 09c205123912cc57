"""Privileged smoke test of bench/compare/run.py (issue 14's side-by-side harness).

The harness's smallest workload (3,000 mixed IPv4/IPv6 UDP/TCP/ICMP flows of 1-3 packets)
through a router namespace, observed by the agent's two ingests: the raw results must account
every packet of every flow, flow by flow by 5-tuple, with the agent's balance exact, and the
table must show it. Only counts are asserted, never rates or times.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.netns, pytest.mark.bpf]


def test_smoke_workload_is_exact_for_both_ingests(tmp_path):
    raw = tmp_path / "compare.json"
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "compare" / "run.py"), "--workload", "smoke",
         "--rounds", "1", "--only", "agent-ebpf", "agent-nflog", "--json", str(raw)],
        capture_output=True, text=True, timeout=300, check=True).stdout
    runs = json.loads(raw.read_text())["smoke"]
    assert set(runs) == {"none", "agent-ebpf", "agent-nflog"}
    for kind in ("agent-ebpf", "agent-nflog"):
        (r,) = runs[kind]
        assert r["sent"] == 5994 and r["flows_sent"] == 3000
        assert r["accounted"] == r["exported"] == r["traffic"] == r["sent"], kind
        assert r["flows_exact"] == 3000 and r["over"] == 0 and r["dropped"] == 0, kind
        assert r["cpu_s"] > 0 and r["rss_kb"] > 0
    rows = {line.split("|")[1].strip(): line for line in out.splitlines()
            if line.startswith("| agent")}
    assert all("| 100.000 % | 100.000 % | 0 | 0 | 0 |" in rows[k]
               for k in ("agent-ebpf", "agent-nflog"))


def test_empty_hooks_run_once_per_packet_at_the_observed_interface(tmp_path):
    """``empty-hook`` (TCX) and ``empty-tc`` (clsact) attach the empty program where the agent
    observes: with BPF run-time stats held (as progstats.py does) each ran once per packet
    sent, and they account nothing (no collector)."""
    sys.path.insert(0, str(ROOT / "bench" / "ebpf"))
    from run import BpfStats  # bench/ebpf/run.py

    raw = tmp_path / "compare.json"
    with BpfStats():
        subprocess.run(
            [sys.executable, str(ROOT / "bench" / "compare" / "run.py"), "--workload", "smoke",
             "--rounds", "1", "--only", "empty-hook", "empty-tc", "--json", str(raw)],
            capture_output=True, text=True, timeout=300, check=True)
    runs = json.loads(raw.read_text())["smoke"]
    for kind in ("empty-hook", "empty-tc"):
        (r,) = runs[kind]
        assert r["hook_runs"] == r["sent"] == 5994, kind
        assert r["hook_ns"] > 0 and "accounted" not in r, kind
