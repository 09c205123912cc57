"""Fuzz the NFLOG receive-buffer decoder (``plugins/ingest_nflog/netlink.py: NflogDecoder``).

Inputs are netlink datagrams of ``NFULNL_MSG_PACKET`` messages with lying lengths, flags and
attribute sizes, and mutated datagrams recorded on this machine. Properties: no exception;
every accepted message is a packet or a ``trunc``; the learned-shape fast path equals the
attribute walk; nothing after ``n`` in the buffer is read; the optional C decoder
(``_nflog.c``) gives exactly the Python decoder's flows and counters.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tests.fuzz.oracles import check_nflog, check_nflog_c
from tests.fuzz.strategies import NFLOG_SEEDS, fuzz_settings, nflog_datagrams


def test_recorded_datagrams_are_seeds() -> None:
    assert NFLOG_SEEDS, "tests/ingest_nflog/data/router.nflog is missing"
    for data in NFLOG_SEEDS:
        check_nflog(data)


@fuzz_settings(scale=2)
@given(nflog_datagrams())
@example(b"")
@example(b"\x14\0\0\0\0\x04" + b"\0" * 14)  # a packet message with no attributes
def test_nflog_decoder_never_raises(data: bytes) -> None:
    check_nflog(data)


@fuzz_settings()
@given(st.binary(max_size=200))
def test_nflog_decoder_raw_bytes(data: bytes) -> None:
    check_nflog(data)


def _c_extension() -> bool:
    from netflow_agent.plugins.ingest_nflog.decoders import c_extension

    return c_extension() is not None


needs_c = pytest.mark.skipif(not _c_extension(), reason="netflow_agent.plugins.ingest_nflog._nflog not built")


@needs_c
def test_c_decoder_on_recorded_datagrams() -> None:
    for data in NFLOG_SEEDS:
        check_nflog_c(data)


@needs_c
@fuzz_settings(scale=2)
@given(nflog_datagrams())
def test_c_decoder_equals_python(data: bytes) -> None:
    check_nflog_c(data)


@needs_c
@fuzz_settings()
@given(st.binary(max_size=200))
def test_c_decoder_raw_bytes(data: bytes) -> None:
    check_nflog_c(data)
