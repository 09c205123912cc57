"""Unprivileged tests of the attach logic with a fake loader: TCX fallback, rollback, cleanup."""

from __future__ import annotations

import errno
import os
import threading

import pytest

from netflow_agent.netns import NetnsScope, netns_path
from netflow_agent.plugins.ingest_ebpf.attach import (
    BPF_TCX_EGRESS,
    BPF_TCX_INGRESS,
    TC_HANDLE,
    TC_PRIORITY,
    Attacher,
)


class FakeLoader:
    """Records calls; ``link_errno`` makes ``link_create`` fail like an old kernel."""

    def __init__(self, link_errno: int = 0, fail_egress_tc: bool = False):
        self.link_errno = link_errno
        self.fail_egress_tc = fail_egress_tc
        self.calls: list[tuple] = []

    def link_create(self, prog, ifindex, attach_type, flags):
        self.calls.append(("link", prog, ifindex, attach_type))
        if self.link_errno:
            raise OSError(self.link_errno, os.strerror(self.link_errno))
        return os.open(os.devnull, os.O_RDONLY)

    def tc_attach(self, prog, ifindex, egress, handle, priority):
        self.calls.append(("tc_attach", prog, ifindex, egress, handle, priority))
        if egress and self.fail_egress_tc:
            raise OSError(errno.EPERM, "no")
        return not egress  # the ingress attach creates clsact

    def tc_detach(self, ifindex, egress, handle, priority):
        self.calls.append(("tc_detach", ifindex, egress))
        return False

    def tc_destroy_clsact(self, ifindex):
        self.calls.append(("destroy", ifindex))
        return True


def test_tcx_attaches_both_directions_and_closing_detaches():
    loader = FakeLoader()
    att = Attacher(loader, "tcx", "both")
    done = att.attach(5, "eth0")
    assert [a.kind for a in done] == ["tcx", "tcx"]
    links = [c for c in loader.calls if c[0] == "link"]
    assert [c[3] for c in links] == [BPF_TCX_INGRESS, BPF_TCX_EGRESS]
    att.detach_all()
    assert all(a.link_fd == -1 for a in done) and att.attached == {}


def test_tcx_falls_back_to_tc_when_the_kernel_lacks_it():
    loader = FakeLoader(link_errno=errno.EINVAL)
    att = Attacher(loader, "tcx", "ingress")
    (a,) = att.attach(3, "eth1")
    assert (a.kind, att.mode, a.created_qdisc) == ("tc", "tc", True)
    assert ("tc_attach", "flow_tc_ingress", 3, False, TC_HANDLE, TC_PRIORITY) in loader.calls
    att.detach_all()
    assert loader.calls[-2:] == [("tc_detach", 3, False), ("destroy", 3)]


def test_other_link_errors_are_raised():
    att = Attacher(FakeLoader(link_errno=errno.ENODEV), "tcx", "both")
    with pytest.raises(OSError):
        att.attach(9, "gone0")
    assert att.mode == "tcx" and att.attached == {}


def test_half_attached_interface_is_rolled_back():
    loader = FakeLoader(fail_egress_tc=True)
    att = Attacher(loader, "tc", "both")
    with pytest.raises(OSError):
        att.attach(4, "eth2")
    assert ("destroy", 4) in loader.calls and att.attached == {}


def test_netns_paths_and_noop_scope():
    assert netns_path("blue") == "/run/netns/blue"
    assert netns_path("/proc/1/ns/net") == "/proc/1/ns/net"
    with NetnsScope("") as scope:
        assert scope.netns == ""


def test_forget_all_closes_links():
    att = Attacher(FakeLoader(), "tcx", "both")
    done = att.attach(5, "eth0")
    att.forget_all()
    assert att.attached == {} and all(a.link_fd == -1 for a in done)


def test_interface_without_a_promisc_reference_is_not_attached(monkeypatch):
    """promisc: an interface whose promiscuity reference is refused (no CAP_NET_RAW, ENODEV)
    keeps no hook either."""
    from netflow_agent.plugins.ingest_ebpf.promisc import PromiscHolds

    def refuse(self, ifindex):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(PromiscHolds, "hold", refuse)
    att = Attacher(FakeLoader(), "tcx", "both", promisc=True)
    with pytest.raises(PermissionError):
        att.attach(5, "eth0")
    assert att.attached == {}


@pytest.mark.parametrize("mode", ["tc", "xdp"])
def test_a_second_tc_or_xdp_instance_on_one_interface_is_refused(mode):
    """Overlapping globs (``eth*`` and ``eth0``) put two instances on one interface: the
    second's tc filter would replace the first's (one fixed handle) and XDP holds one program;
    the second is refused, naming the first, and the first keeps its hook. Once the first
    detaches, the interface is free."""
    first = Attacher(FakeLoader(), mode, "both", name="ingest.ebpf[0]")
    second_loader = FakeLoader()
    second = Attacher(second_loader, mode, "both", name="ingest.ebpf[1]")
    first.attach(7, "eth0")
    with pytest.raises(OSError, match=r"eth0 is already observed by ingest\.ebpf\[0\]") as exc:
        second.attach(7, "eth0")
    assert exc.value.errno == errno.EBUSY
    assert not [c for c in second_loader.calls if c[0] in ("tc_attach", "link")]
    assert 7 in first.attached and 7 not in second.attached
    second.attach(8, "eth1")  # another interface: no conflict
    first.detach_all()
    second.attach(7, "eth0")
    second.detach_all()


def test_a_tcx_instance_leaves_a_live_tc_filter_of_this_process_alone():
    """A TCX attach removes a crashed agent's stale tc filter first; one that a tc-mode
    instance of this same process holds is live, not stale, and stays."""
    tc = Attacher(FakeLoader(), "tc", "ingress", name="ingest.ebpf[0]")
    tc.attach(7, "eth0")
    tcx_loader = FakeLoader()
    tcx = Attacher(tcx_loader, "tcx", "ingress", name="ingest.ebpf[1]")
    tcx.attach(7, "eth0")
    assert not [c for c in tcx_loader.calls if c[0] == "tc_detach"]
    tcx.attach(8, "eth1")  # no live filter there: the stale one is cleaned as before
    assert ("tc_detach", 8, False) in tcx_loader.calls
    tc.detach_all()
    tcx.detach_all()


class RacingLoader(FakeLoader):
    """A TCX instance's loader whose stale-filter removal lets a tc sibling of this process
    attach to the same interface from another thread before it acts (the sibling claims,
    then adds its filter); ``filters`` holds the interface's live tc filters."""

    def __init__(self, sibling: Attacher, filters: set):
        super().__init__()
        self.sibling, self.filters = sibling, filters
        self.raced = threading.Thread(target=sibling.attach, args=(7, "eth0"))

    def tc_detach(self, ifindex, egress, handle, priority):
        self.raced.start()
        self.raced.join(0.3)  # the sibling attaches now unless a claim has to wait for us
        had = ifindex in self.filters
        self.filters.discard(ifindex)
        return had


def test_a_claim_between_the_stale_check_and_the_removal_keeps_the_live_filter():
    """The stale-filter clean-up checks the sibling's claim and removes in one step: a tc
    sibling that claims the interface in between attaches after the removal, so its live
    filter stays (before: it was removed under the sibling, which saw no packets)."""
    filters: set[int] = set()

    class SiblingLoader(FakeLoader):
        def tc_attach(self, prog, ifindex, egress, handle, priority):
            filters.add(ifindex)
            return super().tc_attach(prog, ifindex, egress, handle, priority)

    sibling = Attacher(SiblingLoader(), "tc", "ingress", name="ingest.ebpf[0]")
    loader = RacingLoader(sibling, filters)
    tcx = Attacher(loader, "tcx", "ingress", name="ingest.ebpf[1]")
    tcx.attach(7, "eth0")
    loader.raced.join(5)
    assert 7 in sibling.attached and filters == {7}
    sibling.detach_all()
    tcx.detach_all()


def test_a_failed_attach_releases_the_claim():
    """A tc attach the kernel refuses leaves the interface unclaimed for the next try."""
    failing = Attacher(FakeLoader(fail_egress_tc=True), "tc", "both", name="ingest.ebpf[0]")
    with pytest.raises(OSError):
        failing.attach(7, "eth0")
    other = Attacher(FakeLoader(), "tc", "both", name="ingest.ebpf[1]")
    other.attach(7, "eth0")
    other.detach_all()


def test_the_claim_outlives_one_direction_of_two():
    """With both directions in tc mode, the interface stays claimed until the last of the
    two filters is gone: a refused egress attach (the ingress filter still up until
    ``attach`` detaches it) or the first detach of two frees nothing early."""
    from netflow_agent.plugins.ingest_ebpf.attach import CLAIMS, netns_id

    point = (netns_id(), 7, "tc")
    owner = Attacher(FakeLoader(), "tc", "both", name="ingest.ebpf[0]")
    owner.attach(7, "eth0")
    first, second = owner.attached[7]
    owner.detach_one(first)
    assert CLAIMS.held_by_other(point, id(object()))  # still held: egress is up
    owner.detach_one(second)
    assert not CLAIMS.held_by_other(point, id(object()))

    failing = Attacher(FakeLoader(fail_egress_tc=True), "tc", "both", name="ingest.ebpf[1]")
    seen = []
    real = failing.detach_one

    def detach_one(att):  # the ingress filter is still attached when egress failed
        seen.append(CLAIMS.held_by_other(point, id(object())))
        real(att)

    failing.detach_one = detach_one
    with pytest.raises(OSError):
        failing.attach(7, "eth0")
    assert seen == [True] and not CLAIMS.held_by_other(point, id(object()))
