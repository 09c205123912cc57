"""Operations around the pipeline: control socket, metrics, privilege drop, systemd, logging.

:class:`Operations` is what ``agent -c FILE`` wires around :class:`~agent.pipeline.Pipeline`::

    ops = Operations(config)    # before any thread: resolve the user, PR_SET_KEEPCAPS
    pipeline.start()            # as root: sockets, NFLOG groups, rules, BPF programs
    ops.start(pipeline)         # monitor, control socket, metrics, drop root, READY=1
    pipeline.run()
    ops.stopping()              # STOPPING=1, control socket and metrics closed
    pipeline.shutdown()         # flows exported (or saved with state_file)

It is also the ``core_ops`` plugin: :func:`agent_check_config` checks the ``[agent]``
operations keys against the machine (user exists, prometheus-client installed).
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path
from typing import Any

from netflow_agent import hookimpl, logutil, privileges
from netflow_agent.control import ControlServer, call_on_pipeline
from netflow_agent.errors import ConfigIssue
from netflow_agent.report import OpsMonitor, build_snapshot, format_report
from netflow_agent.sdnotify import Notifier
from netflow_agent.transport.udp import EndpointError, parse_endpoint

log = logging.getLogger("agent.ops")


# --- configuration checks --------------------------------------------------------------------


def check_agent_section(section: Any) -> list[ConfigIssue]:
    """Pure checks of ``[agent]`` operations keys (called from ``AgentSection.check``)."""
    issues: list[ConfigIssue] = []
    if section.metrics_listen:
        issues += _check_listen(section.metrics_listen)
    try:
        privileges.capability_mask(section.keep_capabilities)
    except privileges.PrivilegeError as exc:
        issues.append(ConfigIssue("keep_capabilities", str(exc)))
    if section.control_socket and not section.control_socket.startswith("/"):
        issues.append(ConfigIssue("control_socket", "must be an absolute path"))
    if section.state_file and not section.state_file.startswith("/"):
        issues.append(ConfigIssue("state_file", "must be an absolute path"))
    if section.group and not section.user:
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


@hookimpl
def agent_check_config(config: Any, check_env: bool) -> list[ConfigIssue] | None:
    """Machine checks: the user/group exist, prometheus-client is installed."""
    if not check_env:
        return None
    section = config.agent
    issues = []
    if section.user:
        try:
            privileges.resolve(section.user, section.group)
        except privileges.PrivilegeError as exc:
            issues.append(ConfigIssue("agent.user", str(exc)))
        if os.geteuid() != 0:
            issues.append(ConfigIssue("agent.user", "not running as root: the agent cannot "
                                      f"switch to {section.user!r}", severity="warning"))
    if section.metrics_listen:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            issues.append(ConfigIssue("agent.metrics_listen", "the Python package "
                                      "prometheus-client is not installed"))
    return issues


# --- the services ----------------------------------------------------------------------------


class Operations:
    """Control socket, metrics endpoint, privilege drop and systemd notifications.

    :param config: the validated :class:`~agent.config.model.AgentConfig`.
    :raises privileges.PrivilegeError: the configured user does not exist.
    """

    def __init__(self, config: Any, notifier: Notifier | None = None):
        self.section = config.agent
        self.notifier = notifier or Notifier()
        self.identity = None
        if self.section.user:
            self.identity = privileges.resolve(self.section.user, self.section.group)
            privileges.prepare()
        repeat = logutil.find_filter()
        if repeat is not None:
            repeat.interval = self.section.log_repeat_interval
        self.monitor: OpsMonitor | None = None
        self.control: ControlServer | None = None
        self.metrics: Any = None
        self.pipeline: Any = None

    def snapshot(self, pipeline: Any) -> dict[str, Any]:
        """Build a snapshot (pipeline thread)."""
        return build_snapshot(pipeline, self.monitor)

    def start(self, pipeline: Any) -> None:
        """After the components started: serve, drop root, tell systemd we are ready.

        :raises OSError: the control socket or metrics address cannot be bound.
        :raises privileges.PrivilegeError: the switch to ``user`` failed.
        """
        self.pipeline = pipeline
        self.monitor = OpsMonitor(pipeline)
        pipeline.pm.register(self.monitor, name="netflow_agent.ops.monitor")
        if self.section.control_socket:
            self._start_control(pipeline)
        if self.section.metrics_listen:
            from netflow_agent.metrics import MetricsServer

            self.metrics = MetricsServer(self.section.metrics_listen,
                                         lambda: call_on_pipeline(pipeline, self.snapshot))
            self.metrics.start()
        if self.identity is not None:
            self._drop_root()
        if self.notifier.watchdog_s:
            pipeline.heartbeat = self.notifier.heartbeat
        self.notifier.notify("READY=1", f"STATUS=running {len(pipeline.components)} "
                             "components", f"MAINPID={os.getpid()}")

    def _start_control(self, pipeline: Any) -> None:
        """Serve the control socket; a failure is logged, the agent runs on without it.

        (Statistics are worth less than the flows: a second agent started by hand, or a
        user without /run access replaying a capture, must not fail for the socket.)
        """
        control = ControlServer(self.section.control_socket, pipeline, self.snapshot,
                                format_report, mode=self.section.control_socket_mode)
        try:
            control.start()
        except OSError as exc:
            log.warning("control socket %s unavailable (%s): `agent stats` and `agent reload` "
                        "will not reach this agent; set [agent] control_socket",
                        self.section.control_socket, exc.strerror or exc)
            return
        self.control = control

    def _drop_root(self) -> None:
        identity = self.identity
        assert identity is not None
        if self.control is not None and os.geteuid() == 0:
            self.control.chown(identity.uid, identity.gid)
        state_dir = Path(self.section.state_file).parent if self.section.state_file else None
        if state_dir is not None and not state_dir.exists() and os.geteuid() == 0:
            state_dir.mkdir(mode=0o750, parents=True)
            os.chown(state_dir, identity.uid, identity.gid)
        privileges.drop(identity, self._capabilities_to_keep())
        if state_dir is not None and not os.access(state_dir, os.W_OK):
            log.warning("%s is not writable by %s: flows cannot be saved at stop",
                        state_dir, identity.user)

    def _capabilities_to_keep(self) -> list[str]:
        """``keep_capabilities``, plus CAP_SYS_ADMIN when a component enters another network
        namespace (``netns = ...``): setns(2) needs it, e.g. to remove managed rules at exit."""
        keep = list(self.section.keep_capabilities)
        other_netns = [i.path for i in self.pipeline.config.instances
                       if getattr(i.config, "netns", "")]
        if other_netns and "CAP_SYS_ADMIN" not in keep:
            log.info("keeping CAP_SYS_ADMIN for setns(2): %s use netns", ", ".join(other_netns))
            keep.append("CAP_SYS_ADMIN")
        return keep

    def stopping(self) -> None:
        """Before the pipeline flushes: STOPPING=1; close the control socket and metrics."""
        self.notifier.notify("STOPPING=1")
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        if self.pipeline is not None and self.monitor is not None:
            self.pipeline.pm.unregister(self.monitor)
            self.pipeline.heartbeat = None
        self.notifier.close()
