"""What a running component may use from the core: :class:`RunContext`.

Components receive it in ``agent_start(context)``. Ingest threads may call :meth:`emit`,
:meth:`emit_nat_events` and :meth:`done` from any thread; everything else is for the pipeline
thread.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.model import FlowBatch, NatEvent, PacketBatch

#: Queue item kinds understood by the pipeline loop.
ITEM_PACKETS = "packets"
ITEM_FLOWS = "flows"
ITEM_NAT = "nat"
ITEM_DONE = "done"
ITEM_STOP = "stop"
ITEM_RELOAD = "reload"
#: a callable run on the pipeline thread with the pipeline as argument (control socket, metrics)
ITEM_CALL = "call"


@dataclass
class RunContext:
    """Services the core offers to component instances.

    :ivar start_ns: wall-clock ns when the agent started; NetFlow sysUpTime is
        ``now_ns() - start_ns``. During a pcap replay it is moved to the capture's first
        packet, so read it when encoding rather than caching it at start.
    :ivar debug: the ``[agent] debug`` level (0 = quiet).
    :ivar state_dir: a directory the agent may write to (spools, state), from ``[agent]``.
    """

    start_ns: int = field(default_factory=time.time_ns)
    debug: int = 0
    state_dir: str = ""
    inbox: queue.SimpleQueue[tuple[str, Any]] = field(default_factory=queue.SimpleQueue)
    clock: Callable[[], int] = time.time_ns
    core_stats: Callable[[], dict[str, Any]] = dict

    def emit(self, batch: PacketBatch | FlowBatch) -> None:
        """Hand a batch of packets or flow deltas to the pipeline (thread-safe, never blocks)."""
        kind = ITEM_PACKETS if isinstance(batch, PacketBatch) else ITEM_FLOWS
        self.inbox.put((kind, batch))

    def emit_nat_events(self, events: list[NatEvent]) -> None:
        """Hand NAT events to the exporters (thread-safe)."""
        self.inbox.put((ITEM_NAT, events))

    def done(self, source: str) -> None:
        """A finite ingest (pcap replay) calls this once when it has emitted everything."""
        self.inbox.put((ITEM_DONE, source))

    def now_ns(self) -> int:
        """The pipeline clock, wall-clock ns: use it for export times (header timestamps).

        During a replay of finite sources (pcap) it is the capture's clock, so exported
        times match the capture; before the first packet it is 0.
        """
        return self.clock()

    def wait_for_room(self, limit: int = 64) -> None:
        """Block a fast finite reader while the pipeline has ``limit`` items queued."""
        while self.inbox.qsize() > limit:
            time.sleep(0.001)

    def stats(self) -> dict[str, Any]:
        """A snapshot of the core counters (ipt_NETFLOW names: ``traffic_packets``, ...)."""
        return self.core_stats()
