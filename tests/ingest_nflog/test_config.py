"""``[[ingest.nflog]]`` configuration: checks, resources, sample, managed ruleset text."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from netflow_agent.config.convert import convert
from netflow_agent.plugins.ingest_nflog.config import (
    MESSAGE_OVERHEAD,
    NLBUFSIZ_AUTO,
    NLBUFSIZ_MAX,
    NLBUFSIZ_MIN,
    Config,
)
from netflow_agent.plugins.ingest_nflog.rules import ruleset

SAMPLE = Path(__file__).parents[2] / "plugins" / "ingest_nflog" / "sample.toml"


def _convert(table: dict) -> tuple[Config | None, list]:
    return convert(Config, table, "ingest.nflog[0]")


def test_sample_loads_without_issues() -> None:
    data = tomllib.loads(SAMPLE.read_text())
    cfg, issues = _convert(data["ingest"]["nflog"][0])
    assert cfg is not None and issues == []
    assert cfg.groups == [5] and cfg.snaplen == 128


def test_readme_quotes_the_sample() -> None:
    readme = (SAMPLE.parent / "README.md").read_text()
    assert SAMPLE.read_text().strip() in readme


@pytest.mark.parametrize("group, path", [(70000, "group"), (-1, "group"),
                                         ([1, 70000], "group[1]"), ([3, 3], "group[1]")])
def test_bad_groups_are_errors_with_paths(group: object, path: str) -> None:
    cfg, issues = _convert({"group": group})
    assert [i.path for i in issues if i.severity == "error"] == [f"ingest.nflog[0].{path}"]


def test_group_list_and_resources() -> None:
    cfg, issues = _convert({"group": [1, 2], "netns": "r1", "manage_rules": True})
    assert cfg is not None and not issues
    idents = [(r.kind, r.ident) for r in cfg.resources()]
    assert ("nflog-group", "netns=r1 group=1") in idents
    assert ("nflog-group", "netns=r1 group=2") in idents
    assert ("nft-table", "netns=r1 inet netflow_agent") in idents


def test_warnings_small_snaplen_and_clamped_buffer() -> None:
    _cfg, issues = _convert({"group": 1, "snaplen": 40, "nlbufsiz": 1 << 20})
    assert {i.path.rsplit(".", 1)[1] for i in issues} == {"snaplen", "nlbufsiz"}
    assert all(i.severity == "warning" for i in issues)


def test_bad_chain_and_netns() -> None:
    _cfg, issues = _convert({"group": 1, "chains": ["prerouting"]})
    assert issues and issues[0].path.endswith("chains[0]")
    _cfg, issues = _convert({"group": 1, "netns": "bad name"})
    assert [i.path for i in issues] == ["ingest.nflog[0].netns"]


def test_ruleset_one_group() -> None:
    text = ruleset([5], ["forward", "input"], 128, 32, -1)
    assert "delete table inet netflow_agent" in text
    assert "type filter hook input priority -1;" in text
    assert "counter log group 5 snaplen 128 queue-threshold 32" in text
    assert "hook output" not in text


def test_ruleset_spreads_several_groups() -> None:
    text = ruleset([5, 6], ["forward"], 0, 16, -1)
    assert "numgen inc mod 2 vmap { 0 : jump to_group_5, 1 : jump to_group_6 }" in text
    assert "snaplen" not in text  # 0 = whole packet


def test_ruleset_for_one_family_matches_nfproto():
    text = ruleset([5], ["forward"], 128, 32, -1, families=("ipv6",))
    assert "meta nfproto ipv6 counter log group 5" in text
    assert "nfproto" not in ruleset([5], ["forward"], 128, 32, -1)


def test_ruleset_bridge_chain_is_a_bridge_family_table():
    """Only bridge-family NFLOG messages carry NFULA_VLAN: "bridge" logs IP frames there."""
    text = ruleset([5], ["bridge"], 128, 32, -1, families=("ipv4",))
    assert "table inet" not in text
    assert "delete table bridge netflow_agent" in text
    assert "type filter hook forward priority -1;" in text
    assert "meta protocol { ip } counter log group 5 snaplen 128" in text
    both = ruleset([5], ["input", "bridge"], 0, 16, -1)
    assert "table inet netflow_agent {" in both and "meta protocol { ip, ip6 }" in both
    cfg, issues = _convert({"group": 1, "manage_rules": True, "chains": ["input", "bridge"]})
    assert not issues
    assert [r.ident for r in cfg.resources()][-2:] == ["netns= inet netflow_agent",
                                                     "netns= bridge netflow_agent"]


def test_auto_batch_buffer_is_a_whole_kernel_block_that_holds_a_batch() -> None:
    """nlbufsiz = 0: a 64-packet batch of 128-byte snaps fits, and nlbufsiz plus the
    kernel's 320-byte skb_shared_info is a power of two (no bigger block, no copy)."""
    cfg = Config(group=1)
    size = cfg.batch_buffer()
    assert size == 16064 and (size + 320) & (size + 319) == 0
    assert cfg.qthreshold * (MESSAGE_OVERHEAD + cfg.snaplen) + 20 <= size
    assert Config(group=1, snaplen=0).batch_buffer() == 131072 - 320  # whole packets
    assert Config(group=1, qthreshold=8).batch_buffer() == 8192 - 320
    assert Config(group=1, nlbufsiz=65536).batch_buffer() == 65536  # as configured
    assert all(NLBUFSIZ_MIN <= s <= NLBUFSIZ_MAX for s in NLBUFSIZ_AUTO)


class _Socket:
    """An NFLOG socket that binds nothing (agent_start without the kernel)."""

    def __init__(self, group: int, netns: str, rcvbuf: int):
        self.group, self.rcvbuf = group, rcvbuf

    def bind(self, *args: object) -> list[bytes]:
        return []

    def close(self) -> None:
        pass


@pytest.mark.parametrize("decoder, options, lag_ms", [
    ("c", {}, 100 + 20 + 200 + 200),  # flush_timeout_ms + coalesce_ms + batch_ms + margin
    ("python", {}, 100 + 20 + 200),  # no batch_ms: every packet goes on at once
    ("c", {"flush_timeout_ms": 1000, "batch_ms": 0, "coalesce_ms": 0}, 1000 + 200),
])
def test_the_ingest_declares_how_late_it_delivers(monkeypatch, decoder, options, lag_ms):
    """The cache waits that much past inactive_timeout before it calls a flow idle, so a
    packet still in a kernel batch or the reader's sums joins its flow (one record)."""
    from netflow_agent.plugins.ingest_nflog import component, netlink
    from netflow_agent.plugins.ingest_nflog.decoders import c_unavailable_reason
    from netflow_agent.runtime import RunContext

    if decoder == "c" and c_unavailable_reason() is not None:
        pytest.skip(c_unavailable_reason())
    monkeypatch.setattr(netlink, "NflogSocket", _Socket)
    monkeypatch.setattr(component.GroupReader, "start", lambda self, context: None)
    context = RunContext()
    ingest = component.NflogIngest(Config(group=[7, 8], decoder=decoder, **options),
                                   "ingest.nflog[0]")
    ingest.agent_start(context=context)
    assert context.delivery_lags == {"ingest.nflog[0]": lag_ms * 1_000_000}
