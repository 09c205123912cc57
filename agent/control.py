"""The control socket: ``agent stats`` and ``agent reload`` talk to a running agent here.

A Unix stream socket (``[agent] control_socket``, mode ``control_socket_mode``, 0600 by
default: only the agent's user and root may connect). One request per connection; both
directions are framed the same way: a 4-byte big-endian length, then one msgpack map.

Requests (``{"cmd": ...}``) and replies:

* ``stats``: ``{"ok": true, "text": <report>}`` (the seed's stat text, :mod:`agent.report`);
* ``stats-json``: ``{"ok": true, "stats": <snapshot>}``;
* ``reload``: ``{"ok": <bool>, "message": <str>}``, the outcome of the reload the
  pipeline performed (an invalid configuration gives ``ok: false`` and the agent keeps the
  old one);
* anything else: ``{"ok": false, "error": "unknown command ..."}``.

Threading: the server runs on its own thread and never touches pipeline state. Snapshots are
built on the pipeline thread through an ``ITEM_CALL`` inbox item (:func:`call_on_pipeline`),
reloads through :meth:`Pipeline.request_reload` with a reply callback.
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

from netflow_agent import privileges
from netflow_agent.runtime import ITEM_CALL

log = logging.getLogger("agent.control")
_LEN = struct.Struct("!I")
MAX_MESSAGE = 64 * 1024 * 1024
STATS_TIMEOUT_S = 10.0
RELOAD_TIMEOUT_S = 60.0


class ControlError(Exception):
    """The agent could not be reached, or it answered with an error."""


# --- framing ---------------------------------------------------------------------------------


def send_message(sock: socket.socket, message: dict[str, Any]) -> None:
    """Write one length-prefixed msgpack map."""
    data = msgpack.packb(message, use_bin_type=True)
    sock.sendall(_LEN.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ControlError("connection closed in the middle of a message")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def recv_message(sock: socket.socket) -> dict[str, Any]:
    """Read one length-prefixed msgpack map.

    :raises ControlError: short read, oversized or malformed message.
    """
    (size,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    if size > MAX_MESSAGE:
        raise ControlError(f"message of {size} bytes is too large")
    try:
        message = msgpack.unpackb(_recv_exact(sock, size), raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ControlError(f"malformed message: {exc}") from None
    if not isinstance(message, dict):
        raise ControlError("message is not a map")
    return message


# --- client ----------------------------------------------------------------------------------


def request(path: str, cmd: str, timeout: float = RELOAD_TIMEOUT_S + 5) -> dict[str, Any]:
    """Send one command to the agent listening at ``path`` and return its reply.

    :raises ControlError: no agent there, permission denied, timeout, bad reply.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlError(f"{path}: no such socket (is the agent running? "
                               "is [agent] control_socket set?)") from None
        except PermissionError:
            raise ControlError(f"{path}: permission denied (run as the agent's user or root)"
                               ) from None
        except ConnectionRefusedError:
            raise ControlError(f"{path}: connection refused (stale socket; agent not running)"
                               ) from None
        send_message(sock, {"cmd": cmd})
        return recv_message(sock)
    except TimeoutError:
        raise ControlError(f"{path}: no reply within {timeout:.0f} s") from None
    except OSError as exc:
        raise ControlError(f"{path}: {exc}") from None
    finally:
        sock.close()


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
        raise TimeoutError(f"the pipeline did not answer within {timeout:.0f} s")
    if "error" in box:
        raise box["error"]
    return box["value"]


def reload_and_wait(pipeline: Any, timeout: float = RELOAD_TIMEOUT_S,
                    cancel: threading.Event | None = None) -> tuple[bool, str]:
    """Ask the pipeline to reload and wait for the outcome (see :func:`call_on_pipeline`)."""
    done = threading.Event()
    box: dict[str, Any] = {}

    def reply(ok: bool, message: str) -> None:
        box["result"] = (ok, message)
        done.set()

    pipeline.request_reload(reply)
    if not _wait(done, timeout, cancel):
        if cancel is not None and cancel.is_set():
            return False, "the agent is stopping; configuration not reloaded"
        return False, f"no reload result within {timeout:.0f} s"
    return box["result"]


# --- server ----------------------------------------------------------------------------------


class ControlServer:
    """Accepts control connections on a thread; answers with :mod:`agent.report` data.

    :param path: socket path.
    :param snapshot: ``pipeline -> dict`` run on the pipeline thread (see :func:`build_snapshot`).
    :param pipeline: the running :class:`~agent.pipeline.Pipeline`.
    :param mode: permission bits of the socket file.
    """

    def __init__(self, path: str, pipeline: Any, snapshot: Callable[[Any], dict[str, Any]],
                 formatter: Callable[[dict[str, Any]], str], mode: int = 0o600):
        self.path = path
        self.pipeline = pipeline
        self.snapshot = snapshot
        self.formatter = formatter
        self.mode = mode
        self.requests = 0
        self._made_dir = False
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Bind (replacing a stale socket file), listen and start the thread.

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
        sock.listen(16)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()
        log.info("control socket %s (mode %04o)", self.path, self.mode)

    def chown(self, uid: int, gid: int) -> None:
        """Hand the socket file (and its directory, when we created it) to the user the agent
        drops to, so it can still remove the socket at exit."""
        os.chown(self.path, uid, gid)
        if self._made_dir:
            os.chown(Path(self.path).parent, uid, gid)

    def _remove_stale(self) -> None:
        if not os.path.exists(self.path):
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
        """Stop the thread and remove the socket file."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            try:
                os.unlink(self.path)
            except OSError as exc:  # after dropping root, in a directory root owns
                if exc.errno != errno.ENOENT:
                    log.info("control socket %s left in place (%s); the next start replaces "
                             "it", self.path, exc.strerror)

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    return
                log.warning("control socket accept failed: %s", exc)
                continue
            with conn:
                privileges.follow()  # before the request: give up root's capabilities
                self._handle(conn)

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(STATS_TIMEOUT_S)
        try:
            message = recv_message(conn)
            self.requests += 1
            send_message(conn, self.answer(message))
        except (ControlError, OSError) as exc:
            log.warning("control request failed: %s", exc)

    def answer(self, message: dict[str, Any]) -> dict[str, Any]:
        """The reply to one request (never raises)."""
        cmd = message.get("cmd")
        try:
            if cmd == "stats":
                return {"ok": True, "text": self.formatter(self._snapshot())}
            if cmd == "stats-json":
                return {"ok": True, "stats": self._snapshot()}
            if cmd == "reload":
                ok, text = reload_and_wait(self.pipeline, cancel=self._stop)
                return {"ok": ok, "message": text}
        except TimeoutError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:  # a bug in a stats path must not kill the server
            log.exception("control command %r failed", cmd)
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        return {"ok": False, "error": f"unknown command {cmd!r} (stats, stats-json, reload)"}

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


def cmd_control(command: str, explicit: str | None, config_path: str | None,
                as_json: bool = False) -> int:
    """``agent stats [--json]`` and ``agent reload``: print the reply; 0 ok, 1 failure."""
    import json
    import sys

    path = socket_path(explicit, config_path)
    cmd = "reload" if command == "reload" else ("stats-json" if as_json else "stats")
    try:
        reply = request(path, cmd)
    except ControlError as exc:
        print(f"agent {command}: {exc}", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"agent {command}: {reply.get('error') or reply.get('message')}", file=sys.stderr)
        return 1
    if cmd == "stats-json":
        print(json.dumps(reply["stats"], indent=2, sort_keys=True))
    elif cmd == "stats":
        print(reply["text"], end="")
    else:
        print(reply["message"])
    return 0
