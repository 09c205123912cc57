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

import socket
import threading
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
    """The reply says the agent is stopping and the reload was not applied."""
    error = reply.get("error", "")
    return reply["ok"] is False and "stopping" in error and "not applied" in error


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
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One worker, one queue slot: the third reload is refused as busy (not started), and
    ``request`` asks again until it is served; the pipeline sees each reload once."""
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


def wait_until(condition: Any, timeout: float = 20) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        done.wait(0.02)
    raise AssertionError("condition not reached")
