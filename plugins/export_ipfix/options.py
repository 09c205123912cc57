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

Flow Selection Process (RFC 7014, sent besides 34/35 while the cache's flow sampler is on, as
ipt_NETFLOW does; its IE widths, reduced-size encoding per RFC 7011 section 6.2):

* selector parameters, scope observationDomainId(149) and selectorId(302, 1 octet; the value
  is the sampler mode, 1 deterministic, 2 random, 3 hash, as ipt_NETFLOW), then
  flowSelectorAlgorithm(390, 1 octet): deterministic is 1 (systematic count-based) with
  samplingFlowInterval(396, 1 octet) = 1 and samplingFlowSpacing(397, 2 octets) = N - 1, the
  flows skipped between two selected ones (RFC 7014 section 8.2; ipt_NETFLOW writes N
  there); random and hash are 3 (random n-out-of-N) with samplingSize(309, 1 octet) = 1 and
  samplingPopulation(310, 2 octets) = N;
* selector statistics (RFC 7014 section 8.3, RFC 5477), scope selectorId(302):
  selectorIDTotalFlowsObserved(394; not for hash, whose unselected flows are discarded per
  packet and never counted), selectorIDTotalFlowsSelected(395),
  selectorIdTotalPktsObserved(318), selectorIdTotalPktsSelected(319), and the window as
  flowStartMilliseconds(152) / flowEndMilliseconds(153) (see :func:`selector_statistics`).

Every Options Template has a scope field count > 0 (section 3.4.2.2).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from netflow_agent.api import (
    SAMPLING_DETERMINISTIC,
    SAMPLING_HASH,
    VARIABLE_LENGTH,
    Sampling,
)

from .ipfix import DataGroup, Template, encode_varlen

METERING_STATS_ID = 272
METERING_RELIABILITY_ID = 273
EXPORTING_RELIABILITY_ID = 274
INTERFACE_NAMES_ID = 275
SAMPLING_ID = 276
SAMPLING_INTERVAL_ID = 277
SELECTOR_SYSTEMATIC_ID = 278
SELECTOR_RANDOM_ID = 279
SELECTOR_STATS_ID = 280
SELECTOR_STATS_HASH_ID = 281

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

SELECTOR_SYSTEMATIC = Template(
    SELECTOR_SYSTEMATIC_ID, ((149, 4), (302, 1), (390, 1), (396, 1), (397, 2)), 2,
    "selector-systematic")
SELECTOR_RANDOM = Template(
    SELECTOR_RANDOM_ID, ((149, 4), (302, 1), (390, 1), (309, 1), (310, 2)), 2,
    "selector-random")
SELECTOR_STATS = Template(
    SELECTOR_STATS_ID, ((302, 1), (394, 8), (395, 8), (318, 8), (319, 8), (152, 8), (153, 8)),
    1, "selector-stats")
SELECTOR_STATS_HASH = Template(
    SELECTOR_STATS_HASH_ID, ((302, 1), (395, 8), (318, 8), (319, 8), (152, 8), (153, 8)), 1,
    "selector-stats-hash")
#: flowSelectorAlgorithm (390) values, IANA "Flow Selection Algorithm" registry
SYSTEMATIC_COUNT_BASED = 1
RANDOM_N_OUT_OF_N = 3
#: largest N the 2-octet samplingFlowSpacing/samplingPopulation carry (the sampler's is 16383)
SELECTOR_INTERVAL_MAX = 0xFFFF

#: Every Options Template this exporter sends from the start.
OPTIONS_TEMPLATES = (METERING_STATS, METERING_RELIABILITY, EXPORTING_RELIABILITY,
                     INTERFACE_NAMES)

_METERING_STATS = struct.Struct("!IQQQQ")
_METERING_RELIABILITY = struct.Struct("!IQQQQ")
_EXPORTING_RELIABILITY = struct.Struct("!IQQQQQ")
_INTERFACE_SCOPE = struct.Struct("!II")
_SAMPLING = struct.Struct("!IIB")
_SAMPLING_INTERVAL = struct.Struct("!II")
_SELECTOR = struct.Struct("!IBBBH")
_SELECTOR_STATS = struct.Struct("!BQQQQQQ")
_SELECTOR_STATS_HASH = struct.Struct("!BQQQQQ")
_U64 = (1 << 64) - 1


def _c(value: int) -> int:
    """A counter for an unsigned64 field: saturated instead of failing to encode."""
    return min(max(value, 0), _U64)


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

    c = _c
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


def flow_selector(sampling: Sampling | None) -> Sampling | None:
    """The sampling to announce as a Flow Selection Process, or ``None``.

    Only flow sampling (the cache's ``sampler``, ``flows=True``) is one; packet sampling is
    announced by 34/35 alone. N above 65535 does not fit ipt_NETFLOW's 2-octet fields (the
    cache's sampler stops at 16383), so such a declaration gets 34/35 only.
    """
    if sampling is None or not sampling.flows or not sampling.sampled:
        return None
    return sampling if sampling.interval <= SELECTOR_INTERVAL_MAX else None


def selector_id(sampling: Sampling) -> int:
    """selectorId (302) of a flow sampler: its mode number (1 deterministic, 2 random,
    3 hash), as ipt_NETFLOW (the v5 header's mode bits and samplingAlgorithm use the same)."""
    return sampling.algorithm


def selector_groups(sampling: Sampling | None, observation_domain_id: int) -> list[DataGroup]:
    """The selector parameters record (see the module docstring); ``[]`` without flow
    sampling (:func:`flow_selector`)."""
    selector = flow_selector(sampling)
    if selector is None:
        return []
    sid, n = selector_id(selector), selector.interval
    if selector.algorithm == SAMPLING_DETERMINISTIC:
        record = _SELECTOR.pack(observation_domain_id, sid, SYSTEMATIC_COUNT_BASED, 1, n - 1)
        return [DataGroup(SELECTOR_SYSTEMATIC, [record])]
    record = _SELECTOR.pack(observation_domain_id, sid, RANDOM_N_OUT_OF_N, 1, n)
    return [DataGroup(SELECTOR_RANDOM, [record])]


@dataclass(slots=True)
class SelectorStatistics:
    """The numbers of one selector statistics record.

    :ivar flows_observed: flows that reached the selector (394); ``None`` for hash.
    :ivar flows_selected: flows it selected (395).
    :ivar packets_observed: packets of the flows (or, for hash, the packets) it saw (318).
    :ivar packets_selected: those of the selected flows (319).
    :ivar start_ms: start of the window (agent start), ms since the epoch.
    :ivar end_ms: end of the window (now).
    """

    flows_observed: int | None
    flows_selected: int
    packets_observed: int
    packets_selected: int
    start_ms: int
    end_ms: int


def selector_statistics(sampling: Sampling, core: Mapping[str, Any], selected_packets: int,
                        start_ms: int, end_ms: int) -> SelectorStatistics:
    """Selector statistics from the cache's counters (``RunContext.stats``), since the agent
    started.

    * flows selected: the cache's exported flows;
    * deterministic/random select when flows expire: flows observed = exported + the
      ``sampler_unselected_flows`` left out; packets observed = the packets of every flow that
      left the table (``traffic_packets - memtraf_packets``), packets selected = those of the
      flows this exporter was handed while sampling (``selected_packets``);
    * hash selects per packet as it enters the cache (as ipt_NETFLOW counts it): packets
      observed = accounted + ``sampler_discarded_packets``, selected = accounted
      (``traffic_packets``); flows observed are unknown (unselected flows never make a flow).
    """
    exported = int(core.get("exported_flows", 0))
    traffic = int(core.get("traffic_packets", 0))
    if sampling.algorithm == SAMPLING_HASH:
        return SelectorStatistics(
            None, exported, traffic + int(core.get("sampler_discarded_packets", 0)), traffic,
            start_ms, end_ms)
    left_table = traffic - int(core.get("memtraf_packets", 0))
    return SelectorStatistics(
        exported + int(core.get("sampler_unselected_flows", 0)), exported,
        max(left_table, selected_packets), selected_packets, start_ms, end_ms)


def selector_stats_group(sampling: Sampling, stats: SelectorStatistics) -> DataGroup:
    """The selector statistics record (template 280, or 281 without flows observed)."""
    s = stats
    sid = selector_id(sampling)
    if s.flows_observed is None:
        return DataGroup(SELECTOR_STATS_HASH, [_SELECTOR_STATS_HASH.pack(
            sid, _c(s.flows_selected), _c(s.packets_observed), _c(s.packets_selected),
            s.start_ms, s.end_ms)])
    return DataGroup(SELECTOR_STATS, [_SELECTOR_STATS.pack(
        sid, _c(s.flows_observed), _c(s.flows_selected), _c(s.packets_observed),
        _c(s.packets_selected), s.start_ms, s.end_ms)])
