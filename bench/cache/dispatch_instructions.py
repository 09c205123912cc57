"""A workload to count CPU instructions of the core's dispatch under valgrind (callgrind).

Usage (CPU time on a shared machine is too noisy to see 1 %; instruction counts are not)::

    for mode in setup direct pipeline; do
        valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.$mode \\
            python bench/cache/dispatch_instructions.py TREE $mode 2>&1 | grep Collected
    done

``TREE`` is a checkout of this repository (this one, or an older commit to compare with).
Modes: ``setup`` builds 200,000 packets over 20,000 flows (batches of 1,024) and a pipeline
(``agent.testing.build_agent``) and stops; ``direct`` also feeds the packets to a bare
``FlowCache``; ``pipeline`` feeds them through ``Pipeline.dispatch`` and runs one forced scan
that exports every flow. Subtract ``setup`` from the others.
"""

from __future__ import annotations

import random
import socket
import sys
import tempfile
from pathlib import Path

TREE, MODE = sys.argv[1], sys.argv[2]
sys.path.insert(0, TREE)

from netflow_agent.model import PacketBatch, make_key  # noqa: E402
from netflow_agent.stages.cache import CacheConfig, FlowCache  # noqa: E402
from netflow_agent.testing import build_agent, collecting_plugin_module  # noqa: E402

PACKETS, FLOWS, BATCH = 200_000, 20_000, 1024
CONFIG = "[cache]\nmaxflows = 0\n[[ingest.fake]]\n[[export.collect]]\n"


def main() -> None:
    dst = socket.inet_aton("192.0.2.1")
    keys = [make_key(4, 17, (0x0A000000 + i).to_bytes(4, "big"), dst, 1024 + i % 60000, 53)
            for i in range(FLOWS)]
    rnd = random.Random(1)
    packets = [(keys[rnd.randrange(FLOWS)], 100 + (i & 511), 0, 1_700_000_000_000_000_000 + i, 0)
               for i in range(PACKETS)]
    batches = [packets[i:i + BATCH] for i in range(0, PACKETS, BATCH)]
    agent = build_agent(CONFIG, Path(tempfile.mkdtemp()), [collecting_plugin_module])
    cache = FlowCache(CacheConfig(maxflows=0))
    if MODE == "direct":
        for b in batches:
            cache.agent_cache_packets(batch=PacketBatch("ingest.fake[0]", b), now_ns=0)
    elif MODE == "pipeline":
        for b in batches:
            agent.pipeline.dispatch("packets", PacketBatch("ingest.fake[0]", b))
        agent.pipeline.scan(packets[-1][3] + 1, force=True)


if __name__ == "__main__":
    main()
