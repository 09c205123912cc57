"""Local files a root daemon reads or writes: open them safely, judge who else may change them.

What it owns (docs/operations.md, "Local files and permissions"):

* :func:`read_regular`: read a file the agent parses at start (the state file) without ever
  hanging or following a planted link: ``O_NONBLOCK | O_NOFOLLOW``, regular files only, a
  size bound, and, when the agent runs as root, only files owned by root that nobody else
  may write;
* :func:`quarantine`: move a file the agent refused aside as ``<name>.bad-<UTC time>``, so it
  is neither parsed again at the next start nor lost;
* :func:`socket_path_problem`: what stands at a Unix socket path that the agent must not
  replace (only a socket may be, and only a stale one);
* :func:`open_output`: create output files (IPFIX files, ``export.log``) with mode 0640
  whatever the umask, owned by the user the agent drops to;
* :func:`may_access` / :func:`unreachable_dir` / :func:`writers`: the permission bits as a
  given user would meet them, for ``--check-env`` (ACLs are not evaluated: a file carrying
  one is taken as accessible rather than refused on a guess).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("agent.localfiles")

#: mode of output files the agent creates: owner read/write, group read, others nothing
OUTPUT_MODE = 0o640
_ACL_XATTR = "system.posix_acl_access"


class UnsafeFile(Exception):
    """A file the agent refuses to read; the message says why."""


@dataclass(frozen=True)
class Who:
    """A user as permission checks see it (``privileges.Identity`` fits)."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()


# --- reading a file root parses --------------------------------------------------------------


def read_regular(path: str, max_bytes: int, *, root_only: bool) -> bytes:
    """Read the whole regular file at ``path``, refusing anything else.

    Opened with ``O_NONBLOCK`` (a FIFO cannot hang the caller) and ``O_NOFOLLOW`` (a symbolic
    link is refused, not followed); the checks run on the opened descriptor, so the file
    cannot be swapped between check and read.

    :param root_only: refuse a file not owned by root, or writable by group or others (use it
        when running as root: anyone else who could write the file could feed root's parser).
    :raises FileNotFoundError: nothing at ``path``.
    :raises UnsafeFile: not a regular file, wrong owner or mode, larger than ``max_bytes``,
        or unreadable.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile("it is a symbolic link") from None
        raise UnsafeFile(f"cannot open it: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        problem = _unsafe(st, max_bytes, root_only)
        if problem:
            raise UnsafeFile(problem)
        return _read_at_most(fd, max_bytes)
    finally:
        os.close(fd)


def _unsafe(st: os.stat_result, max_bytes: int, root_only: bool) -> str:
    if not stat.S_ISREG(st.st_mode):
        return f"it is not a regular file ({file_kind(st.st_mode)})"
    if root_only and st.st_uid != 0:
        return f"it is owned by uid {st.st_uid}, not root"
    if root_only and st.st_mode & 0o022:
        return f"it is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    if st.st_size > max_bytes:
        return f"it has {st.st_size} bytes, more than the limit of {max_bytes}"
    return ""


def _read_at_most(fd: int, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        try:
            chunk = os.read(fd, 1 << 20)
        except OSError as exc:
            raise UnsafeFile(f"cannot read it: {exc.strerror}") from None
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:  # it grew after fstat
            raise UnsafeFile(f"it has more than the limit of {max_bytes} bytes")
        chunks.append(chunk)


def file_kind(mode: int) -> str:
    """``"directory"``, ``"FIFO"``, ``"socket"`` ... for messages."""
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISLNK, "symbolic link"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISREG, "regular file")):
        if test(mode):
            return name
    return "unknown type"


def quarantine(path: str, now: float | None = None) -> str | None:
    """Rename ``path`` to ``<path>.bad-<YYYYmmddTHHMMSSZ>`` (``.1``, ``.2`` on a clash).

    Whatever it is (file, FIFO, link, directory) is moved, never followed or deleted.

    :return: the new name, or ``None`` when the rename failed (logged).
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    base = f"{path}.bad-{stamp}"
    target, n = base, 0
    while os.path.lexists(target):
        n += 1
        target = f"{base}.{n}"
    try:
        os.rename(path, target)
    except OSError as exc:
        log.error("cannot move %s aside to %s: %s", path, target, exc.strerror)
        return None
    return target


# --- the control socket's path ---------------------------------------------------------------


def socket_path_problem(path: str) -> str:
    """Why the agent must not bind a Unix socket at ``path``: ``""`` when nothing is there or
    a socket is (a stale one may be replaced; a live one is found when connecting)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        return f"{path}: cannot inspect it ({exc.strerror})"
    if stat.S_ISSOCK(st.st_mode):
        return ""
    return (f"{path} exists and is a {file_kind(st.st_mode)}, not a socket; the agent "
            "replaces only a stale socket (remove it, or choose another control_socket)")


# --- output files ----------------------------------------------------------------------------


class _OutputOwner:
    """Who new output files belong to: the user the agent drops to (set by agent.ops)."""

    uid: int | None = None
    gid: int | None = None


def set_output_owner(uid: int | None, gid: int | None) -> None:
    """Output files created while still root are handed to this user (``[agent] user``), so it
    can reopen and rotate them after the drop; ``None`` = leave them to their creator."""
    _OutputOwner.uid, _OutputOwner.gid = uid, gid


def open_output(path: str) -> int:
    """Open ``path`` for appending; create it with mode 0640 (whatever the umask).

    An existing file keeps its mode and owner (an operator's ``chmod`` is respected;
    ``--check-env`` warns when others may read it). A file this call creates as root is
    given to the output owner (:func:`set_output_owner`).

    :return: a file descriptor (wrap it with :func:`os.fdopen`).
    :raises OSError: as :func:`os.open`.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, OUTPUT_MODE)
    except FileExistsError:
        return os.open(path, flags)
    try:
        os.fchmod(fd, OUTPUT_MODE)  # the umask may have removed bits; never added any
        if os.geteuid() == 0 and _OutputOwner.uid is not None:
            os.fchown(fd, _OutputOwner.uid, _OutputOwner.gid if _OutputOwner.gid is not None
                      else -1)
    except OSError:
        os.close(fd)
        raise
    return fd


# --- permissions as another user meets them --------------------------------------------------


def has_acl(path: str) -> bool:
    """``True`` when ``path`` carries a POSIX ACL (then mode bits do not tell the whole story)."""
    try:
        return _ACL_XATTR in os.listxattr(path)
    except OSError:
        return False


def may_access(path: str, who: Who | None, want: int) -> bool:
    """Would ``who`` be granted ``want`` (``os.R_OK | os.W_OK | os.X_OK``) on ``path``?

    ``who=None`` asks for this process (:func:`os.access`). Otherwise the owner/group/other
    bits decide (root is granted everything); a path with an ACL counts as accessible.
    """
    if who is None:
        return os.access(path, want)
    if who.uid == 0 or has_acl(path):
        return True
    st = os.stat(path)
    if st.st_uid == who.uid:
        bits = st.st_mode >> 6
    elif st.st_gid == who.gid or st.st_gid in who.groups:
        bits = st.st_mode >> 3
    else:
        bits = st.st_mode
    return bits & want & 0o7 == want


def unreachable_dir(directory: str, who: Who | None) -> str:
    """The first directory from ``/`` down to ``directory`` that ``who`` cannot enter
    (search permission), or ``""`` when every one can be."""
    target = Path(directory).resolve()
    for d in [*reversed(target.parents), target]:
        if not may_access(str(d), who, os.X_OK):
            return str(d)
    return ""


def writers(st: os.stat_result) -> list[str]:
    """Who besides root may write a file or directory with this stat: ``["uid 1000",
    "group 50", "everyone"]`` (empty when only root may)."""
    out = []
    if st.st_uid != 0 and st.st_mode & stat.S_IWUSR:
        out.append(f"uid {st.st_uid}")
    if st.st_gid != 0 and st.st_mode & stat.S_IWGRP:
        out.append(f"group {st.st_gid}")
    if st.st_mode & stat.S_IWOTH:
        out.append("everyone")
    return out
