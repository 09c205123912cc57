"""Sampling declarations: ``agent.model.Sampling`` and ``RunContext.declare_sampling``."""

from __future__ import annotations

import logging

import pytest

from netflow_agent.model import (
    SAMPLING_DETERMINISTIC,
    SAMPLING_RANDOM,
    FlowBatch,
    FlowDelta,
    PacketBatch,
    Sampling,
    make_key,
)
from netflow_agent.runtime import RunContext


def test_sampling_values_are_checked():
    assert Sampling(100).algorithm == SAMPLING_RANDOM
    assert str(Sampling(8, SAMPLING_DETERMINISTIC)) == "deterministic 1/8"
    assert not Sampling(1).sampled and Sampling(2).sampled
    for bad in ((0,), (2**32,), (10, 4), (1.5,)):
        with pytest.raises(ValueError):
            Sampling(*bad)


def test_nothing_declared_means_unsampled():
    assert RunContext().sampling() is None


def test_declare_withdraw_and_forget():
    ctx = RunContext()
    ctx.declare_sampling("ingest.ebpf[0]", 100)
    assert ctx.sampling() == Sampling(100, SAMPLING_RANDOM)
    ctx.declare_sampling("ingest.ebpf[1]", 100, SAMPLING_RANDOM)  # the same: fine
    ctx.declare_sampling("ingest.ebpf[0]", 1)  # 1 withdraws
    assert ctx.samplings == {"ingest.ebpf[1]": Sampling(100)}
    ctx.forget_sampling("ingest.ebpf[1]")
    assert ctx.sampling() is None


@pytest.mark.parametrize("other", [(50, SAMPLING_RANDOM), (100, SAMPLING_DETERMINISTIC)])
def test_a_different_sampling_from_another_source_is_refused(other):
    ctx = RunContext()
    ctx.declare_sampling("ingest.ebpf[0]", 100)
    with pytest.raises(ValueError, match=r"ingest\.ebpf\[1\] samples .* but ingest\.ebpf\[0\]"):
        ctx.declare_sampling("ingest.ebpf[1]", *other)
    assert ctx.samplings == {"ingest.ebpf[0]": Sampling(100)}
    ctx.declare_sampling("ingest.ebpf[0]", *other)  # the same source may change its own


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_pipeline_warns_once_about_unsampled_flows_and_reports_the_interval(
        make_agent, collecting_plugin):
    agent = make_agent("[[ingest.fake]]\n[[export.collect]]\n", [collecting_plugin])
    pipeline = agent.pipeline
    pipeline.context.declare_sampling("ingest.ebpf[0]", 10)
    key = make_key(4, 17, b"\x0a\0\0\1", b"\x0a\0\0\2", 1, 2)
    handler = _Records()  # the CLI tests may have stopped propagation to the root logger
    logger = logging.getLogger("agent.pipeline")
    logger.addHandler(handler)
    try:
        for _ in range(2):
            pipeline.dispatch("packets", PacketBatch("ingest.pcap[0]", [(key, 100, 0, 1, 0)]))
            pipeline.dispatch("flows", FlowBatch("ingest.ebpf[0]", [FlowDelta(key, 1, 100, 1, 2)]))
    finally:
        logger.removeHandler(handler)
    warnings = [r for r in handler.records if "accounts every packet" in r.getMessage()]
    assert len(warnings) == 1 and "ingest.pcap[0]" in warnings[0].getMessage()
    assert pipeline.core_stats()["sampling_interval"] == 10


def test_no_unsampled_warning_when_the_cache_samples_flows(make_agent, collecting_plugin):
    agent = make_agent('[cache]\nsampler = "random:10"\n[[ingest.fake]]\n[[export.collect]]\n',
                       [collecting_plugin])
    pipeline = agent.pipeline
    pipeline.context.declare_sampling("cache", 10, flows=True)  # as the cache's agent_start
    key = make_key(4, 17, b"\x0a\0\0\1", b"\x0a\0\0\2", 1, 2)
    handler = _Records()
    logger = logging.getLogger("agent.pipeline")
    logger.addHandler(handler)
    try:
        pipeline.dispatch("packets", PacketBatch("ingest.pcap[0]", [(key, 100, 0, 1, 0)]))
    finally:
        logger.removeHandler(handler)
    assert not [r for r in handler.records if "accounts every packet" in r.getMessage()]
    assert pipeline.core_stats()["sampling_interval"] == 10
