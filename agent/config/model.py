"""The converted configuration: the ``[agent]`` section and one :class:`Instance` per table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from netflow_agent.config.load import RawConfig
from netflow_agent.config.schema import option
from netflow_agent.errors import ConfigIssue
from netflow_agent.registry import ComponentType


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSection:
    """``[agent]``: process-wide settings."""

    debug: int = option(0, doc="Debug level as in ipt_NETFLOW: 0 none, 1 info, 2-3 debug.",
                        min=0, max=3)
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
    log_repeat_interval: float = option(
        60.0, doc="Identical log messages repeat at most once per this many seconds "
        "(the rest are counted); 0 = no limit.", min=0, max=86400)

    def check(self) -> list[ConfigIssue]:
        """Pure checks of the operations keys (the ones that need the machine are in
        :mod:`agent.ops`)."""
        from netflow_agent.ops import check_agent_section

        return check_agent_section(self)


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
    raw: RawConfig = field(default_factory=RawConfig)

    def by_stage(self, stage: str) -> list[Instance]:
        """Instances of one stage in configuration order."""
        return [i for i in self.instances if i.stage == stage]
