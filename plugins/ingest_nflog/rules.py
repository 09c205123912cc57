"""``manage_rules``: the agent's own nftables table that sends packets to its NFLOG groups.

Owns the ruleset text and its life cycle: at start the table ``inet netflow_agent`` is
(re)created in one ``nft -f -`` transaction (a stale copy left by a crash is replaced, not
duplicated); at exit it is deleted. An ``inet`` table hooks IPv4 and IPv6 with one rule per
chain. Each rule is ``counter log group G snaplen S queue-threshold Q``: the counter lets
``nft list table inet netflow_agent`` show how many packets were logged, the NFLOG expression
is what ``iptables -j NFLOG --nflog-group G --nflog-size S --nflog-threshold Q`` becomes on an
nf_tables kernel (KERNEL.md section 4.1). Several groups share the traffic round-robin through
``numgen inc mod N`` (one jump chain per group), the nftables form of spreading load over
NFLOG queues.

The chain ``bridge`` is a second table, ``bridge netflow_agent``, whose ``forward`` chain logs
the IPv4/IPv6 frames a bridge forwards: only bridge-family messages carry the frame's VLAN tag
(NFULA_VLAN, ``nfulnl_put_bridge``), and they name the bridge ports (NFULA_IFINDEX_PHYS*)
without br_netfilter. Frames with a tag still in the payload (the inner one of QinQ) are not
IPv4/IPv6 to nftables and are not logged. With br_netfilter's ``bridge-nf-call-iptables`` on,
the ``inet`` ``forward`` chain sees the same bridged packets: use one of the two.

Reference: nft(8) "LOG STATEMENT", "NUMGEN EXPRESSION"; ``net/netfilter/nft_log.c``.
"""

from __future__ import annotations

import logging
import shutil
import subprocess

from netflow_agent.api import run_in_netns

from .config import RULES_TABLE

log = logging.getLogger("agent.ingest.nflog")

_HOOKS = ("input", "forward", "output")
BRIDGE = "bridge"
_PROTOCOLS = {"ipv4": "ip", "ipv6": "ip6"}


class RulesError(RuntimeError):
    """``nft`` refused the ruleset or is missing; the message carries its stderr."""


def ruleset(groups: list[int], chains: list[str], snaplen: int, qthreshold: int,
            priority: int, table: str = RULES_TABLE,
            families: tuple[str, ...] = ("ipv4", "ipv6")) -> str:
    """The ``nft -f`` text that (re)creates the table.

    :param groups: NFLOG groups; more than one are used round-robin.
    :param chains: hooks to log: ``input``, ``forward``, ``output``; ``bridge`` adds the
        bridge family table.
    :param snaplen: copy length (0 = whole packet: no ``snaplen``).
    :param families: ``ipv4`` and/or ``ipv6``; one family adds a ``meta nfproto`` match.
    """
    log_stmt = "log group {g}" + (f" snaplen {snaplen}" if snaplen else "") \
        + f" queue-threshold {qthreshold}"
    lines = [f"table inet {table}", f"delete table inet {table}", f"table inet {table} {{"]
    if len(groups) > 1:
        for g in groups:
            lines.append(f"  chain to_group_{g} {{ counter {log_stmt.format(g=g)}; }}")
        spread = ", ".join(f"{i} : jump to_group_{g}" for i, g in enumerate(groups))
        action = f"numgen inc mod {len(groups)} vmap {{ {spread} }}"
    else:
        action = f"counter {log_stmt.format(g=groups[0])}"
    inet_action = action
    if len(set(families)) == 1:
        inet_action = f"meta nfproto {families[0]} {action}"
    hooks = [h for h in _HOOKS if h in chains]
    if not hooks:
        lines = []
    for hook in hooks:
        lines += [f"  chain {hook} {{",
                  f"    type filter hook {hook} priority {priority}; policy accept;",
                  f"    {inet_action}",
                  "  }"]
    if hooks:
        lines.append("}")
    if BRIDGE in chains:
        protocols = ", ".join(_PROTOCOLS[f] for f in sorted(set(families)))
        lines += [f"table bridge {table}", f"delete table bridge {table}",
                  f"table bridge {table} {{"]
        if len(groups) > 1:
            lines += [f"  chain to_group_{g} {{ counter {log_stmt.format(g=g)}; }}"
                      for g in groups]
        lines += ["  chain forward {",
                  f"    type filter hook forward priority {priority}; policy accept;",
                  f"    meta protocol {{ {protocols} }} {action}", "  }", "}"]
    return "\n".join(lines) + "\n"


def _nft(netns: str, script: str) -> None:
    nft = shutil.which("nft")
    if nft is None:
        raise RulesError("manage_rules needs the 'nft' program (apt-get install nftables)")
    # nft inherits the network namespace of the thread that starts it (run_in_netns)
    res = run_in_netns(netns, lambda: subprocess.run(
        [nft, "-f", "-"], input=script, capture_output=True, text=True, timeout=30))
    if res.returncode != 0:
        raise RulesError(f"nft -f failed ({res.returncode}): {res.stderr.strip()}")


class ManagedRules:
    """The table one ingest instance installs and removes.

    :param netns: namespace name or path (``""`` = the agent's own).
    """

    def __init__(self, netns: str, groups: list[int], chains: list[str], snaplen: int,
                 qthreshold: int, priority: int, families: tuple[str, ...] = ("ipv4", "ipv6")):
        self.netns = netns
        self.text = ruleset(groups, chains, snaplen, qthreshold, priority,
                            families=families)
        self.tables = ([f"inet {RULES_TABLE}"] if set(chains) - {BRIDGE} else []) + (
            [f"bridge {RULES_TABLE}"] if BRIDGE in chains else [])
        self.installed = False

    def install(self) -> None:
        """Create (or replace) the table. :raises RulesError: nft failed."""
        _nft(self.netns, self.text)
        self.installed = True
        log.info("installed nftables table(s) %s%s", ", ".join(self.tables),
                 f" in netns {self.netns}" if self.netns else "")

    def remove(self) -> None:
        """Delete the table; failures are logged (the agent is exiting anyway)."""
        if not self.installed:
            return
        try:
            _nft(self.netns, "".join(f"delete table {t}\n" for t in self.tables))
        except (RulesError, OSError, subprocess.SubprocessError) as exc:
            log.warning("could not delete nftables table(s) %s: %s", ", ".join(self.tables),
                        exc)
            return
        self.installed = False
        log.info("deleted nftables table(s) %s", ", ".join(self.tables))
