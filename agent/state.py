"""Flows that survive a restart: ``[agent] state_file``.

On SIGTERM the pipeline first exports what is due anyway (idle, too old, ended), then hands
the flows still in the cache to :func:`save` instead of exporting them half-done. At the next
start :func:`restore` puts them back before any ingest starts, so each flow is exported once,
with the packets and bytes of both runs summed. Times are kept as they were, so a flow that
stayed idle longer than ``inactive_timeout`` across the downtime is exported at the first scan.

File format (msgpack, written to a temporary file, fsync-ed, then renamed, mode 0600)::

    {"format": "netflow-agent-state", "version": 1, "saved_ns": <wall ns>,
     "agent": "<agent version>",
     "flows": [[key, packets, octets, first_ns, last_ns, tcp_flags, out_if], ...]}

``key`` is the packed flow key of :func:`agent.model.make_key`. The file is removed right
after a successful restore, so a crash later cannot restore (and export) the same flows twice.
A file that cannot be read is renamed to ``<name>.bad`` and logged; the agent starts empty.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import msgpack

from netflow_agent import __version__

log = logging.getLogger("agent.state")
FORMAT = "netflow-agent-state"
VERSION = 1
_ROW_LEN = 7


class StateError(Exception):
    """The state file is unreadable or not ours."""


def save(cache: Any, path: str) -> tuple[int, int, int]:
    """Move every flow of ``cache`` into the state file at ``path``.

    On a write error the flows go back into the cache (the caller then exports them).

    :param cache: a :class:`~agent.stages.cache.FlowCache` (``dump``/``restore``).
    :return: ``(flows, packets, bytes)`` saved; ``(0, 0, 0)`` when nothing was saved.
    """
    rows = cache.dump()
    if not rows:
        _remove_stale(path)
        return 0, 0, 0
    payload = {"format": FORMAT, "version": VERSION, "saved_ns": time.time_ns(),
               "agent": __version__, "flows": [list(r) for r in rows]}
    try:
        _write_atomic(path, msgpack.packb(payload, use_bin_type=True))
    except OSError as exc:
        cache.restore(rows)
        log.error("cannot save %d flows to %s (%s); exporting them instead", len(rows), path,
                  exc)
        return 0, 0, 0
    packets, octets = sum(r[1] for r in rows), sum(r[2] for r in rows)
    log.info("saved %d flows (%d packets, %d bytes) to %s", len(rows), packets, octets, path)
    return len(rows), packets, octets


def _write_atomic(path: str, data: bytes) -> None:
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def _remove_stale(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("cannot remove old state file %s: %s", path, exc)


def load(path: str) -> list[tuple[bytes, int, int, int, int, int, int]]:
    """Read and check the rows of a state file.

    :raises FileNotFoundError: no file.
    :raises StateError: the file is damaged or has another format/version.
    """
    data = Path(path).read_bytes()
    try:
        payload = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise StateError(f"not a msgpack state file: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise StateError("not a netflow-agent state file")
    if payload.get("version") != VERSION:
        raise StateError(f"state version {payload.get('version')!r}, expected {VERSION}")
    rows = []
    for n, row in enumerate(payload.get("flows", [])):
        if (not isinstance(row, list) or len(row) != _ROW_LEN or not isinstance(row[0], bytes)
                or not all(isinstance(v, int) and v >= 0 for v in row[1:])
                or row[0][:1] not in (b"\x04", b"\x06")):
            raise StateError(f"flow {n} is malformed")
        rows.append(tuple(row))
    return rows  # type: ignore[return-value]


def restore(cache: Any, path: str) -> int:
    """Put the flows saved at ``path`` back into ``cache`` and remove the file.

    :return: the number of flows restored (0 without a file, or with a bad one).
    """
    try:
        rows = load(path)
    except FileNotFoundError:
        return 0
    except (OSError, StateError) as exc:
        bad = f"{path}.bad"
        log.error("cannot restore flows from %s (%s); moved it to %s, starting empty",
                  path, exc, bad)
        try:
            os.replace(path, bad)
        except OSError:
            pass
        return 0
    try:
        os.unlink(path)
    except OSError as exc:  # restoring still beats losing them; only a crash could repeat it
        log.warning("cannot remove %s after reading it: %s", path, exc)
    count = cache.restore(rows)
    log.info("restored %d flows (%d packets, %d bytes) from %s", count,
             sum(r[1] for r in rows), sum(r[2] for r in rows), path)
    return count
