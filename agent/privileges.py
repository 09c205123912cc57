"""Dropping root after start-up: ``[agent] user``, ``group``, ``keep_capabilities``.

Order (cmd_run): :func:`prepare` **before** any thread starts, then every component starts as
root (sockets bound, NFLOG groups bound, nft rules and BPF programs in place), then
:func:`drop` switches to the configured user, keeping only ``keep_capabilities``.

How (capabilities(7), prctl(2), capset(2)):

1. :func:`prepare` sets ``PR_SET_KEEPCAPS`` in the main thread; threads started later inherit
   it, so no thread loses its permitted set at the UID switch and then can't stop cleanly.
2. :func:`drop` calls ``setgroups``/``setgid``/``setuid`` through glibc, which applies them to
   **every thread** of the process. After the switch the effective sets are empty.
3. In the pipeline (main) thread, ``capset`` makes ``keep_capabilities`` (those the process
   actually has) the effective, permitted and inheritable set and raises them as **ambient**
   capabilities, so programs the agent runs (``nft`` for managed rules) keep them across
   ``execve``; then ``PR_SET_KEEPCAPS`` is cleared. The pipeline thread is the one that
   reloads, adds/removes rules and detaches programs; threads it starts later inherit its set.
4. ``capset`` only changes the calling thread: threads started before the drop (ingest
   readers, the control server) still hold root's permitted set, with an empty effective set.
   Each of them calls :func:`follow` in its loop **before it handles input** (a datagram, an
   event, a request, a drained table), which gives that thread the pipeline thread's sets once;
   later calls cost an attribute lookup. Input that could exploit a parser therefore never
   meets a thread that could raise root's capabilities. Plugin threads do the same
   (docs/hooks.md). Under systemd the unit's ``CapabilityBoundingSet`` bounds every thread in
   addition (packaging/systemd/netflow-agent.service).
"""

from __future__ import annotations

import ctypes
import grp
import logging
import os
import pwd
import threading
from dataclasses import dataclass

from netflow_agent.libc import libc

log = logging.getLogger("agent.privileges")

PR_SET_KEEPCAPS = 8
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 47, 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

#: capability numbers (linux/capability.h)
CAPABILITIES = {name: n for n, name in enumerate((
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW",
    "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
    "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"))}


class PrivilegeError(Exception):
    """The user/group does not exist, or a system call refused the switch."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


@dataclass(frozen=True)
class Identity:
    """Who to become."""

    user: str
    uid: int
    gid: int
    groups: tuple[int, ...]


def resolve(user: str, group: str = "") -> Identity:
    """Look up ``user`` (and ``group``, default the user's primary group).

    :raises PrivilegeError: unknown user or group.
    """
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"user {user!r} does not exist") from None
    gid = pw.pw_gid
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise PrivilegeError(f"group {group!r} does not exist") from None
    groups = tuple(sorted(set(os.getgrouplist(user, gid))))
    return Identity(user, pw.pw_uid, gid, groups)


def capability_mask(names: list[str]) -> int:
    """Bit mask of capability names (``CAP_NET_ADMIN`` or ``net_admin``).

    :raises PrivilegeError: an unknown name.
    """
    mask = 0
    for name in names:
        key = name.upper() if name.upper().startswith("CAP_") else f"CAP_{name.upper()}"
        if key not in CAPABILITIES:
            raise PrivilegeError(f"unknown capability {name!r}")
        mask |= 1 << CAPABILITIES[key]
    return mask


def mask_names(mask: int) -> list[str]:
    """Capability names in ``mask``."""
    return [name for name, n in CAPABILITIES.items() if mask >> n & 1]


def _capget() -> tuple[int, int, int]:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc().capget(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"capget: {os.strerror(err)}")
    def join(field: str) -> int:
        return getattr(data[0], field) | getattr(data[1], field) << 32
    return join("effective"), join("permitted"), join("inheritable")


def _capset(effective: int, permitted: int, inheritable: int = 0) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = effective >> shift & 0xFFFFFFFF
        data[i].permitted = permitted >> shift & 0xFFFFFFFF
        data[i].inheritable = inheritable >> shift & 0xFFFFFFFF
    if libc().capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"capset: {os.strerror(err)}")


def _prctl(option: int, value: int) -> None:
    if libc().prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"prctl({option}): {os.strerror(err)}")


def _prctl_ambient_raise(cap: int) -> None:
    if libc().prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"PR_CAP_AMBIENT_RAISE {mask_names(1 << cap)}: {os.strerror(err)}")


def _raise_ambient(mask: int) -> None:
    """Raise every capability of ``mask`` in this thread's ambient set."""
    for n in range(64):
        if mask >> n & 1:
            _prctl_ambient_raise(n)


class _DropState:
    """What :func:`drop` left the pipeline thread with (capabilities are per thread)."""

    def __init__(self) -> None:
        self.mask: int | None = None  # None: no drop happened (still root, or no user)
        self.thread = threading.local()  # .followed: this thread already took the mask


_DROP = _DropState()


def follow() -> None:
    """In a thread of the agent: take the capability sets the drop left (once; cheap after).

    Call it in every loop that handles input, before handling it. A no-op until
    :func:`drop` ran, and in threads that already followed or started after the drop.
    """
    mask = _DROP.mask
    if mask is None or getattr(_DROP.thread, "followed", False):
        return
    _capset(mask, mask, mask)  # this thread only: permitted shrinks to the kept set
    _raise_ambient(mask)  # the same ambient set as the pipeline thread
    _DROP.thread.followed = True


def prepare() -> None:
    """Before any thread starts: keep permitted capabilities across the coming UID switch."""
    if os.geteuid() == 0:
        _prctl(PR_SET_KEEPCAPS, 1)


def drop(identity: Identity, keep: list[str]) -> list[str]:
    """Become ``identity``; keep the capabilities in ``keep`` that the process has.

    :return: the capability names kept.
    :raises PrivilegeError: not root, or a system call failed (the agent must then stop:
        running as root when a user was configured is not acceptable).
    """
    if os.geteuid() != 0:
        if os.geteuid() == identity.uid:
            return mask_names(_capget()[0])
        raise PrivilegeError(f"cannot switch to {identity.user!r}: not running as root")
    _, permitted, _ = _capget()
    wanted = capability_mask(keep) & permitted
    try:
        os.setgroups(list(identity.groups))
        os.setgid(identity.gid)
        os.setuid(identity.uid)  # glibc applies it to every thread
    except OSError as exc:
        raise PrivilegeError(f"switching to {identity.user!r} failed: {exc}") from None
    _capset(wanted, wanted, wanted)
    _raise_ambient(wanted)  # programs we run (nft) keep them across execve(2)
    _prctl(PR_SET_KEEPCAPS, 0)
    _DROP.mask = wanted
    _DROP.thread.followed = True
    if os.getuid() != identity.uid or os.geteuid() != identity.uid:
        raise PrivilegeError("the UID did not change")
    kept = mask_names(wanted)
    log.info("running as %s (uid %d, gid %d), capabilities: %s", identity.user, identity.uid,
             identity.gid, ", ".join(kept) or "none")
    return kept


def started_as_root() -> bool:
    """``True`` when running as root, or after :func:`drop` left root (the process still acts
    for root: it holds kept capabilities and root's files)."""
    return os.geteuid() == 0 or _DROP.mask is not None


#: run as the dropped user by :func:`unreadable_as` (sh: any user may run it; test(1) asks
#: access(2), so the kernel's answer counts): prints each path that user cannot read
_READ_PROBE = ('for p do if [ -d "$p" ]; then [ -r "$p" ] && [ -x "$p" ] || echo "$p"; '
               'else [ -r "$p" ] || echo "$p"; fi; done')


def unreadable_as(identity: Identity, paths: list[str]) -> list[str]:
    """Which of ``paths`` (files, or directories to list) ``identity`` cannot read.

    Asks the kernel rather than reading mode bits (ACLs and every parent directory's search
    permission count): directly when the process already runs as ``identity``, else, as
    root, in a short ``sh`` started as that user. Not root and not that user: unknown, ``[]``.
    """
    paths = [os.path.abspath(p) for p in paths]
    if os.geteuid() == identity.uid:
        return [p for p in paths
                if not os.access(p, os.R_OK | (os.X_OK if os.path.isdir(p) else 0))]
    if os.geteuid() != 0:
        return []
    import subprocess

    try:
        proc = subprocess.run(["/bin/sh", "-c", _READ_PROBE, "sh", *paths], user=identity.uid,
                              group=identity.gid, extra_groups=list(identity.groups),
                              capture_output=True, text=True, timeout=30, check=False,
                              cwd="/")
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("cannot check what %s may read: %s", identity.user, exc)
        return []
    return proc.stdout.splitlines()
