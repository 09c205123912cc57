"""Fixtures of the packaging tests: the Debian package, built once per session.

``built_deb`` runs ``scripts/build-deb`` (dh-virtualenv, about a minute with a warm pip
cache) and is shared by ``test_deb.py`` and ``test_ansible_role.py``. ``clean_machine`` makes
sure the package is not installed before a test and purges it afterwards, also when the test
failed: both tests install it on this machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.packaging import pkg
from tests.support import require_tool


@pytest.fixture(scope="session")
def built_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Name: built_deb. Scope: session. The ``.deb`` scripts/build-deb wrote."""
    for tool in ("dpkg-buildpackage", "dh_virtualenv", "clang", "bpftool"):
        require_tool(tool)
    return pkg.build_deb(tmp_path_factory.mktemp("deb"))


@pytest.fixture
def clean_machine() -> Iterator[None]:
    """Name: clean_machine. Scope: function.

    Refuses to run where netflow-agent is already installed (the test would purge an
    operator's installation); purges it after the test.
    """
    if pkg.installed():
        pytest.fail("netflow-agent is installed on this machine; the packaging tests install "
                    "and purge it themselves (apt-get purge netflow-agent first)", pytrace=False)
    try:
        yield
    finally:
        if pkg.installed():
            pkg.purge()
