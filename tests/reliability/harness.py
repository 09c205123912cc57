"""Helpers for the reliability tests: exported flows and a bounded flood.

The agent process (under ``prlimit`` when asked, its control socket in the test's directory,
stats answer times, memory, timed SIGTERM) is :class:`tests.support.agentproc.Agent`
(``Agent.in_dir``).

* :data:`FLOOD`: a bounded UDP flood from many source addresses through a raw socket
  (``IP_HDRINCL``), run inside the sender's namespace; it prints how many packets it sent
  and the per-source ground truth is implied by the round-robin order (see :func:`flood`).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any


def exported_flows(path: Path) -> list[dict[str, Any]]:
    """Flow records from an ``[[export.log]]`` JSON-lines file."""
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("type") == "flow"]


#: Bounded flood: argv = dst, dport, packets, sources, first source (dotted), seconds limit.
#: Source i (i = 0..sources-1) is first_source + i; packet k comes from source k % sources,
#: so every source sends packets // sources (+1 for the first packets % sources) packets.
FLOOD = r"""
import ipaddress, json, socket, struct, sys, time
dst, dport, n, nsrc, first, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    int(sys.argv[4]), int(ipaddress.ip_address(sys.argv[5])), float(sys.argv[6])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
d = socket.inet_aton(dst)
payload = b"x" * 18
pkts = [struct.pack("!BBHHHBBH4s4s", 0x45, 0, 46, 0, 0x4000, 64, 17, 0,
                    struct.pack("!I", first + i), d)
        + struct.pack("!HHHH", 40000 + i % 20000, dport, 26, 0) + payload
        for i in range(nsrc)]
sent = failed = 0
start = time.monotonic()
end = start + limit
addr = (dst, 0)
for k in range(n):
    try:
        s.sendto(pkts[k % nsrc], addr)
        sent += 1
    except OSError:
        failed += 1
    if k & 1023 == 0 and time.monotonic() > end:
        break
print(json.dumps({"sent": sent, "failed": failed, "seconds": time.monotonic() - start}))
"""


def flood(ns: Any, dst: str, dport: int, packets: int, sources: int, first: str,
          limit_s: float = 20) -> dict[str, Any]:
    """Run :data:`FLOOD` in ``ns``; return ``{"sent", "failed", "seconds", "truth"}``.

    ``truth`` maps ``(src address, src port)`` to the packets that source sent.
    """
    out = json.loads(ns.python(FLOOD, dst, str(dport), str(packets), str(sources), first,
                               str(limit_s), timeout=limit_s + 30))
    import ipaddress

    base = int(ipaddress.ip_address(first))
    truth: Counter[tuple[str, int]] = Counter()
    sent = out["sent"]
    for i in range(min(sources, sent)):
        count = sent // sources + (1 if i < sent % sources else 0)
        truth[(str(ipaddress.ip_address(base + i)), 40000 + i % 20000)] = count
    out["truth"] = truth
    return out


__all__ = ["exported_flows", "flood"]
