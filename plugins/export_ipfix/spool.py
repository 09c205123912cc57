"""A bounded, ordered spool of records waiting for a (TCP) collector: memory, then a file.

This module owns what happens to flow records and NAT events while a collector cannot take
them: they are queued in order, first in memory, and beyond ``memory_records`` spilled to a
msgpack file (one ``[kind, fields]`` array per record, https://msgpack.org/) under the spool
directory. Records leave in the order they came (file part first, it is always the older
part). Beyond ``max_records`` new records are refused ("drop newest") and the caller counts
them as lost: the order of what is kept never changes and nothing accepted is dropped later.

On :meth:`Spool.close` with ``persist=True`` whatever is left is written to the file, and the
next :class:`Spool` opened on the same path delivers it first (agent restart).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterable, Mapping
from itertools import islice
from operator import attrgetter
from typing import Any

import msgpack

from netflow_agent.api import FlowRecord, NatEvent

KIND_FLOW = 0
KIND_NAT = 1
_CLASSES: dict[int, Any] = {KIND_FLOW: FlowRecord, KIND_NAT: NatEvent}
_FIELDS = {
    KIND_FLOW: attrgetter(*FlowRecord.__slots__),
    KIND_NAT: attrgetter(*NatEvent.__slots__),
}
_READ_CHUNK = 4096


def _plain(obj: Any) -> Any:
    """msgpack's fallback: a read-only mapping (``FlowRecord.extra``) as a dict."""
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"cannot spool {type(obj).__name__}")


def _packer() -> msgpack.Packer:
    return msgpack.Packer(use_bin_type=True, default=_plain)


Item = tuple[int, Any]  # (KIND_FLOW, FlowRecord) or (KIND_NAT, NatEvent)


class Spool:
    """FIFO of ``(kind, record)`` items bounded by ``max_records``.

    :param max_records: most items held (memory + file); more are refused.
    :param memory_records: items kept in memory before spilling to ``path``.
    :param path: the spill file; ``""`` keeps everything in memory.
    :param log: logger for spill/restore messages.
    """

    def __init__(self, max_records: int, memory_records: int, path: str = "",
                 log: logging.Logger | None = None):
        self.max_records = max_records
        self.memory_records = memory_records if path else max_records
        self.path = path
        self.log = log or logging.getLogger("agent.export.ipfix")
        self._memory: deque[Item] = deque()  # newest items
        self._head: deque[Item] = deque()  # oldest items, already read from the file
        self._file_count = 0  # items in the file after _read_offset
        self._read_offset = 0
        self.dropped = 0
        self.spilled = 0
        self.restored = 0
        if path:
            self._restore()

    def __len__(self) -> int:
        return len(self._head) + self._file_count + len(self._memory)

    # --- in --------------------------------------------------------------------------------

    def push(self, kind: int, records: Iterable[Any]) -> list[Any]:
        """Queue records of one kind at the tail.

        :return: the records refused because the spool is full (caller counts them lost).
        """
        records = list(records)
        room = max(self.max_records - len(self), 0)
        accepted, refused = records[:room], records[room:]
        for record in accepted:
            if len(self._memory) >= self.memory_records:
                self._spill()
            self._memory.append((kind, record))
        self.dropped += len(refused)
        return refused

    def _spill(self) -> None:
        """Append the memory part to the file (it is newer than anything in the file)."""
        packer = _packer()
        with open(self.path, "ab") as f:
            f.write(b"".join(packer.pack((k, _FIELDS[k](r))) for k, r in self._memory))
        self._file_count += len(self._memory)
        self.spilled += len(self._memory)
        self.log.debug("spool: spilled %d records to %s", len(self._memory), self.path)
        self._memory.clear()

    # --- out -------------------------------------------------------------------------------

    def peek(self, n: int) -> list[Item]:
        """Up to ``n`` items from the head, oldest first, without removing them."""
        if self._file_count and len(self._head) < n:
            self._load(max(n, _READ_CHUNK))
        out = list(islice(self._head, n))
        if len(out) < n and not self._file_count:
            out.extend(islice(self._memory, n - len(out)))
        return out

    def pop(self, n: int) -> None:
        """Remove ``n`` items from the head (after :meth:`peek` returned at least ``n``)."""
        while n and self._head:
            self._head.popleft()
            n -= 1
        while n and self._memory and not self._file_count:
            self._memory.popleft()
            n -= 1
        if not self._head and not self._file_count and self._read_offset:
            self._truncate()

    def _load(self, n: int) -> None:
        with open(self.path, "rb") as f:
            f.seek(self._read_offset)
            unpacker = msgpack.Unpacker(f, raw=False, use_list=False)
            for _ in range(min(n, self._file_count)):
                kind, fields = unpacker.unpack()
                self._head.append((kind, _CLASSES[kind](*fields)))
                self._file_count -= 1
            self._read_offset += unpacker.tell()

    def _truncate(self) -> None:
        with open(self.path, "wb"):
            pass
        self._read_offset = 0

    # --- lifecycle -------------------------------------------------------------------------

    def _restore(self) -> None:
        """Count the items a previous run left in the file; they are delivered first."""
        try:
            with open(self.path, "rb") as f:
                unpacker = msgpack.Unpacker(f, raw=False, use_list=False)
                self._file_count = sum(1 for _ in unpacker)
        except FileNotFoundError:
            return
        except (OSError, ValueError, msgpack.UnpackException) as exc:
            bad = f"{self.path}.corrupt"
            os.replace(self.path, bad)
            self.log.error("spool file %s unreadable (%s); moved to %s", self.path, exc, bad)
            self._file_count = 0
            return
        self.restored = self._file_count
        if self._file_count:
            self.log.info("spool: %d records from a previous run in %s", self._file_count,
                          self.path)

    def close(self, persist: bool) -> int:
        """Stop using the spool.

        :param persist: keep what is left in the file for the next start (needs ``path``).
        :return: the number of items left behind that were *not* persisted (lost).
        """
        left = len(self)
        if persist and self.path and left:
            self._rewrite_all()
            self.log.warning("spool: %d undelivered records kept in %s for the next start",
                             left, self.path)
            return 0
        self._memory.clear()
        self._head.clear()
        self._file_count = 0
        if self.path and os.path.exists(self.path):
            os.unlink(self.path)
        return left

    def _rewrite_all(self) -> None:
        tmp = f"{self.path}.tmp"
        packer = _packer()
        with open(tmp, "wb") as out:
            out.write(b"".join(packer.pack((k, _FIELDS[k](r))) for k, r in self._head))
            if self._file_count:
                with open(self.path, "rb") as f:
                    f.seek(self._read_offset)
                    out.write(f.read())
            out.write(b"".join(packer.pack((k, _FIELDS[k](r))) for k, r in self._memory))
        os.replace(tmp, self.path)
        self._file_count = len(self)
        self._head.clear()
        self._memory.clear()
        self._read_offset = 0
