"""Fixtures of the NFLOG tests."""

from __future__ import annotations

import pytest

from tests.support.netns import routed_topology, set_offloads


@pytest.fixture
def topo():
    """Name: topo. Scope: function. Depends: root. A routed topology with offloads off."""
    with routed_topology() as t:
        for end in (t.client, t.router_client, t.router_server, t.server):
            set_offloads(end, False)
        yield t
