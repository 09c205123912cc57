"""NatTracker: exactly one start and one stop per translation, whichever messages are lost."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from netflow_agent.model import NAT_START, NAT_STOP
from netflow_agent.plugins.ingest_conntrack import ctnetlink
from netflow_agent.plugins.ingest_conntrack.ctnetlink import CtEntry, Tuple
from netflow_agent.plugins.ingest_conntrack.events import entry_key
from netflow_agent.plugins.ingest_conntrack.resync import NatTracker

CLIENT, SERVER, PUBLIC = bytes([10, 0, 0, 1]), bytes([10, 0, 1, 1]), bytes([10, 0, 1, 254])
SEC = 1_000_000_000


def conn(
    i: int,
    kind: int = ctnetlink.MSG_CT_NEW,
    start_ns: int = 0,
    stop_ns: int = 0,
    status: int = ctnetlink.IPS_SRC_NAT,
) -> CtEntry:
    """Connection ``i`` (source port 10000+i) masqueraded to PUBLIC:20000+i."""
    orig = Tuple(CLIENT, SERVER, 17, 10000 + i, 53)
    reply = Tuple(SERVER, PUBLIC, 17, 53, 20000 + i)
    if not status & ctnetlink.IPS_SRC_NAT:
        reply = Tuple(SERVER, CLIENT, 17, 53, 10000 + i)
    flags = ctnetlink.NLM_F_CREATE if kind == ctnetlink.MSG_CT_NEW else 0
    return CtEntry(kind, flags, 2, orig, reply, status, 7000 + i, 0, 0, 0, 0, start_ns, stop_ns)


def destroy(i: int) -> CtEntry:
    return conn(i, ctnetlink.MSG_CT_DELETE, start_ns=(100 + i) * SEC, stop_ns=(200 + i) * SEC)


def alive(*ids: int) -> dict:  # type: ignore[type-arg]
    return {entry_key(e): e for e in (conn(i, start_ns=(100 + i) * SEC) for i in ids)}


def kinds(events) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    return [(e.event, e.src_port - 10000) for e in events]


def test_new_then_destroy() -> None:
    t = NatTracker()
    start = t.on_new(conn(1), now_ns=5)
    stop = t.on_destroy(destroy(1), now_ns=9)
    assert kinds(start + stop) == [(NAT_START, 1), (NAT_STOP, 1)]
    assert start[0].time_ns == 5 and stop[0].time_ns == 201 * SEC
    assert stop[0].post_src_addr == PUBLIC and stop[0].post_src_port == 20001
    assert (t.starts, t.stops, t.open_count) == (1, 1, 0)


def test_untranslated_is_skipped_unless_asked() -> None:
    plain = conn(1, status=0)
    assert NatTracker().on_new(plain, 1) == [] and NatTracker(nat_only=True).wanted(plain) is False
    t = NatTracker(nat_only=False)
    assert kinds(t.on_new(plain, 1)) == [(NAT_START, 1)]


def test_lost_new_recovered_from_destroy_with_exact_start() -> None:
    t = NatTracker()
    events = t.on_destroy(destroy(1), now_ns=999 * SEC)
    assert kinds(events) == [(NAT_START, 1), (NAT_STOP, 1)]
    assert [e.time_ns for e in events] == [101 * SEC, 201 * SEC]
    assert t.late_starts == 1


def test_lost_new_found_by_dump_then_destroy_stops_once() -> None:
    t = NatTracker()
    t.begin_resync()
    events = t.reconcile(alive(1), now_ns=150 * SEC)
    assert kinds(events) == [(NAT_START, 1)] and events[0].time_ns == 101 * SEC
    assert t.on_new(conn(1), 151 * SEC) == []  # a NEW redelivered later is a duplicate
    assert kinds(t.on_destroy(destroy(1), 300 * SEC)) == [(NAT_STOP, 1)]
    assert (t.starts, t.stops, t.resync_starts) == (1, 1, 1)


def test_lost_destroy_stopped_by_dump_and_late_destroy_ignored() -> None:
    t = NatTracker()
    t.on_new(conn(1), 1)
    t.on_new(conn(2), 1)
    t.begin_resync()
    events = t.reconcile(alive(2), now_ns=400 * SEC)
    assert kinds(events) == [(NAT_STOP, 1)] and events[0].time_ns == 400 * SEC
    assert t.on_destroy(destroy(1), 401 * SEC) == []
    assert (t.stops, t.resync_stops, t.duplicates, t.open_count) == (1, 1, 1, 1)


def test_reliable_mode_waits_for_the_exact_stop() -> None:
    t = NatTracker(stop_grace_ns=10 * SEC)
    t.on_new(conn(1), 1)
    t.on_new(conn(2), 1)
    t.begin_resync()
    assert t.reconcile(alive(), now_ns=400 * SEC) == []  # both gone: wait for redelivery
    assert t.next_deadline() == 410 * SEC
    late = t.on_destroy(destroy(1), 405 * SEC)
    assert kinds(late) == [(NAT_STOP, 1)] and late[0].time_ns == 201 * SEC
    assert t.expire(409 * SEC) == []
    expired = t.expire(410 * SEC)
    assert kinds(expired) == [(NAT_STOP, 2)] and expired[0].time_ns == 400 * SEC
    assert t.on_destroy(destroy(2), 411 * SEC) == [] and t.next_deadline() is None


def test_events_during_the_dump_are_not_undone() -> None:
    t = NatTracker()
    t.on_new(conn(1), 1)
    t.begin_resync()
    # the dump saw 1 and 2; then 3 started (not in the dump) and 2 ended (NEW of 2 was lost)
    assert kinds(t.on_new(conn(3), 2)) == [(NAT_START, 3)]
    assert kinds(t.on_destroy(destroy(2), 3)) == [(NAT_START, 2), (NAT_STOP, 2)]
    assert t.reconcile(alive(1, 2), now_ns=4) == []
    assert t.open_count == 2


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_reliable_mode_exactly_once_under_any_loss(data) -> None:  # type: ignore[no-untyped-def]
    """Random NEW losses, delayed DESTROY redelivery and dumps: one start and stop each."""
    t = NatTracker(stop_grace_ns=10 * SEC)
    table: set[int] = set()
    delayed: list[int] = []
    out = []
    created = ended = 0
    now = 1000 * SEC
    for _ in range(data.draw(st.integers(1, 40))):
        now += SEC // 10
        action = data.draw(st.sampled_from(["new", "new", "end", "resync", "redeliver"]))
        if action == "new":
            table.add(created)
            if data.draw(st.booleans()):  # delivered, else lost in an overrun
                out += t.on_new(conn(created), now)
            created += 1
        elif action == "end" and table:
            i = data.draw(st.sampled_from(sorted(table)))
            table.discard(i)
            ended += 1
            if data.draw(st.booleans()):
                out += t.on_destroy(destroy(i), now)
            else:
                delayed.append(i)  # kept on the kernel's dying list, redelivered later
        elif action == "resync":
            t.begin_resync()
            out += t.reconcile(alive(*table), now)
        elif action == "redeliver" and delayed:
            out += t.on_destroy(destroy(delayed.pop(0)), now)
        out += t.expire(now)
    for i in delayed:
        out += t.on_destroy(destroy(i), now)
    t.begin_resync()
    out += t.reconcile(alive(*table), now)
    out += t.expire(now + 3600 * SEC)
    starts = sorted(e.src_port - 10000 for e in out if e.event == NAT_START)
    stops = sorted(e.src_port - 10000 for e in out if e.event == NAT_STOP)
    assert starts == list(range(created))
    assert stops == sorted(set(range(created)) - table) and len(stops) == ended
    assert (t.starts, t.stops) == (created, ended)
