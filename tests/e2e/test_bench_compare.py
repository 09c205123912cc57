"""Privileged smoke test of bench/compare/run.py (issue 14's side-by-side harness).

The harness's smallest workload (3,000 mixed IPv4/IPv6 UDP/TCP/ICMP flows of 1-3 packets)
through a router namespace, observed by the agent's two ingests: the raw results must account
every packet of every flow, flow by flow by 5-tuple, with the agent's balance exact, and the
table must show it. Only counts are asserted, never rates or times.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.netns, pytest.mark.bpf]


def compare_harness() -> ModuleType:
    """bench/compare/run.py by path, under its own name (a plain ``import run`` would leave a
    module named ``run`` for the rest of the session); bench/ebpf/run.py is its EBPF_BENCH."""
    spec = importlib.util.spec_from_file_location("bench_compare_run",
                                                  ROOT / "bench/compare/run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    raw = tmp_path / "compare.json"
    with compare_harness().EBPF_BENCH.BpfStats():
        subprocess.run(
            [sys.executable, str(ROOT / "bench" / "compare" / "run.py"), "--workload", "smoke",
             "--rounds", "1", "--only", "empty-hook", "empty-tc", "--json", str(raw)],
            capture_output=True, text=True, timeout=300, check=True)
    runs = json.loads(raw.read_text())["smoke"]
    for kind in ("empty-hook", "empty-tc"):
        (r,) = runs[kind]
        assert r["hook_runs"] == r["sent"] - r["before_hook"], kind
        assert r["sent"] == 5994, kind
        assert r["hook_ns"] > 0 and "accounted" not in r, kind


class RefusingNs:
    """A router namespace where every command fails (the hook's attach)."""

    def run(self, cmd: list[str], **kwargs: object) -> None:
        raise subprocess.CalledProcessError(1, cmd)


def test_empty_hook_that_fails_to_start_leaves_no_bpffs_mounted(tmp_path):
    """one_run stops an observer only once it started: an ``empty-hook`` whose attach fails
    unmounts its private bpffs itself (the program pinned there goes with it)."""
    topo = SimpleNamespace(router_ns=RefusingNs(), router_client=SimpleNamespace(ifname="lo"))
    hook = compare_harness().EmptyHook(topo, tmp_path)
    try:
        with pytest.raises(subprocess.CalledProcessError):
            hook.start()
        assert not os.path.ismount(tmp_path / "bpffs")
    finally:
        if os.path.ismount(tmp_path / "bpffs"):
            subprocess.run(["umount", str(tmp_path / "bpffs")], check=True)
