"""The ``agent`` command line's arguments: the parser, and which of them start the daemon.

Kept apart from :mod:`netflow_agent.cli` (which imports the pipeline and, with it, NumPy) so
that :mod:`netflow_agent.launch` can tell the run path from the other subcommands before
anything heavy is imported.
"""

from __future__ import annotations

import argparse
from typing import Any

from netflow_agent import __version__


def parser() -> argparse.ArgumentParser:
    """The ``agent`` command line's parser."""
    p = argparse.ArgumentParser(prog="agent", description="NetFlow/IPFIX flow exporter "
                                "(a userspace successor to ipt_NETFLOW).")
    p.add_argument("-c", "--config", help="config file, or a directory of *.toml files")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the configuration and exit (0 valid, 78 invalid)")
    p.add_argument("--check-env", action="store_true",
                   help="with --dry-run: also probe this machine (interfaces, kernel features)")
    p.add_argument("--strict", action="store_true", help="with --dry-run: warnings are errors")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                   help="log level; overrides [agent] debug (0 info, 1 debug, 2-3 debug "
                   "and one line per flow created and exported), also at reload")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show replay progress on stderr (default: when stderr is a terminal)")
    p.add_argument("--version", action="version", version=f"netflow-agent {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("plugins", help="list discovered plugins")
    cfg = sub.add_parser("config", help="configuration helpers")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    sample = cfg_sub.add_parser("sample", help="print a commented sample configuration")
    sample.add_argument("name", nargs="?", help="component, e.g. netflow or export.netflow")
    imp = cfg_sub.add_parser(
        "import-ipt-netflow", help="convert ipt_NETFLOW module options and sysctls to TOML",
        description="Read ipt_NETFLOW settings (modprobe.d 'options ipt_NETFLOW ...' lines, "
        "'sysctl -a' net.netflow.* lines; later ones win) and write the equivalent "
        "configuration, with a comment for every option that has no equivalent. Exit 0: "
        "written and valid; 1: written, but --dry-run would refuse it; 2: unusable input.")
    imp.add_argument("--modprobe", action="append", default=[], metavar="FILE",
                     help="a modprobe.d file, '-' = stdin (repeatable)")
    imp.add_argument("--sysctl", action="append", default=[], metavar="FILE",
                     help="'sysctl -a' output or a sysctl.conf, '-' = stdin (repeatable)")
    imp.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    imp.add_argument("--nflog-group", type=int, default=5, metavar="N",
                     help="NFLOG group replacing -j NETFLOW (default 5)")
    imp.add_argument("--manage-rules", action="store_true",
                     help="let the agent install its nftables rules (manage_rules = true)")
    stats = sub.add_parser("stats", help="print the running agent's statistics")
    stats.add_argument("--json", action="store_true", help="machine-readable JSON")
    stats.add_argument("--socket", help="control socket (default: [agent] control_socket "
                       "of -c FILE, else /run/netflow-agent/agent.sock)")
    reload = sub.add_parser(
        "reload", help="make the running agent re-read its configuration and wait for the "
        "outcome", description="Ask the running agent to re-read its configuration and wait "
        "until it is applied. Exit 0: the new configuration runs (or nothing changed); 1: not "
        "applied, the old configuration keeps running, the reason (file: key: problem) on "
        "stderr, or no agent to ask; 75: asked, but no outcome came back in time.")
    reload.add_argument("--socket", help="control socket (as for stats)")
    top_parser(sub)
    return p


def top_parser(sub: Any) -> None:
    """The ``top`` subcommand's arguments."""
    top = sub.add_parser("top", help="the running agent's biggest flows, refreshed every "
                         "second (keys: b/p/r sort, / filter, q quit)")
    top.add_argument("--socket", help="control socket (as for stats)")
    top.add_argument("-n", type=int, default=20, help="flows to list without a terminal "
                     "(default 20; live: as many as fit)")
    top.add_argument("--sort", choices=["bytes", "packets", "rate"], default="bytes",
                     help="initial sort (rate: bytes/s over the last interval)")
    top.add_argument("--filter", default="", help='e.g. "tcp port 443 10.0.0.0/8"')
    top.add_argument("--once", action="store_true", help="print one table and exit")
    top.add_argument("--json", action="store_true", help="one JSON reply (implies --once)")
    top.add_argument("--interval", type=float, default=1.0, help="refresh period, seconds")


def runs_pipeline(args: argparse.Namespace) -> bool:
    """Whether parsed ``args`` start the daemon (``agent -c CONFIG``): no subcommand, no
    ``--dry-run``."""
    return args.command is None and bool(args.config) and not args.dry_run
