"""The control socket's exchange when the agent is busy or stopping (agent/localserver.py,
agent/control.py): every request gets a reply that says what happened, never "Connection
reset by peer".

The reset came from the stop: `agent reload` sent while the agent was stopping (a replay
ending, SIGTERM) sat in the listening socket's backlog or was being read, and Linux resets a
Unix stream peer whose connection is closed unaccepted or with its request unread. A busy
server (its io thread starved, as on a loaded machine) makes that window long: here the
io thread is held in the middle of a request, deterministically, while the agent stops.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from netflow_agent import control
from netflow_agent.control import (
    ControlError,
    ControlServer,
    recv_message,
    request,
    send_message,
)


class StubPipeline:
    """What the control server needs of a pipeline: reload requests, recorded; ``answer``
    says whether (and how) one is answered at once."""

    def __init__(self, answer: Any = None):
        self.reloads: list[Any] = []
        self.answer = answer

    def request_reload(self, reply: Any) -> None:
        self.reloads.append(reply)
        if self.answer is not None:
            self.answer(self, reply)


class Outcome:
    """A reload outcome as the pipeline hands it to the reply callback."""

    ok, result, generation = True, "ok", 2

    def text(self) -> str:
        return "reloaded: generation 2 applied"


def server(path: Path, pipeline: Any) -> ControlServer:
    return ControlServer(str(path), pipeline, lambda p: {}, lambda snap: "")


def sent_request(path: Path, cmd: str = "reload") -> socket.socket:
    """A client that connected and sent its request, waiting for the reply (as `request`)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(20)
    s.connect(str(path))
    send_message(s, {"cmd": cmd})
    return s


def reply_of(s: socket.socket) -> dict[str, Any]:
    with s:
        return recv_message(s)


def told_stopping(reply: dict[str, Any]) -> bool:
    """The reply says the agent is stopping and the request was not carried out."""
    error = reply.get("error", "")
    return reply["ok"] is False and "stopping" in error and "not carried out" in error


def test_requests_waiting_while_the_agent_stops_are_told_so(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """The io thread is held in the middle of the first request (a busy agent) while two
    more wait in the backlog; then the agent stops. All three are told that the agent is
    stopping and that the reload was not applied; the pipeline was never asked; a client
    arriving after that is refused with a message that says why."""
    path = tmp_path / "agent.sock"
    reading, release = threading.Event(), threading.Event()
    parse = control.parse_request

    def slow_parse(buf: bytes) -> Any:
        reading.set()
        assert release.wait(20)
        return parse(buf)

    monkeypatch.setattr(control, "parse_request", slow_parse)
    pipeline = StubPipeline()
    srv = server(path, pipeline)
    srv.start()
    srv.serve()
    first = sent_request(path)
    assert reading.wait(20)
    waiting = [sent_request(path), sent_request(path)]  # in the backlog: nobody accepts
    assert srv.server is not None
    stop = srv.server.stop
    closer = threading.Thread(target=srv.close)
    closer.start()
    assert stop.wait(20)
    release.set()  # the io thread goes on: the server is stopping by now
    closer.join(20)
    assert not closer.is_alive()
    replies = [reply_of(s) for s in (first, *waiting)]
    assert all(told_stopping(r) for r in replies), replies
    assert pipeline.reloads == []
    with pytest.raises(ControlError, match="no such socket|the agent is stopping"):
        request(str(path), "reload", timeout=5)


def test_a_request_to_an_agent_that_stops_before_serving_is_told_so(tmp_path: Path) -> None:
    """Bound but never served (start-up failed after the bind): the waiting client gets the
    stopping reply, not a reset."""
    path = tmp_path / "agent.sock"
    srv = server(path, StubPipeline())
    srv.start()
    waiting = sent_request(path)
    srv.close()
    reply = reply_of(waiting)
    assert told_stopping(reply), reply


def test_a_reload_refused_as_busy_is_asked_again_and_applied_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """One worker, one queue slot: the third reload is refused as busy (not started), and
    ``request`` asks again until it is served; the pipeline sees each reload once. The
    refusal is logged (an operator sees why a client waited)."""
    caplog.set_level(logging.WARNING, logger="agent.localserver")
    path = tmp_path / "agent.sock"
    monkeypatch.setattr(control, "RETRY_DELAYS_S", (0.2,) * 50, raising=False)
    holder: dict[str, Any] = {}

    def answer(pipeline: StubPipeline, reply: Any) -> None:
        if len(pipeline.reloads) == 1:  # the first waits until the third was refused
            holder["first"] = reply
        else:
            reply(Outcome())

    pipeline = StubPipeline(answer)
    srv = server(path, pipeline)
    srv.start()
    srv.serve(workers=1)
    assert srv.server is not None
    counters = srv.server.counters
    try:
        first = sent_request(path)
        wait_until(lambda: "first" in holder)  # the one worker waits for the pipeline
        results: list[dict[str, Any]] = []
        others = [threading.Thread(target=lambda: results.append(
            request(str(path), "reload", timeout=20))) for _ in range(2)]
        for t in others:
            t.start()
        wait_until(lambda: counters.busy >= 1)  # one queued, the other refused
        holder["first"](Outcome())
        for t in others:
            t.join(20)
        replies = [reply_of(first), *results]
    finally:
        srv.close()
    assert [r.get("result") for r in replies] == ["ok"] * 3, replies
    assert len(pipeline.reloads) == 3 and counters.busy >= 1
    assert "every worker busy and the queue full" in caplog.text


def wait_until(condition: Any, timeout: float = 20) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        done.wait(0.02)
    raise AssertionError("condition not reached")


class HeldPipeline(StubPipeline):
    """The first reload holds the control worker that asked for it (in ``request_reload``)
    until ``release`` is set, then is applied; later ones are applied at once unless their
    asker withdrew them (a pipeline skips those). ``applied`` counts what ran."""

    def __init__(self) -> None:
        super().__init__()
        self.holding, self.release = threading.Event(), threading.Event()
        self.applied = 0

    def request_reload(self, reply: Any) -> None:
        self.reloads.append(reply)
        if len(self.reloads) == 1:
            self.holding.set()
            assert self.release.wait(20)
        if reply.start():
            self.applied += 1
            reply(Outcome())


def test_a_reload_that_waited_out_its_time_in_the_queue_is_not_applied(tmp_path: Path) -> None:
    """A reload queued behind a worker held by a stuck pipeline: its time counts from the
    accept, not from when a worker takes it. Once that time is over (the client, which
    waits 5 s more, is about to give up) it is answered "not applied" and never applied:
    it used to start then and be applied after its client had reported exit 75."""
    path = tmp_path / "agent.sock"
    pipeline = HeldPipeline()
    srv = ControlServer(str(path), pipeline, lambda p: {}, lambda snap: "",
                        reload_timeout_s=0.3)
    srv.start()
    srv.serve(workers=1)
    assert srv.server is not None
    try:
        first = sent_request(path)
        assert pipeline.holding.wait(20)
        second = sent_request(path)
        wait_until(lambda: srv.server is not None and srv.server._queue.qsize() == 1)
        threading.Event().wait(0.4)  # longer than its whole time: a lower bound, not a gate
        pipeline.release.set()
        replies = [reply_of(first), reply_of(second)]
    finally:
        srv.close()
    assert replies[0]["result"] == "ok"
    assert replies[1]["result"] == "failed", replies
    assert replies[1]["message"].startswith("not applied: the agent did not get to it within "
                                            "0.3 s")
    assert pipeline.applied == 1 and len(pipeline.reloads) == 2


def test_a_reload_whose_client_hung_up_while_queued_is_not_started(tmp_path: Path) -> None:
    """The client gave up (timeout, ^C) while its reload waited for a worker: nobody hears
    the outcome, so the pipeline is not asked at all."""
    path = tmp_path / "agent.sock"
    pipeline = HeldPipeline()
    srv = ControlServer(str(path), pipeline, lambda p: {}, lambda snap: "")
    srv.start()
    srv.serve(workers=1)
    assert srv.server is not None
    counters = srv.server.counters
    try:
        first = sent_request(path)
        assert pipeline.holding.wait(20)
        gone = sent_request(path)
        wait_until(lambda: srv.server is not None and srv.server._queue.qsize() == 1)
        gone.close()
        pipeline.release.set()
        assert reply_of(first)["result"] == "ok"
        wait_until(lambda: counters.abandoned == 1)
    finally:
        srv.close()
    assert len(pipeline.reloads) == 1 and pipeline.applied == 1


def test_a_connection_pushed_out_by_newer_ones_is_told_to_retry(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """At ``max_connections`` open connections a new one pushes out the oldest: that client
    gets the busy reply (not started, ask again), not a silent close ("no reply": exit 75
    for a reload that never reached the agent), and the agent logs it."""
    caplog.set_level(logging.WARNING, logger="agent.localserver")
    path = tmp_path / "agent.sock"
    srv = server(path, StubPipeline())
    srv.start()
    srv.serve(max_connections=2)
    assert srv.server is not None
    counters = srv.server.counters
    try:
        clients = []
        for _ in range(3):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(20)
            s.connect(str(path))
            clients.append(s)
        wait_until(lambda: counters.evicted == 1)
        reply = reply_of(clients[0])
    finally:
        for s in clients:
            s.close()
        srv.close()
    assert reply.get("retry") is True and "busy" in reply["error"], reply
    assert "2 connections open: the oldest was answered busy" in caplog.text


def test_the_stopping_agent_leaves_a_new_agents_socket_in_place(tmp_path: Path) -> None:
    """While an agent stops, its listener refuses connections; a second agent starting on
    the same path takes the file for stale and binds its own. The first, closing, must not
    remove the second's socket (it used to: the second agent then had no control socket)."""
    from netflow_agent.localserver import _stop_connecting

    path = tmp_path / "agent.sock"
    old = server(path, StubPipeline())
    old.start()
    old.serve()
    assert old.server is not None
    _stop_connecting(old.server.sock)  # what old.close() does first
    answering = StubPipeline(lambda p, reply: reply(Outcome()))
    new = server(path, answering)
    new.start()  # replaces the refused ("stale") file
    new.serve()
    try:
        old.close()
        assert path.exists()
        assert request(str(path), "reload", timeout=20)["result"] == "ok"
    finally:
        new.close()
    assert len(answering.reloads) == 1 and not path.exists()


def test_a_full_connection_queue_is_asked_again_like_a_busy_reply(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The listening socket's backlog is full: ``connect`` fails at once (EAGAIN). The
    request did not reach the agent: it is asked again after the busy delays and served
    once there is room (it used to fail at once: "[Errno 11] Resource temporarily
    unavailable", exit 1)."""
    path = tmp_path / "agent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(0)
    fillers = full_backlog(path)
    served: list[dict[str, Any]] = []

    def make_room(delay: float) -> None:  # the agent catches up while the client waits
        listener.setblocking(False)
        try:
            while True:
                listener.accept()[0].close()
        except BlockingIOError:
            pass
        listener.setblocking(True)
        threading.Thread(target=answer_one, daemon=True).start()

    def answer_one() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(20)
            served.append(recv_message(conn))
            send_message(conn, {"ok": True, "text": "stats\n"})

    monkeypatch.setattr(control.time, "sleep", make_room)
    try:
        reply = request(str(path), "stats", timeout=20)
    finally:
        for s in fillers:
            s.close()
        listener.close()
    assert reply == {"ok": True, "text": "stats\n"} and served == [{"cmd": "stats"}]


def test_a_connection_queue_that_stays_full_ends_in_a_readable_busy_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(0)
    fillers = full_backlog(path)
    monkeypatch.setattr(control, "RETRY_DELAYS_S", (0.01,))
    try:
        status = control.cmd_control("reload", str(path), None)
    finally:
        for s in fillers:
            s.close()
        listener.close()
    err = capsys.readouterr().err
    assert status == 1
    assert "the agent is busy" in err and "not carried out, try again" in err, err


def full_backlog(path: Path) -> list[socket.socket]:
    """Connect (never accepted) until the listener's backlog is full."""
    fillers = []
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(str(path))
        except BlockingIOError:
            s.close()
            return fillers
        fillers.append(s)


def test_a_stopping_agent_tells_stats_its_request_was_not_served(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The stopping reply fits any request: ``agent stats`` is not told about a reload;
    ``agent reload`` is told its reload was not applied."""
    path = tmp_path / "agent.sock"
    srv = server(path, StubPipeline())
    srv.start()
    waiting = [sent_request(path, "stats"), sent_request(path, "reload")]
    srv.close()
    stats, reload = [reply_of(s) for s in waiting]
    assert stats == reload == control.STOPPING_REPLY
    assert "reload" not in stats["error"]


# --- the metrics endpoint (TCP: its listener cannot be shut down for connecting) -------------


def test_a_client_that_keeps_connecting_cannot_hold_the_metrics_stop_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A scraper that opens a new connection each time one is answered kept the stop
    answering forever (a TCP backlog refills): past systemd's TimeoutStopSec, a SIGKILL.
    At most the listen backlog's worth get the stopping reply."""
    from netflow_agent import localserver
    from netflow_agent.metrics import LISTEN_BACKLOG, MetricsServer

    srv = MetricsServer("127.0.0.1:0", lambda: {})
    srv.start()
    srv.serve()
    assert srv.server is not None
    port = srv.port
    clients: list[socket.socket] = []
    finish = localserver.finish

    def finish_then_connect_again(sock: socket.socket, reply: bytes) -> None:
        finish(sock, reply)
        clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))

    monkeypatch.setattr(localserver, "finish", finish_then_connect_again)
    counters = srv.server.counters
    closer = threading.Thread(target=srv.close, daemon=True)
    try:
        clients.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        closer.start()
        closer.join(20)
        assert not closer.is_alive()
    finally:
        monkeypatch.undo()
        for s in clients:
            s.close()
    assert 1 <= counters.stopping <= LISTEN_BACKLOG + 1


def test_the_metrics_stopping_reply_carries_the_time_it_is_sent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The 503 replies were built once at start: their Date header said when the agent
    started, not when the reply was sent."""
    from netflow_agent.metrics import MetricsServer

    started, stopped = time.gmtime(0), time.gmtime(86400 * 365)
    monkeypatch.setattr(time, "gmtime", lambda *a: started)
    srv = MetricsServer("127.0.0.1:0", lambda: {})
    srv.start()
    srv.serve()
    client = socket.create_connection(("127.0.0.1", srv.port), timeout=20)
    monkeypatch.setattr(time, "gmtime", lambda *a: stopped)
    srv.close()
    with client:
        head = client.recv(65536).decode()
    assert head.startswith("HTTP/1.1 503"), head
    assert "Date: Fri, 01 Jan 1971 00:00:00 GMT" in head, head


def test_agent_reload_says_its_reload_was_not_applied_when_told_the_agent_stops(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def stopping_agent() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(20)
            recv_message(conn)
            send_message(conn, control.STOPPING_REPLY)

    t = threading.Thread(target=stopping_agent, daemon=True)
    t.start()
    try:
        status = control.cmd_control("reload", str(path), None)
    finally:
        t.join(20)
        listener.close()
    err = capsys.readouterr().err
    assert status == 1
    assert err == ("agent reload: the agent is stopping: the request was not carried out: "
                   "the reload was not applied\n")


def test_durations_in_messages_keep_their_meaning() -> None:
    """``{timeout:.0f}`` printed "within 0 s" for a sub-second timeout."""
    assert [control.seconds(v) for v in (0.05, 0.3, 1.5, 60.0, 65.0, 3600.0)] == \
        ["0.05", "0.3", "1.5", "60", "65", "3600"]
