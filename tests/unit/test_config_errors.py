"""Broken configurations: every one exits 78 and names its file and key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from netflow_agent.cli import main

VALID = """
[cache]
inactive_timeout = 15
[[ingest.pcap]]
path = "{pcap}"
[[export.log]]
path = "-"
"""

# (name, config text, expected fragment of the error line: "key.path: message")
BROKEN = [
    ("syntax", "[cache\ninactive_timeout = 1\n", ":1:7: TOML syntax error"),
    ("syntax-line-col", "[cache]\ninactive_timeout = = 3\n", ":2:20: TOML syntax error"),
    ("misspelled-key", "[cache]\ninactive_timout = 3\n",
     "cache.inactive_timout: unknown key (typo, or not supported in this version?); "
     "did you mean 'inactive_timeout'?"),
    ("wrong-type", '[cache]\nmaxflows = "many"\n',
     "cache.maxflows: expected an integer, got a string"),
    ("negative-timeout", "[cache]\ninactive_timeout = -5\n",
     "cache.inactive_timeout: -5 is below the minimum 1"),
    ("zero-active", "[cache]\nactive_timeout = 0\n", "cache.active_timeout: 0 is below"),
    ("negative-maxflows", "[cache]\nmaxflows = -1\n", "cache.maxflows: -1 is below the minimum 0"),
    ("float-for-int", "[cache]\nhashsize = 1.5\n", "cache.hashsize: expected an integer"),
    ("unknown-table", "[cach]\nmaxflows = 1\n", "cach: unknown table; did you mean 'cache'?"),
    ("unknown-plugin", '[[export.netflw]]\ndestination = ["127.0.0.1:2055"]\n',
     "export.netflw: unknown export plugin 'netflw'"),
    ("unknown-ingest", '[[ingest.nflgo]]\ngroup = 5\n', "ingest.nflgo: unknown ingest plugin"),
    ("single-table", '#full\n[[ingest.pcap]]\npath = "{pcap}"\n[export.log]\npath = "-"\n',
     "export.log: write [[export.log]] (an array of tables), not [export.log]"),
    ("bad-aggregation", '[aggregate]\nrules = ["10.0.0.0/8=40"]\n',
     "aggregate.rules[0]: '10.0.0.0/8=40': new prefix length must be 0..32"),
    ("bad-aggregation-port", '[aggregate]\nrules = "80-70=80"\n',
     "aggregate.rules: '80-70=80': ports must be 0..65535 with LOW <= HIGH"),
    ("bad-aggregation-syntax", '[aggregate]\nrules = ["192.0.0.0/8"]\n',
     "aggregate.rules[0]: '192.0.0.0/8': expected PREFIX/LEN=NEWLEN"),
    ("bad-aggregation-net", '[aggregate]\nrules = ["300.0.0.0/8=16"]\n',
     "aggregate.rules[0]: '300.0.0.0/8=16'"),
    ("bad-literal", '[[ingest.pcap]]\npath = "{pcap}"\nspeed = "fast"\n',
     "ingest.pcap[1].speed: expected one of 'max', 'recorded', got a string"),
    ("missing-required", "[[ingest.pcap]]\nspeed = \"max\"\n",
     "ingest.pcap[1].path: required key is missing"),
    ("missing-file", '[[ingest.pcap]]\npath = "/nonexistent/x.pcap"\n',
     "ingest.pcap[1].path: cannot read capture file"),
    ("debug-range", "[agent]\ndebug = 9\n", "agent.debug: 9 is above the maximum 3"),
    ("agent-typo", "[agent]\ndebgu = 1\n", "agent.debgu: unknown key"),
    ("wrong-type-bool", "[[export.log]]\nflows = 1\n",
     "export.log[1].flows: expected a boolean, got an integer"),
    ("list-of-wrong-items", "[agent]\ndisabled_plugins = [1]\n",
     "agent.disabled_plugins[0]: expected a string, got an integer"),
    ("cache-type", '[cache]\ntype = "redis"\n', "cache: unknown cache plugin 'redis'"),
    ("fragments-mode", '[cache]\nfragments = "reassemble"\n',
     "cache.fragments: expected one of 'track', 'ports0'"),
    ("fragment-timeout", "[cache]\nfragment_timeout = 0\n",
     "cache.fragment_timeout: 0 is below the minimum 1"),
    ("decapsulate-name", '[[ingest.pcap]]\npath = "{pcap}"\ndecapsulate = ["mpls"]\n',
     "ingest.pcap[1].decapsulate[0]: expected one of 'gre', 'vxlan', 'geneve', 'ipip'"),
    ("decapsulate-twice", '[[ingest.pcap]]\npath = "{pcap}"\ndecapsulate = ["gre", "gre"]\n',
     "ingest.pcap[1].decapsulate: lists a tunnel twice"),
    ("ebpf-decapsulate-name", '[[ingest.ebpf]]\ninterfaces = ["eth0"]\ndecapsulate = ["mpls"]\n',
     "ingest.ebpf[0].decapsulate[0]: expected one of 'gre', 'vxlan', 'geneve', 'ipip'"),
    ("ebpf-decapsulate-twice",
     '[[ingest.ebpf]]\ninterfaces = ["eth0"]\ndecapsulate = ["ipip", "ipip"]\n',
     "ingest.ebpf[0].decapsulate: lists a tunnel twice"),
    # a poll interval as long as the inactive timeout: flows exported as idle while their
    # packets wait in the kernel table (the default poll with inactive_timeout = 1 too)
    ("ebpf-poll-vs-inactive",
     '[[ingest.ebpf]]\ninterfaces = ["eth0"]\npoll_interval_ms = 15000\n',
     "ingest.ebpf[0].poll_interval_ms: 15000 ms is not shorter than [cache] inactive_timeout "
     "(15 s)"),
    ("ebpf-default-poll-vs-inactive-1",
     '[cache]\ninactive_timeout = 1\n[[ingest.ebpf]]\ninterfaces = ["eth0"]\n'
     '[[export.log]]\npath = "-"\n',
     "set poll_interval_ms below 1000"),
]


@pytest.fixture
def pcap(tmp_path: Path) -> Path:
    """Name: pcap. Scope: function. An empty but valid pcap file."""
    p = tmp_path / "empty.pcap"
    p.write_bytes(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000"))
    return p


def _dry_run(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(["--dry-run", "-c", str(path)])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("name,text,expected", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_config_exits_78_and_names_key(name, text, expected, tmp_path, pcap, capsys):
    cfg = tmp_path / f"{name}.toml"
    body = text.format(pcap=pcap)
    if not body.startswith(("[cache", "#full")) and "TOML" not in expected:
        body = VALID.format(pcap=pcap) + body
    cfg.write_text(body)
    rc, err = _dry_run(cfg, capsys)
    assert rc == 78, err
    assert expected in err, err
    assert str(cfg) in err  # every line names the file


def test_valid_config_exits_0(tmp_path, pcap, capsys):
    cfg = tmp_path / "ok.toml"
    cfg.write_text(VALID.format(pcap=pcap))
    rc, err = _dry_run(cfg, capsys)
    assert rc == 0, err
    assert "configuration OK" in err


def test_ebpf_poll_interval_below_the_inactive_timeout_is_valid(tmp_path, pcap, capsys):
    cfg = tmp_path / "poll.toml"
    cfg.write_text(VALID.format(pcap=pcap) + '[[ingest.ebpf]]\ninterfaces = ["eth0"]\n'
                   "poll_interval_ms = 14999\n")
    rc, err = _dry_run(cfg, capsys)
    assert rc == 0, err
    assert "poll_interval_ms" not in err


def test_tunnel_option_warnings(tmp_path, pcap, capsys):
    """keep_outer without tunnels and a snap length too short for inner headers: warnings."""
    cfg = tmp_path / "warn.toml"
    cfg.write_text(VALID.format(pcap=pcap) + '[[ingest.pcap]]\npath = "' + str(pcap) + '"\n'
                   "keep_outer = true\n[[ingest.nflog]]\ngroup = 3\nsnaplen = 96\n"
                   'decapsulate = ["vxlan"]\n[[ingest.ebpf]]\ninterfaces = ["eth0"]\n'
                   "keep_outer = true\n")
    rc, err = _dry_run(cfg, capsys)
    assert rc == 0, err
    assert "ingest.pcap[1].keep_outer: warning: has no effect without decapsulate" in err
    assert "ingest.ebpf[0].keep_outer: warning: has no effect without decapsulate" in err
    assert "ingest.nflog[0].snaplen: warning: 96 bytes may cut tunnelled packets" in err


def test_no_ingest_and_no_exporter(tmp_path, capsys):
    cfg = tmp_path / "empty.toml"
    cfg.write_text("[cache]\nmaxflows = 10\n")
    rc, err = _dry_run(cfg, capsys)
    assert rc == 78
    assert "ingest: no ingest configured" in err
    assert "export: no export configured" in err


def test_all_problems_reported_at_once(tmp_path, pcap, capsys):
    cfg = tmp_path / "many.toml"
    cfg.write_text(VALID.format(pcap=pcap) + "[agent]\ndebgu = 1\n[aggregate]\nrules = 'x'\n"
                   "[[export.log]]\nformat = 'xml'\n")
    rc, err = _dry_run(cfg, capsys)
    assert rc == 78
    assert "agent.debgu" in err and "aggregate.rules" in err and "export.log[1].format" in err
    assert "3 error(s)" in err


def test_directory_merges_in_name_order_and_names_the_file(tmp_path, pcap, capsys):
    d = tmp_path / "conf.d"
    d.mkdir()
    (d / "10-base.toml").write_text(VALID.format(pcap=pcap))
    (d / "20-more.toml").write_text("[[export.log]]\nformat = 'yaml'\n")
    rc, err = _dry_run(d, capsys)
    assert rc == 78
    assert f"{d / '20-more.toml'}: export.log[1].format" in err


def test_usage_error_exits_2():
    proc = subprocess.run([sys.executable, "-m", "netflow_agent.cli", "--bogus"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    proc = subprocess.run([sys.executable, "-m", "netflow_agent.cli"], capture_output=True,
                          text=True)
    assert proc.returncode == 2


def test_dry_run_needs_no_root_and_starts_nothing(tmp_path, pcap):
    """A dry run of a valid config must not open the capture or print flows."""
    cfg = tmp_path / "ok.toml"
    cfg.write_text(VALID.format(pcap=pcap))
    proc = subprocess.run([sys.executable, "-m", "netflow_agent.cli", "--dry-run", "-c", str(cfg)],
                          capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout == ""


def test_v5_with_ipv6_only_ingest_is_a_warning(tmp_path, capsys):
    cfg = tmp_path / "v6only.toml"
    cfg.write_text('[[ingest.nflog]]\ngroup = 5\nmanage_rules = true\nfamilies = ["ipv6"]\n'
                   '[[export.netflow]]\nprotocol = 5\ndestination = ["127.0.0.1:2055"]\n')
    rc, err = _dry_run(cfg, capsys)
    assert rc == 0 and "export.netflow[0].protocol: warning: NetFlow v5 cannot carry IPv6" in err
    assert main(["--dry-run", "--strict", "-c", str(cfg)]) == 78
    capsys.readouterr()
    cfg.write_text(cfg.read_text().replace('["ipv6"]', '["ipv4", "ipv6"]'))
    rc, err = _dry_run(cfg, capsys)
    assert rc == 0 and "warning:" not in err


def test_flow_fields_an_ingest_cannot_see_are_warnings_naming_both(tmp_path, pcap, capsys):
    """[flow] fields an ingest cannot observe stay 0 in its flows: one warning per ingest and
    option, naming the ingest and the fields; fields every ingest sees give none."""
    cfg = tmp_path / "flow.toml"
    cfg.write_text('[flow]\nmac = true\nvlan = true\nmpls_labels = 2\nphysdev = "export"\n'
                   + VALID.format(pcap=pcap) + "[[ingest.nflog]]\ngroup = 4\n"
                   '[[ingest.ebpf]]\ninterfaces = ["lo"]\n[[ingest.conntrack]]\n')
    rc, err = _dry_run(cfg, capsys)
    assert rc == 0, err
    assert ("flow.mpls_labels: warning: ingest.nflog[0] cannot see mpls_label_1, "
            "mpls_label_2: mpls_labels leaves them 0 in its flows") in err
    assert ("flow.physdev: warning: ingest.pcap[0] cannot see in_physdev, out_physdev: "
            'physdev = "export" leaves them 0 in its flows') in err
    assert "flow.vlan: warning: ingest.nflog[0] cannot see inner_vlan_id, " \
           "inner_vlan_priority" in err
    assert "flow.physdev: warning: ingest.ebpf[0] cannot see" in err  # no bridge ports
    for option in ("mac", "vlan", "mpls_labels"):  # the program fills these
        assert f"flow.{option}: warning: ingest.ebpf[0] cannot see" not in err
    assert "ingest.pcap[0] cannot see src_mac" not in err
    assert "ingest.nflog[0] cannot see src_mac" not in err
    assert "ingest.conntrack[0]" not in err  # NAT events only: no flows, no fields
    cfg.write_text('[flow]\nmac = true\nmpls_labels = 1\n' + VALID.format(pcap=pcap))
    rc, err = _dry_run(cfg, capsys)
    assert rc == 0 and "warning:" not in err, err
    cfg.write_text('[flow]\nphysdev = "override"\n' + VALID.format(pcap=pcap))
    rc, err = _dry_run(cfg, capsys)
    assert 'ingest.pcap[0] cannot see in_physdev, out_physdev: physdev = "override"' in err


def test_the_sample_documents_flow(capsys):
    assert main(["config", "sample"]) == 0
    sample = capsys.readouterr().out
    flow = sample[sample.index("[flow]\n"):].split("\n\n")[0]
    for key in ("mac", "vlan", "mpls_labels", "physdev", "tunnel_id", "fields"):
        assert f"\n# {key} = " in flow
    assert "--enable-macaddress" in flow and "dry-run warning" in flow
