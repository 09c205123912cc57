"""Throughput rates over 1 s, 1 min and 5 min, as in the seed's ``Rate:`` stat line.

The 1 s figure is the rate over the last scan interval; the 1 and 5 minute figures are
exponentially weighted moving averages of it (the kernel load-average method), updated at
every scan with weights that depend on the elapsed time, so irregular ticks stay correct.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class RateMeter:
    """Turns cumulative packet/byte counters into rates."""

    last_ns: int = 0
    last_packets: int = 0
    last_bytes: int = 0
    pps: float = 0.0
    bps: float = 0.0
    pps_1m: float = 0.0
    bps_1m: float = 0.0
    pps_5m: float = 0.0
    bps_5m: float = 0.0

    def update(self, now_ns: int, packets: int, octets: int) -> None:
        """Feed the cumulative counters at time ``now_ns``."""
        if self.last_ns == 0 or now_ns <= self.last_ns:
            self.last_ns, self.last_packets, self.last_bytes = now_ns, packets, octets
            return
        dt = (now_ns - self.last_ns) / 1e9
        self.pps = (packets - self.last_packets) / dt
        self.bps = (octets - self.last_bytes) * 8 / dt
        w1, w5 = math.exp(-dt / 60), math.exp(-dt / 300)
        self.pps_1m = self.pps_1m * w1 + self.pps * (1 - w1)
        self.bps_1m = self.bps_1m * w1 + self.bps * (1 - w1)
        self.pps_5m = self.pps_5m * w5 + self.pps * (1 - w5)
        self.bps_5m = self.bps_5m * w5 + self.bps * (1 - w5)
        self.last_ns, self.last_packets, self.last_bytes = now_ns, packets, octets

    def as_dict(self) -> dict[str, float]:
        """Rates keyed as in ``agent stats --json``."""
        return {"pps": self.pps, "bps": self.bps, "pps_1m": self.pps_1m, "bps_1m": self.bps_1m,
                "pps_5m": self.pps_5m, "bps_5m": self.bps_5m}
