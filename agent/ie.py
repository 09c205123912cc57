"""IANA IPFIX Information Elements used by the NetFlow v9, IPFIX and NEL exporters.

This module owns two tables that both exporters (``plugins/export_netflow``,
``plugins/export_ipfix``) and third-party plugins share:

* :data:`BY_ID` / :data:`BY_NAME`: every Information Element the agent writes, with its IANA
  id, IANA name, abstract data type (RFC 7012 section 3.1) and natural length in bytes, plus
  the RFC 3954 (NetFlow v9) field type name where one exists. IE ids 1-127 are the RFC 3954
  field types; NetFlow v9 uses the IANA ids above 127 the same way (NEL 225-230, 323).
  Source: https://www.iana.org/assignments/ipfix/ipfix.xhtml, RFC 3954 section 8, RFC 8158.
* :data:`FLOW_FIELDS` / :data:`NAT_FIELDS`: which :class:`agent.model.FlowRecord` /
  :class:`agent.model.NatEvent` attribute feeds which IE, per IP version
  (:func:`flow_field_ie`).

Lengths here are the IANA natural lengths. Exporters may use reduced-size encoding for
unsigned integers only (RFC 7011 section 6.2), e.g. octetDeltaCount in 4 bytes as
ipt_NETFLOW's NetFlow v9 does; :func:`reduced_length_ok` says when that is allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

#: Abstract data types (RFC 7012 section 3.1) that may be sent in fewer bytes (RFC 7011 6.2).
REDUCIBLE_TYPES = frozenset(
    {"unsigned8", "unsigned16", "unsigned32", "unsigned64",
     "signed8", "signed16", "signed32", "signed64", "float32", "float64"}
)


@dataclass(frozen=True, slots=True)
class InformationElement:
    """One IANA Information Element.

    :param id: the IANA element id (= NetFlow v9 field type).
    :param name: the IANA name, e.g. ``octetDeltaCount``.
    :param data_type: the abstract data type, e.g. ``unsigned64``, ``ipv4Address``.
    :param length: the natural length in bytes (65535 = variable length).
    :param v9_name: the RFC 3954 / Cisco field type name, ``""`` when there is none.
    """

    id: int
    name: str
    data_type: str
    length: int
    v9_name: str = ""


VARIABLE_LENGTH = 65535

# id, IANA name, abstract data type, natural length, RFC 3954 name
_TABLE: tuple[tuple[int, str, str, int, str], ...] = (
    (1, "octetDeltaCount", "unsigned64", 8, "IN_BYTES"),
    (2, "packetDeltaCount", "unsigned64", 8, "IN_PKTS"),
    (3, "deltaFlowCount", "unsigned64", 8, "FLOWS"),
    (4, "protocolIdentifier", "unsigned8", 1, "PROTOCOL"),
    (5, "ipClassOfService", "unsigned8", 1, "SRC_TOS"),
    (6, "tcpControlBits", "unsigned16", 2, "TCP_FLAGS"),
    (7, "sourceTransportPort", "unsigned16", 2, "L4_SRC_PORT"),
    (8, "sourceIPv4Address", "ipv4Address", 4, "IPV4_SRC_ADDR"),
    (9, "sourceIPv4PrefixLength", "unsigned8", 1, "SRC_MASK"),
    (10, "ingressInterface", "unsigned32", 4, "INPUT_SNMP"),
    (11, "destinationTransportPort", "unsigned16", 2, "L4_DST_PORT"),
    (12, "destinationIPv4Address", "ipv4Address", 4, "IPV4_DST_ADDR"),
    (13, "destinationIPv4PrefixLength", "unsigned8", 1, "DST_MASK"),
    (14, "egressInterface", "unsigned32", 4, "OUTPUT_SNMP"),
    (15, "ipNextHopIPv4Address", "ipv4Address", 4, "IPV4_NEXT_HOP"),
    (16, "bgpSourceAsNumber", "unsigned32", 4, "SRC_AS"),
    (17, "bgpDestinationAsNumber", "unsigned32", 4, "DST_AS"),
    (21, "flowEndSysUpTime", "unsigned32", 4, "LAST_SWITCHED"),
    (22, "flowStartSysUpTime", "unsigned32", 4, "FIRST_SWITCHED"),
    (27, "sourceIPv6Address", "ipv6Address", 16, "IPV6_SRC_ADDR"),
    (28, "destinationIPv6Address", "ipv6Address", 16, "IPV6_DST_ADDR"),
    (29, "sourceIPv6PrefixLength", "unsigned8", 1, "IPV6_SRC_MASK"),
    (30, "destinationIPv6PrefixLength", "unsigned8", 1, "IPV6_DST_MASK"),
    (31, "flowLabelIPv6", "unsigned32", 4, "IPV6_FLOW_LABEL"),
    (32, "icmpTypeCodeIPv4", "unsigned16", 2, "ICMP_TYPE"),
    (33, "igmpType", "unsigned8", 1, "MUL_IGMP_TYPE"),
    (34, "samplingInterval", "unsigned32", 4, "SAMPLING_INTERVAL"),
    (35, "samplingAlgorithm", "unsigned8", 1, "SAMPLING_ALGORITHM"),
    (36, "flowActiveTimeout", "unsigned16", 2, "FLOW_ACTIVE_TIMEOUT"),
    (37, "flowIdleTimeout", "unsigned16", 2, "FLOW_INACTIVE_TIMEOUT"),
    (38, "engineType", "unsigned8", 1, "ENGINE_TYPE"),
    (39, "engineId", "unsigned8", 1, "ENGINE_ID"),
    (40, "exportedOctetTotalCount", "unsigned64", 8, "TOTAL_BYTES_EXP"),
    (41, "exportedMessageTotalCount", "unsigned64", 8, "TOTAL_PKTS_EXP"),
    (42, "exportedFlowRecordTotalCount", "unsigned64", 8, "TOTAL_FLOWS_EXP"),
    (48, "samplerId", "unsigned8", 1, "FLOW_SAMPLER_ID"),
    (49, "samplerMode", "unsigned8", 1, "FLOW_SAMPLER_MODE"),
    (50, "samplerRandomInterval", "unsigned32", 4, "FLOW_SAMPLER_RANDOM_INTERVAL"),
    (56, "sourceMacAddress", "macAddress", 6, "IN_SRC_MAC"),
    (58, "vlanId", "unsigned16", 2, "SRC_VLAN"),
    (60, "ipVersion", "unsigned8", 1, "IP_PROTOCOL_VERSION"),
    (61, "flowDirection", "unsigned8", 1, "DIRECTION"),
    (62, "ipNextHopIPv6Address", "ipv6Address", 16, "IPV6_NEXT_HOP"),
    (64, "ipv6ExtensionHeaders", "unsigned32", 4, "IPV6_OPTION_HEADERS"),
    (70, "mplsTopLabelStackSection", "octetArray", 3, "MPLS_LABEL_1"),
    (71, "mplsLabelStackSection2", "octetArray", 3, "MPLS_LABEL_2"),
    (72, "mplsLabelStackSection3", "octetArray", 3, "MPLS_LABEL_3"),
    (73, "mplsLabelStackSection4", "octetArray", 3, "MPLS_LABEL_4"),
    (74, "mplsLabelStackSection5", "octetArray", 3, "MPLS_LABEL_5"),
    (75, "mplsLabelStackSection6", "octetArray", 3, "MPLS_LABEL_6"),
    (76, "mplsLabelStackSection7", "octetArray", 3, "MPLS_LABEL_7"),
    (77, "mplsLabelStackSection8", "octetArray", 3, "MPLS_LABEL_8"),
    (78, "mplsLabelStackSection9", "octetArray", 3, "MPLS_LABEL_9"),
    (79, "mplsLabelStackSection10", "octetArray", 3, "MPLS_LABEL_10"),
    (80, "destinationMacAddress", "macAddress", 6, "IN_DST_MAC"),
    (82, "interfaceName", "string", VARIABLE_LENGTH, "IF_NAME"),
    (83, "interfaceDescription", "string", VARIABLE_LENGTH, "IF_DESC"),
    (136, "flowEndReason", "unsigned8", 1, ""),
    (139, "icmpTypeCodeIPv6", "unsigned16", 2, ""),
    (144, "exportingProcessId", "unsigned32", 4, ""),
    (149, "observationDomainId", "unsigned32", 4, ""),
    (152, "flowStartMilliseconds", "dateTimeMilliseconds", 8, ""),
    (153, "flowEndMilliseconds", "dateTimeMilliseconds", 8, ""),
    (154, "flowStartMicroseconds", "dateTimeMicroseconds", 8, ""),
    (155, "flowEndMicroseconds", "dateTimeMicroseconds", 8, ""),
    (160, "systemInitTimeMilliseconds", "dateTimeMilliseconds", 8, ""),
    (163, "observedFlowTotalCount", "unsigned64", 8, ""),
    (164, "ignoredPacketTotalCount", "unsigned64", 8, ""),
    (165, "ignoredOctetTotalCount", "unsigned64", 8, ""),
    (166, "notSentFlowTotalCount", "unsigned64", 8, ""),
    (167, "notSentPacketTotalCount", "unsigned64", 8, ""),
    (168, "notSentOctetTotalCount", "unsigned64", 8, ""),
    (225, "postNATSourceIPv4Address", "ipv4Address", 4, ""),
    (226, "postNATDestinationIPv4Address", "ipv4Address", 4, ""),
    (227, "postNAPTSourceTransportPort", "unsigned16", 2, ""),
    (228, "postNAPTDestinationTransportPort", "unsigned16", 2, ""),
    (229, "natOriginatingAddressRealm", "unsigned8", 1, ""),
    (230, "natEvent", "unsigned8", 1, ""),
    (231, "initiatorOctets", "unsigned64", 8, ""),
    (232, "responderOctets", "unsigned64", 8, ""),
    (234, "ingressVRFID", "unsigned32", 4, ""),
    (235, "egressVRFID", "unsigned32", 4, ""),
    (243, "dot1qVlanId", "unsigned16", 2, ""),
    (244, "dot1qPriority", "unsigned8", 1, ""),
    (245, "dot1qCustomerVlanId", "unsigned16", 2, ""),
    (246, "dot1qCustomerPriority", "unsigned8", 1, ""),
    (252, "ingressPhysicalInterface", "unsigned32", 4, ""),
    (253, "egressPhysicalInterface", "unsigned32", 4, ""),
    (256, "ethernetType", "unsigned16", 2, ""),
    (281, "postNATSourceIPv6Address", "ipv6Address", 16, ""),
    (282, "postNATDestinationIPv6Address", "ipv6Address", 16, ""),
    (298, "initiatorPackets", "unsigned64", 8, ""),
    (299, "responderPackets", "unsigned64", 8, ""),
    (300, "observationDomainName", "string", VARIABLE_LENGTH, ""),
    (302, "selectorId", "unsigned64", 8, ""),
    (323, "observationTimeMilliseconds", "dateTimeMilliseconds", 8, ""),
    (351, "layer2SegmentId", "unsigned64", 8, ""),
)

#: IE id -> :class:`InformationElement` (read-only).
BY_ID: Mapping[int, InformationElement] = MappingProxyType(
    {row[0]: InformationElement(*row) for row in _TABLE}
)
#: IANA name -> :class:`InformationElement` (read-only).
BY_NAME: Mapping[str, InformationElement] = MappingProxyType(
    {ie.name: ie for ie in BY_ID.values()}
)

# FlowRecord attribute -> (IE id for IPv4 flows, IE id for IPv6 flows).
# ICMP: the record carries ``type << 8 | code`` in dst_port; NetFlow v9 writes it into
# destinationTransportPort (11) as ipt_NETFLOW does, IPFIX uses icmpTypeCode* (32 / 139).
_FLOW_FIELDS: dict[str, tuple[int, int]] = {
    "ip_version": (60, 60),
    "protocol": (4, 4),
    "src_addr": (8, 27),
    "dst_addr": (12, 28),
    "src_port": (7, 7),
    "dst_port": (11, 11),
    "tos": (5, 5),
    "in_if": (10, 10),
    "out_if": (14, 14),
    "direction": (61, 61),
    "packets": (2, 2),
    "octets": (1, 1),
    "start_ns": (152, 152),
    "end_ns": (153, 153),
    "tcp_flags": (6, 6),
    "end_reason": (136, 136),
    "src_mask": (9, 29),
    "dst_mask": (13, 30),
    "next_hop": (15, 62),
}
#: FlowRecord attribute -> (IPv4 IE id, IPv6 IE id) (read-only).
FLOW_FIELDS: Mapping[str, tuple[int, int]] = MappingProxyType(_FLOW_FIELDS)

#: ICMP type/code IE per IP version (IPFIX; NetFlow v9 uses destinationTransportPort).
ICMP_TYPE_CODE = MappingProxyType({4: 32, 6: 139})

# NatEvent attribute -> (IE id when the addresses are IPv4, IE id when IPv6).
_NAT_FIELDS: dict[str, tuple[int, int]] = {
    "time_ns": (323, 323),
    "src_addr": (8, 27),
    "dst_addr": (12, 28),
    "post_src_addr": (225, 281),
    "post_dst_addr": (226, 282),
    "src_port": (7, 7),
    "dst_port": (11, 11),
    "post_src_port": (227, 227),
    "post_dst_port": (228, 228),
    "protocol": (4, 4),
    "event": (230, 230),
    "octets_orig": (231, 231),
    "octets_reply": (232, 232),
    "packets_orig": (298, 298),
    "packets_reply": (299, 299),
}
#: NatEvent attribute -> (IPv4 IE id, IPv6 IE id) (read-only).
NAT_FIELDS: Mapping[str, tuple[int, int]] = MappingProxyType(_NAT_FIELDS)


def ie(key: int | str) -> InformationElement:
    """Look an Information Element up by id or IANA name.

    :param key: the IE id (``1``) or IANA name (``"octetDeltaCount"``).
    :raises KeyError: the agent does not know this element.
    """
    return BY_ID[key] if isinstance(key, int) else BY_NAME[key]


def flow_field_ie(field_name: str, ip_version: int) -> InformationElement:
    """The IE that a :class:`~agent.model.FlowRecord` attribute feeds.

    :param field_name: the attribute name, e.g. ``"src_addr"``.
    :param ip_version: 4 or 6; picks e.g. sourceIPv4Address (8) or sourceIPv6Address (27).
    :raises KeyError: the attribute is not exported.
    """
    v4, v6 = FLOW_FIELDS[field_name]
    return BY_ID[v4 if ip_version == 4 else v6]


def nat_field_ie(field_name: str, ip_version: int) -> InformationElement:
    """The IE that a :class:`~agent.model.NatEvent` attribute feeds (see :func:`flow_field_ie`)."""
    v4, v6 = NAT_FIELDS[field_name]
    return BY_ID[v4 if ip_version == 4 else v6]


def reduced_length_ok(element: InformationElement, length: int) -> bool:
    """Whether ``length`` is a legal encoding length for ``element`` (RFC 7011 section 6.2).

    :param element: the Information Element.
    :param length: the length an exporter wants to put in its template.
    """
    if length == element.length:
        return True
    if element.data_type in REDUCIBLE_TYPES:
        return 0 < length < element.length and (
            not element.data_type.startswith("float") or length == 4
        )
    return False


# --- natEvent (230) values, RFC 8158 section 4.3 ---------------------------------------------

NAT_CREATE_HISTORIC, NAT_DELETE_HISTORIC = 1, 2  # ipt_NETFLOW, Cisco NEL ("legacy")
NAT44_SESSION_CREATE, NAT44_SESSION_DELETE = 4, 5
NAT64_SESSION_CREATE, NAT64_SESSION_DELETE = 6, 7


def nat_event_value(start: bool, inside_len: int, outside_len: int, value_set: str) -> int:
    """The natEvent (230) value both exporters write for a translation start or stop.

    :param start: ``True`` for a translation start, ``False`` for a stop.
    :param inside_len: length of the pre-NAT source address (4 or 16).
    :param outside_len: length of the post-NAT source address (4 or 16).
    :param value_set: ``"legacy"`` (1/2) or ``"rfc8158"``: 6/7 only for NAT64 (inside IPv6,
        outside IPv4); same-family translation (NAT44, and NAT66, which RFC 8158 has no value
        for) uses the session values 4/5.
    """
    if value_set == "legacy":
        return NAT_CREATE_HISTORIC if start else NAT_DELETE_HISTORIC
    if inside_len == 16 and outside_len == 4:
        return NAT64_SESSION_CREATE if start else NAT64_SESSION_DELETE
    return NAT44_SESSION_CREATE if start else NAT44_SESSION_DELETE
