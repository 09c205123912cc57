"""systemd readiness and watchdog notifications, without libsystemd (sd_notify(3) protocol).

The service manager passes ``$NOTIFY_SOCKET``: a path of an ``AF_UNIX`` datagram socket, or
an abstract one when it starts with ``@``. Each notification is one datagram of
newline-separated ``KEY=VALUE`` assignments (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``,
``RELOADING=1``, ``STOPPING=1``, ``MAINPID=``). ``$WATCHDOG_USEC`` (with ``$WATCHDOG_PID``
naming us) is the watchdog timeout; we ping at a third of it, from the pipeline loop, so a
stuck pipeline thread stops the pings and systemd restarts the service.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

log = logging.getLogger("agent.sdnotify")


class Notifier:
    """Sends notifications to ``$NOTIFY_SOCKET``; does nothing outside systemd.

    :param environ: the environment to read (injectable for tests).
    :param clock: monotonic seconds.
    """

    def __init__(self, environ: dict[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        env = os.environ if environ is None else environ
        self.address = _address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_s = _watchdog_interval(env)
        self._clock = clock
        self._last_ping = 0.0
        self._sock: socket.socket | None = None
        self.sent = 0
        self.errors = 0

    @property
    def enabled(self) -> bool:
        """Whether a notify socket was given."""
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments as one datagram.

        :return: whether it was sent (``False`` outside systemd or on error, which is logged).
        """
        if self.address is None:
            return False
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.sendto("\n".join(assignments).encode(), self.address)
        except OSError as exc:
            self.errors += 1
            log.warning("sd_notify to %r failed: %s", self.address, exc)
            return False
        self.sent += 1
        return True

    def heartbeat(self) -> None:
        """``WATCHDOG=1`` at most every third of ``WatchdogSec`` (call it often)."""
        if not self.watchdog_s:
            return
        now = self._clock()
        if now - self._last_ping >= self.watchdog_s / 3:
            self._last_ping = now
            self.notify("WATCHDOG=1")

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):  # abstract namespace: leading NUL byte
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock addresses (vsock:CID:PORT) are not used for services here


def _watchdog_interval(env: dict[str, str] | os._Environ[str]) -> float:
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return 0.0
    return int(usec) / 1e6
