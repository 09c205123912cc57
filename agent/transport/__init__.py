"""Export transports shared by the NetFlow and IPFIX exporters.

:mod:`agent.transport.udp` holds the non-blocking, per-destination UDP sender
(:class:`~agent.transport.udp.UdpDestination`) with ipt_NETFLOW's ``sock:`` / ``sockX:``
counters; :mod:`agent.transport.losses` hands the datagrams a destination lost
(:class:`~agent.transport.losses.LossQueue`) to the exporter that counts their packets.
Encoders never see sockets: they return ``list[bytes]`` and the exporter component
hands those datagrams to every destination (mirroring).
"""

from netflow_agent.transport.losses import LossQueue
from netflow_agent.transport.udp import (
    DestinationStats,
    EndpointError,
    UdpDestination,
    parse_endpoint,
)

__all__ = ["DestinationStats", "EndpointError", "LossQueue", "UdpDestination", "parse_endpoint"]
