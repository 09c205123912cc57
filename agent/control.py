"""The control socket: ``agent stats`` and ``agent reload`` talk to a running agent here.

A Unix stream socket (``[agent] control_socket``, mode ``control_socket_mode``, 0600 by
default: only the agent's user and root may connect). One request per connection; both
directions are framed the same way: a 4-byte big-endian length, then one msgpack map.

Requests (``{"cmd": ...}``) and replies:

* ``stats``: ``{"ok": true, "text": <report>}`` (the seed's stat text, :mod:`agent.report`);
* ``stats-json``: ``{"ok": true, "stats": <snapshot>}``;
* ``reload``: ``{"ok": <bool>, "result": "ok"|"unchanged"|"failed"|"unknown",
  "message": <str>, "generation": <int>}``, sent once the pipeline finished the reload
  (:mod:`agent.reloading`): ``ok`` is true only when the new configuration runs (or nothing
  changed); otherwise ``message`` gives the reason and the old configuration keeps running.
  A reload the pipeline did not start within ``RELOAD_TIMEOUT_S`` of the connection's
  accept (time queued behind busy workers included: the client gives up 5 s later), or
  before the agent stopped, is withdrawn: ``failed``, never applied later, logged (WARNING)
  and counted as a failed reload (``agent stats``). ``unknown``: started, but no outcome
  within ``RELOAD_TIMEOUT_S`` (the reload may still finish);
* ``top`` (with ``n``, ``sort``, ``filter``, see :mod:`agent.flowtop`): ``{"ok": true,
  "top": {...}}``, the biggest flows in the cache and the header totals of ``agent top``;
* anything else: ``{"ok": false, "error": "unknown command ..."}`` (errors never repeat the
  request: a client learns nothing it did not know, and a log line cannot be flooded).

Limits (issue 18 item 9): a request is at most :data:`MAX_REQUEST` bytes and must arrive
whole within :data:`agent.localserver.REQUEST_DEADLINE_S` of the connection; at most a few
requests are computed at once (workers), and idle or slow clients hold no thread
(:class:`agent.localserver.LocalServer`). Replies may be larger (:data:`MAX_REPLY`).
Every worker busy (or the connection pushed out by newer ones): :data:`BUSY_REPLY`
(``retry``: not started; :func:`request` asks again, as it does when the listening socket's
backlog is full and ``connect`` fails with ``EAGAIN``); the agent stopping:
:data:`STOPPING_REPLY` to every request it has not started, those still in the listening
socket's backlog included (none is reset). The socket file is removed at the close only when
it is still the one this agent bound (a second agent may have replaced it meanwhile).

Threading: the server threads never touch pipeline state. Snapshots are built on the pipeline
thread through an ``ITEM_CALL`` inbox item (:func:`call_on_pipeline`), reloads through
:meth:`Pipeline.request_reload` with a reply callback.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack

from netflow_agent import localfiles, logutil
from netflow_agent.localserver import LocalServer, Rejected, refuse_pending

log = logging.getLogger("agent.control")
_LEN = struct.Struct("!I")
#: the largest request the agent reads (a command and a few parameters)
MAX_REQUEST = 64 * 1024
#: the largest reply a client reads (``stats-json`` of many components, ``top``)
MAX_REPLY = 16 * 1024 * 1024
#: commands the server knows (the error for an unknown one lists them)
COMMANDS = ("stats", "stats-json", "reload", "top")
STATS_TIMEOUT_S = 10.0
RELOAD_TIMEOUT_S = 60.0
#: every worker busy: the request was read but not started (``retry``: asking again is safe)
BUSY_REPLY = {"ok": False, "retry": True, "error": "the agent is busy with other control "
              "requests; try again"}
#: the agent stopped before it started the request (sent before the request is read: it
#: fits any command; ``agent reload`` adds that the reload was not applied)
STOPPING_REPLY = {"ok": False, "stopping": True, "error": "the agent is stopping: the request "
                  "was not carried out"}
#: what a client adds to a stopping reply to a reload
STOPPING_RELOAD = "the reload was not applied"
#: what ``agent reload`` says when it cannot know whether the reload happened
UNKNOWN_OUTCOME = "the reload may or may not happen: see `agent stats` (Reload:) or the log"
#: how long ``request`` waits before asking again after a ``retry`` reply (then it gives up)
RETRY_DELAYS_S = (0.1, 0.3, 1.0)
#: the listening socket's backlog (connections the io thread has not accepted yet)
LISTEN_BACKLOG = 16


def seconds(value: float) -> str:
    """A duration for a message: ``60``, ``0.2``, ``1.5``, ``3600`` (never "0" for a short
    one, never an exponent for a long one)."""
    return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


class ControlError(Exception):
    """The agent could not be reached, or it answered with an error.

    :ivar sent: the request reached the agent before the failure (no reply, a bad reply).
    """

    sent = False


class ConnectionClosed(ControlError):
    """The peer closed the connection before a whole message arrived."""


# --- framing ---------------------------------------------------------------------------------


def frame(message: dict[str, Any]) -> bytes:
    """One length-prefixed msgpack map, as bytes."""
    data = msgpack.packb(message, use_bin_type=True)
    return _LEN.pack(len(data)) + data


def send_message(sock: socket.socket, message: dict[str, Any]) -> None:
    """Write one length-prefixed msgpack map."""
    sock.sendall(frame(message))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionClosed("connection closed in the middle of a message")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv_message(sock: socket.socket, limit: int = MAX_REPLY) -> dict[str, Any]:
    """Read one length-prefixed msgpack map (a client reading a reply).

    :raises ControlError: short read, oversized or malformed message.
    """
    (size,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    if size > limit:
        raise ControlError(f"message of {size} bytes is too large (limit {limit})")
    return _decode(_recv_exact(sock, size))


def _decode(data: bytes) -> dict[str, Any]:
    """A msgpack map; errors say what was wrong, never what the bytes were."""
    try:
        message = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        raise ControlError("malformed message (not one msgpack map)") from None
    if not isinstance(message, dict):
        raise ControlError("message is not a map")
    return message


def parse_request(buf: bytes) -> dict[str, Any] | None:
    """The server's reader: ``None`` until one whole request is in ``buf``.

    :raises Rejected: larger than :data:`MAX_REQUEST`, bytes after the request, or not a
        msgpack map; the reply says which, without repeating any of the input.
    """
    if len(buf) < _LEN.size:
        return None
    (size,) = _LEN.unpack_from(buf)
    if size > MAX_REQUEST:
        raise Rejected(frame({"ok": False, "error": f"request too large (limit {MAX_REQUEST} "
                              "bytes)"}), "request too large")
    if len(buf) < _LEN.size + size:
        return None
    if len(buf) > _LEN.size + size:
        raise Rejected(frame({"ok": False, "error": "one request per connection"}),
                       "bytes after the request")
    try:
        return _decode(buf[_LEN.size:])
    except ControlError as exc:
        raise Rejected(frame({"ok": False, "error": str(exc)}), str(exc)) from None


# --- client ----------------------------------------------------------------------------------


def request(path: str, cmd: str, timeout: float = RELOAD_TIMEOUT_S + 5,
            **params: Any) -> dict[str, Any]:
    """Send one command (and its ``params``) to the agent at ``path``; return its reply.

    A reply with ``retry`` (every worker was busy: the agent did not start the request) is
    asked again after each of :data:`RETRY_DELAYS_S`; nothing else is ever sent twice (a
    reload whose reply was lost may have been applied).

    :raises ControlError: no agent there, permission denied, timeout, no or bad reply.
    """
    message = {"cmd": cmd, **params}
    for delay in RETRY_DELAYS_S:
        reply = _exchange(path, message, timeout)
        if not reply.get("retry"):
            return reply
        time.sleep(delay)
    return _exchange(path, message, timeout)


def _exchange(path: str, message: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One connection: send ``message``, read the reply."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            _connect(sock, path)
        except BlockingIOError:  # the backlog is full: the agent has not seen the request
            return {"ok": False, "retry": True, "error": f"{path}: the agent is busy (its "
                    "queue of control connections is full); the request was not carried "
                    "out, try again"}
        try:
            send_message(sock, message)
        except (BrokenPipeError, ConnectionResetError) as exc:
            # the agent closed first (stopping, busy, request refused): it may have said why;
            # the request did not reach it whole, so it was not carried out
            try:
                return recv_message(sock)
            except (ControlError, OSError):
                raise ControlError(f"{path}: the agent closed the connection before taking "
                                   f"the request ({exc.strerror})") from None
        except OSError as exc:
            raise ControlError(f"{path}: {exc}") from None
        try:
            return recv_message(sock)
        except (ControlError, OSError) as exc:  # asked, but no answer: the outcome is unknown
            if isinstance(exc, TimeoutError):
                text = f"no reply within {seconds(timeout)} s"
            elif isinstance(exc, (ConnectionResetError, ConnectionClosed)):
                text = "the agent closed the connection without a reply"
            else:
                text = str(exc)
            error = ControlError(f"{path}: {text}")
            error.sent = True
            raise error from None
    finally:
        sock.close()


def _connect(sock: socket.socket, path: str) -> None:
    try:
        sock.connect(path)
    except FileNotFoundError:
        raise ControlError(f"{path}: no such socket (is the agent running? "
                           "is [agent] control_socket set?)") from None
    except PermissionError:
        raise ControlError(f"{path}: permission denied (run as the agent's user or root)"
                           ) from None
    except ConnectionRefusedError:
        raise ControlError(f"{path}: connection refused (the agent is stopping, or it is not "
                           "running and left a stale socket)") from None
    except BlockingIOError:  # the caller answers it as busy
        raise
    except OSError as exc:
        raise ControlError(f"{path}: {exc}") from None


# --- calls into the pipeline thread ----------------------------------------------------------


def _wait(done: threading.Event, timeout: float, cancel: threading.Event | None) -> bool:
    """Wait for ``done``; give up at ``timeout`` or as soon as ``cancel`` is set."""
    deadline = time.monotonic() + timeout
    while not done.wait(0.05):
        if time.monotonic() >= deadline or (cancel is not None and cancel.is_set()):
            return False
    return True


def call_on_pipeline(pipeline: Any, fn: Callable[[Any], Any],
                     timeout: float = STATS_TIMEOUT_S,
                     cancel: threading.Event | None = None) -> Any:
    """Run ``fn(pipeline)`` on the pipeline thread and return its result.

    :param cancel: set when the agent stops: stop waiting (the pipeline may never get to it).
    :raises TimeoutError: the pipeline did not get to it in time (or the agent is stopping).
    """
    # Here, not at the top: a client of this module (request(): a bench or tool beside the
    # agent) then loads no NumPy, whose libraries' page cache the agent drops before
    # mapping them (agent/libcache.py: pages another process maps stay in large folios).
    from netflow_agent.runtime import ITEM_CALL

    done = threading.Event()
    box: dict[str, Any] = {}

    def run(p: Any) -> None:
        try:
            box["value"] = fn(p)
        except Exception as exc:
            box["error"] = exc
            raise
        finally:
            done.set()

    pipeline.context.inbox.put((ITEM_CALL, run))
    if not _wait(done, timeout, cancel):
        if cancel is not None and cancel.is_set():
            raise TimeoutError("the agent is stopping")
        raise TimeoutError(f"the pipeline did not answer within {seconds(timeout)} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def reload_and_wait(pipeline: Any, timeout: float = RELOAD_TIMEOUT_S,
                    cancel: threading.Event | None = None,
                    limit: float | None = None) -> dict[str, Any]:
    """Ask the pipeline to reload and wait for the outcome: the ``reload`` reply.

    Giving up (``timeout``, or ``cancel``: the agent stops) withdraws the request when the
    pipeline has not started it (:class:`~agent.reloading.ReloadRequest`): the reply is
    then a definite ``failed`` ("not applied"), logged here (WARNING) and counted by the
    pipeline when it gets to the request (:meth:`Lifecycle.reload_requested`); only a
    reload that had started without finishing is ``unknown``. A ``timeout`` of 0 or less
    (the request waited its whole time in the server's queue) withdraws it at once.

    :param limit: the whole time the request was given (for the messages; ``timeout`` is
        what is left of it), ``timeout`` by default.
    """
    from netflow_agent.reloading import ReloadRequest  # not at the top: see call_on_pipeline

    limit = timeout if limit is None else limit

    done = threading.Event()
    box: dict[str, Any] = {}

    def reply(outcome: Any) -> None:
        box["reply"] = {"ok": outcome.ok, "result": outcome.result,
                        "message": outcome.text(), "generation": outcome.generation}
        done.set()

    asked = ReloadRequest(reply)
    if timeout > 0:
        pipeline.request_reload(asked)
        if _wait(done, timeout, cancel):
            return box["reply"]
    stopping = cancel is not None and cancel.is_set()
    why = ("the agent is stopping" if stopping else
           f"the agent did not get to it within {seconds(limit)} s")
    if asked.withdraw(why):  # the pipeline never started it, and now never will
        if timeout <= 0:  # the pipeline counts it when it gets there, as any withdrawn one
            pipeline.request_reload(asked)
        log.warning("reload not applied: %s (asked over the control socket)", why,
                    extra=logutil.NEVER_FOLD)  # each one is an event an operator must see
        return {"ok": False, "result": "failed", "message": f"not applied: {why}; nothing "
                "changed"}
    if done.is_set():  # it finished just now
        return box["reply"]
    why = ("the agent is stopping" if stopping else
           f"no reload result within {seconds(limit)} s")
    return {"ok": False, "result": "unknown", "message": f"{why}; {UNKNOWN_OUTCOME}"}


# --- server ----------------------------------------------------------------------------------


class ControlServer:
    """Serves the control socket (see the module docstring for the commands and limits).

    :param path: socket path.
    :param pipeline: the running :class:`~agent.pipeline.Pipeline`.
    :param snapshot: ``pipeline -> dict`` run on the pipeline thread (see
        :func:`agent.report.build_snapshot`).
    :param formatter: snapshot -> the ``agent stats`` text.
    :param mode: permission bits of the socket file.
    :param top: ``(pipeline, request) -> dict`` run on the pipeline thread for ``top``
        (:class:`agent.flowtop.FlowTop`); ``None``: the command is unavailable.
    :param reload_timeout_s: how long a reload may take from the connection's accept until
        the pipeline starts it (tests shorten it).
    """

    def __init__(self, path: str, pipeline: Any, snapshot: Callable[[Any], dict[str, Any]],
                 formatter: Callable[[dict[str, Any]], str], mode: int = 0o600,
                 top: Callable[[Any, dict[str, Any]], dict[str, Any]] | None = None,
                 reload_timeout_s: float = RELOAD_TIMEOUT_S):
        self.path = path
        self.pipeline = pipeline
        self.snapshot = snapshot
        self.formatter = formatter
        self.mode = mode
        self.top = top
        self.reload_timeout_s = reload_timeout_s
        self.requests = 0
        self._bound: tuple[int, int] | None = None  # (st_dev, st_ino) of our socket file
        self._made_dir = False
        self._sock: socket.socket | None = None
        self.server: LocalServer | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Bind (replacing a stale socket file) and listen; :meth:`serve` answers.

        :raises OSError: the path is taken by a live agent, or cannot be created.
        """
        self._remove_stale()
        parent = Path(self.path).parent
        self._made_dir = not parent.exists()
        parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the file never exists with wider bits than 0600
        try:
            sock.bind(self.path)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
        os.chmod(self.path, self.mode)
        st = os.stat(self.path)
        self._bound = (st.st_dev, st.st_ino)
        sock.listen(LISTEN_BACKLOG)
        self._sock = sock
        log.info("control socket %s (mode %04o)", self.path, self.mode)

    def serve(self, **limits: Any) -> None:
        """Start answering (after the privilege drop: the threads start with its set).

        :param limits: :class:`~agent.localserver.LocalServer` keywords (tests shorten the
            deadlines).
        """
        assert self._sock is not None
        self.server = LocalServer(self._sock, "control", parse_request, self._reply,
                                  frame(BUSY_REPLY), stopping_reply=frame(STOPPING_REPLY),
                                  **limits)
        self._stop = self.server.stop
        self.server.serve()

    def chown(self, uid: int, gid: int) -> None:
        """Hand the socket file (and its directory, when we created it) to the user the agent
        drops to, so it can still remove the socket at exit."""
        os.chown(self.path, uid, gid)
        if self._made_dir:
            os.chown(Path(self.path).parent, uid, gid)

    def _remove_stale(self) -> None:
        problem = localfiles.socket_path_problem(self.path)  # only a socket may be replaced
        if problem:
            raise OSError(errno.EEXIST, problem)
        if not os.path.lexists(self.path):
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.path)
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOTSOCK):
                os.unlink(self.path)
                return
            raise
        finally:
            probe.close()
        raise OSError(errno.EADDRINUSE, f"{self.path}: another agent is listening there")

    def close(self) -> None:
        """Stop the threads and remove the socket file."""
        self._stop.set()
        if self.server is not None:
            self.server.close()  # answers the backlog, closes the listening socket too
            self.server = None
        elif self._sock is not None:  # bound, never served (start-up failed after the bind)
            refuse_pending(self._sock, frame(STOPPING_REPLY))
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self._unlink()

    def _unlink(self) -> None:
        """Remove the socket file if it is still the one :meth:`start` bound. While this
        agent stopped, its listener refused connections: a second agent starting on the same
        path took the file for stale, replaced it and listens there now; its file stays."""
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) != self._bound:
                log.info("control socket %s is another agent's now; left in place", self.path)
                return
            os.unlink(self.path)
        except OSError as exc:  # after dropping root, in a directory root owns
            if exc.errno != errno.ENOENT:
                log.info("control socket %s left in place (%s); the next start replaces "
                         "it", self.path, exc.strerror)

    def _reply(self, message: dict[str, Any], accepted: float) -> bytes:
        """A worker's answer to one parsed request, framed."""
        self.requests += 1
        return frame(self.answer(message, accepted))

    def answer(self, message: dict[str, Any], accepted: float | None = None) -> dict[str, Any]:
        """The reply to one request (never raises).

        :param accepted: monotonic time the connection was accepted: a reload's time counts
            from there (the client's does from its connect), not from when a worker took it.
        """
        cmd = message.get("cmd")
        try:
            if cmd == "stats":
                return {"ok": True, "text": self.formatter(self._snapshot())}
            if cmd == "stats-json":
                return {"ok": True, "stats": self._snapshot()}
            if cmd == "reload":
                waited = 0.0 if accepted is None else time.monotonic() - accepted
                return reload_and_wait(self.pipeline, self.reload_timeout_s - waited,
                                       cancel=self._stop, limit=self.reload_timeout_s)
            if cmd == "top" and self.top is not None:
                top = self.top
                return {"ok": True, "top": call_on_pipeline(
                    self.pipeline, lambda p: top(p, message), cancel=self._stop)}
        except (TimeoutError, ValueError) as exc:  # ValueError: bad top parameters
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug in a stats path must not kill the server
            log.exception("control command failed")
            return {"ok": False, "error": f"internal error ({type(exc).__name__}); see the "
                    "agent's log"}
        return {"ok": False, "error": f"unknown command (known: {', '.join(COMMANDS)})"}

    def _snapshot(self) -> dict[str, Any]:
        return call_on_pipeline(self.pipeline, self.snapshot, cancel=self._stop)


# --- the `agent stats` / `agent reload` commands -----------------------------------------------

DEFAULT_SOCKET = "/run/netflow-agent/agent.sock"


def socket_path(explicit: str | None, config_path: str | None) -> str:
    """``--socket``, else ``[agent] control_socket`` of ``-c FILE``, else the default."""
    if explicit:
        return explicit
    if config_path:
        from netflow_agent.config.load import load

        raw, _ = load(config_path)
        section = raw.data.get("agent", {})
        if isinstance(section, dict) and isinstance(section.get("control_socket"), str):
            return section["control_socket"]
    return DEFAULT_SOCKET


#: ``agent reload`` exit status when the agent did not answer in time: the outcome is
#: unknown (sysexits EX_TEMPFAIL)
EX_RELOAD_UNKNOWN = 75


def cmd_control(command: str, explicit: str | None, config_path: str | None,
                as_json: bool = False) -> int:
    """``agent stats [--json]`` and ``agent reload``: print the reply.

    :return: 0 success (for reload: the new configuration runs, or it was unchanged); 1
        failure (reload: not applied, or no agent to ask), the reason on stderr;
        :data:`EX_RELOAD_UNKNOWN` when a reload was asked but no outcome came back.
    """
    import json
    import sys

    path = socket_path(explicit, config_path)
    cmd = "reload" if command == "reload" else ("stats-json" if as_json else "stats")
    try:
        reply = request(path, cmd)
    except ControlError as exc:
        print(f"agent {command}: {exc}", file=sys.stderr)
        if cmd == "reload" and exc.sent:
            print(f"agent {command}: {UNKNOWN_OUTCOME}", file=sys.stderr)
            return EX_RELOAD_UNKNOWN
        return 1
    if not reply.get("ok"):
        text = reply.get("error") or reply.get("message")
        if reply.get("stopping") and cmd == "reload":
            text = f"{text}: {STOPPING_RELOAD}"
        print(f"agent {command}: {text}", file=sys.stderr)
        return EX_RELOAD_UNKNOWN if reply.get("result") == "unknown" else 1
    if cmd == "stats-json":
        print(json.dumps(reply["stats"], indent=2, sort_keys=True))
    elif cmd == "stats":
        print(reply["text"], end="")
    else:
        print(reply["message"])
    return 0
