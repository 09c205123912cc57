"""bench/compare/run.py's command line: ``--ebpf-set`` and ``--cache-set`` are checked as the
agent would check the option before any flood starts, and ``--append`` refuses results of
another variant."""

from __future__ import annotations

import json

import pytest

from tests.e2e.test_bench_compare import compare_harness

RUN = compare_harness()


def test_ebpf_set_becomes_a_toml_line():
    args = RUN.parse_args(["--ebpf-set", "cpu_slots=262144", "--ebpf-set",
                           'timestamps = "precise"'])
    assert args.ebpf_set == ["cpu_slots = 262144", 'timestamps = "precise"']


@pytest.mark.parametrize(("option", "says"), [
    ("cpu_slots", "expected KEY=VALUE"),
    ("cpu_slots=", "expected KEY=VALUE"),
    ("cpu_slots=1000", "not a power of two"),
    ("cpu_slots=eight", "not a TOML key = value"),
    ("maxflows=-1", "maxflows"),
    ("no_such_key=1", "no_such_key"),
    ("interfaces=[\"eth1\"]", "the harness sets interfaces"),
    ("direction=\"both\"", "the harness sets direction"),
    ("a.b=1", "not an [[ingest.ebpf]] key"),
])
def test_bad_ebpf_set_is_refused_at_parsing(option, says, capsys):
    with pytest.raises(SystemExit) as caught:
        RUN.parse_args(["--ebpf-set", option])
    assert caught.value.code == 2
    assert says in capsys.readouterr().err


def test_a_key_set_twice_is_refused(capsys):
    with pytest.raises(SystemExit):
        RUN.parse_args(["--ebpf-set", "cpu_slots=4096", "--ebpf-set", "cpu_slots=8192"])
    assert "set twice" in capsys.readouterr().err


def test_append_refuses_results_of_another_variant(tmp_path):
    saved = tmp_path / "compare.json"
    saved.write_text(json.dumps({"w3": {"agent-ebpf": [{"sent": 1, "ebpf_set": [
        "cpu_slots = 262144"]}]}}))
    assert RUN.appended(saved, ["cpu_slots = 262144"])["w3"]["agent-ebpf"][0]["sent"] == 1
    with pytest.raises(SystemExit, match="cpu_slots = 262144"):
        RUN.appended(saved, [])
    saved.write_text(json.dumps({"w3": {"agent-ebpf": [{"sent": 1}]}}))  # before the record
    assert RUN.appended(saved, [])
    with pytest.raises(SystemExit):
        RUN.appended(saved, ["cpu_slots = 524288"])


def test_append_takes_the_same_options_in_another_order(tmp_path):
    """``--ebpf-set`` keys are distinct (a key set twice is refused), so their order does not
    change the variant: appending with them reordered is the same measurement."""
    saved = tmp_path / "compare.json"
    saved.write_text(json.dumps({"w3": {"agent-ebpf": [{"sent": 1, "ebpf_set": [
        "cpu_slots = 262144", "maxflows = 524288"]}]}}))
    assert RUN.appended(saved, ["maxflows = 524288", "cpu_slots = 262144"])
    with pytest.raises(SystemExit):
        RUN.appended(saved, ["maxflows = 524288"])


def test_cache_set_becomes_a_cache_line_of_both_agents(tmp_path):
    args = RUN.parse_args(["--cache-set", 'aggregation=["0.0.0.0/0=32", "::/0=128"]'])
    assert args.cache_set == ['aggregation = ["0.0.0.0/0=32", "::/0=128"]']
    agent = RUN.AgentNflog.__new__(RUN.AgentNflog)
    agent.tmp, agent.cache = tmp_path, args.cache_set
    agent.command()
    assert '[cache]\naggregation = ["0.0.0.0/0=32", "::/0=128"]\n' in (
        tmp_path / "agent.toml").read_text()


@pytest.mark.parametrize(("option", "says"), [
    ('aggregation=["10.0.0.0/8=33"]', "new prefix length"),
    ('sampler="hash:1"', "2..16383"),
    ("no_such_key=1", "no_such_key"),
])
def test_bad_cache_set_is_refused_at_parsing(option, says, capsys):
    with pytest.raises(SystemExit):
        RUN.parse_args(["--cache-set", option])
    assert says in capsys.readouterr().err


def test_append_refuses_results_of_another_cache_variant(tmp_path):
    saved = tmp_path / "compare.json"
    saved.write_text(json.dumps({"w2": {"agent-nflog": [{"sent": 1, "cache_set": [
        'sampler = "hash:10"']}]}}))
    assert RUN.appended(saved, [], ['sampler = "hash:10"'])
    with pytest.raises(SystemExit, match="--cache-set"):
        RUN.appended(saved, [])
