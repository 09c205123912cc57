"""Where aggregation rules are configured (``[cache] aggregation``, and the older
``[aggregate] rules``), what ``--dry-run`` says about them, and reload changing them."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path

from netflow_agent.cli import main
from netflow_agent.config.check import validate
from netflow_agent.discovery import build_registry, make_manager
from netflow_agent.model import make_key

S = 1_000_000_000
T0 = 1_700_000_000 * S

BASE = """
[[ingest.fake]]
[[export.collect]]
"""
PCAP_BASE = """
[[ingest.pcap]]
path = "{pcap}"
[[export.log]]
path = "-"
"""


def pkt(src: str, dport: int, ts: int = T0, length: int = 100):
    key = make_key(4, 6, socket.inet_aton(src), socket.inet_aton("198.51.100.9"), 40000, dport)
    return (key, length, 0, ts, 0)


def _validate(tmp_path: Path, text: str, pm=None):
    cfg = tmp_path / "checked.toml"
    cfg.write_text(text)
    return validate(cfg, build_registry(pm or make_manager()[0]), None)


def _pcap(tmp_path: Path) -> Path:
    p = tmp_path / "empty.pcap"
    p.write_bytes(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000"))
    return p


def test_aggregate_rules_run_in_the_cache_with_a_note(tmp_path):
    text = PCAP_BASE.format(pcap=_pcap(tmp_path)) + '[aggregate]\nrules = "10.0.0.0/8=16"\n'
    config, issues = _validate(tmp_path, text)
    assert config is not None
    assert config.by_stage("aggregate") == []
    assert config.by_stage("cache")[0].config.aggregation == ["10.0.0.0/8=16"]
    (note,) = issues
    assert (note.path, note.severity) == ("aggregate.rules", "note")
    assert "per packet in the cache" in note.message and "[cache] aggregation" in note.message


def test_rules_in_both_places_are_refused(tmp_path):
    text = (PCAP_BASE.format(pcap=_pcap(tmp_path)) + '[cache]\naggregation = ["80-89=80"]\n'
            '[aggregate]\nrules = ["10.0.0.0/8=16"]\n')
    config, issues = _validate(tmp_path, text)
    assert config is None
    assert [(i.path, i.severity) for i in issues] == [("aggregate.rules", "error")]
    assert "set twice" in issues[0].message


def test_bad_rules_in_the_older_table_get_an_error_and_no_note(tmp_path):
    text = PCAP_BASE.format(pcap=_pcap(tmp_path)) + '[aggregate]\nrules = "10.0.0.0/8"\n'
    config, issues = _validate(tmp_path, text)
    assert config is None
    assert [(i.path, i.severity) for i in issues] == [("aggregate.rules", "error")]


def test_dry_run_explains_and_strict_still_passes(tmp_path, capsys):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(PCAP_BASE.format(pcap=_pcap(tmp_path)) + '[aggregate]\nrules = "80-89=80"\n')
    assert main(["--dry-run", "--strict", "-c", str(cfg)]) == 0
    err = capsys.readouterr().err
    assert "aggregate.rules: note: applied per packet in the cache" in err
    assert "configuration OK (0 warning(s))" in err


def test_cache_aggregation_errors_name_the_rule(tmp_path, capsys):
    cfg = tmp_path / "agent.toml"
    cfg.write_text(PCAP_BASE.format(pcap=_pcap(tmp_path))
                   + '[cache]\naggregation = ["10.0.0.0/8=16", "10.0.0.0/8=40"]\n')
    assert main(["--dry-run", "-c", str(cfg)]) == 78
    assert ("cache.aggregation[1]: '10.0.0.0/8=40': new prefix length must be 0..32"
            in capsys.readouterr().err)


def test_reload_changes_rules_and_keeps_flows(make_agent, collecting_plugin, tmp_path):
    agent = make_agent(BASE + '[cache]\naggregation = ["10.0.0.0/8=16", "80-89=80"]\n',
                       [collecting_plugin])
    agent.feed([pkt("10.5.6.7", 81), pkt("10.5.9.9", 85, ts=T0 + S)])
    cache = agent["cache"]
    assert cache.active_flows == 1
    new, issues = _validate(tmp_path, BASE + '[cache]\naggregation = ["10.0.0.0/8=24"]\n',
                            agent.pipeline.pm)
    assert new is not None, issues
    agent.pipeline.reload(new)
    assert agent["cache"] is cache and cache.active_flows == 1  # the old flow kept its key
    agent.feed([pkt("10.5.6.8", 81, ts=T0 + 2 * S), pkt("10.5.9.9", 85, ts=T0 + 3 * S)])
    assert cache.active_flows == 3
    agent.finish()
    got = sorted((str(ipaddress.ip_address(r.src_addr)), r.src_mask, r.dst_port, r.packets)
                 for r in agent["export.collect[0]"].flows)
    assert got == [("10.5.0.0", 16, 80, 2), ("10.5.6.0", 24, 81, 1), ("10.5.9.0", 24, 85, 1)]


def test_reload_without_rules_stops_aggregating(make_agent, collecting_plugin, tmp_path):
    agent = make_agent(BASE + '[cache]\naggregation = "10.0.0.0/8=8"\n', [collecting_plugin])
    agent.feed([pkt("10.5.6.7", 81)])
    new, _ = _validate(tmp_path, BASE, agent.pipeline.pm)
    agent.pipeline.reload(new)
    agent.feed([pkt("10.5.6.7", 81, ts=T0 + S)])
    agent.finish()
    got = sorted((str(ipaddress.ip_address(r.src_addr)), r.src_mask)
                 for r in agent["export.collect[0]"].flows)
    assert got == [("10.0.0.0", 8), ("10.5.6.7", 0)]
