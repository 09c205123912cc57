"""IPFIX Options Templates and Options Data Records: statistics, ifName and sampling.

RFC 7011 section 4 recommends three statistics Options Templates; ipt_NETFLOW sends the same
three (PROTOCOLS.md 6.6), and this module follows its field choice:

* Metering Process Statistics (4.1): scope observationDomainId(149);
  exportedMessageTotalCount(41), exportedFlowRecordTotalCount(42),
  exportedOctetTotalCount(40), observedFlowTotalCount(163).
* Metering Process Reliability Statistics (4.2): scope observationDomainId(149);
  ignoredPacketTotalCount(164), ignoredOctetTotalCount(165), and the time window as
  flowStartMilliseconds(152) / flowEndMilliseconds(153).
* Exporting Process Reliability Statistics (4.3): scope exportingProcessId(144);
  notSentFlowTotalCount(166), notSentPacketTotalCount(167), notSentOctetTotalCount(168),
  flowStartMilliseconds(152) / flowEndMilliseconds(153).

Interface names: scope observationDomainId(149) + ingressInterface(10) (the ifIndex that flow
records carry in 10 and 14), value interfaceName(82) as a variable-length string (section 7);
names come from the network namespace the ingests observe (``RunContext.interface_names``),
for the interfaces noted by the core's :class:`~agent.ifnames.InterfaceNames` (shared with the
NetFlow v9 exporter).
Sampling (sent only while an ingest samples): scope observationDomainId(149) with
samplingInterval(34) and samplingAlgorithm(35) (1 deterministic, 2 random), the complete
description; and scope 149 with samplingInterval(34) alone, because nfcapd 1.7.1 (Debian 12)
ignores a record that also carries 35 but scales flows by one with 34 only. IANA marks 34/35
deprecated in favour of the RFC 5477 selector IEs (302-311), but the selector reports
(selectorAlgorithm 304) are not understood by nfcapd 1.7.1 at all, so 34/35 it is.

Every Options Template has a scope field count > 0 (section 3.4.2.2).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from netflow_agent.api import VARIABLE_LENGTH, Sampling

from .ipfix import DataGroup, Template, encode_varlen

METERING_STATS_ID = 272
METERING_RELIABILITY_ID = 273
EXPORTING_RELIABILITY_ID = 274
INTERFACE_NAMES_ID = 275
SAMPLING_ID = 276
SAMPLING_INTERVAL_ID = 277

METERING_STATS = Template(
    METERING_STATS_ID, ((149, 4), (41, 8), (42, 8), (40, 8), (163, 8)), 1, "metering-stats")
METERING_RELIABILITY = Template(
    METERING_RELIABILITY_ID, ((149, 4), (164, 8), (165, 8), (152, 8), (153, 8)), 1,
    "metering-reliability")
EXPORTING_RELIABILITY = Template(
    EXPORTING_RELIABILITY_ID, ((144, 4), (166, 8), (167, 8), (168, 8), (152, 8), (153, 8)), 1,
    "exporting-reliability")
INTERFACE_NAMES = Template(
    INTERFACE_NAMES_ID, ((149, 4), (10, 4), (82, VARIABLE_LENGTH)), 2, "interface-names")

SAMPLING = Template(SAMPLING_ID, ((149, 4), (34, 4), (35, 1)), 1, "sampling")
SAMPLING_INTERVAL = Template(SAMPLING_INTERVAL_ID, ((149, 4), (34, 4)), 1, "sampling-interval")
#: the sampling Options Templates (announced only once an ingest declared a sampling)
SAMPLING_TEMPLATES = (SAMPLING, SAMPLING_INTERVAL)

#: Every Options Template this exporter sends from the start.
OPTIONS_TEMPLATES = (METERING_STATS, METERING_RELIABILITY, EXPORTING_RELIABILITY,
                     INTERFACE_NAMES)

_METERING_STATS = struct.Struct("!IQQQQ")
_METERING_RELIABILITY = struct.Struct("!IQQQQ")
_EXPORTING_RELIABILITY = struct.Struct("!IQQQQQ")
_INTERFACE_SCOPE = struct.Struct("!II")
_SAMPLING = struct.Struct("!IIB")
_SAMPLING_INTERVAL = struct.Struct("!II")
_U64 = (1 << 64) - 1


@dataclass(slots=True)
class Statistics:
    """The numbers one round of statistics records carries.

    :ivar messages: IPFIX messages exported (41).
    :ivar records: Data Records exported (42).
    :ivar octets: octets of exported messages (40).
    :ivar observed_flows: flows the metering process created (163).
    :ivar ignored_packets: packets the metering process could not account (164).
    :ivar ignored_octets: their octets (165).
    :ivar lost_records: records not sent: send errors, broken connections, spool overflow (166).
    :ivar lost_packets: packets of the lost flow records (167).
    :ivar lost_octets: octets of the lost flow records (168).
    :ivar start_ms: start of the statistics window (agent start), ms since the epoch.
    :ivar end_ms: end of the window (now), ms since the epoch.
    """

    messages: int = 0
    records: int = 0
    octets: int = 0
    observed_flows: int = 0
    ignored_packets: int = 0
    ignored_octets: int = 0
    lost_records: int = 0
    lost_packets: int = 0
    lost_octets: int = 0
    start_ms: int = 0
    end_ms: int = 0


def statistics_groups(
    stats: Statistics, observation_domain_id: int, exporting_process_id: int
) -> list[DataGroup]:
    """The three statistics Options Data Records, one group per Options Template."""
    s = stats

    def c(value: int) -> int:  # counters saturate instead of failing to encode
        return min(max(value, 0), _U64)

    odid = observation_domain_id
    return [
        DataGroup(METERING_STATS, [_METERING_STATS.pack(
            odid, c(s.messages), c(s.records), c(s.octets), c(s.observed_flows))]),
        DataGroup(METERING_RELIABILITY, [_METERING_RELIABILITY.pack(
            odid, c(s.ignored_packets), c(s.ignored_octets), s.start_ms, s.end_ms)]),
        DataGroup(EXPORTING_RELIABILITY, [_EXPORTING_RELIABILITY.pack(
            exporting_process_id, c(s.lost_records), c(s.lost_packets), c(s.lost_octets),
            s.start_ms, s.end_ms)]),
    ]


def interface_names_group(
    names: dict[int, str], observation_domain_id: int
) -> DataGroup | None:
    """One interfaceName record per ifIndex, sorted by index; ``None`` when there are none.

    :param names: ifIndex -> interface name.
    :param observation_domain_id: the first scope field.
    """
    if not names:
        return None
    records = [
        _INTERFACE_SCOPE.pack(observation_domain_id, index)
        + encode_varlen(name.encode("utf-8", "replace"))
        for index, name in sorted(names.items())
    ]
    return DataGroup(INTERFACE_NAMES, records)


def sampling_groups(sampling: Sampling | None, observation_domain_id: int) -> list[DataGroup]:
    """The two sampling Options Data Records (see the module docstring).

    :param sampling: the agent's sampling; ``None`` = nothing to announce (empty list). An
        interval of 1 is encoded too: it tells a collector that sampling has stopped.
    :param observation_domain_id: the scope field.
    """
    if sampling is None:
        return []
    odid = observation_domain_id
    return [
        DataGroup(SAMPLING, [_SAMPLING.pack(odid, sampling.interval, sampling.algorithm)]),
        DataGroup(SAMPLING_INTERVAL, [_SAMPLING_INTERVAL.pack(odid, sampling.interval)]),
    ]
