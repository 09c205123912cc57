"""The ``[[aggregate.route]]`` table: where to look routes up, what to fill, how long to cache."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from netflow_agent.config.schema import option
from netflow_agent.errors import ConfigIssue

_NETNS_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")

Field = Literal["next_hop", "src_mask", "dst_mask", "out_if"]
ALL_FIELDS: tuple[Field, ...] = ("next_hop", "src_mask", "dst_mask", "out_if")


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Next hop, prefix lengths and egress interface from the kernel routing table."""

    netns: str = option(
        "", doc="Network namespace whose routing table to ask: a name under /run/netns or a "
        "path such as /proc/PID/ns/net; empty = the agent's own.")
    cache_ttl_s: float = option(
        60.0, doc="Seconds a looked-up route (or 'no route') is reused for the same address.",
        min=0, max=86400)
    max_cache_entries: int = option(
        65536, doc="Addresses kept in the route cache; the least recently used go first.",
        min=1, max=10_000_000)
    max_lookups_per_round: int = option(
        1000, doc="Kernel lookups per export round at most (about 0.25 ms each); addresses "
        "beyond it stay unknown in that round and are counted as deferred. 0 = no limit.",
        min=0)
    fields: list[Field] = option(
        list(ALL_FIELDS), doc="Record fields to fill: next_hop, src_mask, dst_mask, out_if.",
        min_items=1)
    override: bool = option(
        False, doc="Overwrite values a record already has (e.g. masks from [aggregate] rules); "
        "false fills only unknown (zero) values.")

    def check(self) -> list[ConfigIssue]:
        """Pure checks: namespace name, duplicate fields."""
        issues = []
        if self.netns and not (self.netns.startswith("/") or _NETNS_NAME.match(self.netns)):
            issues.append(ConfigIssue("netns", f"{self.netns!r} is neither a namespace name "
                                      "(letters, digits, '_', '.', '-') nor an absolute path"))
        seen: set[str] = set()
        for n, name in enumerate(self.fields):
            if name in seen:
                issues.append(ConfigIssue(f"fields[{n}]", f"{name!r} is listed twice",
                                          "warning"))
            seen.add(name)
        return issues
