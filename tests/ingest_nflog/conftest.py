"""Fixtures of the NFLOG tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from tests.support.netns import routed_topology, set_offloads


@pytest.fixture
def topo():
    """Name: topo. Scope: function. Depends: root. A routed topology with offloads off."""
    with routed_topology() as t:
        for end in (t.client, t.router_client, t.router_server, t.server):
            set_offloads(end, False)
        yield t


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """Name: pair. Scope: function. (reader, writer) of a datagram socket pair, the reader
    end non-blocking as the NFLOG socket is: it stands in for the netlink socket."""
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader.setblocking(False)
    with reader, writer:
        yield reader, writer
