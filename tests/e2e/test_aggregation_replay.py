"""Aggregation per packet, end to end (issue 16 item 1 acceptance).

The real ``agent`` replays, at the capture's pace, 1,000 hosts in 192.0.0.0/8 talking to
servers on ports 80-89 (and 3128) under the seed's rules
``192.0.0.0/8=16,10.0.0.0/8=16,80-89=80,3128=80``; a last packet 10 minutes later keeps the
replay running while ``agent stats`` is read. The cache must hold one flow per aggregated key
(24, exactly ``maxflows``, with nothing dropped), and after SIGTERM nfdump must list exactly
those 24 flows with the packets and bytes of the ground truth, masks /16, once each.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.agentproc import Agent, run_agent
from tests.support.aggregation import SEED_RULES, seed_aggregate, thousand_hosts
from tests.support.collectors import Nfcapd
from tests.support.pcapgen import SAMPLE_EPOCH_NS, FlowSpec, PcapBuilder
from tests.support.truth import PROTO_TCP

MS = 1_000_000
KEYS = 24
#: after the hosts, one packet every 200 ms for 5 minutes: keeps the replay running while
#: ``agent stats`` is read (rules leave it alone: one more flow, masks 0)
KEEPER = "172.16.0.1"


Totals = dict[tuple[str, str, int, int], list[int]]  # aggregated key -> [packets, bytes]


def _add(totals: Totals, ident: tuple[str, str, int, int], packets: int, nbytes: int) -> None:
    row = totals.setdefault(ident, [0, 0])
    row[0] += packets
    row[1] += nbytes


def _capture(path: Path) -> Totals:
    """Write the traffic; return packets and bytes per aggregated key (ground truth)."""
    builder = PcapBuilder()
    for h, f in enumerate(thousand_hosts()):
        builder.add(FlowSpec("tcp", f.src, f.dst, f.sport, f.dport, packets=f.packets,
                             payload=h % 97, tcp_flags=0x10, start_ns=SAMPLE_EPOCH_NS + h * MS,
                             gap_ns=100_000))
    builder.add(FlowSpec("udp", KEEPER, "172.16.0.2", 5000, 53, packets=1500, payload=10,
                         start_ns=SAMPLE_EPOCH_NS + 1500 * MS, gap_ns=200 * MS))
    want: Totals = {}
    for fid, (packets, nbytes) in builder.write(path).table().items():
        if fid.proto == PROTO_TCP:
            _add(want, seed_aggregate(fid.src, fid.dst, fid.sport, fid.dport), packets, nbytes)
    return want


def _config(tmp_path: Path, pcap: Path, port: int, rules: str) -> Path:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[agent]\ncontrol_socket = "{tmp_path / "agent.sock"}"\nscan_interval_ms = 100\n\n'
        f"[cache]\ninactive_timeout = 300\nmaxflows = {KEYS + 1}\n{rules}\n\n"
        f'[[ingest.pcap]]\npath = "{pcap}"\nspeed = "recorded"\n\n'
        f'[[export.netflow]]\nprotocol = 9\ndestination = ["127.0.0.1:{port}"]\n')
    return config


def _exported(records: list[dict]) -> Totals:
    """nfdump's records as totals; each key exported once, with masks /16."""
    got: Totals = {}
    for r in records:
        if r["src"] == KEEPER:
            continue
        ident = (r["src"], r["dst"], r["sport"], r["dport"])
        assert ident not in got and (r["src_mask"], r["dst_mask"]) == (16, 16), r
        _add(got, ident, r["packets"], r["bytes"])
    return got


def test_replay_holds_one_flow_per_aggregated_key(tmp_path: Path) -> None:
    pcap = tmp_path / "hosts.pcap"
    want = _capture(pcap)
    tcp_packets = sum(p for p, _ in want.values())
    with Nfcapd(tmp_path / "nfcapd") as cap:
        config = _config(tmp_path, pcap, cap.port, f'aggregation = "{SEED_RULES}"')
        with Agent(config, tmp_path / "agent.sock").start() as agent:
            snap = agent.wait_for(lambda s: s["cache"]["new"] > KEYS, timeout=60,
                                  what="the 1,000 hosts accounted, then the keeper")
            cache = snap["cache"]
            flows = KEYS + 1  # the aggregated keys and the keeper
            assert (cache["active_flows"], cache["new"], cache["maxflows"]) == (flows, flows, 0)
            assert cache["traffic_packets"] > tcp_packets and cache["drop_packets"] == 0
            text = run_agent("stats", "--socket", str(agent.socket))
            assert text.returncode == 0, text.stderr
            assert f"Flows: active {KEYS + 1} (peak {KEYS + 1} " in text.stdout
            assert "aggr0: 192.0.0.0/8=16" in text.stdout and "aggr3: 3128=80" in text.stdout
            assert agent.stop() == 0
        got = _exported(cap.flows())
    assert len(got) == KEYS and got == want


def test_dry_run_and_replay_of_the_older_aggregate_table(tmp_path: Path) -> None:
    """``[aggregate] rules`` (the table older configs use) gives the same result per packet."""
    pcap = tmp_path / "hosts.pcap"
    want = _capture(pcap)
    with Nfcapd(tmp_path / "nfcapd") as cap:
        config = _config(tmp_path, pcap, cap.port, f'\n[aggregate]\nrules = "{SEED_RULES}"')
        dry = run_agent("--dry-run", "--strict", "-c", str(config))
        assert dry.returncode == 0, dry.stderr
        assert "aggregate.rules: note: applied per packet in the cache" in dry.stderr
        with Agent(config, tmp_path / "agent.sock").start() as agent:
            snap = agent.wait_for(lambda s: s["cache"]["new"] > KEYS, timeout=60,
                                  what="the 1,000 hosts accounted, then the keeper")
            assert (snap["cache"]["active_flows"], snap["cache"]["maxflows"]) == (KEYS + 1, 0)
            assert agent.stop() == 0
        assert _exported(cap.flows()) == want
