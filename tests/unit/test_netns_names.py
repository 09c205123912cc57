"""Observed-namespace declarations: ``RunContext.declare_netns`` / ``interface_names``.

The ambiguity rule (two ingests observing different namespaces: no names, one warning naming
the sources), the single-namespace and no-declaration cases, retirement, and the IPFIX
exporter's :class:`InterfaceNames` using the resolver it is given. No root needed: the
namespaces here are only declared, never entered, except the agent's own.
"""

from __future__ import annotations

import logging
import socket

import pytest

from netflow_agent import netns as core_netns
from netflow_agent import schema as schemas
from netflow_agent.api import InterfaceNames
from netflow_agent.model import FlowBatch
from netflow_agent.runtime import RunContext

LO = socket.if_nametoindex("lo")


@pytest.fixture
def warnings_logged():
    """Name: warnings_logged. Scope: function. Messages logged at WARNING by agent.runtime.

    A handler of its own on that logger, not caplog: the CLI tests leave the core's repeat
    filter (agent.logutil) on pytest's root handlers, where it would swallow records.
    """
    got: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: got.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("agent.runtime")
    logger.addHandler(handler)
    yield got
    logger.removeHandler(handler)


def test_no_declaration_resolves_in_the_agent_namespace():
    ctx = RunContext()
    assert ctx.interface_netns() == ""
    assert ctx.interface_names([LO, 0, -1]) == {LO: "lo"}


def test_one_namespace_is_used_and_names_and_paths_compare_equal(monkeypatch):
    calls = []
    monkeypatch.setattr(core_netns, "interface_names",
                        lambda ns, idx: calls.append((ns, sorted(idx))) or {2: "veth-b"})
    ctx = RunContext()
    ctx.declare_netns("ingest.nflog[0]", "b")
    ctx.declare_netns("ingest.ebpf[0]", "/run/netns/b")  # the same namespace
    assert ctx.interface_netns() == "/run/netns/b"
    assert ctx.interface_names([2, 3]) == {2: "veth-b"}
    assert calls == [("/run/netns/b", [2, 3])]


def test_different_namespaces_resolve_nothing_and_warn_once(monkeypatch, warnings_logged):
    monkeypatch.setattr(core_netns, "interface_names",
                        lambda ns, idx: pytest.fail("ambiguous ifIndexes were resolved"))
    ctx = RunContext()
    ctx.declare_netns("ingest.nflog[0]", "a")
    ctx.declare_netns("ingest.ebpf[0]", "")
    assert ctx.interface_netns() is None
    assert ctx.interface_names([1, 2]) == {}
    assert ctx.interface_names([1, 2]) == {}
    warnings = warnings_logged
    assert len(warnings) == 1
    assert "ingest.nflog[0] in /run/netns/a" in warnings[0]
    assert "ingest.ebpf[0] in the agent netns" in warnings[0]


def test_forgetting_a_source_ends_the_ambiguity():
    ctx = RunContext()
    ctx.declare_netns("ingest.nflog[0]", "/nonexistent/netns-a")
    ctx.declare_netns("ingest.nflog[1]", "")
    assert ctx.interface_netns() is None
    ctx.forget_netns("ingest.nflog[0]")
    assert ctx.interface_netns() == ""
    assert ctx.interface_names([LO]) == {LO: "lo"}


def test_a_namespace_that_cannot_be_entered_resolves_nothing(warnings_logged):
    ctx = RunContext()
    ctx.declare_netns("ingest.nflog[0]", "/nonexistent/netns-a")
    assert ctx.interface_names([LO]) == {}
    assert ctx.interface_names([LO]) == {}
    assert len([m for m in warnings_logged if "cannot enter" in m]) == 1


def test_interface_names_snapshot_uses_the_resolver_and_counts_misses():
    names = InterfaceNames()
    names.note([0, 2, 5], [2, 7])
    asked = []

    def resolve(indexes):
        asked.append(list(indexes))
        return {2: "veth-b", 7: "eth1"}

    assert names.snapshot(resolve) == {2: "veth-b", 7: "eth1"}
    assert asked == [[2, 5, 7]]  # 0 is "no interface": never asked
    assert names.unresolved == 1
    assert InterfaceNames().snapshot(resolve) == {} and len(asked) == 1


@pytest.mark.parametrize(("in_if", "out_if", "seen"), [
    ([3, 3, 3], [0, 0, 0], {0, 3}),  # one interface per column: the one-pass answer
    ([3, 3, 9], [0, 4, 0], {0, 3, 4, 9}),  # a second value anywhere in a column
    ([2**32 - 1] * 2, [5, 5], {5, 2**32 - 1}),  # the largest ifIndex stays exact
    ([], [], set()),
])
def test_a_batch_notes_every_interface_its_columns_name(in_if, out_if, seen):
    """Names are resolved and announced for exactly the interfaces the flows named."""
    flows = schemas.active().empty(len(in_if))
    flows["in_if"], flows["out_if"] = in_if, out_if
    names = InterfaceNames()
    names.note_flows(FlowBatch("test", flows))
    assert names.seen == seen
    assert all(type(i) is int for i in names.seen)  # plain ints: sorted() and netlink


def test_a_retired_ingest_is_forgotten(make_agent, collecting_plugin):
    agent = make_agent("[[ingest.fake]]\n[[ingest.fake]]\n[[export.collect]]\n",
                       [collecting_plugin])
    pipeline = agent.pipeline
    pipeline.context.declare_netns("ingest.fake[0]", "/nonexistent/netns-a")
    pipeline.context.declare_netns("ingest.fake[1]", "")
    assert pipeline.context.interface_netns() is None
    pipeline._retire("ingest.fake[0]")
    assert pipeline.context.observed_netns == {"ingest.fake[1]": ""}
    assert pipeline.context.interface_netns() == ""
