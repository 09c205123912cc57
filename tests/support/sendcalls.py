"""Count the unpaced UDP transport's ``sendmmsg`` calls (``agent.transport.udp.send_burst``)."""

from __future__ import annotations

import pytest

from netflow_agent.transport import udp


def count_send_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the datagram count of every ``send_burst`` call the transport makes from now
    on (in order), still sending them; the list grows as calls come."""
    calls: list[int] = []
    real = udp.send_burst

    def counting(fd, datagrams, pos, count, gso_max):
        calls.append(count)
        return real(fd, datagrams, pos, count, gso_max)

    monkeypatch.setattr(udp, "send_burst", counting)
    return calls
