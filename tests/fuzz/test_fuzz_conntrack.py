"""Fuzz the ctnetlink parser (``plugins/ingest_conntrack/ctnetlink.py``) and ``to_nat_event``.

Contract: ``iter_messages`` and ``parse_conntrack`` raise only ``MalformedMessage``; a parsed
entry always makes a NAT event; the parser never reads past the datagram (the reader's
receive buffer is larger than what ``recv`` filled, so an over-read would silently decode
stale bytes).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.oracles import check_conntrack
from tests.fuzz.strategies import CT_SEEDS, ct_datagrams, fuzz_settings


def test_recorded_datagrams_are_seeds() -> None:
    assert CT_SEEDS, "tests/ingest_conntrack/data/*.hex are missing"
    for data in CT_SEEDS:
        check_conntrack(data)


@fuzz_settings(scale=2)
@given(ct_datagrams())
def test_conntrack_parser_only_malformed(data: bytes) -> None:
    check_conntrack(data)


@fuzz_settings()
@given(st.binary(max_size=200))
def test_conntrack_parser_raw_bytes(data: bytes) -> None:
    check_conntrack(data)
