"""IPFIX file output (RFC 5655): a stream of IPFIX messages, rotated by size or time.

This module owns the ``path = "flows.ipfix"`` output. An IPFIX File is a plain sequence of
IPFIX messages (RFC 5655 section 6); each file is written as its own session, so it starts
with every template and its sequence numbers start at 0, which makes every rotated file
readable on its own (RFC 5655 section 8.1.1: templates before the data that uses them).

Rotation: when the current file reaches ``rotate_size_bytes`` or has been open for
``rotate_interval_s``, it is closed and renamed to ``<path>.<UTC time of rotation>``
(``flows.ipfix.20261130-211500``; ``.1``, ``.2`` ... on a clash) and a new ``<path>`` is
started. Files are created with mode 0640 (:func:`agent.localfiles.open_output`). Files are
never deleted by the agent. Messages are written whole, so a reader never
sees half a message in a rotated file.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import BinaryIO

from netflow_agent.api import open_output

from .ipfix import MAX_MESSAGE_LENGTH, DataGroup, Session, Template, encode_messages


class IpfixFile:
    """The current output file plus its rotation state.

    :param path: the file being written.
    :param observation_domain_id: Observation Domain ID of every message.
    :param templates: every template of the exporter (written at the top of each file).
    :param rotate_size_bytes: rotate when the file reaches this size; 0 = never.
    :param rotate_interval_s: rotate after this many seconds; 0 = never.
    :param clock: monotonic ns; ``wall``: the Export Time of a message written now, seconds
        since the epoch (the exporter passes its export clock). Rotated names say the
        machine's wall clock.
    """

    def __init__(
        self,
        path: str,
        *,
        observation_domain_id: int,
        templates: Callable[[], Sequence[Template]],
        rotate_size_bytes: int = 0,
        rotate_interval_s: float = 0,
        clock: Callable[[], int] = time.monotonic_ns,
        wall: Callable[[], float] = time.time,
        log: logging.Logger | None = None,
    ):
        self.path = path
        self.odid = observation_domain_id
        self._templates = templates
        self.rotate_size = rotate_size_bytes
        self.rotate_ns = int(rotate_interval_s * 1e9)
        self._clock = clock
        self._wall = wall
        self.log = log or logging.getLogger("agent.export.ipfix")
        self._file: BinaryIO | None = None
        self._opened_ns = 0
        self._size = 0
        self.session = Session(observation_domain_id)
        self.rotations = 0
        self.messages = 0
        self.records = 0
        self.errors = 0

    def write(self, groups: list[DataGroup]) -> int:
        """Append messages for ``groups``; rotate first when due.

        :return: the number of data records written (0 on a write error, which is logged).
        """
        self.maybe_rotate()
        try:
            f = self._ensure_open()
            messages = encode_messages(self.session, groups, export_time=int(self._wall()),
                                       max_length=MAX_MESSAGE_LENGTH, now_ns=self._clock())
            data = b"".join(m.data for m in messages)
            f.write(data)
            f.flush()
        except OSError as exc:
            self.errors += 1
            self.log.warning("%s: write failed: %s", self.path, exc)
            self._close_file()
            return 0
        self._size += len(data)
        count = sum(m.records for m in messages)
        self.messages += len(messages)
        self.records += count
        return count

    def _ensure_open(self) -> BinaryIO:
        if self._file is None:
            self._file = os.fdopen(open_output(self.path), "ab")  # kept open across calls
            self._size = os.fstat(self._file.fileno()).st_size
            self._opened_ns = self._clock()
            self.session = Session(self.odid)
            templates = self._templates()
            if templates:
                head = encode_messages(self.session, [], export_time=int(self._wall()),
                                       max_length=MAX_MESSAGE_LENGTH, now_ns=self._clock(),
                                       templates=templates)
                data = b"".join(m.data for m in head)
                self._file.write(data)
                self._size += len(data)
        return self._file

    def maybe_rotate(self) -> bool:
        """Rotate when the size or age limit is reached; ``True`` if it rotated."""
        if self._file is None:
            return False
        too_big = self.rotate_size and self._size >= self.rotate_size
        too_old = self.rotate_ns and self._clock() - self._opened_ns >= self.rotate_ns
        if not (too_big or too_old):
            return False
        self._close_file()
        target = self._rotated_name()
        os.replace(self.path, target)
        self.rotations += 1
        self.log.info("%s: rotated to %s", self.path, target)
        return True

    def _rotated_name(self) -> str:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        base = f"{self.path}.{stamp}"
        name, n = base, 0
        while os.path.exists(name):
            n += 1
            name = f"{base}.{n}"
        return name

    def _close_file(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:
                self.log.warning("%s: close failed: %s", self.path, exc)
            self._file = None

    def close(self) -> None:
        """Close the current file (it stays under ``path``)."""
        self._close_file()
