"""Link notifications that wake the eBPF ingest's interface rescan (rtnetlink(7), RTMGRP_LINK).

A ``NETLINK_ROUTE`` socket opened inside the observed network namespace and bound to the
``RTMGRP_LINK`` multicast group receives ``RTM_NEWLINK``/``RTM_DELLINK`` whenever an interface
appears, is renamed, changes state or goes away. The drain thread polls it next to its timers
and rescans at once, so a new interface is attached within milliseconds instead of at the next
``rescan_interval_ms``. The messages are not decoded: any link event means "list the
interfaces again", and the rescan (``socket.if_nameindex()``) stays the one source of truth.
A lost notification (``ENOBUFS``) counts as an event too.
"""

from __future__ import annotations

import errno
import socket

from netflow_agent.netns import NetnsScope

NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1


class LinkWatch:
    """A non-blocking rtnetlink socket subscribed to link events of one namespace."""

    def __init__(self, netns: str):
        """:param netns: the namespace to watch (``""``: the agent's own)."""
        with NetnsScope(netns):  # a socket belongs to the namespace it was created in
            self.sock = socket.socket(socket.AF_NETLINK,
                                      socket.SOCK_RAW | socket.SOCK_NONBLOCK |
                                      socket.SOCK_CLOEXEC, NETLINK_ROUTE)
        try:
            self.sock.bind((0, RTMGRP_LINK))
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        """For ``select.poll``."""
        return self.sock.fileno()

    def pending(self) -> bool:
        """Read every queued notification; ``True`` if there was any (or some were lost)."""
        seen = False
        while True:
            try:
                self.sock.recv(65536)
            except BlockingIOError:
                return seen
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
            seen = True

    def close(self) -> None:
        """Stop listening."""
        self.sock.close()
