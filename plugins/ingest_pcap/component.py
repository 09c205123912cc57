"""Replay a capture file through the pipeline, using the packets' timestamps as the clock."""

from __future__ import annotations

import threading
import time
from typing import Any

from netflow_agent import hookimpl
from netflow_agent.model import DIRECTION_EGRESS, DIRECTION_INGRESS, PacketBatch
from netflow_agent.packet import PacketParser
from netflow_agent.registry import Component
from netflow_agent.runtime import RunContext

from .config import Config
from .linktype import SUPPORTED, ip_offset
from .reader import PcapError, PcapReader

#: A batch never spans more capture time than this, so timeouts see the gaps in a capture.
_MAX_BATCH_SPAN_NS = 1_000_000_000


class PcapIngest(Component):
    """``[[ingest.pcap]]``: a finite source; the agent exits after it is replayed and flushed."""

    stage = "ingest"
    type_name = "pcap"
    finite = True

    def __init__(self, config: Config, name: str):
        super().__init__(config, name)
        self.parser = PacketParser()
        self.counters = {"packets": 0, "non_ip": 0, "bad_linktype": 0, "file_truncated": 0}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    @hookimpl
    def agent_start(self, context: RunContext) -> None:
        """Open the file (errors stop start-up) and replay it on a thread."""
        f = open(self.config.path, "rb")  # noqa: SIM115 - closed by the thread
        try:
            reader = PcapReader(f)
            packets = iter(reader)
        except PcapError:
            f.close()
            raise
        self._thread = threading.Thread(target=self._replay, args=(context, f, reader, packets),
                                        name=self.name, daemon=True)
        self._thread.start()

    def _replay(self, context: RunContext, f: Any, reader: PcapReader, packets: Any) -> None:
        try:
            self._emit_all(context, packets)
        except PcapError as exc:
            self.log.error("%s: %s: %s", self.name, self.config.path, exc)
        finally:
            f.close()
            if reader.truncated:
                self.counters["file_truncated"] += 1
                self.log.warning("%s: %s ends in the middle of a packet", self.name,
                                 self.config.path)
            context.done(self.name)

    def _emit_all(self, context: RunContext, packets: Any) -> None:
        cfg = self.config
        direction = DIRECTION_EGRESS if cfg.direction == "egress" else DIRECTION_INGRESS
        parse = self.parser.parse
        batch: list[Any] = []
        last_ts = batch_start = 0
        pace = _Pacer(self._stop) if cfg.speed == "recorded" else None
        for ts, linktype, frame in packets:
            if self._stop.is_set():
                break
            ts = ts or last_ts
            last_ts = ts
            self.counters["packets"] += 1
            off = ip_offset(linktype, frame)
            if off < 0:
                self.counters["non_ip" if linktype in SUPPORTED else "bad_linktype"] += 1
                continue
            if batch and (len(batch) >= cfg.batch_size or ts - batch_start >= _MAX_BATCH_SPAN_NS):
                if pace:
                    pace.wait_until(ts)
                self._flush(context, batch, batch[-1][3])
                batch = []
            pkt = parse(frame[off:] if off else frame, ts, cfg.in_if, 0, direction)
            if pkt is not None:
                if not batch:
                    batch_start = ts
                batch.append(pkt)
        self._flush(context, batch, last_ts)

    def _flush(self, context: RunContext, packets: list[Any], clock_ns: int) -> None:
        trunc, frag, _ = self.parser.take_counters()
        context.wait_for_room()
        context.emit(PacketBatch(self.name, packets, trunc=trunc, frag=frag, clock_ns=clock_ns))

    @hookimpl
    def agent_stop(self) -> None:
        """Stop replaying (on SIGTERM before the end of the file)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    @hookimpl
    def agent_collect_stats(self) -> dict[str, Any]:
        """Frames read, frames without IP, unsupported link types, truncated files."""
        return dict(self.counters)


class _Pacer:
    """Sleeps so that capture time and wall time advance together; wakes early on stop."""

    def __init__(self, stop: threading.Event) -> None:
        self.offset: int | None = None
        self.stop = stop

    def wait_until(self, ts_ns: int) -> None:
        now = time.monotonic_ns()
        if self.offset is None:
            self.offset = now - ts_ns
            return
        delay = (ts_ns + self.offset - now) / 1e9
        if delay > 0:
            self.stop.wait(delay)
