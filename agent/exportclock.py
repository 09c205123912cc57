"""The export clock: the one rule by which every exporter stamps its packets' header time.

A packet's header time (NetFlow v5/v9 ``unix_secs`` + ``sysUpTime``, IPFIX Export Time) is
read by collectors as the moment the packet left, and every time in it is taken to lie
before that: RFC 3954 flow times are sysUpTime values of the past (collectors compute
``export time - (sysUpTime - Last)``), and an IPFIX ``flowEndMilliseconds`` after the
message's Export Time would describe a flow that ends after it was exported. So a stamp is

* the pipeline clock (:meth:`agent.runtime.RunContext.now_ns`: wall clock, or the capture's
  clock in a replay), moved forward to the latest time the packet carries, if a record is
  ahead of it (a clock step, an ingest timestamp read after the agent's clock);
* rounded **up** to the header's resolution: v9 and IPFIX carry whole seconds only, and
  rounding down would put up to 999 ms of a packet's records after its header time (the
  cause of issue 18 item 1); rounding up keeps collectors' absolute times exact;
* never earlier than the previous stamp of the same exporter.

Records are never clamped: their times stay what the ingest measured.
"""

from __future__ import annotations

NS_PER_S = 1_000_000_000


def ceil_to(ns: int, unit_ns: int) -> int:
    """``ns`` rounded up to a multiple of ``unit_ns``."""
    return -(-ns // unit_ns) * unit_ns


def export_stamp(now_ns: int, latest_ns: int, previous_ns: int, unit_ns: int = 1) -> int:
    """The header time for a packet, in ns (a multiple of ``unit_ns``).

    :param now_ns: the pipeline clock now.
    :param latest_ns: the latest time any record of the packet carries (0 = none).
    :param previous_ns: this exporter's previous stamp (0 = none); stamps never go back.
    :param unit_ns: the header's resolution: :data:`NS_PER_S` for v9 and IPFIX, 1 for v5.
    """
    return max(ceil_to(max(now_ns, latest_ns), unit_ns), previous_ns)
