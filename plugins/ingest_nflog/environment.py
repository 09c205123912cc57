"""Environment checks for ``--dry-run --check-env`` and start-up: they probe, never bind.

Reads ``/proc/net/netfilter/nfnetlink_log`` (one line per bound group:
``group portid qlen copy_mode copy_range flush_timeout use``, from
``net/netfilter/nfnetlink_log.c: seq_show``) inside the configured namespace, so a group that
another process already holds is reported before start-up fails with EPERM. Groups this
agent holds itself (a reload re-checks while its ingest runs) are recognised by the netlink
port id of its own sockets and not reported.
"""

from __future__ import annotations

import os
import shutil

from netflow_agent.api import ConfigIssue, netns_path, run_in_netns, started_as_root

from .config import Config
from .netlink import own_portid

_PROC_FILE = "/proc/thread-self/net/netfilter/nfnetlink_log"


def bound_groups(netns: str = "") -> dict[int, int] | None:
    """``{group: netlink portid}`` of the groups bound in ``netns``; ``None`` if unreadable."""
    def read() -> str:
        with open(_PROC_FILE, encoding="ascii") as f:
            return f.read()

    try:
        text = run_in_netns(netns, read)
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit():
            out[int(fields[0])] = int(fields[1])
    return out


def check_instance(path: str, config: Config) -> list[ConfigIssue]:
    """Issues for one ``[[ingest.nflog]]`` instance on this machine."""
    issues = []
    if not started_as_root():  # after the drop (a reload) the groups are bound already
        issues.append(ConfigIssue(path, "binding NFLOG groups needs root (CAP_NET_ADMIN)",
                                  "warning"))
    if config.netns and not os.path.exists(netns_path(config.netns)):
        issues.append(ConfigIssue(f"{path}.netns", f"network namespace {config.netns!r} not "
                                  f"found ({netns_path(config.netns)})"))
        return issues
    if config.manage_rules and shutil.which("nft") is None:
        issues.append(ConfigIssue(f"{path}.manage_rules", "needs the 'nft' program "
                                  "(apt-get install nftables)"))
    held = bound_groups(config.netns) if os.geteuid() == 0 else None
    for group in config.groups:
        if held and group in held and held[group] != own_portid(config.netns, group):
            issues.append(ConfigIssue(f"{path}.group", f"NFLOG group {group} is already bound"
                                      f" by another process (netlink port {held[group]}); "
                                      "only one listener per group is possible", "warning"))
    return issues
