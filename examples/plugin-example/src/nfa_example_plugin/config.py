"""``[[export.counter]]`` configuration."""

from __future__ import annotations

from dataclasses import dataclass

from netflow_agent.config.schema import option
from netflow_agent.errors import ConfigIssue


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Where and how often the totals are written."""

    path: str = option(doc="JSON file written at stop (and every every_s seconds).")
    every_s: int | None = option(
        None,
        doc="Also write every this many seconds of the agent clock; unset = at stop only.",
        min=1,
    )

    def check(self) -> list[ConfigIssue]:
        """Pure checks beyond types and bounds."""
        if not self.path.strip():
            return [ConfigIssue("path", "must name a file")]
        if self.path.endswith("/"):
            return [ConfigIssue("path", f"{self.path!r} is a directory; name a file in it")]
        return []
