"""Route lookups in the kernel FIB through rtnetlink (pyroute2), and a bounded TTL cache.

What it owns:

* :class:`Route`: what one lookup yields for an address: the prefix length of the matching
  FIB entry, its gateway (empty when the destination is directly connected) and its output
  interface;
* :class:`KernelRoutes`: ``RTM_GETROUTE`` requests in one network namespace (``ip route get
  ADDR fibmatch``, rtnetlink(7)). ``RTM_F_FIB_MATCH`` makes the kernel answer with the
  matching FIB entry instead of a resolved /32 (/128) host route, so ``dst_len`` is the prefix
  length a router reports as the mask. A multipath entry has no single gateway; a plain
  ``route get`` then tells which path the kernel picks for that address.
* :class:`RouteCache`: per-address results (``None`` = no route) for ``ttl`` seconds,
  least recently used dropped beyond ``max_entries``.

The lookups only read the FIB; no packet is sent. This is control-plane work (about 0.2 ms
per uncached address through pyroute2 here), so callers dedupe addresses and cache results.
"""

from __future__ import annotations

import errno
import os
import socket
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

from netflow_agent.netns import netns_path

RTM_F_FIB_MATCH = 0x2000  # include/uapi/linux/rtnetlink.h: return the matching FIB entry

#: errors ``route get`` returns when the FIB has no usable route for the address:
#: no route at all, ``unreachable``/``prohibit`` routes, and ``blackhole`` routes (EINVAL).
NO_ROUTE_ERRNOS = frozenset(
    {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EACCES, errno.EINVAL}
)


class Route(NamedTuple):
    """The FIB's answer for one address.

    :param prefix_len: length of the matching route's prefix (0 for a default route).
    :param gateway: packed gateway address, ``b""`` when directly connected (or unknown).
    :param oif: output interface index in the looked-up namespace, 0 when unknown.
    """

    prefix_len: int
    gateway: bytes
    oif: int


#: ``lookup(addr) -> Route | None``: ``None`` when the address has no route.
Lookup = Callable[[bytes], "Route | None"]


def _packed(text: str | None) -> bytes:
    if not text:
        return b""
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    return socket.inet_pton(family, text)


class KernelRoutes:
    """FIB lookups through one rtnetlink socket (pyroute2 ``IPRoute``).

    :param netns: namespace name or path; ``""`` = the agent's own namespace.
    :raises FileNotFoundError: when the namespace does not exist (it is never created).
    """

    def __init__(self, netns: str = ""):
        from pyroute2 import IPRoute

        if netns and not os.path.exists(netns_path(netns)):
            raise FileNotFoundError(
                f"network namespace {netns!r} not found ({netns_path(netns)} does not exist)")
        # flags=0: pyroute2 would otherwise create a missing namespace (O_CREAT).
        self.ipr = IPRoute(netns=netns, flags=0) if netns else IPRoute()

    def lookup(self, addr: bytes) -> Route | None:
        """The route the kernel would use towards ``addr``, or ``None`` when there is none.

        :param addr: packed IPv4 (4 bytes) or IPv6 (16 bytes) address.
        :raises pyroute2.NetlinkError: on errors other than "no route".
        """
        from pyroute2.netlink.exceptions import NetlinkError

        family = socket.AF_INET if len(addr) == 4 else socket.AF_INET6
        text = socket.inet_ntop(family, addr)
        try:
            match = self.ipr.route("get", dst=text, flags=RTM_F_FIB_MATCH)[0]
            gateway, oif = match.get_attr("RTA_GATEWAY"), match.get_attr("RTA_OIF")
            if gateway is None and oif is None:  # multipath or nexthop object: ask for the path
                gateway, oif = self._resolved_path(text)
        except NetlinkError as exc:
            if exc.code in NO_ROUTE_ERRNOS:
                return None
            raise
        hop = _packed(gateway)
        return Route(int(match["dst_len"]), hop if len(hop) == len(addr) else b"", oif or 0)

    def _resolved_path(self, text: str) -> tuple[Any, Any]:
        resolved = self.ipr.route("get", dst=text)[0]
        return resolved.get_attr("RTA_GATEWAY"), resolved.get_attr("RTA_OIF")

    def close(self) -> None:
        """Close the netlink socket."""
        self.ipr.close()


class RouteCache:
    """Lookup results per address, each valid for ``ttl_s`` seconds, at most ``max_entries``.

    :param ttl_s: how long a result is reused (0 = never).
    :param max_entries: entries kept; inserting beyond it drops the least recently used.
    """

    def __init__(self, ttl_s: float, max_entries: int):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.entries: OrderedDict[bytes, tuple[float, Route | None]] = OrderedDict()
        self.evicted = 0

    def get(self, addr: bytes, now: float) -> tuple[bool, Route | None]:
        """``(True, result)`` for a fresh entry, else ``(False, None)`` (expired ones go)."""
        entry = self.entries.get(addr)
        if entry is None:
            return False, None
        if entry[0] <= now:
            del self.entries[addr]
            return False, None
        self.entries.move_to_end(addr)
        return True, entry[1]

    def put(self, addr: bytes, route: Route | None, now: float) -> None:
        """Remember ``route`` for ``addr`` until ``now + ttl_s``."""
        if self.ttl_s <= 0:
            return
        self.entries[addr] = (now + self.ttl_s, route)
        self.entries.move_to_end(addr)
        while len(self.entries) > self.max_entries:
            self.entries.popitem(last=False)
            self.evicted += 1
