"""Running a short piece of work inside another network namespace, and interface names there.

Owns the core's ``setns(2)`` helper (``man 2 setns``, ``CLONE_NEWNET``): the work runs on a
short-lived helper thread that joins the namespace, so the calling thread (the pipeline, a
reader) never changes namespace; setns changes only the calling thread, and the helper ends
right after. Interface indexes are per namespace (``if_indextoname(3)`` asks the calling
thread's namespace), so exporters resolve the ifIndexes an ingest observed in the namespace
that ingest declared (:meth:`agent.runtime.RunContext.declare_netns`).
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

from netflow_agent.libc import libc

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def netns_path(netns: str) -> str:
    """``/run/netns/NAME`` for a name (``ip netns``), the path itself for an absolute path."""
    return netns if netns.startswith("/") else os.path.join("/run/netns", netns)


def run_in_netns(netns: str, func: Callable[[], T]) -> T:
    """Call ``func`` on a helper thread that has entered ``netns`` and return its result.

    :param netns: a name under ``/run/netns`` or a path (``/proc/PID/ns/net``); ``""`` calls
        ``func`` directly in the current namespace.
    :raises OSError: the namespace cannot be opened or entered; whatever ``func`` raises.
    """
    if not netns:
        return func()
    result: list[T] = []
    error: list[BaseException] = []

    def enter_and_call() -> None:
        try:
            _setns(netns_path(netns))
            result.append(func())
        except BaseException as exc:  # handed to the caller's thread below
            error.append(exc)

    helper = threading.Thread(target=enter_and_call, name=f"netns-{netns}", daemon=True)
    helper.start()
    helper.join()
    if error:
        raise error[0]
    return result[0]


def _setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns_fd(fd, path)
    finally:
        os.close(fd)


def _setns_fd(fd: int, what: str) -> None:
    """Move the calling thread into the network namespace open as ``fd``."""
    if libc().setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns({what}): {os.strerror(err)}")


class NetnsScope:
    """Context manager: run the *calling* thread inside ``netns`` (no-op for ``""``), and back.

    For work that must happen in this thread (libbpf attach calls resolve ifindexes in the
    calling thread's namespace); otherwise prefer :func:`run_in_netns`.
    """

    def __init__(self, netns: str):
        self.netns = netns
        self._saved: int | None = None

    def __enter__(self) -> NetnsScope:
        if not self.netns:
            return self
        saved = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(netns_path(self.netns))
        except OSError:
            os.close(saved)
            raise
        self._saved = saved
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is None:
            return
        try:
            _setns_fd(self._saved, "back to the agent's netns")  # never leave a thread behind
        finally:
            os.close(self._saved)
            self._saved = None


def names_here(indexes: Iterable[int]) -> dict[int, str]:
    """``if_indextoname(3)`` for each index in the calling thread's namespace.

    Indexes that do not resolve (0, negative, an interface that is gone) are left out.
    """
    names = {}
    for index in indexes:
        if index <= 0:
            continue
        try:
            names[index] = socket.if_indextoname(index)
        except OSError:
            pass
    return names


def interface_names(netns: str, indexes: Iterable[int]) -> dict[int, str]:
    """ifIndex -> name inside ``netns`` (``""`` = the agent's own), in one helper thread.

    :raises OSError: the namespace cannot be entered (deleted since the ingest started).
    """
    wanted = sorted(set(indexes))
    return run_in_netns(netns, lambda: names_here(wanted))
