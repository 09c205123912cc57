"""``agent config import-ipt-netflow``: the seed README's settings, converted, then checked by
``agent --dry-run`` (a separate process, as an operator runs it) and read back: every value
lands where the agent uses it, every option without an equivalent is a comment saying why."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netflow_agent.config.check import validate
from netflow_agent.config.ipt_netflow import (
    InputError,
    convert,
    parse_modprobe,
    parse_sysctl,
    render,
    validate_draft,
)
from netflow_agent.discovery import build_registry, make_manager

AGENT = [sys.executable, "-m", "netflow_agent.cli"]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AGENT, *args], input=stdin, capture_output=True, text=True,
                          timeout=60)


def round_trip(tmp_path: Path, modprobe: str = "", sysctl: str = "",
               *extra: str) -> tuple[Any, str]:
    """Import, dry-run the result, load it: (the validated config, the TOML text with each
    wrapped comment joined into one line)."""
    args = ["config", "import-ipt-netflow", "-o", str(tmp_path / "out.toml"), *extra]
    if modprobe:
        (tmp_path / "ipt_NETFLOW.conf").write_text(modprobe)
        args += ["--modprobe", str(tmp_path / "ipt_NETFLOW.conf")]
    if sysctl:
        (tmp_path / "sysctl.txt").write_text(sysctl)
        args += ["--sysctl", str(tmp_path / "sysctl.txt")]
    proc = run(*args)
    assert proc.returncode == 0, proc.stderr
    dry = run("--dry-run", "-c", str(tmp_path / "out.toml"))
    assert dry.returncode == 0 and "configuration OK" in dry.stderr, dry.stderr
    config, issues = validate(tmp_path / "out.toml", build_registry(make_manager([])[0]))
    assert config is not None, issues
    return config, re.sub(r"\n#\s{5,}", " ", (tmp_path / "out.toml").read_text())


def one(config: Any, stage: str) -> Any:
    [inst] = config.by_stage(stage)
    return inst


def test_seed_modprobe_line_v9_with_natevents(tmp_path: Path) -> None:
    # the seed README: "options ipt_NETFLOW destination=127.0.0.1:2055 protocol=9 natevents=1"
    config, _ = round_trip(tmp_path, "# /etc/modprobe.d/ipt_NETFLOW.conf\n"
                           "options ipt_NETFLOW destination=127.0.0.1:2055 protocol=9 "
                           "natevents=1\n")
    export = one(config, "export")
    assert (export.path, export.config.protocol) == ("export.netflow[0]", 9)
    assert export.config.destination == ["127.0.0.1:2055"] and export.config.natevents
    assert [i.path for i in config.by_stage("ingest")] == ["ingest.nflog[0]",
                                                           "ingest.conntrack[0]"]
    assert one(config, "cache").config.active_timeout == 1800  # not given: the same default


def test_mirrored_destinations_timeouts_aggregation_and_v5_options(tmp_path: Path) -> None:
    config, text = round_trip(
        tmp_path,
        "options ipt_NETFLOW destination=127.0.0.1:2055,192.0.0.1:2055 debug=1\n"
        "options ipt_NETFLOW inactive_timeout=15 active_timeout=1800 maxflows=2000000 \\\n"
        "    hashsize=32768 engine_id=3 sndbuf=262144 refresh-rate=50\n"
        'options ipt_NETFLOW aggregation="192.0.0.0/8=16,10.0.0.0/8=16,80-89=80,3128=80"\n')
    export = one(config, "export").config
    assert (export.protocol, export.destination) == (5, ["127.0.0.1:2055", "192.0.0.1:2055"])
    assert (export.engine_id, export.sndbuf) == (3, 262144)
    cache = one(config, "cache").config
    assert (cache.inactive_timeout, cache.active_timeout, cache.maxflows, cache.hashsize) == \
        (15, 1800, 2000000, 32768)
    assert cache.aggregation == ["192.0.0.0/8=16", "10.0.0.0/8=16", "80-89=80", "3128=80"]
    assert config.agent.debug == 1
    assert "#   refresh-rate=50 (" in text and "NetFlow v5 has no templates" in text


def test_sysctl_protocol_10_with_source_and_interface(tmp_path: Path) -> None:
    # the seed README's runtime changes, as `sysctl -a` prints them after the fact
    config, text = round_trip(
        tmp_path, "options ipt_NETFLOW protocol=5 destination=10.0.0.9:2055\n",
        "net.netflow.protocol = 10\n"
        "net.netflow.destination = 10.0.0.5:4739@10.0.0.1%eth0,[2001:db8::5]:4739\n"
        "net.netflow.natevents = 1\nnet.netflow.hashsize = 32768\n"
        "net.netflow.engine_id = 77\nnet.netflow.refresh-rate = 30\n"
        "net.netflow.timeout-rate = 15\n")
    exporters = config.by_stage("export")
    assert [e.path for e in exporters] == ["export.ipfix[0]", "export.ipfix[1]"]
    v4, v6 = (e.config for e in exporters)
    assert (v4.destination, v4.source) == (["10.0.0.5:4739"], "10.0.0.1")
    assert (v6.destination, v6.source) == (["[2001:db8::5]:4739"], "")
    for e in (v4, v6):
        assert (e.observation_domain_id, e.refresh_rate, e.template_refresh_s) == \
            (77, 30, 900.0)
        assert e.natevents and e.transport == "udp"
    assert one(config, "cache").config.hashsize == 32768
    assert "'%eth0' of '10.0.0.5:4739@10.0.0.1%eth0' not converted: binding the" in text


def test_options_without_equivalent_become_comments_with_the_reason(tmp_path: Path) -> None:
    _, text = round_trip(
        tmp_path,
        "options ipt_NETFLOW destination=127.0.0.1:2055 sampler=hash:100 "
        "promisc=1 scan-min=5 exportcpu=1 nosuch=4\n"
        "install ipt_NETFLOW /sbin/modprobe --ignore-install ipt_NETFLOW && "
        "/sbin/sysctl -w net.netflow.active_timeout=60\n")
    comments = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    for option in ("promisc=1", "scan-min=5", "exportcpu=1", "nosuch=4"):
        assert f"#   {option} (" in comments, option
    assert 'sampler = "hash:100"  # sampler=hash:100' in text  # flow sampling converts
    assert "unknown ipt_NETFLOW option" in comments
    assert "active_timeout = 60  # active_timeout=60" in text  # from the install command


def test_snmp_rules_become_agent_snmp_rules_and_a_bad_rule_a_comment(tmp_path: Path) -> None:
    config, text = round_trip(
        tmp_path, "options ipt_NETFLOW destination=127.0.0.1:2055 "
                  "snmp-rules=eth:100,ppp:200;vlan\n")
    assert config.agent.snmp_rules == ["eth:100", "ppp:200"]
    assert "#   snmp-rules=eth:100,ppp:200;vlan (" in text
    assert "'vlan' not converted: snmp rule 'vlan': expected" in text


def test_refused_values_are_taken_out_with_the_agents_reason(tmp_path: Path) -> None:
    config, text = round_trip(
        tmp_path, "",
        "net.netflow.active_timeout = 0\nnet.netflow.debug = 7\n"
        "net.netflow.destination = 127.0.0.1:2055,bad:port:x\n"
        "net.netflow.aggregation = 10.0.0.0/8=16,300-20=80\n"
        "net.netflow.maxflows = lots\n")
    assert one(config, "cache").config.active_timeout == 1800
    assert one(config, "export").config.destination == ["127.0.0.1:2055"]
    assert one(config, "cache").config.aggregation == ["10.0.0.0/8=16"]
    assert "#   active_timeout=0 (" in text and "0 is below the minimum 1" in text
    assert "#   debug=7 (" in text and "#   maxflows=lots (" in text
    assert "'300-20=80' not converted" in text


def test_sysctl_a_defaults_need_no_comment(tmp_path: Path) -> None:
    listing = "\n".join([
        "net.netflow.active_timeout = 1800", "net.netflow.aggregation = ",
        "net.netflow.debug = 0", "net.netflow.destination = 127.0.0.1:2055",
        "net.netflow.exportcpu = -1", "net.netflow.flush = 0", "net.netflow.hashsize = 8192",
        "net.netflow.inactive_timeout = 15", "net.netflow.maxflows = 2000000",
        "net.netflow.natevents = 0", "net.netflow.promisc = 0", "net.netflow.protocol = 5",
        "net.netflow.refresh-rate = 20", "net.netflow.sampler = ",
        "net.netflow.scan-min = 1", "net.netflow.sndbuf = 212992",
        "net.netflow.snmp-rules = ", "net.netflow.timeout-rate = 30",
        "net.ipv4.ip_forward = 1"])
    config, text = round_trip(tmp_path, "", listing + "\n")
    assert "Not converted" not in text, text
    assert [i.path for i in config.by_stage("ingest")] == ["ingest.nflog[0]"]
    assert one(config, "export").config.sndbuf == 212992


def test_stdin_stdout_and_nflog_choices() -> None:
    proc = run("config", "import-ipt-netflow", "--sysctl", "-", "--nflog-group", "7",
               "--manage-rules", stdin="net.netflow.protocol=9\n")
    assert proc.returncode == 0, proc.stderr
    assert "[[ingest.nflog]]\ngroup = 7\nmanage_rules = true\n" in proc.stdout
    assert "protocol = 9  # protocol=9" in proc.stdout
    assert "destination: ipt_NETFLOW's default 127.0.0.1:2055" in proc.stdout


@pytest.mark.parametrize("args, message", [
    ([], "give --modprobe FILE and/or --sysctl FILE"),
    (["--modprobe", "/nonexistent/ipt.conf"], "/nonexistent/ipt.conf: cannot read"),
])
def test_unusable_input_writes_nothing(args: list[str], message: str) -> None:
    proc = run("config", "import-ipt-netflow", *args)
    assert proc.returncode == 2 and message in proc.stderr and proc.stdout == ""


_REGISTRY = build_registry(make_manager([])[0])
_WORDS = st.sampled_from(["options", "install", "ipt_NETFLOW", "ipt-NETFLOW", "destination=",
                          "protocol=", "10", "9", "5", "0", "-1", "@", "%", ",", ":", "[", "]",
                          "::1", "10.0.0.1", "eth0", '"', "\\", "\n", " ", "=", "#",
                          "aggregation=", "1.2.3.0/24=16", "80-89=80", "net.netflow.",
                          "natevents=1", "sampler=", "x", "é", "\t"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_WORDS, max_size=40).map("".join), st.lists(_WORDS, max_size=40).map("".join))
def test_any_input_gives_toml_or_a_clear_input_error(modprobe: str, sysctl: str) -> None:
    """Whatever the files hold, the result is TOML that loads (or the input is refused with
    file:line), and every value in it passed the agent's own validation."""
    try:
        found, notes = parse_modprobe(modprobe, "m.conf")
    except InputError as exc:
        assert str(exc).startswith("m.conf:")
        return
    draft = convert(found + parse_sysctl(sysctl, "s.txt"), registry=_REGISTRY)
    data = tomllib.loads(render(draft, ["m.conf", "s.txt"]))
    assert set(data) <= {"agent", "cache", "aggregate", "ingest", "export"}
    refused = [i for i in validate_draft(draft, _REGISTRY) if i.severity == "error"]
    assert all(i.path == "export" or i.path.startswith("export.") for i in refused), refused
