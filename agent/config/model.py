"""The converted configuration: the ``[agent]`` section and one :class:`Instance` per table."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Literal

from netflow_agent import privileges, snmprules
from netflow_agent.config.load import RawConfig
from netflow_agent.config.schema import option
from netflow_agent.errors import ConfigIssue
from netflow_agent.registry import ComponentType
from netflow_agent.schema import FlowOptions, FlowSchema, default_schema
from netflow_agent.transport.udp import EndpointError, parse_endpoint


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSection:
    """``[agent]``: process-wide settings."""

    debug: int = option(0, doc="Debug level as in ipt_NETFLOW: 0 info logging, 1 debug "
                        "logging, 2-3 also one line per flow created and exported; applied "
                        "at reload; --log-level overrides it.", min=0, max=3)
    state_dir: str = option("", doc="Directory for spools and saved state; empty = none.")
    scan_interval_ms: int = option(
        1000, doc="How often timeouts are checked and timers run (ipt_NETFLOW worker delay).",
        min=10, max=60000)
    disabled_plugins: list[str] = option(
        default_factory=list, doc="Entry-point plugin names not to load.")
    # --- operations (agent/control.py, metrics.py, privileges.py, state.py) ---
    control_socket: str = option(
        "/run/netflow-agent/agent.sock", doc="Unix socket `agent stats` and `agent reload` "
        'talk to (msgpack); "" = no control socket.')
    control_socket_mode: int = option(
        0o600, doc="Permission bits of the control socket (0o600: its owner and root only).",
        min=0, max=0o777)
    metrics_listen: str = option(
        "", doc='Prometheus endpoint "host:port" (e.g. "127.0.0.1:9184"); "" = off.')
    user: str = option(
        "", doc="Drop root to this user after sockets, rules and BPF programs are set up; "
        '"" = keep running as started.')
    group: str = option("", doc='Group for `user`; "" = the user\'s primary group.')
    keep_capabilities: list[str] = option(
        default_factory=lambda: ["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_BPF"],
        doc="Capabilities kept after dropping to `user` (only those the process has).")
    state_file: str = option(
        "", doc="On SIGTERM save flows still in the cache here (msgpack) instead of exporting "
        'them; restore them at the next start. "" = export on SIGTERM.')
    snmp_rules: list[str] = option(
        default_factory=list,
        doc='ipt_NETFLOW snmp-rules (fprobe-ulog): ["ppp:200", "eth:100"] exports an '
        "interface named base name + number as index base + number (eth1 -> 101), first "
        "fitting rule wins; other interfaces keep the kernel ifIndex. Applies to every "
        "exporter (flow records and interface-name options); [] = kernel ifIndexes.")
    log_repeat_interval: float = option(
        60.0, doc="Identical log messages repeat at most once per this many seconds "
        "(the rest are counted); 0 = no limit.", min=0, max=86400)

    def check(self) -> list[ConfigIssue]:
        """Pure checks of the operations keys (the ones that need the machine are in
        :mod:`agent.ops`)."""
        issues: list[ConfigIssue] = []
        if self.metrics_listen:
            issues += _check_listen(self.metrics_listen)
        try:
            privileges.capability_mask(self.keep_capabilities)
        except privileges.PrivilegeError as exc:
            issues.append(ConfigIssue("keep_capabilities", str(exc)))
        if self.control_socket and not self.control_socket.startswith("/"):
            issues.append(ConfigIssue("control_socket", "must be an absolute path"))
        if self.state_file and not self.state_file.startswith("/"):
            issues.append(ConfigIssue("state_file", "must be an absolute path"))
        for n, rule in enumerate(self.snmp_rules):
            try:
                snmprules.parse_rules([rule])
            except snmprules.SnmpRuleError as exc:
                issues.append(ConfigIssue(f"snmp_rules[{n}]", str(exc)))
        if self.group and not self.user:
            issues.append(ConfigIssue("group", "group is only used together with user",
                                      severity="warning"))
        return issues




def _check_listen(text: str) -> list[ConfigIssue]:
    try:
        host, port = parse_endpoint(text)
        ipaddress.ip_address(host)
    except (EndpointError, ValueError) as exc:
        return [ConfigIssue("metrics_listen", f"{exc} (expected e.g. \"127.0.0.1:9184\")")]
    issues = []
    if port == 0:
        issues.append(ConfigIssue("metrics_listen", "port 0"))
    if not ipaddress.ip_address(host).is_loopback:
        issues.append(ConfigIssue("metrics_listen", f"{host} is not a loopback address: the "
                                  "endpoint has no authentication", severity="warning"))
    return issues


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowSection:
    """``[flow]``: which fields a flow has (ipt_NETFLOW's build-time options, at run time).

    Read at start only: every key in the flow table has the width these choose
    (:mod:`agent.schema`). The defaults keep the classic key and cost nothing.
    """

    mac: bool = option(False, doc="Source and destination MAC address in the key, exported "
                       "as sourceMacAddress (56) / destinationMacAddress (80), with "
                       "ethernetType (256). ipt_NETFLOW's --enable-macaddress.")
    vlan: bool = option(False, doc="Outer and inner 802.1Q/802.1ad tag (id and priority) in "
                        "the key, exported as vlanId (58), dot1qPriority (244), "
                        "dot1qCustomerVlanId (245), dot1qCustomerPriority (246), with "
                        "ethernetType (256); a tag the NIC stripped counts as the outer one. "
                        "ipt_NETFLOW's --enable-vlan.")
    mpls_labels: int = option(0, doc="Export the first N MPLS label stack entries "
                              "(mplsTopLabelStackSection 70, 71-79), part of the key; MPLS "
                              "frames are accounted by their inner IP header even with 0. "
                              "ipt_NETFLOW's --enable-promisc-mpls=N (its default N is 3).",
                              min=0, max=10)
    physdev: Literal["", "export", "override"] = option(
        "", doc='Bridge ports (NFLOG): "export" adds '
                          "ingressPhysicalInterface (252) / egressPhysicalInterface (253) to "
                          'the key; "override" puts them in place of the interfaces (10/14), '
                          "as ipt_NETFLOW's --enable-physdev-override; \"\" = off.")
    tunnel_id: bool = option(False, doc="With an ingest's decapsulate, the tunnel's id "
                             "(the VXLAN/Geneve VNI, the GRE key) in the key, exported as "
                             "layer2SegmentId (351).")
    fields: list[str] = option(default_factory=list, doc="Flow fields declared by plugins "
                               "(their agent_flow_fields hook) to add to the key, by name.")

    def options(self) -> FlowOptions:
        """These settings as :class:`agent.schema.FlowOptions`."""
        return FlowOptions(mac=self.mac, vlan=self.vlan, mpls_labels=self.mpls_labels,
                           physdev=self.physdev, tunnel_id=self.tunnel_id,
                           fields=tuple(self.fields))


@dataclass(slots=True)
class Instance:
    """One configured component: ``[[export.netflow]]`` number 0 is ``export.netflow[0]``."""

    stage: str
    type_name: str
    path: str
    config: Any
    ctype: ComponentType
    file: str = ""


@dataclass
class AgentConfig:
    """Everything a start or reload needs, already validated."""

    agent: AgentSection
    instances: list[Instance] = field(default_factory=list)
    flow: FlowSection = field(default_factory=FlowSection)
    #: the flow fields ``flow`` selects, with the plugins' declared ones (agent.schema)
    schema: FlowSchema = field(default_factory=default_schema)
    raw: RawConfig = field(default_factory=RawConfig)

    def by_stage(self, stage: str) -> list[Instance]:
        """Instances of one stage in configuration order."""
        return [i for i in self.instances if i.stage == stage]
