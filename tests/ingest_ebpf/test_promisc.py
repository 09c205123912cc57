"""Privileged tests: ``[[ingest.ebpf]] promisc = true`` on a port fed by ``tc mirred``.

Topology: traffic ``a -> b`` crosses the veth pair of the ``veth_pair_ns`` fixture; in
``b``'s namespace a clsact ``u32`` filter matching everything mirrors every frame ``b``
receives out of a second veth (``tc ... action mirred egress mirror``), whose peer ``span``
lives in a third namespace: a SPAN port. The frames arriving on ``span`` keep ``b``'s
destination MAC, foreign to ``span``. The ingest observes ``span`` only, and must account
exactly the ``a -> b`` ground truth. The interface's kernel promiscuity counter
(``ip -d link show``: ``promiscuity N``) must rise by one while attached and return to its
previous value at stop, at detach and after SIGKILL.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.ingest_ebpf.observe import ebpf_ingest
from tests.ingest_ebpf.test_ebpf_agent import start_agent, write_config
from tests.support.netns import Endpoint, Netns, VethPair, send_udp, veth_pair

pytestmark = pytest.mark.bpf


def promiscuity(ns: Netns, ifname: str) -> int:
    """The kernel's promiscuity reference count of ``ifname`` (``ip -d link show``)."""
    out = ns.run(["ip", "-j", "-d", "link", "show", "dev", ifname]).stdout
    return int(json.loads(out)[0]["promiscuity"])


def wait_promiscuity(ns: Netns, ifname: str, value: int, timeout: float = 10) -> None:
    """Poll until the counter reaches ``value`` (the kernel drops a dead process's reference
    when its files are closed, just after the exit is reported)."""
    deadline = time.monotonic() + timeout
    while (now := promiscuity(ns, ifname)) != value:
        assert time.monotonic() < deadline, f"{ifname}: promiscuity {now}, want {value}"
        time.sleep(0.05)


@dataclass
class Span:
    """The mirrored link (``pair``) and the SPAN port that receives the copies."""

    pair: VethPair
    port: Endpoint


@pytest.fixture
def span(veth_pair_ns: VethPair) -> Iterator[Span]:
    """Name: span. Scope: function. Frames ``b`` receives are mirrored to ``port``."""
    b = veth_pair_ns.b
    with Netns() as ns_c:
        mirror = veth_pair(b.ns, ns_c, name_a="mir0", name_b="span0")
        b.ns.run(["tc", "qdisc", "add", "dev", b.ifname, "clsact"])
        b.ns.run(["tc", "filter", "add", "dev", b.ifname, "ingress", "protocol", "all", "u32",
                  "match", "u32", "0", "0", "action", "mirred", "egress", "mirror", "dev",
                  mirror.a.ifname])  # u32 matching everything: this kernel has no matchall
        yield Span(veth_pair_ns, mirror.b)


def send(span: Span, port: int, count: int, size: int):
    """``count`` UDP datagrams ``a -> b``; their ground truth (what the mirror copies)."""
    a, b = span.pair.a, span.pair.b
    return send_udp(a.ns, b.addr, port, count, size, peer=b.ns).truth


def test_mirrored_frames_for_a_foreign_mac_are_accounted(span):
    """The counter rises by one while attached, on top of a reference somebody else holds
    (``ip link set promisc on``), and only ours is dropped at stop."""
    port = span.port
    assert port.mac != span.pair.b.mac
    port.ns.run(["ip", "link", "set", port.ifname, "promisc", "on"])  # an operator's flag
    with ebpf_ingest(interfaces=[port.ifname], netns=port.ns.name, direction="ingress",
                     promisc=True, poll_interval_ms=100) as seen:
        assert promiscuity(port.ns, port.ifname) == 2
        truth = send(span, 9300, 25, 120)
        truth.merge(send(span, 9301, 7, 900))
    assert seen.table() == truth.table()
    assert seen.dropped_packets == 0
    assert promiscuity(port.ns, port.ifname) == 1
    assert "PROMISC" in port.ns.link(port.ifname)["flags"]  # the operator's flag stays


def test_veth_delivers_foreign_macs_to_tc_without_promisc(span):
    """The measured truth the README states: with promiscuity 0 a veth still hands frames for
    another MAC to the tc ingress hook (the peer's xmit marks them PACKET_OTHERHOST and the IP
    layer drops them after tc; there is no MAC filter to open). A real NIC's filter drops them
    before tc, which is what ``promisc`` is for."""
    port = span.port
    with ebpf_ingest(interfaces=[port.ifname], netns=port.ns.name, direction="ingress",
                     poll_interval_ms=100) as seen:
        assert promiscuity(port.ns, port.ifname) == 0
        truth = send(span, 9305, 11, 200)
    assert seen.table() == truth.table()
    assert "PROMISC" not in port.ns.link(port.ifname)["flags"]


def test_interfaces_attached_later_and_detached(span):
    """A matching interface that appears after start (RTM_NEWLINK) gets our reference; when it
    is renamed out of the globs it is detached and the reference dropped at once."""
    ns = span.port.ns
    with ebpf_ingest(interfaces=["span*", "late*"], netns=ns.name, direction="ingress",
                     promisc=True, poll_interval_ms=100, rescan_interval_ms=600000) as seen:
        assert promiscuity(ns, span.port.ifname) == 1
        ns.run(["ip", "link", "add", "late0", "type", "veth", "peer", "name", "peer0"])
        wait_promiscuity(ns, "late0", 1)
        assert promiscuity(ns, "peer0") == 0
        ns.run(["ip", "link", "set", "late0", "name", "gone0"])
        wait_promiscuity(ns, "gone0", 0)
        truth = send(span, 9310, 9, 60)
    assert seen.table() == truth.table()
    assert promiscuity(ns, span.port.ifname) == 0
    assert seen.stats["attach_errors"] == 0


def test_agent_sigkill_drops_the_reference(span, tmp_path):
    """The real agent: promiscuity 1 while it runs; SIGKILL (no cleanup code runs) drops it."""
    port = span.port
    conf, _ = write_config(tmp_path, port.ns.name, port.ifname, "tcx")
    conf.write_text(conf.read_text().replace("[[ingest.ebpf]]", "[[ingest.ebpf]]\npromisc = true"))
    agent, _ = start_agent(conf, tmp_path / "agent.log")
    try:
        assert promiscuity(port.ns, port.ifname) == 1
        assert "promiscuous" in agent.log()
    finally:
        agent.signal(signal.SIGKILL)
        agent.wait_exit(timeout=10)
    wait_promiscuity(port.ns, port.ifname, 0)
