"""An outsider's audit of the pcap replay: captures as third parties write them, checked
against tshark's dissection of the same bytes (``tests/support/tshark_truth.py``).

Each case is one the differential test (``test_pcap_differential.py``) did not hold and the
agent got wrong:

* a capture whose timestamps are not in order (``tcpdump -i any`` stamps packets per CPU;
  ``mergecap -a`` concatenates): a flow's first time is its earliest packet's, as tshark and
  RFC 7011's flowStart read it, not the first packet read;
"""

from __future__ import annotations

from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinuxV2

from tests.e2e.test_pcap_differential import (
    T0,
    check,
    framed,
    mixed,
    tcp_session,
    write_pcap,
)


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
