"""The ``agent`` / ``netflow-agent`` console script (and ``python -m netflow_agent.cli``,
which hands over here): the daemon's run path starts here.

Before :mod:`netflow_agent.cli` (which imports the pipeline and NumPy) is imported, the
arguments are parsed with the light parser of :mod:`netflow_agent.cliargs`; when they start
the daemon (``agent -c CONFIG``: no subcommand, no ``--dry-run``), the freshly written page
cache of NumPy's libraries is dropped first (:func:`netflow_agent.libcache.drop`). The other
subcommands (``stats``, ``reload``, ``top``, ``plugins``, ``config``, ``--dry-run``) and
``import netflow_agent`` leave the page cache alone: each would evict pages the next process
reads back.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from netflow_agent import libcache
from netflow_agent.cliargs import parser, runs_pipeline


def entry(argv: list[str] | None = None) -> NoReturn:
    """Drop NumPy's page cache if ``argv`` (default: the command line) starts the daemon,
    then run :func:`netflow_agent.cli.main` and end the process with its code
    (:func:`netflow_agent.cli.exit_now`). A usage error or ``--help`` exits here, as the
    command line would."""
    args = sys.argv[1:] if argv is None else argv
    if runs_pipeline(parser().parse_args(args)):
        libcache.drop()
    from netflow_agent import cli

    cli.exit_now(cli.main(args))
