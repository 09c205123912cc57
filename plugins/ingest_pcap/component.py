"""Replay a capture file through the pipeline, using the packets' timestamps as the clock.

With ``[flow]`` MAC, VLAN or MPLS fields on, each frame's key gets those fields
(:class:`_L2Fields`: the link layer's slow walk, :func:`.linktype.link_facts`, runs once per
distinct link-layer header, whose bytes determine the fields); with the defaults the hot path
(:func:`.linktype.ip_offset`) is all a frame costs.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from netflow_agent.api import (
    DIRECTION_EGRESS,
    DIRECTION_INGRESS,
    L2_FIELDS,
    Ingest,
    L2KeyPacker,
    PacketBatch,
    PacketParser,
    RunContext,
    flow_schema,
    follow_privileges,
    hookimpl,
    make_parser,
)

from .config import Config
from .linktype import LINKTYPE_NFLOG, SUPPORTED, ip_offset, link_facts, nflog_payload_end
from .reader import PcapError, PcapReader

#: A batch never spans more capture time than this, so timeouts see the gaps in a capture.
_MAX_BATCH_SPAN_NS = 1_000_000_000
#: distinct reasons counted under ``non_ip_reasons`` (the rest under "other")
_MAX_REASONS = 32


class PcapIngest(Ingest):
    """``[[ingest.pcap]]``: a finite source; the agent exits after it is replayed and flushed."""

    stage = "ingest"
    type_name = "pcap"
    finite = True
    #: every link-layer field a capture can hold; bridge ports never are in a capture
    observable_fields = L2_FIELDS - {"in_physdev", "out_physdev"}

    def __init__(self, config: Config, name: str):
        super().__init__(config, name)
        self.parser = PacketParser()
        self.counters = {"packets": 0, "non_ip": 0, "bad_linktype": 0, "file_truncated": 0,
                         "file_corrupt": 0}
        #: why frames were not accounted: "ethertype 0x0806", "mpls payload not IP", ...
        self.non_ip_reasons: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._file: Any = None  # the open capture, for progress (bytes read of _size)
        self._size = 0

    @hookimpl
    def agent_start(self, context: RunContext) -> None:
        """Open the file (errors stop start-up) and replay it on a thread."""
        cfg = self.config
        self.parser = make_parser(context.fragments, cfg.decapsulate, cfg.keep_outer)
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
        self._file, self._size = f, os.fstat(f.fileno()).st_size
        try:
            self._emit_all(context, packets)
        except PcapError as exc:
            self.log.error("%s: %s: %s", self.name, self.config.path, exc)
        finally:
            context.report_progress(self.config.path, f.tell(), self._size,
                                    self.counters["packets"], finished=True)
            f.close()
            if reader.truncated:
                self.counters["file_truncated"] += 1
                self.log.warning("%s: %s ends in the middle of a packet", self.name,
                                 self.config.path)
            if reader.error:  # the packets before the corrupt header were replayed
                self.counters["file_corrupt"] += 1
                self.log.error("%s: %s: %s: the rest of the file is not replayed", self.name,
                               self.config.path, reader.error)
            context.done(self.name)

    def _emit_all(self, context: RunContext, packets: Any) -> None:
        cfg = self.config
        direction = DIRECTION_EGRESS if cfg.direction == "egress" else DIRECTION_INGRESS
        parse = self.parser.parse
        extra = self.parser.extra
        batch: list[Any] = []
        last_ts = batch_start = said_ns = 0
        frames_before = self.counters["packets"]
        pace = _Pacer(self._stop) if cfg.speed == "recorded" else None
        packer = L2KeyPacker(flow_schema())
        l2 = _L2Fields(packer).ext if packer.active else None  # defaults: one test per frame
        for ts, linktype, frame, orig_len in packets:
            if self._stop.is_set():
                break
            ts = ts or last_ts
            if batch and (len(batch) >= cfg.batch_size or ts - batch_start >= _MAX_BATCH_SPAN_NS):
                if pace:
                    pace.wait_until(ts)
                self._flush(context, batch, batch[-1][3])
                batch = []
                if self._stop.is_set():  # stopped before this frame's time came: not replayed
                    break
            last_ts = ts
            self.counters["packets"] += 1
            off = ip_offset(linktype, frame)
            if off < 0:
                self._not_ip(linktype, frame)
                if not batch and ts - said_ns >= _MAX_BATCH_SPAN_NS:
                    # a stretch without IP (an ARP-only interface) still says how far this
                    # capture got: several at once, the capture clock then moves on
                    context.wait_for_turn(self.name, ts, self._stop.is_set, emits=False)
                    said_ns = ts
                continue
            if not batch:
                batch_start = ts
            if linktype == LINKTYPE_NFLOG:  # the payload TLV bounds it; no original length
                pkt = parse(frame[off:nflog_payload_end(frame, off)], ts, cfg.in_if, 0,
                            direction)
            else:
                pkt = parse(frame[off:] if off else frame, ts, cfg.in_if, 0, direction,
                            orig_len - off)
            if extra:  # fragments released from the hold, outer flows of tunnels
                batch.extend(extra)
                extra.clear()
            if pkt is not None:
                if l2 is not None:
                    pkt = (pkt[0] + l2(linktype, frame, off, pkt[0][0]), *pkt[1:])
                batch.append(pkt)
        self.parser.flush()  # the end of the capture: nothing more can arrive
        if self.counters["packets"] > frames_before:
            self._flush(context, batch, last_ts)
        # else a capture without frames says no time: 0 would start the capture clock (and
        # uptime) at 1970 with another capture replayed next to it

    def _not_ip(self, linktype: int, frame: bytes) -> None:
        """Count a frame that carries no IP packet, by reason (the slow path)."""
        if linktype not in SUPPORTED:
            self.counters["bad_linktype"] += 1
            return
        self.counters["non_ip"] += 1
        reason = link_facts(linktype, frame).reason or "not IP"
        reasons = self.non_ip_reasons
        if reason not in reasons and len(reasons) >= _MAX_REASONS:
            reason = "other"
        reasons[reason] = reasons.get(reason, 0) + 1

    def _flush(self, context: RunContext, packets: list[Any], clock_ns: int) -> None:
        follow_privileges()  # a replay outlives the drop: give up root's capabilities then
        context.report_progress(self.config.path, self._file.tell(), self._size,
                                self.counters["packets"])
        self.parser.expire(clock_ns)
        if self.parser.extra:  # fragments whose first fragment never came
            packets.extend(self.parser.extra)
            self.parser.extra.clear()
        trunc, frag, _ = self.parser.take_counters()
        # several captures at once: hand batches over in time order, whichever reads faster
        context.wait_for_turn(self.name, packets[0][3] if packets else clock_ns,
                              self._stop.is_set)
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
        """Frames read, frames without IP (and why), unsupported link types, truncated files,
        fragment tracking and tunnel counters."""
        return {**self.counters, "non_ip_reasons": dict(self.non_ip_reasons),
                **self.parser.stats()}


class _L2Fields:
    """The layer-2 key fields of frames, remembered per link-layer header (the bytes in
    front of the IP header decide them: addresses, tags, labels), bounded."""

    MAX = 4096

    def __init__(self, packer: L2KeyPacker) -> None:
        self.packer = packer
        self.memo: dict[tuple[int, bytes, int], bytes] = {}

    def ext(self, linktype: int, frame: bytes, off: int, version: int) -> bytes:
        """The key bytes after the base for ``frame`` (IP header at ``off``)."""
        memo = (linktype, frame[:off], version)
        out = self.memo.get(memo)
        if out is None:
            facts = link_facts(linktype, frame)
            out = self.packer.pack(version, facts.src_mac, facts.dst_mac, facts.vlans,
                                   facts.mpls)
            if len(self.memo) >= self.MAX:
                self.memo.clear()
            self.memo[memo] = out
        return out


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
            follow_privileges()  # the drop may have happened while this thread slept
