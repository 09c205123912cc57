"""``[aggregate] rules``: ipt_NETFLOW's ``aggregation=`` rules under their older table name.

The rules themselves (grammar, rewrite) live in :mod:`agent.keyrules` and run in the cache,
per packet, before the flow lookup: ``[cache] aggregation`` is their home, next to
``maxflows`` as in ipt_NETFLOW's module options. ``[aggregate] rules`` keeps working with the
same grammar and results: configuration build (:func:`agent.config.check.build`) checks them
here, hands them to the cache's ``aggregation`` and says so in ``--dry-run``; no instance of
this component runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from netflow_agent import roles
from netflow_agent.config.schema import option
from netflow_agent.errors import ConfigIssue
from netflow_agent.keyrules import rule_issues


@dataclass(frozen=True, slots=True, kw_only=True)
class AggregateConfig:
    """``[aggregate]``: ipt_NETFLOW's ``aggregation`` rules (the cache applies them)."""

    rules: str | list[str] = option(
        default_factory=list,
        doc='Rules like "192.0.0.0/8=16,80-89=80" (a string or a list of strings); the same '
            "as [cache] aggregation, applied per packet in the cache.")

    def check(self) -> list[ConfigIssue]:
        """Each rule must parse."""
        return [ConfigIssue(f"rules{where}", message)
                for where, message in rule_issues(self.rules)]


class Aggregator(roles.Aggregator):
    """The ``[aggregate]`` table's component type: registered so the table converts and is
    checked; its rules are folded into the cache at configuration build, so it is never
    built and implements no hook."""

    stage = "aggregate"
    type_name = "rules"
