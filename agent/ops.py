"""Operations around the pipeline: control socket, metrics, privilege drop, systemd, logging.

:class:`Operations` is what ``agent -c FILE`` wires around :class:`~agent.pipeline.Pipeline`::

    ops = Operations(config)    # before any thread: resolve the user, PR_SET_KEEPCAPS
    pipeline.start()            # as root: sockets, NFLOG groups, rules, BPF programs
    ops.start(pipeline)         # monitor; bind control socket and metrics; drop root; start
                                # their threads (born with the reduced set); READY=1
    pipeline.run()
    ops.stopping()              # STOPPING=1, control socket and metrics closed
    pipeline.shutdown()         # flows exported (or saved with state_file)

It is also the ``core_ops`` plugin: :func:`agent_check_config` checks the ``[agent]``
operations keys against the machine (user exists and can read the configuration,
prometheus-client installed, the metrics address and the control socket free:
:mod:`agent.listeners`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from netflow_agent import hookimpl, listeners, localfiles, logutil, privileges, state
from netflow_agent.config import files
from netflow_agent.control import ControlServer, call_on_pipeline
from netflow_agent.errors import ConfigIssue
from netflow_agent.flowtop import FlowTop
from netflow_agent.report import OpsMonitor, build_snapshot, format_report
from netflow_agent.sdnotify import Notifier

log = logging.getLogger("agent.ops")


# --- configuration checks (the pure ones are AgentSection.check, agent/config/model.py) ------


@hookimpl
def agent_check_config(config: Any, check_env: bool) -> list[ConfigIssue] | None:
    """Machine checks: the user/group exist and can read the configuration files,
    prometheus-client is installed, the metrics address and the control socket can be served
    (before anything is started)."""
    if not check_env:
        return None
    section = config.agent
    issues = files.agent_file_issues(section)  # control socket path, state file
    if section.user:
        try:
            identity = privileges.resolve(section.user, section.group)
        except privileges.PrivilegeError as exc:
            issues.append(ConfigIssue("agent.user", str(exc)))
        else:
            if os.geteuid() not in (0, identity.uid):
                issues.append(ConfigIssue("agent.user", "not running as root: the agent "
                                          f"cannot switch to {section.user!r}", "warning"))
            issues += config_access_issues(config, identity)
    if section.metrics_listen:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            issues.append(ConfigIssue("agent.metrics_listen", "the Python package "
                                      "prometheus-client is not installed"))
        issues += listeners.check_metrics_listen(section.metrics_listen)
    if section.control_socket:
        issues += listeners.check_control_socket(section.control_socket)
    return issues


#: kept capabilities with which the dropped user reads any file anyway
_DAC_CAPABILITIES = {"CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH"}


def config_access_issues(config: Any, identity: privileges.Identity) -> list[ConfigIssue]:
    """A warning per configuration file (and conf.d directory) the dropped user cannot read:
    every reload after the drop would fail on it."""
    raw = config.raw
    kept = {c.upper() if c.upper().startswith("CAP_") else f"CAP_{c.upper()}"
            for c in config.agent.keep_capabilities}
    if kept & _DAC_CAPABILITIES:
        return []
    paths = list(raw.files)
    if raw.source and os.path.isdir(raw.source):
        paths.insert(0, raw.source)
    issues = []
    for path in privileges.unreadable_as(identity, paths):
        what = "list this directory" if os.path.isdir(path) else "read this file"
        issues.append(ConfigIssue(
            "agent.user", f"user {identity.user!r} cannot {what}: after start-up "
            "the agent drops to this user, so every reload will fail; make it readable by "
            f"{identity.user!r} (e.g. chgrp {_group_name(identity.gid)} + chmod g+r"
            f"{'x' if os.path.isdir(path) else ''})", "warning", file=path))
    return issues


def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


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
            localfiles.set_output_owner(self.identity.uid, self.identity.gid)
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
        """After the components started: bind, drop root, serve, tell systemd we are ready.

        The control and metrics sockets are bound as root (a path in /run, a low port); their
        threads start after the drop, so they never hold root's capabilities (issue 18
        item 3).

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
        if self.control is not None:
            self.control.serve()
        if self.metrics is not None:
            self.metrics.serve()
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
                                format_report, mode=self.section.control_socket_mode,
                                top=FlowTop().answer)
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
        if self.section.state_file and os.geteuid() == 0:
            state.reserve(self.section.state_file)  # root's file, written after the drop
        privileges.drop(identity, self._capabilities_to_keep())

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
