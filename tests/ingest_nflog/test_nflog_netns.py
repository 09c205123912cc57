"""Privileged end-to-end tests: NFLOG rules in a router namespace, the real agent, nfcapd.

Topology (tests.support.netns): client -- router -- server, offloads off so every packet is
wire-sized. The agent runs in the host namespace and reads the router's NFLOG group
(``netns = <router>``), exporting NetFlow v9 to nfcapd on 127.0.0.1 and to a tap that checks
every packet's export clock (tests/support/exportclock.py). Ground truth is
independent of the agent: tcpdump captures on the router's interfaces, and the kernel's own
nft rule counter for the loss test.

Every end-to-end test runs with both decoders (``decoder = "c"``: per-flow sums from the C
extension into ``agent_cache_flows``; ``"python"``: packets into ``agent_cache_packets``), and
reads the cache's own counters over the control socket: ``traffic`` and ``drop`` must count
packets exactly with either. The forward test also decodes the tap's datagrams with the PyPI
``netflow`` package and tshark (flows, interfaces, direction, interface names).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from netflow_agent.control import request
from tests.support.agentproc import Agent, nflog_counters
from tests.support.collectors import (
    Nfcapd,
    cflow_records,
    flow_table,
    netflow_decode,
    netflow_records,
    tshark_decode,
)
from tests.support.exportclock import clock_tap
from tests.support.netns import (
    Capture,
    RoutedTopology,
    send_icmp_echo,
    send_udp,
    tcp_connections,
)
from tests.support.truth import GroundTruth

pytestmark = pytest.mark.netns

GROUP = 7
DECODERS = ["c", "python"]


def _config(topo: RoutedTopology, port: int, decoder: str, sock: Path, tap: str = "",
            **extra: object) -> str:
    lines = ["[agent]", "scan_interval_ms = 200", f'control_socket = "{sock}"', "",
             "[[ingest.nflog]]", f"group = {GROUP}", f'netns = "{topo.router_ns.name}"',
             "flush_timeout_ms = 50", f'decoder = "{decoder}"']
    lines += [f"{k} = {_toml(v)}" for k, v in extra.items()]
    dests = ", ".join(f'"{d}"' for d in (f"127.0.0.1:{port}", tap) if d)
    lines += ["", "[[export.netflow]]", f"destination = [{dests}]", "protocol = 9"]
    return "\n".join(lines) + "\n"


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def _add_rules(topo: RoutedTopology, kind: str, chains: tuple[str, ...]) -> None:
    """NFLOG rules the way a user writes them (README examples)."""
    ns = topo.router_ns
    if kind == "iptables":
        for tool in ("iptables", "ip6tables"):
            for chain in chains:
                ns.run([tool, "-I", chain.upper(), "-j", "NFLOG", "--nflog-group", str(GROUP),
                        "--nflog-size", "128", "--nflog-threshold", "16"])
    elif kind == "nft":
        script = ["table inet user_acct {"]
        for chain in chains:
            script += [f"  chain {chain} {{ type filter hook {chain} priority 0; policy accept;",
                       f"    counter log group {GROUP} snaplen 128 queue-threshold 16", "  }"]
        script.append("}")
        ns.run(["nft", "-f", "-"], input="\n".join(script) + "\n")


def _forward_traffic(topo: RoutedTopology) -> None:
    c, s = topo.client_ns, topo.server_ns
    send_udp(c, topo.server.addr, 5001, 20, 100, peer=s)
    send_udp(c, topo.server.addr6, 5002, 10, 300, peer=s)
    send_udp(c, topo.server.addr, 5003, 3, 3000, peer=s)  # 3 fragments each
    send_udp(c, topo.server.addr6, 5004, 2, 2500, peer=s)  # IPv6 fragments
    send_icmp_echo(c, topo.server.addr, 3)
    send_icmp_echo(c, topo.server.addr6, 2)
    tcp_connections(c, s, topo.server.addr, 6001, 2, 4000, capture=(topo.router_ns, "rc"))
    tcp_connections(c, s, topo.server.addr6, 6002, 1, 3000, capture=(topo.router_ns, "rc"))


def _cache_when(agent: Agent, ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The cache counters once ``ready`` holds for them."""
    return agent.wait_for(lambda s: ready(s["cache"]), what="cache counters")["cache"]


def _started(workdir: Path, toml: str, decoder: str) -> Agent:
    """The agent on ``toml``, once it reads its group (and its control socket answers)."""
    agent = Agent.in_dir(workdir, toml, socket=workdir / "agent.sock")
    agent.start(ready="reading NFLOG group")
    assert f"{decoder} decoder)" in agent.log(), "wrong decoder in use"
    return agent


def _truth_of(captures: list[Capture]) -> GroundTruth:
    truth = GroundTruth()
    for cap in captures:
        truth.merge(cap.stop())
        cap.close()
    return truth


def _expected(truth: GroundTruth) -> dict[tuple, tuple[int, int]]:
    return {fid[1:]: counts for fid, counts in truth.table().items()}


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("rules", ["iptables", "nft", "manage_rules"])
def test_forward_flows_match_capture_exactly(topo: RoutedTopology, tmp_path: Path,
                                             rules: str, decoder: str) -> None:
    """UDP, TCP, ICMP, IPv4/IPv6, fragments through FORWARD: nfdump == capture, exactly."""
    extra: dict[str, object] = {}
    if rules == "manage_rules":
        extra = {"manage_rules": True, "chains": ["forward"]}
    else:
        _add_rules(topo, rules, ("forward",))
    sock = tmp_path / "agent.sock"
    with Nfcapd(tmp_path / "flows") as cap, clock_tap() as tap:
        agent = _started(tmp_path, _config(topo, cap.port, decoder, sock, tap.endpoint,
                                           **extra), decoder)
        try:
            # the agent's default [cache] fragments = "track": one flow per datagram's 5-tuple
            captures = [Capture(topo.router_ns, "rc", direction="in", fragments="track").start(),
                        Capture(topo.router_ns, "rs", direction="in", fragments="track").start()]
            _forward_traffic(topo)
            truth = _truth_of(captures)
            cache = _cache_when(agent, lambda c: c["traffic_packets"] >= truth.packets)
        finally:
            assert agent.stop() == 0, agent.log()
        records = cap.flows()
        _check_decoders(tap.collect(), tap.port, _expected(truth), topo)
    counters = nflog_counters(agent.log())
    assert counters["seq_gaps"] == 0 and counters["malformed"] == 0, agent.log()
    assert truth.frag >= 3 * 3 + 2 * 2, "the test traffic must contain fragments"
    assert flow_table(records) == _expected(truth), agent.log()
    assert counters["packets"] == truth.packets
    assert (cache["traffic_packets"], cache["traffic_bytes"]) == (
        truth.packets, sum(b for _p, b in truth.table().values()))
    assert (cache["drop_packets"], cache["trunc"], cache["frag"]) == (0, 0, truth.frag)
    if rules == "manage_rules":
        tables = topo.router_ns.run(["nft", "list", "tables"]).stdout
        assert "netflow_agent" not in tables, "managed table must be removed at exit"


def _check_decoders(datagrams: list[bytes], port: int, expected: dict[tuple, tuple[int, int]],
                    topo: RoutedTopology) -> None:
    """The v9 the tap received, decoded by the PyPI ``netflow`` package and tshark: the same
    flows as the capture; interfaces and direction as the router saw them (ingress on the
    client side, out on the server side, or the reverse for replies); the interface-name
    options records name both interfaces."""
    _, flows = netflow_decode(datagrams)
    assert flow_table(netflow_records(flows)) == expected
    rc, rs = topo.router_client, topo.router_server
    clients = {topo.client.addr, topo.client.addr6}
    for rec in netflow_records(flows):
        raw = rec["raw"]
        from_client = rec["src"] in clients
        want = (rc.ifindex, rs.ifindex) if from_client else (rs.ifindex, rc.ifindex)
        assert (raw["INPUT_SNMP"], raw["OUTPUT_SNMP"], raw["DIRECTION"]) == (*want, 0), rec
    records = cflow_records(tshark_decode(datagrams, port))
    assert sum(int(r["cflow.packets"]) for r in records) == sum(p for p, _ in expected.values())
    names = [layer for layer in _walk(tshark_decode(datagrams, port)) if "cflow.if_name" in layer]
    announced = {(int(n["cflow.scope_interface"]), n["cflow.if_name"]) for n in names}
    assert {(rc.ifindex, rc.ifname), (rs.ifindex, rs.ifname)} <= announced, announced


def _walk(node: Any) -> list[dict[str, Any]]:
    """Every dict inside tshark's JSON tree (records are nested under their FlowSet)."""
    if isinstance(node, list):
        return [d for item in node for d in _walk(item)]
    if not isinstance(node, dict):
        return []
    return [node, *(d for value in node.values() for d in _walk(value))]


@pytest.mark.parametrize("decoder", DECODERS)
def test_input_output_hooks_directions(topo: RoutedTopology, tmp_path: Path,
                                       decoder: str) -> None:
    """Traffic to and from the router itself (INPUT/OUTPUT): flows exact, directions right."""
    _add_rules(topo, "iptables", ("input", "output"))
    router, c = topo.router_client, topo.client_ns
    with Nfcapd(tmp_path / "flows") as cap, clock_tap() as tap:
        agent = _started(tmp_path, _config(topo, cap.port, decoder, tmp_path / "agent.sock",
                                           tap.endpoint), decoder)
        try:
            # both directions on both links: the router's own MLD reports leave on either
            captures = [Capture(topo.router_ns, "rc").start(),
                        Capture(topo.router_ns, "rs").start()]
            send_udp(c, router.addr, 5101, 7, 80, peer=topo.router_ns)
            send_udp(c, router.addr6, 5102, 5, 120, peer=topo.router_ns)
            send_icmp_echo(c, router.addr, 4)
            send_icmp_echo(c, router.addr6, 3)
            tcp_connections(c, topo.router_ns, router.addr, 6101, 1, 2000,
                            capture=(topo.router_ns, "rc"))
            truth = _truth_of(captures)
        finally:
            assert agent.stop() == 0, agent.log()
        records = cap.flows()
    # the router's own MLD reports (to ff02::16, sent at random times after the addresses
    # were set up) may leave between the agent's start and the captures' start: not compared
    assert _link_unicast(flow_table(records)) == _link_unicast(_expected(truth)), agent.log()
    by_dst = {(r["dst"], r["proto"]): r for r in records}
    # echo requests arrive (INPUT: ingress on rc), echo replies leave (OUTPUT: egress on rc)
    request = by_dst[(router.addr, 1)]
    reply = by_dst[(topo.client.addr, 1)]
    assert request["direction"] in (0, None) and request["in_if"] == router.ifindex
    assert reply["out_if"] == router.ifindex and reply["direction"] == 1


@pytest.mark.parametrize("decoder", DECODERS)
def test_overload_loss_is_counted_exactly(topo: RoutedTopology, tmp_path: Path,
                                          decoder: str) -> None:
    """A tiny receive buffer under a burst: kernel-logged = accounted + counted drops."""
    _add_rules(topo, "nft", ("forward",))
    sock = tmp_path / "agent.sock"
    with Nfcapd(tmp_path / "flows") as cap, clock_tap() as tap:
        agent = _started(tmp_path, _config(topo, cap.port, decoder, sock,
                                           tap.endpoint, rcvbuf=1, qthreshold=64,
                                           nlbufsiz=131072), decoder)
        try:
            send_udp(topo.client_ns, topo.server.addr, 5201, 30000, 18, peer=topo.server_ns,
                     timeout=30)
            # a few slow packets after the burst reveal a loss at its very end (seq gap)
            send_udp(topo.client_ns, topo.server.addr, 5202, 3, 18, peer=topo.server_ns)
            logged = _rule_packets(topo)
            cache = _cache_when(
                agent, lambda c: c["traffic_packets"] + c["drop_packets"] >= logged)
        finally:
            assert agent.stop() == 0, agent.log()
        records = cap.flows()
    accounted = sum(r["packets"] for r in records)
    counters = nflog_counters(agent.log())
    assert counters["seq_gaps"] > 0, f"no loss provoked; {counters}"
    assert counters["overruns"] > 0  # kernel batches lost (what ENOBUFS reports)
    assert logged == accounted + counters["seq_gaps"], (logged, accounted, counters)
    # the cache's own counters, in packets: traffic = accounted, drop = the seq gaps
    assert (cache["traffic_packets"], cache["drop_packets"]) == (accounted,
                                                                 counters["seq_gaps"]), cache


def _link_unicast(table: dict[tuple, tuple[int, int]]) -> dict[tuple, tuple[int, int]]:
    return {fid: counts for fid, counts in table.items() if not fid[2].startswith("ff02:")}


def _rule_packets(topo: RoutedTopology) -> int:
    import json

    out = topo.router_ns.run(["nft", "-j", "list", "table", "inet", "user_acct"]).stdout
    total = 0
    for item in json.loads(out)["nftables"]:
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                total += expr["counter"]["packets"]
    return total


def test_multi_group_ruleset_is_accepted_by_nft(topo: RoutedTopology) -> None:
    """The round-robin ruleset for several groups passes ``nft -c`` (check only)."""
    from netflow_agent.plugins.ingest_nflog.rules import ruleset

    text = ruleset([7, 8], ["input", "forward", "output"], 128, 16, -1)
    topo.router_ns.run(["nft", "-c", "-f", "-"], input=text)


def test_dry_run_group_conflicts(topo: RoutedTopology, tmp_path: Path) -> None:
    """Two instances on one group: error; a group held by another process: warning."""
    import subprocess
    import sys

    from netflow_agent.plugins.ingest_nflog.netlink import NflogSocket

    ns = topo.router_ns.name
    two = (f'[[ingest.nflog]]\ngroup = 9\nnetns = "{ns}"\n[[ingest.nflog]]\ngroup = [8, 9]\n'
           f'netns = "{ns}"\n[[export.log]]\npath = "-"\n')
    (tmp_path / "two.toml").write_text(two)
    res = subprocess.run([sys.executable, "-m", "netflow_agent.cli", "--dry-run", "-c",
                          str(tmp_path / "two.toml")], capture_output=True, text=True)
    assert res.returncode == 78 and "nflog-group netns=" in res.stderr, res.stderr
    held = NflogSocket(11, ns)
    try:
        held.bind(128, 1, 4096, 100)
        (tmp_path / "one.toml").write_text(f'[[ingest.nflog]]\ngroup = 11\nnetns = "{ns}"\n'
                                           '[[export.log]]\npath = "-"\n')
        res = subprocess.run([sys.executable, "-m", "netflow_agent.cli", "--dry-run", "--check-env",
                              "-c", str(tmp_path / "one.toml")], capture_output=True, text=True)
    finally:
        held.close()
    assert res.returncode == 0 and "group 11 is already bound" in res.stderr, res.stderr


def test_reload_does_not_warn_about_the_agents_own_groups(topo: RoutedTopology,
                                                          tmp_path: Path) -> None:
    """Issue 18 item 15: a reload re-checks the groups while the agent holds them; its own
    sockets are not "another process". Another process's check still names the agent."""
    import subprocess
    import sys

    sock = tmp_path / "agent.sock"
    ns = topo.router_ns.name  # two sockets: the first gets the PID as port id, not the second
    conf = (f'[agent]\ncontrol_socket = "{sock}"\n[[ingest.nflog]]\ngroup = 12\n'
            f'netns = "{ns}"\n[[ingest.nflog]]\ngroup = 13\nnetns = "{ns}"\n'
            f'[[export.log]]\npath = "-"\n')
    with Agent.in_dir(tmp_path, conf) as agent:
        # "running with" comes after the control socket is bound; the groups' lines before it
        agent.start(ready="running with")
        assert agent.log().count("reading NFLOG group") == 2
        agent.config.write_text(conf.replace('path = "-"', 'path = "-"\nformat = "text"'))
        reply = request(str(sock), "reload", timeout=10)
        assert reply["ok"], reply
        log = agent.log()
        other = subprocess.run([sys.executable, "-m", "netflow_agent.cli", "--dry-run",
                                "--check-env", "-c", str(agent.config)],
                               capture_output=True, text=True)
    assert "reloaded" in log and "already bound" not in log, log
    # another process: the groups and the control socket are the running agent's (warnings)
    assert "group 12 is already bound" in other.stderr, other.stderr
    assert other.returncode == 0 and "another agent is listening there" in other.stderr


@pytest.mark.parametrize("batch_ms", [0, 1000])
def test_held_sums_reach_the_cache_as_few_rows_and_every_packet(topo: RoutedTopology,
                                                                tmp_path: Path,
                                                                batch_ms: int) -> None:
    """The C decoder holds its per-flow sums for ``batch_ms``: a burst of one flow reaches
    the cache as a few rows (lookups), not one per wakeup, and still every packet."""
    _add_rules(topo, "nft", ("forward",))
    sock = tmp_path / "agent.sock"
    with Nfcapd(tmp_path / "flows") as cap:
        agent = _started(tmp_path, _config(topo, cap.port, "c", sock, batch_ms=batch_ms,
                                           rcvbuf=1 << 24), "c")
        try:
            start = agent.wait_for(lambda s: "cache" in s, what="stats")["cache"]["search"]
            sent = send_udp(topo.client_ns, topo.server.addr, 5301, 6000, 18,
                            peer=topo.server_ns, timeout=30)
            logged = _rule_packets(topo)
            cache = _cache_when(agent, lambda c: c["traffic_packets"] >= logged)
        finally:
            assert agent.stop() == 0, agent.log()
        records = cap.flows()
    assert sent.received == 6000 and logged >= 6000
    assert cache["traffic_packets"] == logged and cache["drop_packets"] == 0
    assert sum(r["packets"] for r in records) == logged
    rows = cache["search"] - start
    if batch_ms:  # the burst lasts well under 1 s: one or two periods, a row per flow each
        assert rows <= 2 * len(records) + 2, (rows, len(records))
    else:  # every read: a row per flow and wakeup (the burst spans many 5 ms wakeups)
        assert rows > 4, rows


def test_a_pause_just_under_the_inactive_timeout_is_one_flow_record(topo: RoutedTopology,
                                                                     tmp_path: Path) -> None:
    """The kernel time of a packet is its NFLOG timestamp, but the C decoder hands it to the
    cache up to ``batch_ms`` later: the cache used to call a flow idle ``inactive_timeout``
    after its last packet whatever the reader still held, so a flow pausing for just under
    the timeout was ended as idle and its next packet started a second record. With the
    ingest's delivery lag declared the cache waits for it: one record of both packets. Here
    the timeout is 2 s, batch_ms 1000, the pause 1.9 s."""
    _add_rules(topo, "nft", ("forward",))
    sock = tmp_path / "agent.sock"
    with Nfcapd(tmp_path / "flows") as cap:
        toml = _config(topo, cap.port, "c", sock, batch_ms=1000)
        toml = toml.replace("scan_interval_ms = 200", "scan_interval_ms = 50")
        agent = _started(tmp_path, toml + "\n[cache]\ninactive_timeout = 2\n", "c")
        try:
            for _ in range(2):
                send_udp(topo.client_ns, topo.server.addr, 5302, 1, 100,
                         peer=topo.server_ns, sport=40002)
                time.sleep(1.9)  # the pause under test (after the second: harmless)
            _cache_when(agent, lambda c: c["traffic_packets"] >= 2 and c["active_flows"] == 0)
        finally:
            assert agent.stop() == 0, agent.log()
        records = [r for r in cap.flows() if r["dport"] == 5302]
    assert [(r["sport"], r["packets"]) for r in records] == [(40002, 2)], records
