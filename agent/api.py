"""The public plugin API: everything a plugin may use from the core, in one module.

Built-in plugins (``plugins/``) import only from here, exactly like third-party ones
(``examples/plugin-example``); a test enforces it. Anything else in ``agent`` is the core's own
and may change without notice. :data:`API_VERSION` says what to expect:

* the major number changes when something here changes incompatibly (a hook's meaning, a
  name removed, a role's interface);
* the minor number when something is added (a hook, a hook argument, a name).

A plugin that needs a newer API than it finds can refuse to register::

    from netflow_agent.api import API_VERSION, hookimpl

    @hookimpl
    def agent_register_components(registry):
        if API_VERSION < (3, 0):
            raise RuntimeError("my-plugin needs netflow-agent plugin API 3.0 or newer")
        registry.add("export", "mine", MyExporter, Config, doc="...")

Groups (see ``docs/hooks.md``):

* hooks: :data:`hookimpl`;
* component types and roles: :class:`Component`, :class:`Ingest`, :class:`Cache`,
  :class:`Aggregator`, :class:`Exporter`, :class:`NatExporter`, :class:`ComponentRegistry`,
  :class:`Resource`, :class:`CacheStats`;
* configuration: :func:`option`, :class:`ConfigIssue`; errors :class:`ComponentUnavailable`,
  :class:`EncodeError`;
* the running agent: :class:`RunContext`, :func:`follow_privileges` (for threads a plugin
  starts);
* records: :class:`PacketBatch`, :class:`FlowBatch` (flows as columns; :func:`concat`),
  :class:`FlowDelta`, :class:`FlowRecord` (a row as an object), :class:`NatEvent`,
  :class:`Sampling`, :func:`make_key`, :class:`PacketParser` and the constants beside them;
* the flow schema: :class:`FlowField` (declare one with ``registry.add_flow_field``),
  :class:`FlowSchema` and :func:`flow_schema` (the active one: key layout, record columns,
  the fields exporters add to their templates);
* export records from columns (``agent/wire.py``): :func:`flow_columns`,
  :func:`pack_template` (its computed fields :class:`UptimeMs`, :class:`IcmpTypeCode`,
  :class:`EpochMs`, :class:`Constant`), :func:`template_dtype` (:data:`PADDING`: IE 0,
  zero bytes), :func:`address_column`,
  :func:`group_rows`, :func:`classify_rows` (:class:`RowClasses`), :func:`rows_of`,
  :func:`any_bytes`,
  :class:`PackedRecords`, :func:`join_records`, :func:`frame_packets`, :func:`wire_columns`,
  :func:`wire_dtype`;
* network namespaces: :func:`run_in_netns`, :class:`NetnsScope`, :func:`netns_path`,
  :func:`names_here`, :class:`InterfaceNames` (the interfaces exported flows used);
* IPFIX Information Elements: :data:`IE_BY_ID`, :func:`information_element`,
  :data:`VARIABLE_LENGTH`, :func:`nat_event_value`;
* UDP export: :class:`UdpDestination`, :func:`parse_endpoint`, :func:`address_family`,
  :class:`EndpointError`, :func:`normal_endpoint`, :class:`LossQueue` (the datagrams a
  destination's ``on_loss`` reported, read back on the exporter's thread), and pacing: the defaults
  :data:`DEFAULT_RATE_LIMIT`, :data:`DEFAULT_BACKLOG` and the shared options
  :func:`rate_limit_option`,
  :func:`backlog_option`, and :func:`records_room` (what a paced backlog can take, for the
  ``agent_export_room`` hook);
* export headers: :func:`export_stamp` and :data:`NS_PER_S` (one clock for a packet's header
  and its records, ``agent/exportclock.py``);
* packet paths: :class:`FragmentPolicy` (``[cache] fragments``), :func:`make_parser` and the
  ``decapsulate`` options (:data:`TUNNELS`, :data:`TunnelName`, :func:`decapsulate_option`,
  :func:`keep_outer_option`, :func:`check_decapsulate`), and the link-layer walk to IP
  (:func:`ethernet_ip_offset`, :func:`ip_after`, :func:`ethernet_facts`, :func:`facts_after`,
  :class:`LinkFacts`, :data:`NOT_IP`, :data:`TRUNCATED`, the ``PPP_*`` protocol numbers)
  and the optional layer-2 key fields packed from those facts (:class:`L2KeyPacker`,
  :data:`L2_FIELDS`);
* local files: :func:`open_output` (output files created 0640, owned by the agent's user),
  :func:`output_issues` (``--check-env`` of an output path), :func:`started_as_root`.
"""

from __future__ import annotations

from netflow_agent import hookimpl
from netflow_agent.config.files import output_issues
from netflow_agent.config.schema import option
from netflow_agent.errors import ComponentUnavailable, ConfigIssue, EncodeError
from netflow_agent.exportclock import NS_PER_S, export_stamp
from netflow_agent.fragments import FragmentPolicy
from netflow_agent.ie import BY_ID as IE_BY_ID
from netflow_agent.ie import VARIABLE_LENGTH, InformationElement, nat_event_value
from netflow_agent.ie import ie as information_element
from netflow_agent.ifnames import InterfaceNames
from netflow_agent.l2key import L2_FIELDS, L2KeyPacker
from netflow_agent.linklayer import (
    NOT_IP,
    PPP_IP,
    PPP_IPV6,
    PPP_MPLS_UC,
    TRUNCATED,
    LinkFacts,
    ethernet_facts,
    ethernet_ip_offset,
    facts_after,
    ip_after,
)
from netflow_agent.localfiles import open_output
from netflow_agent.model import (
    DIRECTION_EGRESS,
    DIRECTION_INGRESS,
    END_ACTIVE,
    END_FORCED,
    END_IDLE,
    END_LACK_OF_RESOURCES,
    END_OF_FLOW,
    NAT_START,
    NAT_STOP,
    SAMPLING_DETERMINISTIC,
    SAMPLING_HASH,
    SAMPLING_RANDOM,
    TCP_ACK,
    TCP_FIN,
    TCP_PSH,
    TCP_RST,
    TCP_SYN,
    FlowBatch,
    FlowDelta,
    FlowKey,
    FlowRecord,
    NatEvent,
    Packet,
    PacketBatch,
    Sampling,
    concat,
    make_key,
    split_key,
)
from netflow_agent.netns import NetnsScope, names_here, netns_path, run_in_netns
from netflow_agent.packet import PacketParser
from netflow_agent.privileges import follow as follow_privileges
from netflow_agent.privileges import started_as_root
from netflow_agent.registry import Component, ComponentRegistry, Resource
from netflow_agent.roles import (
    Aggregator,
    Cache,
    CacheStats,
    Exporter,
    FlowRow,
    Ingest,
    NatExporter,
)
from netflow_agent.runtime import RunContext
from netflow_agent.schema import FlowField, FlowSchema
from netflow_agent.schema import active as flow_schema
from netflow_agent.transport.losses import LossQueue
from netflow_agent.transport.pacing import (
    DEFAULT_BACKLOG,
    DEFAULT_RATE_LIMIT,
    backlog_option,
    rate_limit_option,
    records_room,
)
from netflow_agent.transport.udp import (
    EndpointError,
    UdpDestination,
    address_family,
    normal_endpoint,
    parse_endpoint,
)
from netflow_agent.tunnels import (
    TUNNELS,
    TunnelName,
    check_decapsulate,
    decapsulate_option,
    keep_outer_option,
    make_parser,
)
from netflow_agent.wire import (
    PADDING,
    Constant,
    EpochMs,
    IcmpTypeCode,
    PackedRecords,
    RowClasses,
    UptimeMs,
    address_column,
    any_bytes,
    classify_rows,
    flow_columns,
    frame_packets,
    group_rows,
    join_records,
    pack_template,
    rows_of,
    template_dtype,
    wire_columns,
    wire_dtype,
)

#: ``(major, minor)`` of this plugin API (see the module docstring).
API_VERSION = (3, 11)

__all__ = [
    "API_VERSION",
    "DEFAULT_BACKLOG",
    "DEFAULT_RATE_LIMIT",
    "backlog_option",
    "rate_limit_option",
    "records_room",
    "NOT_IP",
    "NS_PER_S",
    "PPP_IP",
    "PPP_IPV6",
    "PPP_MPLS_UC",
    "TRUNCATED",
    "LinkFacts",
    "L2_FIELDS",
    "L2KeyPacker",
    "ethernet_facts",
    "ethernet_ip_offset",
    "facts_after",
    "ip_after",
    "TUNNELS",
    "FragmentPolicy",
    "TunnelName",
    "check_decapsulate",
    "decapsulate_option",
    "export_stamp",
    "keep_outer_option",
    "make_parser",
    "open_output",
    "output_issues",
    "started_as_root",
    "DIRECTION_EGRESS",
    "DIRECTION_INGRESS",
    "END_ACTIVE",
    "END_FORCED",
    "END_IDLE",
    "END_LACK_OF_RESOURCES",
    "END_OF_FLOW",
    "IE_BY_ID",
    "NAT_START",
    "NAT_STOP",
    "SAMPLING_DETERMINISTIC",
    "SAMPLING_HASH",
    "SAMPLING_RANDOM",
    "TCP_ACK",
    "TCP_FIN",
    "TCP_PSH",
    "TCP_RST",
    "TCP_SYN",
    "VARIABLE_LENGTH",
    "Aggregator",
    "Cache",
    "CacheStats",
    "Component",
    "ComponentRegistry",
    "ComponentUnavailable",
    "ConfigIssue",
    "EncodeError",
    "EndpointError",
    "Exporter",
    "FlowBatch",
    "FlowDelta",
    "FlowField",
    "FlowSchema",
    "FlowKey",
    "FlowRecord",
    "FlowRow",
    "InformationElement",
    "InterfaceNames",
    "Ingest",
    "LossQueue",
    "NatEvent",
    "NatExporter",
    "NetnsScope",
    "Packet",
    "PacketBatch",
    "PacketParser",
    "Resource",
    "RunContext",
    "Sampling",
    "UdpDestination",
    "address_family",
    "follow_privileges",
    "hookimpl",
    "information_element",
    "concat",
    "flow_schema",
    "PADDING",
    "Constant",
    "EpochMs",
    "IcmpTypeCode",
    "PackedRecords",
    "RowClasses",
    "UptimeMs",
    "address_column",
    "any_bytes",
    "classify_rows",
    "flow_columns",
    "frame_packets",
    "group_rows",
    "join_records",
    "pack_template",
    "rows_of",
    "template_dtype",
    "wire_columns",
    "wire_dtype",
    "make_key",
    "names_here",
    "nat_event_value",
    "netns_path",
    "normal_endpoint",
    "option",
    "parse_endpoint",
    "run_in_netns",
    "split_key",
]
