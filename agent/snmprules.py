"""snmp-rules: the interface indexes the agent exports, from interface names (fprobe-ulog).

``[agent] snmp_rules = ["ppp:200", "eth:100"]`` is ipt_NETFLOW's ``snmp-rules=`` (built with
``--enable-snmp-rules``), which took it from fprobe-ulog: an interface whose name is a rule's
base name followed by a decimal number exports *base + number* as its index (``eth1`` ->
101, ``ppp0`` -> 200); rules are tried in order, the first that fits wins; every other
interface (``lo``, ``eth0.100``, ``br-lan``) keeps the kernel's ifIndex. Index 0 (unknown)
stays 0.

This module owns the rule grammar (:func:`parse_rules`), the mapping of one name
(:class:`SnmpRules`) and the cached kernel-ifIndex -> exported-index map the core applies to
every exported flow record (:class:`SnmpIndexMap`). Names come from the network namespace
the ingests observe (:meth:`agent.runtime.RunContext.interface_names`); the map is refreshed
whenever exporters resolve names for their interface-name options, so names and indexes on
the wire stay consistent, and between refreshes a record costs two dict lookups.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from netflow_agent.model import FlowBatch, FlowRecord

#: the largest ingress/egressInterface value (unsigned32); v5 keeps the low 16 bits
MAX_INDEX = 0xFFFFFFFF
#: a rule: an interface base name (no ':' or whitespace, at most 15 characters as IFNAMSIZ)
#: and a decimal base index
_RULE = re.compile(r"(?P<name>[^:\s/]{1,15}):(?P<base>[0-9]+)")


class SnmpRuleError(ValueError):
    """A malformed snmp rule; the message names the rule and says what is expected."""


@dataclass(frozen=True, slots=True)
class SnmpRule:
    """One ``name:base`` rule."""

    name: str
    base: int


def parse_rules(texts: Iterable[str]) -> tuple[SnmpRule, ...]:
    """Parse ``["ppp:200", "eth:100"]`` (order kept: the first rule that fits wins).

    :raises SnmpRuleError: a rule is not ``name:base``, or its base exceeds 4294967295.
    """
    rules = []
    for text in texts:
        m = _RULE.fullmatch(text.strip()) if isinstance(text, str) else None
        if m is None:
            raise SnmpRuleError(
                f"snmp rule {text!r}: expected \"name:base\", an interface base name and a "
                f"decimal index, e.g. \"eth:100\" (eth1 is exported as 101)")
        base = int(m["base"])
        if base > MAX_INDEX:
            raise SnmpRuleError(f"snmp rule {text!r}: base {base} exceeds {MAX_INDEX}")
        rules.append(SnmpRule(m["name"], base))
    return tuple(rules)


class SnmpRules:
    """Rules applied to one interface name."""

    __slots__ = ("rules",)

    def __init__(self, rules: Iterable[SnmpRule]):
        self.rules = tuple(rules)

    def index(self, name: str, ifindex: int) -> int:
        """The index to export for interface ``name`` whose kernel ifIndex is ``ifindex``."""
        for rule in self.rules:
            rest = name[len(rule.name):]
            if name.startswith(rule.name) and rest.isascii() and rest.isdigit():
                mapped = rule.base + int(rest)
                return mapped if mapped <= MAX_INDEX else ifindex
        return ifindex


#: kernel ifIndexes -> names, in the observed namespace (``RunContext``'s resolver)
Resolver = Callable[[Iterable[int]], dict[int, str]]


class SnmpIndexMap:
    """Kernel ifIndex -> exported index, cached; exported index -> name for the options.

    :param rules: the parsed rules.
    :param resolve: kernel ifIndexes -> names in the observed namespace; indexes it leaves
        out (gone, or ambiguous namespaces) keep their kernel value.
    """

    def __init__(self, rules: Iterable[SnmpRule], resolve: Resolver):
        self.rules = SnmpRules(rules)
        self.resolve = resolve
        self.index: dict[int, int] = {0: 0}
        self.names: dict[int, str] = {}
        #: refreshes and first sightings that resolved names (one namespace round each)
        self.lookups = 0

    def apply(self, records: FlowBatch | Iterable[FlowRecord]) -> None:
        """Rewrite ``in_if``/``out_if`` of ``records`` in place to the exported indexes
        (a batch's columns: once per distinct interface, not per flow)."""
        if isinstance(records, FlowBatch):
            self._apply_columns(records.flows)
            return
        get = self.index.get
        for r in records:
            i, o = get(r.in_if), get(r.out_if)
            if i is None or o is None:
                self._learn((r.in_if, r.out_if))
                i, o = self.index[r.in_if], self.index[r.out_if]
            r.in_if, r.out_if = i, o

    def _apply_columns(self, flows: np.ndarray) -> None:
        for column in ("in_if", "out_if"):
            values = flows[column]
            distinct, where = np.unique(values, return_inverse=True)
            missing = [int(k) for k in distinct.tolist() if k not in self.index]
            if missing:
                self._learn(missing)
            mapped = np.array([self.index[int(k)] for k in distinct.tolist()], values.dtype)
            flows[column] = mapped[where.reshape(-1)] if len(values) else values

    def refresh(self) -> None:
        """Re-resolve every kernel ifIndex seen so far (interfaces renamed or re-created)."""
        known = [k for k in self.index if k]
        self.index = {0: 0}
        self.names = {}
        self._learn(known)

    def names_of(self, exported: Iterable[int]) -> dict[int, str]:
        """Exported index -> interface name, for the ones known at the last resolution."""
        names = self.names
        return {i: names[i] for i in exported if i in names}

    def _learn(self, kernel: Iterable[int]) -> None:
        wanted = [k for k in set(kernel) if k not in self.index]
        if not wanted:
            return
        self.lookups += 1
        found = self.resolve(wanted)
        for k in wanted:
            name = found.get(k)
            exported = self.rules.index(name, k) if name is not None else k
            self.index[k] = exported
            if name is not None:
                self.names[exported] = name
