"""Fuzz the capture reader (``plugins/ingest_pcap/reader.py``).

Contract: a file is read cleanly to its end, or to a corrupt header (``error``), or
:class:`PcapError` is raised; nothing else
escapes; a valid file cut anywhere yields exactly the whole records before the cut, with
``truncated`` set exactly when the cut falls inside a record.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzz.oracles import check_pcap, check_pcap_cut
from tests.fuzz.strategies import fuzz_settings, mutated, pcap_file, pcapng_file


@fuzz_settings()
@given(st.one_of(pcap_file(), pcapng_file()), st.data())
def test_valid_capture_cut_anywhere(made: tuple[bytes, list[int], list[int]], data: st.DataObject
                                    ) -> None:
    blob, bounds, packets = made
    cut = data.draw(st.integers(0, len(blob)))
    check_pcap_cut(blob, bounds, packets, cut)


@fuzz_settings(scale=2)
@given(st.one_of(pcap_file(), pcapng_file()).flatmap(lambda m: mutated(m[0])))
def test_mutated_capture_only_pcap_error(blob: bytes) -> None:
    check_pcap(blob)


@fuzz_settings()
@given(st.binary(max_size=120))
def test_raw_bytes_only_pcap_error(blob: bytes) -> None:
    check_pcap(blob)
