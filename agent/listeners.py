"""Can the agent serve where it is configured to? Probes for ``--check-env`` and the start.

This module owns the environment checks of the two places the agent listens on: the metrics
TCP address (``[agent] metrics_listen``) and the control socket (``[agent] control_socket``).
They run in validation, which the start runs too, before any component is started: a port
that is taken stops the start before NFLOG groups are bound or nft rules and BPF programs are
installed, instead of after.

* metrics: the address is bound for an instant (``SO_REUSEADDR``, as the HTTP server binds
  it, never listening) and released; ``EADDRINUSE`` means another listener holds it.
* control socket: a live socket at the path belongs to another agent; a path that is not a
  socket is never replaced; a parent directory that is missing must be creatable; the path
  must fit ``sockaddr_un`` (107 bytes). These are **warnings**: the agent runs on without a
  control socket (statistics are worth less than the flows, see ``agent.ops``), and
  ``--strict`` makes them errors. A metrics address that cannot be bound is an error: the
  start fails on it.

A reload validates again while this agent serves on both: a listener whose socket is one of
this process's own file descriptors (matched by inode through ``/proc/self/fd`` and
``/proc/net/{tcp,tcp6,unix}``) is not a conflict.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

from netflow_agent.errors import ConfigIssue
from netflow_agent.transport.udp import EndpointError, parse_endpoint

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 (unix(7))


def check_metrics_listen(text: str) -> list[ConfigIssue]:
    """Issues binding ``host:port`` for the metrics endpoint (empty = it can be bound)."""
    try:
        host, port = parse_endpoint(text)
    except EndpointError:
        return []  # the pure configuration check reports the syntax
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE and port in _own_tcp_listeners():
                return []  # a reload: this agent serves metrics there
            return [ConfigIssue("agent.metrics_listen", f"cannot listen on {text}: "
                                f"{_reason(exc)}")]
    return []


def _reason(exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "the port is in use by another process (ss -ltnp shows which)"
    return exc.strerror or str(exc)


def check_control_socket(path: str) -> list[ConfigIssue]:
    """Why the control socket could not be served at ``path`` (warnings; empty = it can)."""
    if not path.startswith("/"):
        return []  # the pure configuration check reports it
    problem = _control_socket_problem(path)
    if not problem:
        return []
    return [ConfigIssue("agent.control_socket", f"{problem}; the agent would run without a "
                        "control socket (`agent stats` and `agent reload` would not reach it)",
                        severity="warning")]


def _control_socket_problem(path: str) -> str:
    if len(os.fsencode(path)) > _SUN_PATH_MAX:
        return f"{path}: longer than the {_SUN_PATH_MAX} bytes a Unix socket path may have"
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return _parent_problem(Path(path).parent)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if not stat.S_ISSOCK(mode):
        return ""  # an error of its own: localfiles.socket_path_problem (agent/ops.py)
    if _socket_is_live(path) and path not in _own_unix_listeners():
        return f"{path}: another agent is listening there"
    return ""  # a stale socket: the start replaces it


def _parent_problem(parent: Path) -> str:
    """The nearest existing ancestor must let us create the missing directories."""
    ancestor = parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is not a directory"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"cannot create the control socket under {ancestor}: permission denied"
    return ""


def _socket_is_live(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def _own_socket_inodes() -> set[int]:
    """Inodes of the sockets this process has open (``/proc/self/fd``)."""
    out: set[int] = set()
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return out
    for fd in fds:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(int(target[8:-1]))
    return out


def _own_tcp_listeners() -> set[int]:
    """Ports this process listens on (TCP, IPv4 and IPv6)."""
    own = _own_socket_inodes()
    ports: set[int] = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[3] == _LISTEN and int(fields[9]) in own:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _own_unix_listeners() -> set[str]:
    """Paths of the Unix sockets this process has bound (``/proc/net/unix``)."""
    own = _own_socket_inodes()
    paths: set[str] = set()
    try:
        lines = Path("/proc/net/unix").read_text().splitlines()[1:]
    except OSError:
        return paths
    for line in lines:
        fields = line.split()
        if len(fields) >= 8 and int(fields[6]) in own:
            paths.add(fields[7])
    return paths
