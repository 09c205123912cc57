"""The converted configuration: the ``[agent]`` section and one :class:`Instance` per table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.config.load import RawConfig
from agent.config.schema import option
from agent.registry import ComponentType


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSection:
    """``[agent]``: process-wide settings."""

    debug: int = option(0, doc="Debug level as in ipt_NETFLOW: 0 none, 1 info, 2-3 debug.",
                        min=0, max=3)
    state_dir: str = option("", doc="Directory for spools and saved state; empty = none.")
    scan_interval_ms: int = option(
        1000, doc="How often timeouts are checked and timers run (ipt_NETFLOW worker delay).",
        min=10, max=60000)
    disabled_plugins: list[str] = option(
        default_factory=list, doc="Entry-point plugin names not to load.")


@dataclass(slots=True)
class Instance:
    """One configured component: ``[[export.netflow]]`` number 0 is ``export.netflow[0]``."""

    stage: str
    type_name: str
    path: str
    config: Any
    ctype: ComponentType
    file: str = ""


@dataclass
class AgentConfig:
    """Everything a start or reload needs, already validated."""

    agent: AgentSection
    instances: list[Instance] = field(default_factory=list)
    raw: RawConfig = field(default_factory=RawConfig)

    def by_stage(self, stage: str) -> list[Instance]:
        """Instances of one stage in configuration order."""
        return [i for i in self.instances if i.stage == stage]
