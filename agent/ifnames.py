"""Interface names for exporters: which ifIndexes exported flows used, and their names now.

IPFIX and NetFlow v9 exporters both send interfaceName (82) options records for the
interfaces their flow records name in ingressInterface/egressInterface (10/14); this module
owns the bookkeeping they share (:class:`InterfaceNames`). Resolving an index is the core's
job (:meth:`agent.runtime.RunContext.interface_names`, inside the namespace the ingests
observe).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from netflow_agent.model import FlowBatch
from netflow_agent.netns import names_here


class InterfaceNames:
    """The interfaces that flows were seen on, with their names.

    The ifIndexes in flow records belong to the network namespace the ingests observe
    (``netns = "..."``), so names are resolved there by the core
    (:meth:`agent.runtime.RunContext.interface_names`: ``if_indextoname(3)`` inside that
    namespace), refreshed on every :meth:`snapshot`, since an index can be reused by a new
    interface. Indexes that do not resolve (0, an interface that is gone, ingests observing
    different namespaces) are left out.
    """

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.unresolved = 0

    def note(self, in_if: Iterable[int], out_if: Iterable[int]) -> None:
        """Remember interface indexes from exported records."""
        self.seen.update(in_if)
        self.seen.update(out_if)

    def note_flows(self, records: FlowBatch | Iterable[Any]) -> None:
        """Remember the ingress and egress interfaces of a batch (from its columns:
        :func:`distinct`) or of flow records."""
        if isinstance(records, FlowBatch):
            flows = records.flows
            self.note(distinct(flows["in_if"]), distinct(flows["out_if"]))
            return
        recs = list(records)
        self.note((r.in_if for r in recs), (r.out_if for r in recs))

    def snapshot(self, resolve: Callable[[Iterable[int]], dict[int, str]] = names_here
                 ) -> dict[int, str]:
        """ifIndex -> name for every seen interface that exists now.

        :param resolve: ifIndexes -> names; the exporter passes the core's
            ``context.interface_names``. The default resolves in the calling thread's
            namespace (only right when no ingest observes another one).
        """
        wanted = sorted(index for index in self.seen if index > 0)
        if not wanted:
            return {}
        names = resolve(wanted)
        self.unresolved += len(wanted) - len(names)
        return names


def distinct(column: np.ndarray) -> list[int]:
    """The distinct values of an integer column.

    A batch usually names one interface per column (an ingest observes one interface, a
    host routes to one uplink): one comparison pass (~1 ns a row) then says so, where
    a sort (~7 ns a row) runs only for a column that holds several values.
    """
    if not len(column):
        return []
    first = column[0]
    if (column == first).all():
        return [int(first)]
    ordered = np.sort(column)  # not np.unique: NumPy >= 2.3's imports numpy.ma (~0.6 MB RSS)
    keep = np.empty(len(ordered), dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep].tolist()
