"""Which Prometheus family a component's numeric stat lands in (agent.metrics.classify_stat)."""
from __future__ import annotations

import pytest

from netflow_agent.metrics import classify_stat


@pytest.mark.parametrize("key", ["maxflows", "cpu_slots", "kernel_memory_bytes"])
def test_the_ebpf_ingests_table_sizes_are_settings_not_counters(key: str) -> None:
    """The kernel table sizes derived at start are configuration: exported as
    ``component_setting``, never as a ``component_events_total`` counter that
    ``rate()`` would read as events."""
    assert classify_stat(key, 1 << 20) == ("setting", key, 1 << 20)


def test_a_drains_wait_is_a_gauge_in_seconds_and_its_total_a_counter() -> None:
    assert classify_stat("drain_wait_ms_last", 250) == ("gauge", "drain_wait_seconds_last", 0.25)
    assert classify_stat("drain_wait_ms_total", 250)[0] == "counter"
