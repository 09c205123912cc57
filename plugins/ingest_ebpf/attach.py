"""Attaching the flow programs to interfaces, inside the configured network namespace.

Owns the kernel attach points and their lifetime (KERNEL.md sections 2.4, 2.5 and 9):

* **TCX** (Linux 6.6+, ``include/net/tcx.h``: ``BPF_LINK_CREATE`` with attach types
  ``BPF_TCX_INGRESS``/``BPF_TCX_EGRESS``) and **XDP links** (5.9+) are BPF links: closing the
  link fd detaches, and so does the death of the process, so a crash leaves nothing behind.
* **tc clsact** (cls_bpf direct-action) is the fallback when TCX is missing. Filters outlive
  the process, so ours use a fixed handle/priority (:data:`TC_HANDLE`, :data:`TC_PRIORITY`)
  and are *replaced* at the next start; the clsact qdisc is removed at stop when we created it.

Two instances of one agent never share an exclusive attach point: our tc filter (one fixed
handle per interface and direction) and an XDP program are claimed per network namespace and
interface for the whole process (:class:`AttachClaims`), so a second instance whose globs
overlap the first's (``eth*`` and ``eth0``) is refused with a clear error instead of
silently replacing the first's filter, and a TCX instance's clean-up of a crashed agent's
stale filter leaves a live one of this process alone (checked and removed under the claims'
lock, so a claim cannot come between the two).

With ``promisc = true`` every attached interface also holds one promiscuity reference for as
long as it is attached (``promisc.py``); it is taken with the hooks and dropped with them.

Every attach call and the interface listing run in the target netns: TCX, XDP and libbpf's
``bpf_tc_*`` resolve ``ifindex`` in the calling thread's netns, so
:class:`agent.netns.NetnsScope` switches the current thread with ``setns(2)`` and back.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .promisc import PromiscHolds

BPF_XDP = 37  # enum bpf_attach_type (UAPI)
BPF_TCX_INGRESS = 46  # not in Debian 12's 6.1 UAPI header; see KERNEL.md 2.1
BPF_TCX_EGRESS = 47
#: tc filter handle and priority of our cls_bpf filters ("NFA" / 0x4e46): distinctive, so a
#: stale filter left by a crashed agent is found and replaced, and nobody else's is touched.
TC_HANDLE = 0x4E4641
TC_PRIORITY = 0x4E46

log = logging.getLogger("agent.ingest.ebpf")


def matching_links(patterns: list[str]) -> dict[int, str]:
    """``{ifindex: name}`` of the current thread's netns links matching any glob."""
    return {
        index: name
        for index, name in socket.if_nameindex()
        if any(fnmatch.fnmatchcase(name, p) for p in patterns)
    }


def netns_id() -> int:
    """The inode of the calling thread's network namespace (its identity)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


class AttachClaims:
    """The process's exclusive attach points: ``(netns inode, ifindex, kind)`` to the owner
    that attached there (``kind``: ``"tc"`` for our fixed-handle filter, ``"xdp"``) and how
    many of its attachments use it (a tc filter per direction): the point is free again only
    when the last of them is detached."""

    def __init__(self) -> None:
        self._owners: dict[tuple[int, int, str], list] = {}  # [owner, name, attachments]
        self._lock = threading.Lock()

    def claim(self, point: tuple[int, int, str], owner: int, name: str, ifname: str) -> None:
        """Take ``point`` for one more attachment of ``owner``; EBUSY when another owner
        holds it."""
        with self._lock:
            holder = self._owners.setdefault(point, [owner, name, 0])
            if holder[0] == owner:
                holder[2] += 1
        if holder[0] != owner:
            raise OSError(errno.EBUSY, f"{ifname} is already observed by {holder[1]} with "
                          f"{'a tc filter' if point[2] == 'tc' else 'an XDP program'}: "
                          "two tc or XDP instances cannot share an interface (their "
                          "interface globs overlap; use mode = \"tcx\" or disjoint globs)")

    def held_by_other(self, point: tuple[int, int, str], owner: int) -> bool:
        with self._lock:
            holder = self._owners.get(point)
        return holder is not None and holder[0] != owner

    def clean_unless_held(self, point: tuple[int, int, str], owner: int,
                          clean: Callable[[], bool]) -> bool:
        """Run ``clean`` (remove what a crashed agent left at ``point``) unless another owner
        holds ``point``; the check and ``clean`` hold the lock, so no claim comes between
        them and a sibling's filter attached right after its claim is never removed.
        :return: what ``clean`` returned, ``False`` when it did not run."""
        with self._lock:
            holder = self._owners.get(point)
            if holder is not None and holder[0] != owner:
                return False
            return clean()

    def release(self, point: tuple[int, int, str], owner: int) -> None:
        """One attachment of ``owner`` at ``point`` is gone (detached, or never made)."""
        with self._lock:
            holder = self._owners.get(point)
            if holder is not None and holder[0] == owner:
                holder[2] -= 1
                if holder[2] <= 0:
                    del self._owners[point]


#: the claims of every Attacher in this process
CLAIMS = AttachClaims()


@dataclass(slots=True)
class Attachment:
    """One program attached to one interface hook."""

    ifindex: int
    ifname: str
    kind: str  # "tcx", "tc" or "xdp"
    egress: bool
    link_fd: int = -1  # tcx/xdp: closing it detaches
    created_qdisc: bool = False  # tc: we added the clsact qdisc
    netns: int = 0  # the inode of the netns it was attached in (its claim's key)


class Attacher:
    """Attaches the loaded programs (a ``_loader.Loader``) and remembers what it attached.

    :param loader: the loaded object.
    :param mode: ``"tcx"``, ``"tc"`` or ``"xdp"``; ``"tcx"`` falls back to ``"tc"`` once when
        the kernel rejects the TCX attach type.
    :param direction: ``"ingress"``, ``"egress"`` or ``"both"``.
    :param promisc: hold every attached interface in promiscuous mode while attached.
    :param name: the owning instance's name, for the error a second claimant gets.
    """

    def __init__(self, loader: Any, mode: str, direction: str, promisc: bool = False,
                 name: str = "another ingest.ebpf instance"):
        self.loader = loader
        self.name = name
        self.promisc = PromiscHolds() if promisc else None
        self.mode = mode
        self.egress_flags = {"ingress": [False], "egress": [True], "both": [False, True]}[
            direction
        ]
        self.attached: dict[int, list[Attachment]] = {}

    def attach(self, ifindex: int, ifname: str) -> list[Attachment]:
        """Attach to one interface (all directions, and promiscuous mode when asked); on error
        nothing stays attached."""
        done: list[Attachment] = []
        try:
            for egress in self.egress_flags:
                done.append(self._attach_one(ifindex, ifname, egress))
            if self.promisc is not None:
                self.promisc.hold(ifindex)
        except OSError:
            for att in done:
                self.detach_one(att)
            raise
        self.attached[ifindex] = done
        return done

    def _attach_one(self, ifindex: int, ifname: str, egress: bool) -> Attachment:
        prog = "flow_tc_egress" if egress else "flow_tc_ingress"
        netns = netns_id()
        if self.mode != "tc" and CLAIMS.clean_unless_held(
                (netns, ifindex, "tc"), id(self),
                lambda: self.loader.tc_detach(ifindex, egress, TC_HANDLE, TC_PRIORITY)):
            log.info("removed a stale tc filter of ours from %s (a crashed tc-mode agent)",
                     ifname)
        if self.mode == "xdp":
            CLAIMS.claim((netns, ifindex, "xdp"), id(self), self.name, ifname)
            try:
                fd = self.loader.link_create("flow_xdp", ifindex, BPF_XDP, 0)
            except OSError:
                CLAIMS.release((netns, ifindex, "xdp"), id(self))
                raise
            return Attachment(ifindex, ifname, "xdp", False, link_fd=fd, netns=netns)
        if self.mode == "tcx":
            try:
                fd = self.loader.link_create(
                    prog, ifindex, BPF_TCX_EGRESS if egress else BPF_TCX_INGRESS, 0
                )
                return Attachment(ifindex, ifname, "tcx", egress, link_fd=fd)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                log.warning("TCX is not available on this kernel (%s); using tc clsact", exc)
                self.mode = "tc"
        CLAIMS.claim((netns, ifindex, "tc"), id(self), self.name, ifname)
        try:
            created = self.loader.tc_attach(prog, ifindex, egress, TC_HANDLE, TC_PRIORITY)
        except OSError:  # this direction's claim; the other's goes with its detach
            CLAIMS.release((netns, ifindex, "tc"), id(self))
            raise
        return Attachment(ifindex, ifname, "tc", egress, created_qdisc=created, netns=netns)

    def detach_one(self, att: Attachment) -> None:
        """Detach one attachment; a vanished interface is not an error. Its share of the
        interface's claim goes once it is detached (the point is free after the last)."""
        try:
            if att.link_fd >= 0:
                os.close(att.link_fd)
                att.link_fd = -1
            elif att.kind == "tc":
                self.loader.tc_detach(att.ifindex, att.egress, TC_HANDLE, TC_PRIORITY)
                if att.created_qdisc:
                    self.loader.tc_destroy_clsact(att.ifindex)
        finally:
            if att.kind in ("tc", "xdp"):
                CLAIMS.release((att.netns, att.ifindex, att.kind), id(self))

    def detach(self, ifindex: int) -> None:
        """Detach everything on one interface and drop our promiscuity reference."""
        if self.promisc is not None:
            self.promisc.release(ifindex)
        for att in self.attached.pop(ifindex, []):
            try:
                self.detach_one(att)
            except OSError as exc:
                log.warning("detach %s from %s: %s", att.kind, att.ifname, exc)

    def detach_all(self) -> None:
        """Detach everything this attacher attached (call it inside the netns)."""
        for ifindex in list(self.attached):
            self.detach(ifindex)

    def forget_all(self) -> None:
        """Close link fds and forget the rest: for when the netns itself is gone (its
        interfaces, qdiscs and filters went with it)."""
        if self.promisc is not None:
            self.promisc.release_all()
        for atts in self.attached.values():
            for att in atts:
                if att.kind in ("tc", "xdp"):
                    CLAIMS.release((att.netns, att.ifindex, att.kind), id(self))
                if att.link_fd >= 0:
                    os.close(att.link_fd)
                    att.link_fd = -1
        self.attached.clear()
