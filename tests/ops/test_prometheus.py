"""The Prometheus rules in packaging/prometheus/: promtool checks them and runs their unit
tests, and a real Prometheus (Debian's binary, on loopback, in a temporary directory) scrapes
a running agent, records its series and fires the maxflows alert the agent really causes."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ops.helpers import MS, T0, RunningAgent
from tests.ops.test_stats_cli import free_tcp_port
from tests.support.agentproc import REPO_ROOT
from tests.support.netns import end_process
from tests.support.pcapgen import FlowSpec, PcapBuilder

RULES = REPO_ROOT / "packaging" / "prometheus" / "netflow-agent.rules.yml"
RULE_TESTS = REPO_ROOT / "packaging" / "prometheus" / "netflow-agent.test.yml"


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed (Debian package prometheus, scripts/setup.sh)"
    return path


def test_promtool_checks_the_rules() -> None:
    proc = subprocess.run([tool("promtool"), "check", "rules", str(RULES)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 14 rules found" in proc.stdout


def test_promtool_unit_tests_cover_every_alert() -> None:
    proc = subprocess.run([tool("promtool"), "test", "rules", str(RULE_TESTS)],
                          capture_output=True, text=True, timeout=120, cwd=RULE_TESTS.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    alerts = {line.split(":", 1)[1].strip() for line in RULES.read_text().splitlines()
              if line.strip().startswith("- alert:")}
    tested = {line.split(":", 1)[1].strip() for line in RULE_TESTS.read_text().splitlines()
              if line.strip().startswith("- alertname:")}
    assert alerts == tested and len(alerts) == 9


# --- a real Prometheus against a real agent ----------------------------------------------------


@pytest.fixture
def dropping_agent(tmp_path: Path) -> Iterator[tuple[RunningAgent, int]]:
    """An agent replaying 3 flows at their recorded pace with ``maxflows = 1``: two of them
    are refused for as long as the replay lasts."""
    b = PcapBuilder()
    for n in range(3):
        b.add(FlowSpec("udp", f"10.9.0.{n + 1}", "10.9.1.1", 4000 + n, 53, packets=10 * 120,
                       payload=40, start_ns=T0 + n * MS, gap_ns=100 * MS))
    b.write(tmp_path / "drops.pcap")
    sock, port = tmp_path / "agent.sock", free_tcp_port()
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
control_socket = "{sock}"
metrics_listen = "127.0.0.1:{port}"
scan_interval_ms = 200
[cache]
maxflows = 1
[[ingest.pcap]]
path = "{tmp_path / 'drops.pcap'}"
speed = "recorded"
[[export.log]]
path = "{tmp_path / 'flows.jsonl'}"
""")
    agent = RunningAgent(config, sock)
    agent.wait_ready()
    yield agent, port
    assert agent.stop() == 0, agent.log()


class Prometheus:
    """``prometheus`` on 127.0.0.1 with a 1 s scrape and evaluation interval, our rules, and
    one job scraping the agent; its data and log in ``tmp``; ended by PID."""

    def __init__(self, tmp: Path, target_port: int):
        self.port = free_tcp_port()
        config = tmp / "prometheus.yml"
        config.write_text(f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: ["{RULES}"]
scrape_configs:
  - job_name: netflow-agent
    static_configs: [{{targets: ["127.0.0.1:{target_port}"]}}]
""")
        self.log = tmp / "prometheus.log"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [tool("prometheus"), f"--config.file={config}",
                 f"--storage.tsdb.path={tmp / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, cwd=tmp)

    def get(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())

    def wait(self, what: str, check: Any, timeout: float = 60) -> Any:
        """Poll ``check()`` until it returns something true; fail with the log."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                last = check()
            except OSError as exc:  # not listening yet
                last = exc
            else:
                if last:
                    return last
            time.sleep(0.2)
        raise AssertionError(f"Prometheus never showed {what} (last: {last}):\n"
                             + self.log.read_text()[-3000:])

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.get("/api/v1/query", query=expr)["data"]["result"]

    def stop(self) -> None:
        end_process(self.proc)


def test_a_real_prometheus_records_the_series_and_fires_the_maxflows_alert(
        dropping_agent: tuple[RunningAgent, int], tmp_path: Path) -> None:
    agent, port = dropping_agent
    prom = Prometheus(tmp_path, port)
    try:
        prom.wait("its target up", lambda: [r for r in prom.query('up{job="netflow-agent"}')
                                           if r["value"][1] == "1"])
        rate = prom.wait("the packet rate record", lambda: prom.query(
            "instance:netflow_agent_traffic_packets:rate1m > 0"))
        assert rate[0]["metric"]["instance"] == f"127.0.0.1:{port}"
        for record in ("instance:netflow_agent_new_flows:rate1m",
                       "instance:netflow_agent_exported_flows:rate1m",
                       "instance:netflow_agent_drop_packets:rate1m"):
            prom.wait(record, lambda r=record: prom.query(r))
        firing = prom.wait("NetflowAgentMaxflowsReached firing", lambda: [
            a for a in prom.get("/api/v1/alerts")["data"]["alerts"]
            if a["labels"]["alertname"] == "NetflowAgentMaxflowsReached"
            and a["state"] == "firing"])
        assert firing[0]["labels"]["cause"] == "maxflows"
        names = {a["labels"]["alertname"] for a in prom.get("/api/v1/alerts")["data"]["alerts"]}
        assert names == {"NetflowAgentMaxflowsReached"}, names  # nothing else is wrong
        drops = prom.query("netflow_agent_maxflows_dropped_packets_total")
        assert float(drops[0]["value"][1]) > 0
        assert agent.stats()["cache"]["maxflows"] > 0
    finally:
        prom.stop()
