"""Field-by-field checks of saved flows (agent/state.py: ``check_row`` and ``parse``)."""

from __future__ import annotations

import msgpack
import pytest

from netflow_agent import state
from netflow_agent.model import make_key

NOW = 1_700_000_000 * 10**9
KEY4 = make_key(4, 6, b"\x0a\0\0\x01", b"\x0a\0\0\x02", 1, 2)
KEY6 = make_key(6, 17, b"\x20\x01" + bytes(14), b"\x20\x01" + bytes(13) + b"\x01", 3, 4,
                direction=1)


def row(**fields: object) -> list[object]:
    base = {"key": KEY4, "packets": 1, "octets": 40, "first": NOW - 10, "last": NOW,
            "flags": 0x12, "out_if": 3}
    base.update(fields)
    return list(base.values())


def test_the_largest_valid_values_are_kept() -> None:
    top = row(key=KEY6, packets=2**64 - 1, octets=2**64 - 1, first=0, last=NOW,
              flags=255, out_if=2**32 - 1)
    assert state.check_row(top, NOW) == (tuple(top), False)


@pytest.mark.parametrize("fields,problem", [
    ({"packets": 2**64}, "packets 18446744073709551616 is outside"),
    ({"octets": -1}, "octets -1 is outside"),
    ({"last": 2**63 - 1}, "last_ns 9223372036854775807 is outside"),
    ({"flags": 256}, "tcp_flags 256 is outside 0..255"),
    ({"out_if": 2**32}, "out_if 4294967296 is outside"),
    ({"packets": True}, "packets is bool, not an integer"),
    ({"octets": 1.5}, "octets is float"),
    ({"first": NOW, "last": NOW - 1}, "is after last_ns"),
    ({"key": KEY4[:19]}, "key of 19 bytes with IP version 4"),
    ({"key": KEY4[:43]}, "key of 43 bytes with IP version 4"),
    ({"key": KEY6[:20]}, "key of 20 bytes with IP version 6"),
    ({"key": KEY4[:3] + b"\x02" + KEY4[4:]}, "key direction 2"),
    ({"key": "10.0.0.1"}, "key is str, not bytes"),
])
def test_each_bad_field_is_named(fields: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem.replace("..", r"\.\.")):
        state.check_row(row(**fields), NOW)


def test_future_times_are_clamped_to_now() -> None:
    checked, clamped = state.check_row(row(first=NOW + 5, last=NOW + 10), NOW)
    assert clamped and checked[3:5] == (NOW, NOW)


def test_parse_keeps_the_good_rows_and_counts_the_rest() -> None:
    data = msgpack.packb({"format": state.FORMAT, "version": state.VERSION,
                          "flows": [row(), row(flags=300), row(), [1, 2], row(key=KEY6)]},
                         use_bin_type=True)
    parsed = state.parse(data, NOW)
    assert [r[0] for r in parsed.rows] == [KEY4, KEY6]
    assert (parsed.total, parsed.rejected) == (5, 3)
    assert parsed.first_problem.startswith("flow 1: tcp_flags 300")
    assert state.parse(b"", NOW).rows == []  # a reserved file nothing was saved to
    with pytest.raises(state.StateError, match="'flows' is NoneType"):
        state.parse(msgpack.packb({"format": state.FORMAT, "version": 1}), NOW)
    with pytest.raises(state.StateError, match="not a msgpack state file"):
        state.parse(b"\xc1", NOW)
