"""``[[export.log]]`` configuration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from netflow_agent.config.schema import option


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Write flows (and NAT events) as JSON lines or text."""

    path: str = option("-", doc='File to append to; "-" = standard output.')
    format: Literal["json", "text"] = option("json", doc="One JSON object per line, or text.")
    natevents: bool = option(True, doc="Also write NAT events.")
    flows: bool = option(True, doc="Write flow records.")
