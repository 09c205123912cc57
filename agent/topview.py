"""``agent top``: a live view of the running agent's biggest flows, over the control socket.

What it owns: the command line of ``agent top``, the filter language, the text layout (80
columns: a header with the totals, a column title, one line per flow) and the curses loop.
The agent does the selection (:mod:`agent.flowtop`, the ``top`` control command); this module
only asks every second and draws.

Keys: ``b``/``p``/``r`` sort by bytes, packets or rate (bytes/s over the last interval),
``/`` edits the filter (Enter applies, Esc cancels, an empty filter clears it), ``q`` quits.
When stdout is not a terminal, or with ``--once``, one table is printed (``--json``: the
agent's reply as JSON, for scripts).

Filter language (terms are ANDed): an address or network (``10.0.0.1``, ``10.0.0.0/8``,
``2001:db8::/32``: source or destination), ``port N`` or a bare number (source or
destination port), a protocol name (``tcp``, ``udp``, ``icmp``, ``icmp6``, ``gre``, ``esp``,
``sctp``) or ``proto N``.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from netflow_agent.control import ControlError, request

WIDTH = 80
KEYS_HELP = "b/p/r sort  / filter  q quit"
PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51, "icmp6": 58,
             "ipv6-icmp": 58, "sctp": 132}
_NAMES = {v: k.upper() for k, v in PROTOCOLS.items() if k != "ipv6-icmp"}
SORT_KEYS = {"b": "bytes", "p": "packets", "r": "rate"}


class FilterError(ValueError):
    """A filter expression that does not parse (the message says which term)."""


def parse_filter(text: str) -> dict[str, Any]:
    """``"tcp port 80 10.0.0.0/8"`` -> ``{"proto": 6, "port": 80, "net": "10.0.0.0/8"}``.

    :raises FilterError: an unknown term, or a value out of range.
    """
    out: dict[str, Any] = {}
    words = text.lower().split()
    while words:
        word = words.pop(0)
        if word in ("port", "proto") and words:
            out[word] = _number(words.pop(0), 65535 if word == "port" else 255, word)
        elif word in PROTOCOLS:
            out["proto"] = PROTOCOLS[word]
        elif word.isdigit():
            out["port"] = _number(word, 65535, "port")
        else:
            try:
                out["net"] = str(ipaddress.ip_network(word, strict=False))
            except ValueError:
                raise FilterError(f"{word!r}: not an address, network, port or protocol"
                                  ) from None
    return out


def _number(word: str, top: int, what: str) -> int:
    if not word.isdigit() or int(word) > top:
        raise FilterError(f"{what} must be a number from 0 to {top}")
    return int(word)


@dataclass
class ViewState:
    """What the view asks for; changed by keys."""

    sort: str = "bytes"
    filter_text: str = ""
    filter: dict[str, Any] = field(default_factory=dict)
    message: str = ""  # a status line (last error)

    def set_filter(self, text: str) -> None:
        """Apply a new filter; an invalid one is reported and the old one kept."""
        try:
            self.filter = parse_filter(text)
        except FilterError as exc:
            self.message = f"filter not applied: {exc}"
            return
        self.filter_text, self.message = text.strip(), ""


def fetch(path: str, state: ViewState, n: int) -> dict[str, Any]:
    """One ``top`` request.

    :raises ControlError: the agent is unreachable or refused the request.
    """
    reply = request(path, "top", timeout=10, n=n, sort=state.sort, filter=state.filter)
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error")))
    return reply["top"]


# --- layout ---------------------------------------------------------------------------------


def human(value: float) -> str:
    """``1234567`` -> ``1.2M`` (at most 6 characters)."""
    for unit in ("", "k", "M", "G", "T"):
        if abs(value) < 1000:
            return f"{value:.0f}{unit}" if unit == "" or abs(value) >= 100 else \
                f"{value:.1f}{unit}"
        value /= 1000
    return f"{value:.0f}P"


def _endpoint(addr: str, port: int, proto: int, source: bool) -> str:
    if proto in (1, 58):  # ICMP: no ports; the destination "port" is type << 8 | code
        return addr if source else f"{addr} {port >> 8}/{port & 0xFF}"
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def header_lines(top: dict[str, Any], state: ViewState) -> list[str]:
    """The two header lines: totals and sort, then filter and keys."""
    basis = "" if top.get("rate_basis") == "interval" else " (avg)"
    first = (f"flows {top['active']}  {human(top['packets_per_s'])} pkt/s  "
             f"{human(top['bytes_per_s'])}B/s  drops {top['drops']} "
             f"({human(top['drops_per_s'])}/s)  sort: {state.sort}{basis}")
    shown = f"filter: {state.filter_text} ({top['matched']} match)" if state.filter_text \
        else "filter: none"
    second = state.message or f"{shown}  {KEYS_HELP}"
    return [first[:WIDTH], second[:WIDTH]]


COLUMNS = f"{'PROTO':<5} {'SOURCE':<22} {'DESTINATION':<22} {'PKTS':>8} {'BYTES':>8} {'RATE':>9}"


def flow_line(row: dict[str, Any]) -> str:
    """One flow in 79 columns (addresses cut to fit)."""
    proto = _NAMES.get(row["proto"], str(row["proto"]))
    src = _endpoint(row["src"], row["sport"], row["proto"], source=True)
    dst = _endpoint(row["dst"], row["dport"], row["proto"], source=False)
    return (f"{proto:<5} {src[-22:]:<22} {dst[-22:]:<22} {human(row['packets']):>8} "
            f"{human(row['bytes']) + 'B':>8} {human(row['bytes_per_s']) + 'B/s':>9}")


def screen_lines(top: dict[str, Any], state: ViewState, rows: int) -> list[str]:
    """Everything on the screen, at most ``rows`` lines."""
    lines = header_lines(top, state) + [COLUMNS]
    lines += [flow_line(r) for r in top["flows"][:max(0, rows - len(lines))]]
    return lines


# --- the command ----------------------------------------------------------------------------


def cmd_top(path: str, n: int, sort: str, filter_text: str, once: bool, as_json: bool,
            interval: float) -> int:
    """``agent top``: live on a terminal, one table otherwise; 0 ok, 1 failure, 2 usage."""
    state = ViewState(sort=sort)
    if filter_text:
        state.set_filter(filter_text)
        if state.message:
            print(f"agent top: {state.message}", file=sys.stderr)
            return 2
    if once or as_json or not sys.stdout.isatty():
        return _once(path, state, n, as_json)
    import curses

    try:
        return curses.wrapper(_Live(path, state, interval).run)
    except KeyboardInterrupt:
        return 0


def _once(path: str, state: ViewState, n: int, as_json: bool) -> int:
    try:
        top = fetch(path, state, n)
    except ControlError as exc:
        print(f"agent top: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(top, indent=2, sort_keys=True))
    else:
        print("\n".join(screen_lines(top, state, n + 3)))
    return 0


class _Live:
    """The curses loop: ask every ``interval`` seconds, redraw, react to keys."""

    def __init__(self, path: str, state: ViewState, interval: float):
        self.path, self.state, self.interval = path, state, interval
        self.top: dict[str, Any] | None = None

    def run(self, scr: Any) -> int:
        """Until ``q``."""
        import curses

        try:
            curses.curs_set(0)
        except curses.error:
            pass
        scr.timeout(100)
        due = 0.0
        while True:
            if time.monotonic() >= due:
                self._refresh(scr)
                due = time.monotonic() + self.interval
            key = scr.getch()
            if key in (ord("q"), ord("Q")):
                return 0
            if key == ord("/"):
                self._edit_filter(scr)
                due = 0.0
            elif key >= 0 and chr(key) in SORT_KEYS:
                self.state.sort = SORT_KEYS[chr(key)]
                due = 0.0
            elif key == curses.KEY_RESIZE:
                due = 0.0

    def _refresh(self, scr: Any) -> None:
        height, _ = scr.getmaxyx()
        try:
            self.top = fetch(self.path, self.state, max(1, height - 3))
            if self.state.message.startswith("agent unreachable"):
                self.state.message = ""
        except ControlError as exc:
            self.state.message = f"agent unreachable: {exc}"
        self._draw(scr)

    def _draw(self, scr: Any) -> None:
        import curses

        height, width = scr.getmaxyx()
        scr.erase()
        if self.top is None:
            lines = [self.state.message or "waiting for the agent..."]
        else:
            lines = screen_lines(self.top, self.state, height)
        for y, line in enumerate(lines[:height]):
            attr = curses.A_REVERSE if y == 2 else curses.A_NORMAL
            scr.addnstr(y, 0, line, max(0, width - 1), attr)
        scr.refresh()

    def _edit_filter(self, scr: Any) -> None:
        """Read a filter on the last line; Enter applies, Esc cancels."""
        import curses

        height, width = scr.getmaxyx()
        text = self.state.filter_text
        scr.timeout(-1)
        try:
            while True:
                scr.move(height - 1, 0)
                scr.clrtoeol()
                scr.addnstr(height - 1, 0, f"filter: {text}", max(0, width - 1))
                scr.refresh()
                key = scr.getch()
                if key in (10, 13, curses.KEY_ENTER):
                    self.state.set_filter(text)
                    return
                if key == 27:
                    return
                if key in (curses.KEY_BACKSPACE, 127, 8):
                    text = text[:-1]
                elif 32 <= key < 127:
                    text += chr(key)
        finally:
            scr.timeout(100)
