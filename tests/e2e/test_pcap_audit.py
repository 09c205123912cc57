"""An outsider's audit of the pcap replay: captures as third parties write them, checked
against tshark's dissection of the same bytes (``tests/support/tshark_truth.py``).

Each case is one the differential test (``test_pcap_differential.py``) did not hold and the
agent got wrong:

* a capture whose timestamps are not in order (``tcpdump -i any`` stamps packets per CPU;
  ``mergecap -a`` concatenates): a flow's first time is its earliest packet's, as tshark and
  RFC 7011's flowStart read it, not the first packet read;
* a capture with a corrupt record header in the middle (a damaged or badly cut file): the
  packets before it are accounted, as tshark shows them, and the ingest counts the file in
  ``file_corrupt``; the replay used to drop the batch it had read so far, silently;
* a pcapng simple packet block (SPB) cut by its interface's snap length: the block's padding
  is no part of the packet (it was read as TCP flags 0xff: FIN, SYN, RST ...);
* two captures replayed at once (one per interface): each file's flows are what it gives
  alone, whichever reader is faster;
  and a quiet, non-IP or later-starting capture (a rotated one) does not hold the others'
  capture clock back (their flows merged across idle gaps and filled the table), nor does
  a replay's end reach the clock after the others' next batches;
* a compressed capture (tshark opens it): refused at start, saying so;
* a capture stamped at the epoch (0 s): its flows are exported at their own times;
* (held) the PyPI ``netflow`` package reads the v9 and IPFIX exports as tshark counts the
  capture (the differential test decodes only v5 with it).
"""

from __future__ import annotations

import gzip
import ipaddress
import queue
import struct
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinuxV2, Ether
from scapy.packet import Raw

from netflow_agent.config.check import validate
from netflow_agent.discovery import build_registry, make_manager
from netflow_agent.lifecycle import StartupError
from netflow_agent.pipeline import Pipeline
from netflow_agent.runtime import ITEM_DONE
from netflow_agent.testing import AgentUnderTest, build_agent, collecting_plugin_module
from tests.e2e.test_pcap_differential import (
    MAC_A,
    MAC_B,
    T0,
    assert_same_flows,
    check,
    framed,
    mixed,
    replay,
    tcp_session,
    write_pcap,
)
from tests.support.collectors import UdpSink, netflow_decode, wait_udp_drained
from tests.support.exportclock import assert_export_clock
from tests.support.pcapgen import pcapng_block
from tests.support.tshark_truth import tshark_flows
from tests.support.wireaudit import WireAudit


def test_out_of_order_timestamps_give_each_flow_its_earliest_and_latest_time(tmp_path):
    """A ``tcpdump -i any`` capture (SLL2): packets of one flow stamped on different CPUs,
    some a few µs before the packet written ahead of them; and a second capture appended
    (``mergecap -a``) whose first packets are older than the first file's."""
    frames = [(ts, bytes(CookedLinuxV2(proto=0x86DD if isinstance(p, IPv6) else 0x0800,
                                       lladdrtype=1, lladdrlen=6) / p))
              for ts, p in zip((T0 + i * 1_000 for i in range(len(mixed()))), mixed(),
                               strict=True)]
    for i in range(1, len(frames) - 1, 3):  # every third pair swapped: stamped out of order
        frames[i], frames[i + 1] = frames[i + 1], frames[i]
    earlier = [(ts - 10**9, frame) for ts, frame in framed(
        "sll2", tcp_session("10.1.0.1", "10.1.0.2", 40000, 80))]
    truth, _ingest = check(tmp_path, write_pcap(tmp_path / "c.pcap", frames + earlier, 276))
    first = truth.flows[(6, "10.1.0.1", "10.1.0.2", 40000, 80)].first_ns
    assert first == earlier[0][0] // 1000 * 1000  # the appended SYN (µs), read after the rest


def _udp_frames(n: int, start: int) -> list[tuple[int, bytes]]:
    return framed("ethernet", [IP(src="10.4.0.1", dst="10.4.0.2") / UDP(sport=5000 + i % 3,
                                                                       dport=53)
                               / Raw(b"q" * (20 + i)) for i in range(n)], start)


def test_corrupt_pcap_record_keeps_the_packets_before_it(tmp_path):
    """A record header claiming 2 GiB in the middle of a classic pcap: tshark shows the 40
    packets before it and stops with "the file appears to be damaged or corrupt"; the agent
    must account those 40 (one batch it had read but not handed over) and count the file."""
    clean = write_pcap(tmp_path / "clean.pcap", _udp_frames(40, T0), 1)
    more = write_pcap(tmp_path / "more.pcap", _udp_frames(5, T0 + 10**9), 1)
    damaged = tmp_path / "c.pcap"
    damaged.write_bytes(clean.read_bytes() + struct.pack("<IIII", 1, 0, 0x7FFFFFFF, 0x7FFFFFFF)
                        + more.read_bytes()[24:])
    truth = tshark_flows(clean)
    flows, ingest, _core = replay(tmp_path, damaged)
    assert_same_flows(truth, flows)
    assert (ingest["packets"], ingest["file_corrupt"], ingest["file_truncated"]) == (40, 1, 0)


def test_corrupt_pcapng_block_keeps_the_packets_before_it(tmp_path):
    """The same in a pcapng: a block whose length is not a multiple of 4 after 40 EPBs."""
    frames = _udp_frames(40, T0)
    out = pcapng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1), order="<")
    out += pcapng_block(1, struct.pack("<HHI", 1, 0, 0), order="<")
    for ts, frame in frames:
        us = ts // 1000
        out += pcapng_block(6, struct.pack("<IIIII", 0, us >> 32, us & 0xFFFFFFFF, len(frame),
                                          len(frame)) + frame, order="<")
    clean = tmp_path / "clean.pcapng"
    clean.write_bytes(out)
    damaged = tmp_path / "c.pcapng"
    damaged.write_bytes(out + struct.pack("<II", 6, 33) + bytes(64))
    flows, ingest, _core = replay(tmp_path, damaged)
    assert_same_flows(tshark_flows(clean), flows)
    assert (ingest["packets"], ingest["file_corrupt"]) == (40, 1)


def test_simple_packet_block_cut_by_the_snap_length_ends_before_its_padding(tmp_path):
    """An SPB holds min(original length, the interface's snap length) bytes, then padding to
    4 bytes. With a snap length of 45 a TCP SYN's frame ends 2 bytes before its flags, and
    the 3 padding bytes (here 0xff, nothing says they are 0) are not its flags: tshark
    reads no flags, and the flow must not say FIN, RST and the rest."""
    frame = bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src="10.5.0.1", dst="10.5.0.2")
                  / TCP(sport=5, dport=6, flags="S") / Raw(b"a" * 100))
    out = pcapng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1), order="<")
    out += pcapng_block(1, struct.pack("<HHI", 1, 0, 45), order="<")
    body = struct.pack("<I", len(frame)) + frame[:45] + b"\xff" * 3
    out += struct.pack("<II", 3, len(body) + 12) + body + struct.pack("<I", len(body) + 12)
    path = tmp_path / "c.pcapng"
    path.write_bytes(out)
    truth = tshark_flows(path)
    flows, _ingest, _core = replay(tmp_path, path)
    assert_same_flows(truth, flows, times=False)  # an SPB has no time (README)
    assert flows[(6, "10.5.0.1", "10.5.0.2", 5, 6)][1:3] == [140, 0]


def test_two_captures_replayed_at_once_keep_each_others_flows_whole(tmp_path):
    """Two interfaces captured at the same time into two files, replayed by two
    ``[[ingest.pcap]]`` (``in_if`` 1 and 2). One file is 50 flows of one packet a second for
    a minute, the other one flow of a packet every 20 s, which a reader finishes at once.
    Each file's flows must be what the same file alone gives: 50 records of 60 packets (no
    gap over ``inactive_timeout``) and 4 records of 1 packet. The faster reader used to move
    the capture clock a minute ahead, and the slower one's flows left as a record per batch,
    a different number on each run."""
    def udp(src: str, sport: int) -> bytes:
        return bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=src, dst="10.6.0.9")
                     / UDP(sport=sport, dport=53) / Raw(b"d" * 20))

    dense = [(T0 + s * 10**9 + k * 1000, udp("10.6.0.1", 1000 + k))
             for s in range(60) for k in range(50)]
    sparse = [(T0 + s * 20 * 10**9, udp("10.6.0.2", 7)) for s in range(4)]
    write_pcap(tmp_path / "dense.pcap", dense, 1)
    write_pcap(tmp_path / "sparse.pcap", sparse, 1)
    for _run in range(2):
        agent = build_agent(f'[[ingest.pcap]]\npath = "{tmp_path / "dense.pcap"}"\nin_if = 1\n'
                            f'[[ingest.pcap]]\npath = "{tmp_path / "sparse.pcap"}"\nin_if = 2\n'
                            "[[export.collect]]\n", tmp_path, [collecting_plugin_module])
        agent.pipeline.run()
        agent.finish()
        records = sorted((r.to_dict()["src_addr"], r.in_if, r.packets)
                         for r in agent["export.collect[0]"].flows)
        assert records == sorted([("10.6.0.1", 1, 60)] * 50 + [("10.6.0.2", 2, 1)] * 4)


def _udp(src: str, sport: int) -> bytes:
    return bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=src, dst="10.9.0.9")
                 / UDP(sport=sport, dport=53) / Raw(b"d" * 20))


def _replay_together(tmp_path, paths, cache="", inbox=None):
    """``(records as (src, sport, in_if, packets), maxflows drops, start_ns)`` of replaying
    ``paths`` at once, one ``[[ingest.pcap]]`` each (``in_if`` 1, 2, ...); ``inbox``: the
    pipeline's, set before the readers start."""
    conf = "".join(f'[[ingest.pcap]]\npath = "{p}"\nin_if = {i + 1}\n'
                   for i, p in enumerate(paths))
    (tmp_path / "agent.toml").write_text(conf + cache + "[[export.collect]]\n")
    pm, _ = make_manager()
    pm.register(collecting_plugin_module)
    config, issues = validate(tmp_path / "agent.toml", build_registry(pm), pm.hook)
    assert config is not None, issues
    pipeline = Pipeline(config, pm)
    if inbox is not None:
        pipeline.context.inbox = inbox
    pipeline.build()
    pipeline.start()
    agent = AgentUnderTest(pipeline)
    pipeline.run()
    drops = pipeline.collect_stats()["core"].get("maxflows", 0)
    start_ns = pipeline.context.start_ns
    agent.finish()
    return sorted((r.to_dict()["src_addr"], r.src_port, r.in_if, r.packets)
                  for r in agent["export.collect[0]"].flows), drops, start_ns


S = 10**9


@pytest.mark.parametrize("other", ["quiet", "arp only"])
def test_a_quiet_or_non_ip_capture_leaves_the_others_idle_gaps_alone(tmp_path, other):
    """busy.pcap: one flow with a 30 s gap (> inactive_timeout 15 s): two records alone. Next
    to it a capture of another interface over the same minute, with a packet at 0 and at
    60 s, or only ARP: the busy file's flow must still be two records (the other reader
    held the capture clock at its last batch, and the gap went unseen: one record)."""
    from scapy.layers.l2 import ARP
    busy = write_pcap(tmp_path / "busy.pcap",
                      [(T0, _udp("10.9.0.1", 1)), (T0 + 30 * S, _udp("10.9.0.1", 1))], 1)
    if other == "quiet":
        frames = [(T0, _udp("10.9.0.2", 2)), (T0 + 60 * S, _udp("10.9.0.2", 2))]
    else:
        arp = bytes(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.9.0.7"))
        frames = [(T0 + s * S, arp) for s in range(0, 61, 5)]
    second = write_pcap(tmp_path / "second.pcap", frames, 1)
    alone, _, _ = _replay_together(tmp_path, [busy])
    assert alone == [("10.9.0.1", 1, 1, 1)] * 2
    merged, _, _ = _replay_together(tmp_path, [busy, second])
    assert [r for r in merged if r[0] == "10.9.0.1"] == alone


def test_rotated_captures_replayed_together_expire_as_one_capture(tmp_path):
    """``tcpdump -G`` parts given as two ``[[ingest.pcap]]``: part 1 holds 200 one-packet
    flows, one a second, part 2 starts at 300 s. With ``maxflows = 50`` the inactive
    timeout frees room in time, as when part 1 is replayed alone: nothing may be refused
    (part 2's reader, waiting its turn, held the clock and 151 flows were refused)."""
    part1 = write_pcap(tmp_path / "p1.pcap",
                       [(T0 + s * S, _udp("10.9.0.1", 1000 + s)) for s in range(200)], 1)
    part2 = write_pcap(tmp_path / "p2.pcap",
                       [(T0 + (300 + s) * S, _udp("10.9.0.1", 5000 + s)) for s in range(5)], 1)
    records, drops, _ = _replay_together(tmp_path, [part1, part2],
                                         "[cache]\nmaxflows = 50\n")
    assert (len(records), drops) == (205, 0)


class _LateDone(queue.SimpleQueue):  # type: ignore[type-arg]
    """An inbox that takes 0.3 s to queue a replay's end: the window a thread switch opens
    between a reader's end and the others' next batches, widened."""

    def put(self, item, block=True, timeout=None):  # type: ignore[no-untyped-def]
        if item[0] == ITEM_DONE:
            time.sleep(0.3)
        super().put(item, block, timeout)


def test_a_replays_end_reaches_the_clock_before_the_others_next_batches(tmp_path):
    """a.pcap ends at 4 s; b.pcap has a flow with a 20 s gap from 10 s on. If b's batches
    reach the loop before a's end, the clock still waits for a (at 4 s) and b's gap goes
    unseen: one record, not two. Same for uptime: a header-only capture's end must not
    start the clock at 0 (1970)."""
    short = write_pcap(tmp_path / "a.pcap",
                       [(T0 + s * S, _udp("10.9.0.1", 1)) for s in range(5)], 1)
    later = write_pcap(tmp_path / "b.pcap", [(T0 + 10 * S, _udp("10.9.0.2", 2)),
                                             (T0 + 30 * S, _udp("10.9.0.2", 2))], 1)
    merged, _, _ = _replay_together(tmp_path, [short, later], inbox=_LateDone())
    assert [r for r in merged if r[0] == "10.9.0.2"] == [("10.9.0.2", 2, 2, 1)] * 2
    empty = write_pcap(tmp_path / "empty.pcap", [], 1)
    _, _, start_ns = _replay_together(tmp_path, [empty, later], inbox=_LateDone())
    assert start_ns == T0 // 1000 * 1000 + 10 * S  # b's first packet (a µs pcap)


def test_a_compressed_capture_is_refused_saying_so(tmp_path):
    """tshark opens ``capture.pcap.gz``; the agent does not (README), and must say why at
    start rather than "not a pcap/pcapng file (magic 0x1f8b0808)"."""
    plain = write_pcap(tmp_path / "c.pcap", _udp_frames(3, T0), 1)
    packed = tmp_path / "c.pcap.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    with pytest.raises(StartupError, match="gzip-compressed file: decompress it first"):
        build_agent(f'[[ingest.pcap]]\npath = "{packed}"\n[[export.collect]]\n', tmp_path,
                    [collecting_plugin_module])


def _exported(tmp_path, capture) -> dict[str, list[bytes]]:
    """Replay ``capture`` to a v9 and an IPFIX exporter; each one's datagrams."""
    with UdpSink() as v9, UdpSink() as ipfix:
        agent = build_agent(f'[[ingest.pcap]]\npath = "{capture}"\n'
                            f'[[export.netflow]]\nprotocol = 9\ndestination = ["{v9.endpoint}"]\n'
                            f'[[export.ipfix]]\ndestination = ["{ipfix.endpoint}"]\n', tmp_path)
        agent.pipeline.run()
        agent.finish()
        for sink in (v9, ipfix):  # everything was sent: wait until it is read
            wait_udp_drained(sink.port)
        return {"v9": v9.wait(1), "ipfix": ipfix.wait(2)}


@pytest.mark.parametrize("times", [(0, 0, 0), (0, 0, 5)], ids=["all-0", "0-then-5s"])
def test_a_capture_stamped_at_the_epoch_exports_its_own_times(tmp_path, times):
    """A capture whose records say 0 s (a generator that left the timestamps out, an
    anonymiser that zeroed them): 0 is a time like any other. A v9 collector must read each
    flow's first and last packet at the capture's times, and IPFIX's export time may not be
    the machine's clock (it was, with records dated 1970 and statistics records after their
    message's export time); every datagram keeps the RFC invariants."""
    frames = [(t * 10**9, frame) for t, (_ts, frame) in zip(times, _udp_frames(3, 0),
                                                              strict=True)]
    got = _exported(tmp_path, write_pcap(tmp_path / "c.pcap", frames, 1))
    want = {5000 + i: (t * 1000, t * 1000) for i, t in enumerate(times)}  # sport: ms
    for name, data in got.items():
        assert_export_clock(data)
        audit = WireAudit().feed_all(data)
        audit.assert_clean()
        seen = {}
        for r in audit.flows():
            v = r.values
            if name == "v9":
                seen[v[7]] = tuple(r.export_time * 1000 - (audit.uptimes[r.packet] - v[t])
                                   % 2**32 for t in (22, 21))
            else:
                seen[v[7]] = (v[152], v[153])
                assert r.export_time == max(times)
        assert seen == want, name


def _pypi_key(f: dict) -> tuple:
    """A flow dict of the PyPI ``netflow`` package (v9 or IPFIX names) as a tshark key."""
    src = f.get("IPV4_SRC_ADDR", f.get("IPV6_SRC_ADDR", f.get(
        "sourceIPv4Address", f.get("sourceIPv6Address"))))
    dst = f.get("IPV4_DST_ADDR", f.get("IPV6_DST_ADDR", f.get(
        "destinationIPv4Address", f.get("destinationIPv6Address"))))
    proto = f.get("PROTOCOL", f.get("protocolIdentifier"))
    dport = f.get("L4_DST_PORT", f.get("destinationTransportPort", 0))
    if proto in (1, 58):  # type << 8 | code: v9's ICMP_TYPE, IPFIX's icmpTypeCode IEs
        dport = f.get("ICMP_TYPE", f.get("icmpTypeCodeIPv4", f.get("icmpTypeCodeIPv6", dport)))
    return (proto, str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)),
            f.get("L4_SRC_PORT", f.get("sourceTransportPort", 0)), dport)


def test_the_pypi_netflow_package_reads_v9_and_ipfix_as_tshark_counts_the_capture(tmp_path):
    """The differential test reads v9 with nfdump, IPFIX with tshark and only v5 with the
    PyPI ``netflow`` package; an outsider may decode all three with it. Its v9 and IPFIX
    flows must be tshark's flows of the capture (packets, octets, per 5-tuple)."""
    capture = write_pcap(tmp_path / "c.pcap", framed("ethernet", mixed()), 1)
    want = {k: [f.packets, f.octets] for k, f in tshark_flows(capture).flows.items()}
    for name, data in _exported(tmp_path, capture).items():
        got: dict[tuple, list[int]] = {}
        for f in netflow_decode(data)[1]:
            if "IN_PKTS" not in f and "packetDeltaCount" not in f:
                continue  # IPFIX options: the exporting process's statistics
            counts = got.setdefault(_pypi_key(f), [0, 0])
            counts[0] += f.get("IN_PKTS", f.get("packetDeltaCount"))
            counts[1] += f.get("IN_BYTES", f.get("octetDeltaCount"))
        assert got == want, name
