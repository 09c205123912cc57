"""Flows that survive a restart: ``[agent] state_file``.

On SIGTERM the pipeline first exports what is due anyway (idle, too old, ended), then hands
the flows still in the cache to :func:`save` instead of exporting them half-done. At the next
start :func:`restore` puts them back before any ingest starts, so each flow is exported once,
with the packets and bytes of both runs summed. Times are kept as they were, so a flow that
stayed idle longer than ``inactive_timeout`` across the downtime is exported at the first scan.

File format (msgpack, mode 0600)::

    {"format": "netflow-agent-state", "version": 1, "saved_ns": <wall ns>,
     "agent": "<agent version>",
     "flows": [[key, packets, octets, first_ns, last_ns, tcp_flags, out_if], ...]}

``key`` is the packed flow key of :func:`agent.model.make_key`.

The file is parsed by root at the next start, so it is treated as hostile input
(docs/operations.md, "Restart with saved flows"):

* it is opened without following links or blocking (a FIFO), must be a regular file of at most
  :data:`MAX_BYTES`, and, when the agent runs as root, owned by root and writable by nobody
  else;
* every row is checked field by field (:func:`parse`): key layout, integer types and ranges,
  ``first <= last``, no key twice; a bad row is rejected and counted, the others restored;
  times in the future (a clock that went back, a forged file) are clamped to the restore time,
  so such a flow is exported at the next timeouts instead of never;
* a file that is refused, or that had rejected rows, is renamed ``<name>.bad-<UTC time>``
  (:func:`agent.localfiles.quarantine`) and logged with the reason; a good one is removed,
  and only after its flows are in the cache.

Writing (:func:`save`): normally to a temporary file, fsync-ed, then renamed. When the agent
drops root (``[agent] user``), :func:`reserve` creates the file as root before the drop and
keeps it open, and :func:`save` writes through that descriptor: the file stays root's, in a
directory the dropped user need not be able to write, so that user cannot plant a file root
parses at the next start. An empty file means "reserved, nothing saved".
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import msgpack

from netflow_agent import __version__, localfiles

log = logging.getLogger("agent.state")
FORMAT = "netflow-agent-state"
VERSION = 1
#: largest state file read (about 4 million IPv6 flows)
MAX_BYTES = 512 * 1024 * 1024
_ROW_LEN = 7
_U64, _U32, _U8 = 2**64 - 1, 2**32 - 1, 255
_TIME_MAX = 2**63 - 2  # the cache's time columns are int64; 2**63 - 1 marks a free slot
#: the base key's width (agent.model.KEY); older versions saved 20-byte IPv4 keys, which
#: the cache converts at restore
_KEY_LEN = 44
#: path -> descriptor opened by :func:`reserve` (root's file, written after the drop)
_reserved: dict[str, int] = {}

Row = tuple[bytes, int, int, int, int, int, int]


class StateError(Exception):
    """The state file is unreadable or not ours."""


@dataclass
class RestoreOutcome:
    """What the start made of the state file (``agent stats --json``: ``agent.state_file``).

    :ivar flows: flows put back into the cache.
    :ivar rejected: rows refused (malformed, out of range, duplicate key).
    :ivar clamped: rows whose times were in the future and were set to the restore time.
    :ivar quarantined: 1 when the file was moved aside (refused, or rows rejected).
    :ivar moved_to: where it was moved; ``reason``: why (also logged).
    """

    flows: int = 0
    packets: int = 0
    octets: int = 0
    rejected: int = 0
    clamped: int = 0
    quarantined: int = 0
    moved_to: str = ""
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the snapshot."""
        return asdict(self)


@dataclass
class Parsed:
    """The valid rows of a state file and what was wrong with the others."""

    rows: list[Row]
    total: int = 0
    rejected: int = 0
    clamped: int = 0
    first_problem: str = ""


# --- saving ----------------------------------------------------------------------------------


def save(cache: Any, path: str) -> tuple[int, int, int]:
    """Move every flow of ``cache`` into the state file at ``path``.

    On a write error the flows go back into the cache (the caller then exports them).

    :param cache: a :class:`~agent.stages.cache.FlowCache` (``dump``/``restore``).
    :return: ``(flows, packets, bytes)`` saved; ``(0, 0, 0)`` when nothing was saved.
    """
    rows = cache.dump()
    fd = _reserved.pop(path, None)
    if not rows:
        if fd is not None:
            os.close(fd)  # the empty reserved file says: nothing saved
        else:
            _remove_stale(path)
        return 0, 0, 0
    payload = {"format": FORMAT, "version": VERSION, "saved_ns": time.time_ns(),
               "agent": __version__, "flows": [list(r) for r in rows]}
    data = msgpack.packb(payload, use_bin_type=True)
    try:
        if fd is not None:
            _write_reserved(fd, data)
        else:
            _write_atomic(path, data)
    except OSError as exc:
        cache.restore(rows)
        log.error("cannot save %d flows to %s (%s); exporting them instead", len(rows), path,
                  exc)
        return 0, 0, 0
    packets, octets = sum(r[1] for r in rows), sum(r[2] for r in rows)
    log.info("saved %d flows (%d packets, %d bytes) to %s", len(rows), packets, octets, path)
    return len(rows), packets, octets


def reserve(path: str) -> bool:
    """Before dropping root: create ``path`` (empty, root's, 0600) and keep it open for
    :func:`save`. Its directory is created (0750, root's) when missing.

    :return: ``True`` when reserved; ``False`` (logged) when the file could not be created:
        :func:`save` then tries the normal way and exports the flows if that fails too.
    """
    target = Path(path)
    try:
        target.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except OSError as exc:
        log.warning("cannot create the state file %s before dropping root (%s): flows still "
                    "cached at stop will be exported, not saved", path, exc)
        return False
    old = _reserved.pop(path, None)
    if old is not None:
        os.close(old)
    _reserved[path] = fd
    return True


def _write_reserved(fd: int, data: bytes) -> None:
    try:
        os.ftruncate(fd, 0)
        view = memoryview(data)
        while view:
            view = view[os.pwrite(fd, view, len(data) - len(view)):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: str, data: bytes) -> None:
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
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


# --- reading ---------------------------------------------------------------------------------


def load(path: str, now_ns: int | None = None) -> Parsed:
    """Read and check a state file (see :func:`parse`).

    :raises FileNotFoundError: no file.
    :raises StateError: the file is refused (type, owner, mode, size) or is not a state file.
    """
    try:
        data = localfiles.read_regular(path, MAX_BYTES, root_only=os.geteuid() == 0)
    except localfiles.UnsafeFile as exc:
        raise StateError(str(exc)) from None
    return parse(data, time.time_ns() if now_ns is None else now_ns)


def parse(data: bytes, now_ns: int) -> Parsed:
    """Decode a state file's bytes; keep the valid rows, count the others.

    An empty file is an empty state (a reserved file nothing was saved to).

    :param now_ns: the restore time: later first/last times are clamped to it.
    :raises StateError: not msgpack, not our format or version, ``flows`` not a list.
    """
    if not data:
        return Parsed([])
    try:
        payload = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several types, all mean "not a state file"
        raise StateError(f"not a msgpack state file: {type(exc).__name__}: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise StateError("not a netflow-agent state file")
    if payload.get("version") != VERSION:
        raise StateError(f"state version {payload.get('version')!r}, expected {VERSION}")
    flows = payload.get("flows")
    if not isinstance(flows, list):
        raise StateError(f"'flows' is {type(flows).__name__}, not a list")
    out = Parsed([], total=len(flows))
    seen: set[bytes] = set()
    for n, row in enumerate(flows):
        try:
            checked, clamped = check_row(row, now_ns)
            if checked[0] in seen:
                raise ValueError("the same key as an earlier flow")
        except ValueError as exc:
            out.rejected += 1
            out.first_problem = out.first_problem or f"flow {n}: {exc}"
            continue
        seen.add(checked[0])
        out.clamped += clamped
        out.rows.append(checked)
    return out


def check_row(row: Any, now_ns: int) -> tuple[Row, bool]:
    """Check one saved flow field by field; clamp times later than ``now_ns`` to it.

    :return: the row as a tuple, and whether a time was clamped.
    :raises ValueError: with the first problem found.
    """
    if not isinstance(row, list) or len(row) != _ROW_LEN:
        raise ValueError(f"expected a list of {_ROW_LEN} fields")
    key, packets, octets, first, last, flags, out_if = row
    _check_key(key)
    for name, value, top in (("packets", packets, _U64), ("octets", octets, _U64),
                             ("first_ns", first, _TIME_MAX), ("last_ns", last, _TIME_MAX),
                             ("tcp_flags", flags, _U8), ("out_if", out_if, _U32)):
        if type(value) is not int:
            raise ValueError(f"{name} is {type(value).__name__}, not an integer")
        if not 0 <= value <= top:
            raise ValueError(f"{name} {value} is outside 0..{top}")
    if first > last:
        raise ValueError(f"first_ns {first} is after last_ns {last}")
    clamped = last > now_ns
    first, last = min(first, now_ns), min(last, now_ns)
    return (key, packets, octets, first, last, flags, out_if), clamped


def _check_key(key: Any) -> None:
    if not isinstance(key, bytes):
        raise ValueError(f"key is {type(key).__name__}, not bytes")
    version = key[0] if key else 0
    if version not in (4, 6) or not (len(key) >= _KEY_LEN or (version, len(key)) == (4, 20)):
        raise ValueError(f"key of {len(key)} bytes with IP version {version} (expected "
                         f"{_KEY_LEN} or more; 20 for IPv4 keys saved by agents before the "
                         "flow schema)")
    if key[3] not in (0, 1):
        raise ValueError(f"key direction {key[3]} (expected 0 or 1)")


def restore(cache: Any, path: str, now_ns: int | None = None) -> RestoreOutcome:
    """Put the valid flows saved at ``path`` back into ``cache``; never raises.

    The file is removed after its flows are in the cache; a refused file, or one with
    rejected rows, is quarantined instead (see the module docstring).
    """
    out = RestoreOutcome()
    try:
        parsed = load(path, now_ns)
    except FileNotFoundError:
        return out
    except StateError as exc:
        _quarantine(out, path, str(exc), "starting without its flows")
        return out
    try:
        out.flows = cache.restore(parsed.rows)
    except Exception as exc:  # checked rows should not fail; if they do, keep the file
        log.exception("restoring the flows of %s failed", path)
        out.rejected = parsed.total
        _quarantine(out, path, f"the cache refused its flows: {exc}", "kept for inspection")
        return out
    out.packets = sum(r[1] for r in parsed.rows)
    out.octets = sum(r[2] for r in parsed.rows)
    out.rejected, out.clamped = parsed.rejected, parsed.clamped
    if parsed.rejected:
        _quarantine(out, path, f"{parsed.rejected} of {parsed.total} flows rejected, first "
                    f"{parsed.first_problem}", f"its {out.flows} valid flows were restored")
    else:
        _remove_stale(path)  # consumed: a crash later cannot restore (and export) them twice
    if parsed.clamped:
        log.warning("%d flows of %s had times in the future; clamped to now", parsed.clamped,
                    path)
    if parsed.total:
        log.info("restored %d flows (%d packets, %d bytes) from %s", out.flows, out.packets,
                 out.octets, path)
    return out


def _quarantine(out: RestoreOutcome, path: str, reason: str, outcome: str) -> None:
    moved = localfiles.quarantine(path)
    out.quarantined, out.moved_to, out.reason = 1, moved or "", reason
    where = f"moved to {moved}" if moved else "could not be moved aside"
    log.error("state file %s refused: %s; %s, %s", path, reason, where, outcome)
