"""Attaching the flow programs to interfaces, inside the configured network namespace.

Owns the kernel attach points and their lifetime (KERNEL.md sections 2.4, 2.5 and 9):

* **TCX** (Linux 6.6+, ``include/net/tcx.h``: ``BPF_LINK_CREATE`` with attach types
  ``BPF_TCX_INGRESS``/``BPF_TCX_EGRESS``) and **XDP links** (5.9+) are BPF links: closing the
  link fd detaches, and so does the death of the process, so a crash leaves nothing behind.
* **tc clsact** (cls_bpf direct-action) is the fallback when TCX is missing. Filters outlive
  the process, so ours use a fixed handle/priority per instance (:data:`TC_HANDLE`,
  :data:`TC_PRIORITY` plus the instance's index, :func:`instance_slot`) and are *replaced* at
  the next start; two ``[[ingest.ebpf]]`` instances on one hook each keep their own filter
  (both observe: the programs return ``TC_ACT_UNSPEC``), as TCX chains their programs. The
  clsact qdisc is removed when the last of this process's filters on it goes, if one of ours
  created it (:data:`_TC_HOOKS`), not while another instance's filter still uses it.

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
import re
import socket
import threading
from dataclasses import dataclass
from typing import Any

from .promisc import PromiscHolds

BPF_XDP = 37  # enum bpf_attach_type (UAPI)
BPF_TCX_INGRESS = 46  # not in Debian 12's 6.1 UAPI header; see KERNEL.md 2.1
BPF_TCX_EGRESS = 47
#: tc filter handle and priority of our cls_bpf filters ("NFA" / 0x4e46), plus the instance's
#: index: distinctive, so a stale filter left by a crashed agent is found and replaced, and
#: nobody else's (nor another instance's) is touched.
TC_HANDLE = 0x4E4641
TC_PRIORITY = 0x4E46
#: instances beyond this index share the last slot's handle (a config of 256 eBPF ingests)
MAX_SLOT = 255

log = logging.getLogger("agent.ingest.ebpf")


class _TcHooks:
    """This process's live tc filters per clsact qdisc, ``(netns inode, ifindex)`` -> the
    ``(handle, egress)`` of each, and the qdiscs one of ours created: the last filter of ours
    to leave removes a qdisc we created; an earlier one would take the other instances'
    filters with it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[tuple[int, int], set[tuple[int, bool]]] = {}
        self._created: set[tuple[int, int]] = set()

    def add(self, hook: tuple[int, int], handle: int, egress: bool, created: bool) -> None:
        with self._lock:
            self._live.setdefault(hook, set()).add((handle, egress))
            if created:
                self._created.add(hook)

    def remove(self, hook: tuple[int, int], handle: int, egress: bool) -> bool:
        """Forget one filter; whether the qdisc is ours to remove now (none of ours left)."""
        with self._lock:
            live = self._live.get(hook, set())
            live.discard((handle, egress))
            if live:
                return False
            self._live.pop(hook, None)
            if hook in self._created:
                self._created.discard(hook)
                return True
            return False


_TC_HOOKS = _TcHooks()


def instance_slot(name: str) -> int:
    """The index of an instance named ``ingest.ebpf[N]`` (0 for any other name), at most
    :data:`MAX_SLOT`: what its tc filter's handle and priority add to the base ones."""
    match = re.search(r"\[(\d+)\]$", name)
    return min(int(match.group(1)), MAX_SLOT) if match else 0


def _netns_inode() -> int:
    """The calling thread's network namespace (attach calls run inside the configured one)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def matching_links(patterns: list[str]) -> dict[int, str]:
    """``{ifindex: name}`` of the current thread's netns links matching any glob."""
    return {
        index: name
        for index, name in socket.if_nameindex()
        if any(fnmatch.fnmatchcase(name, p) for p in patterns)
    }


@dataclass(slots=True)
class Attachment:
    """One program attached to one interface hook."""

    ifindex: int
    ifname: str
    kind: str  # "tcx", "tc" or "xdp"
    egress: bool
    link_fd: int = -1  # tcx/xdp: closing it detaches
    created_qdisc: bool = False  # tc: we added the clsact qdisc
    hook: tuple[int, int] = (0, 0)  # tc: (netns inode, ifindex) of its clsact qdisc


class Attacher:
    """Attaches the loaded programs (a ``_loader.Loader``) and remembers what it attached.

    :param loader: the loaded object.
    :param mode: ``"tcx"``, ``"tc"`` or ``"xdp"``; ``"tcx"`` falls back to ``"tc"`` once when
        the kernel rejects the TCX attach type.
    :param direction: ``"ingress"``, ``"egress"`` or ``"both"``.
    :param promisc: hold every attached interface in promiscuous mode while attached.
    :param slot: the instance's index (:func:`instance_slot`): its tc filters' handle and
        priority are the base ones plus this.
    """

    def __init__(self, loader: Any, mode: str, direction: str, promisc: bool = False,
                 slot: int = 0):
        self.loader = loader
        self.tc_handle, self.tc_priority = TC_HANDLE + slot, TC_PRIORITY + slot
        self.promisc = PromiscHolds() if promisc else None
        self.mode = mode
        self.egress_flags = {"ingress": [False], "egress": [True], "both": [False, True]}[
            direction
        ]
        self.attached: dict[int, list[Attachment]] = {}
        #: attachments whose detach failed (still in the kernel, perhaps): the stop logs them
        #: and drains the tables whatever else it knows
        self.failed: list[tuple[Attachment, OSError]] = []

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
            self._roll_back(done)
            raise
        self.attached[ifindex] = done
        return done

    def _roll_back(self, done: list[Attachment]) -> None:
        """Undo a partial attach; what cannot be detached stays tracked (in ``failed``), so
        the stop tries it again and says so, instead of a program left running unknown."""
        for att in done:
            try:
                self.detach_one(att)
            except OSError as exc:
                log.warning("rolling back the attach of %s to %s failed: %s", att.kind,
                            att.ifname, exc)
                self.failed.append((att, exc))

    def _attach_one(self, ifindex: int, ifname: str, egress: bool) -> Attachment:
        prog = "flow_tc_egress" if egress else "flow_tc_ingress"
        if self.mode != "tc" and self.loader.tc_detach(ifindex, egress, self.tc_handle,
                                                       self.tc_priority):
            log.info("removed a stale tc filter of ours from %s (a crashed tc-mode agent)",
                     ifname)
        if self.mode == "xdp":
            fd = self.loader.link_create("flow_xdp", ifindex, BPF_XDP, 0)
            return Attachment(ifindex, ifname, "xdp", False, link_fd=fd)
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
        hook = (_netns_inode(), ifindex)
        created = self.loader.tc_attach(prog, ifindex, egress, self.tc_handle, self.tc_priority)
        _TC_HOOKS.add(hook, self.tc_handle, egress, created)
        return Attachment(ifindex, ifname, "tc", egress, created_qdisc=created, hook=hook)

    def detach_one(self, att: Attachment) -> None:
        """Detach one attachment; a vanished interface is not an error."""
        if att.link_fd >= 0:
            os.close(att.link_fd)
            att.link_fd = -1
            return
        if att.kind == "tc":
            self.loader.tc_detach(att.ifindex, att.egress, self.tc_handle, self.tc_priority)
            if _TC_HOOKS.remove(att.hook, self.tc_handle, att.egress):
                self.loader.tc_destroy_clsact(att.ifindex)

    def detach(self, ifindex: int) -> None:
        """Detach everything on one interface and drop our promiscuity reference; a detach
        that fails is logged and kept in ``failed``."""
        if self.promisc is not None:
            self.promisc.release(ifindex)
        for att in self.attached.pop(ifindex, []):
            try:
                self.detach_one(att)
            except OSError as exc:
                log.warning("detach %s from %s: %s", att.kind, att.ifname, exc)
                self.failed.append((att, exc))

    def detach_all(self) -> None:
        """Detach everything this attacher attached, and retry the detaches that failed
        before (call it inside the netns); what fails again stays in ``failed``."""
        retry, self.failed = self.failed, []
        for att, _exc in retry:
            try:
                self.detach_one(att)
            except OSError as exc:
                self.failed.append((att, exc))
        for ifindex in list(self.attached):
            self.detach(ifindex)

    def forget_all(self) -> None:
        """Close link fds and forget the rest: for when the netns itself is gone (its
        interfaces, qdiscs and filters went with it)."""
        if self.promisc is not None:
            self.promisc.release_all()
        for atts in self.attached.values():
            for att in atts:
                if att.link_fd >= 0:
                    os.close(att.link_fd)
                    att.link_fd = -1
                elif att.kind == "tc":
                    _TC_HOOKS.remove(att.hook, self.tc_handle, att.egress)
        self.attached.clear()
