"""``[[ingest.pcap]]`` configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from netflow_agent.config.schema import option


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Replay a pcap or pcapng file."""

    path: str = option(doc="Capture file to replay (pcap or pcapng).")
    speed: Literal["max", "recorded"] = option(
        "max", doc='"max": as fast as possible; "recorded": at the capture\'s own pace.')
    in_if: int = option(0, doc="Input interface index to record for every packet.",
                        min=0, max=2**32 - 1)
    direction: Literal["ingress", "egress"] = option(
        "ingress", doc="Direction to record for every packet.")
    batch_size: int = option(1024, doc="Packets per batch handed to the cache.",
                             min=1, max=65536)
