"""``[[ingest.ebpf]]``: per-flow accounting in the kernel with tc/TCX or XDP eBPF programs.

The fastest ingest: a BPF program (``bpf/flow.bpf.c``) keeps the flow table in a BPF map, as
ipt_NETFLOW kept it in kernel memory, and Python only sees aggregated flow deltas. Needs the
``_loader`` extension (built by ``pip install .`` when clang, bpftool and libbpf-dev are
present) and root or CAP_BPF + CAP_NET_ADMIN at run time (plus CAP_NET_RAW for
``promisc = true``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from netflow_agent.api import ComponentRegistry, ConfigIssue, hookimpl

CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
CAP_SYS_ADMIN = 21
CAP_BPF = 39
BUILD_HINT = ("install clang, llvm, bpftool and libbpf-dev (Debian) and reinstall the agent "
              "with `pip install .`")


def effective_caps() -> int:
    """The effective capability mask of this process (``CapEff`` in /proc/self/status)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0


def unavailable_reason() -> str | None:
    """Why ``ingest.ebpf`` cannot run here (extension, libbpf, privileges), or ``None``."""
    try:
        from . import _loader  # noqa: F401
    except ImportError as exc:
        text = str(exc)
        if "libbpf" in text:
            return f"the eBPF loader cannot load libbpf ({text}); install libbpf1"
        return f"the eBPF extension was not built at install time ({text}); {BUILD_HINT}"
    caps = effective_caps()
    can_bpf = caps & (1 << CAP_BPF | 1 << CAP_SYS_ADMIN)
    if not (can_bpf and caps & (1 << CAP_NET_ADMIN)):
        return "loading and attaching eBPF programs needs root (or CAP_BPF and CAP_NET_ADMIN)"
    return None


@hookimpl
def agent_register_components(registry: ComponentRegistry) -> None:
    """Register ``[[ingest.ebpf]]``."""
    from .config import Config

    registry.add("ingest", "ebpf", f"{__name__}.component:EbpfIngest", Config,
                 sample=(Path(__file__).parent / "sample.toml").read_text(),
                 doc="Flows aggregated in the kernel by tc/TCX or XDP eBPF programs",
                 unavailable=unavailable_reason)


@hookimpl
def agent_check_config(config: Any, check_env: bool) -> list[ConfigIssue]:
    """The kernel tables each instance would create on this host, and their memory (a note:
    derived sizes depend on the CPUs and memory); a poll interval the cache's inactive timeout
    allows (:func:`poll_issues`); with ``check_env``: the configured network
    namespace must exist, and ``promisc`` needs CAP_NET_RAW (its packet sockets)."""
    from netflow_agent.api import netns_path

    issues: list[ConfigIssue] = []
    for inst in config.by_stage("ingest"):
        if inst.type_name != "ebpf":
            continue
        issues.append(sizes_note(inst, config))
        issues += poll_issues(inst, config)
        if not check_env:
            continue
        if inst.config.promisc and not effective_caps() & (1 << CAP_NET_RAW):
            issues.append(ConfigIssue(f"{inst.path}.promisc",
                                      "promiscuous mode is held with a packet socket, which "
                                      "needs CAP_NET_RAW (root, or add it to the systemd "
                                      "unit's CapabilityBoundingSet)"))
        if not inst.config.netns:
            continue
        path = netns_path(inst.config.netns)
        if not os.path.exists(path):
            issues.append(ConfigIssue(f"{inst.path}.netns",
                                      f"network namespace '{inst.config.netns}' not found "
                                      f"({path} does not exist)"))
    return issues


def poll_issues(inst: Any, config: Any) -> list[ConfigIssue]:
    """``poll_interval_ms`` must be shorter than the ``[cache] inactive_timeout``.

    A packet reaches the cache only at the drain after it (up to a poll interval later), so
    the ingest declares that delay (``RunContext.declare_delivery_lag``: the poll interval
    plus :data:`.component.DELIVERY_MARGIN_S`) and the cache waits as long past
    ``inactive_timeout`` before it exports a flow as idle: no flow is split by the wait, at any
    period. A period as long as the timeout is still refused: every idle flow would leave more
    than twice ``inactive_timeout`` after its last packet, a FIN/RST flow up to a period
    late, and the flows waiting meanwhile would fill the cache."""
    caches = config.by_stage("cache")
    inactive = getattr(caches[0].config, "inactive_timeout", None) if caches else None
    poll_ms = inst.config.poll_interval_ms
    if not isinstance(inactive, int) or poll_ms < inactive * 1000:
        return []
    return [ConfigIssue(f"{inst.path}.poll_interval_ms",
                        f"{poll_ms} ms is not shorter than [cache] inactive_timeout "
                        f"({inactive} s): packets wait in the kernel table up to a poll "
                        "interval and the cache waits as long again before it exports a "
                        "flow as idle, so idle flows would leave more than twice "
                        "inactive_timeout after their last packet (FIN/RST flows up to a "
                        f"poll interval late); set poll_interval_ms below {inactive * 1000} "
                        "(a small fraction of it keeps exports close to the timeout) or "
                        "raise inactive_timeout")]


def sizes_note(inst: Any, config: Any) -> ConfigIssue:
    """What ``inst`` would create on this host (:func:`.sizing.kernel_sizes`), as a note that
    also says when the explicit sizes take more than the host's share (the start logs a
    warning then)."""
    from .decode import kernel_fields
    from .sizing import MEMORY_SHARE, kernel_sizes

    cfg = inst.config
    caches = config.by_stage("cache")
    capacity = int(getattr(caches[0].config, "maxflows", 0) or 0) if caches else 0
    sizes = kernel_sizes(cfg.maxflows, cfg.cpu_slots, capacity, cfg.map_type == "percpu",
                         any(kernel_fields(config.schema)), cfg.timestamps == "precise")
    over = (f", more than 1/{MEMORY_SHARE} of its {sizes.mem_bytes >> 20} MiB (never swapped): "
            "lower cpu_slots / maxflows or [cache] maxflows" if sizes.over_share() else "")
    return ConfigIssue(inst.path, f"on this host: {sizes.describe()}, "
                       f"{sizes.total_bytes >> 20} MiB of kernel memory{over}", severity="note")
