"""Shared test support for netflow-agent: environment checks, namespaces, collectors, pcaps.

Modules (import them as ``tests.support.<module>``):

* :mod:`tests.support.netns` -- network namespaces, veth pairs, a routed client-router-server
  topology and traffic generators with exact ground truth;
* :mod:`tests.support.collectors` -- ``nfcapd``/``nfdump``, ``tshark`` decoding, a raw UDP
  sink and the PyPI ``netflow`` decoder, as independent checks of what the agent exports;
* :mod:`tests.support.pcapgen` -- pcap/pcapng writer (and reader) with exact ground truth;
* :mod:`tests.support.truth` -- the ground-truth types shared by the above.

This module holds the environment checks used by ``tests/conftest.py`` and by tests:
:func:`is_root`, :func:`in_ci`, :func:`require_tool`; and :func:`source_tree_build`, which
keeps builds from this source tree one at a time when tests run on several workers.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["in_ci", "is_root", "require_tool", "source_tree_build", "strict_environment"]

SOURCE_TREE = Path(__file__).resolve().parents[2]


def is_root() -> bool:
    """``True`` when the tests run with euid 0 (namespaces, NFLOG, BPF are possible)."""
    return os.geteuid() == 0


def in_ci() -> bool:
    """``True`` under CI (``CI`` set to anything but empty, ``0`` or ``false``)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def strict_environment() -> bool:
    """Whether a missing tool or feature is a failure (root or CI) rather than a skip."""
    return is_root() or in_ci()


def require_tool(name: str) -> str:
    """Return the path of an external tool, or end the test when it is missing.

    Under root or CI the machine is meant to be fully provisioned by ``scripts/setup.sh``, so
    a missing tool **fails** the test (a silent skip would hide a broken CI image). Anywhere
    else the test is skipped with the reason.

    :param name: the executable, e.g. ``"nfcapd"``, ``"tshark"``, ``"softflowd"``.
    :return: the absolute path of the executable.
    """
    path = shutil.which(name) or _sbin_which(name)
    if path:
        return path
    message = f"required tool {name!r} is not installed (scripts/setup.sh installs it)"
    if strict_environment():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _sbin_which(name: str) -> str | None:
    """Find tools in sbin directories that a non-login root PATH may lack (softflowd)."""
    return shutil.which(name, path="/usr/local/sbin:/usr/sbin:/sbin")


@contextlib.contextmanager
def source_tree_build() -> Iterator[Path]:
    """Hold the source tree's build lock (``flock`` on ``build/.tests.lock``) while a test
    builds from it (``pip wheel .``, ``python -m build``): setuptools writes ``build/`` and
    the egg-info inside the tree, so two such builds at once (pytest-xdist workers) break each
    other. Yields the source tree."""
    lock = SOURCE_TREE / "build" / ".tests.lock"
    lock.parent.mkdir(exist_ok=True)
    with lock.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield SOURCE_TREE
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
