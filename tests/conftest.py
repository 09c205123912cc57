"""Suite-wide pytest setup: privileged markers, their skip policy and order, shared fixtures.

Markers (declared in ``pyproject.toml``):

* ``netns``: the test creates network namespaces (root). Skipped, with the reason, only when
  not root; under root it always runs.
* ``bpf``: the test loads eBPF programs (root/CAP_BPF and the built extension
  ``netflow_agent.plugins.ingest_ebpf._loader``). Skipped only when not root; under root a missing
  extension **fails** the test, because CI must build it.

Both kinds run after every other test (they are the slowest and touch the kernel), keeping
their relative order. The summary line counts the skips (``-ra`` in ``pyproject.toml``).

Fixtures from :mod:`tests.support` are re-exported here so every test directory can use them:
``netns``, ``veth_pair_ns``, ``routed`` (namespaces), ``nfcapd``, ``udp_sink`` (collectors).
"""

from __future__ import annotations

import importlib
import logging
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `from tests.support import ...` under any pytest rootdir/cwd
    sys.path.insert(0, str(ROOT))

from tests.support import is_root  # noqa: E402
from tests.support.collectors import nfcapd, udp_sink  # noqa: E402
from tests.support.netns import netns, reap_stale, routed, veth_pair_ns  # noqa: E402

__all__ = [
    "netns",
    "nfcapd",
    "routed",
    "udp_sink",
    "veth_pair_ns",
]  # fixtures, re-exported for every test directory

BPF_EXTENSION = "netflow_agent.plugins.ingest_ebpf._loader"
PRIVILEGED_MARKERS = ("netns", "bpf")


def bpf_extension_error() -> str | None:
    """Why the eBPF extension cannot be imported, or ``None`` when it can."""
    try:
        importlib.import_module(BPF_EXTENSION)
    except Exception as exc:  # ImportError, or a load error from a half-built .so
        return f"{type(exc).__name__}: {exc}"
    return None


def _skip_reason(item: pytest.Item, root: bool) -> str | None:
    """The reason to skip a privileged test on this machine, or ``None`` to run it."""
    if root:
        return None
    if item.get_closest_marker("bpf") is not None:
        missing = bpf_extension_error()
        extra = f"; also the extension is not importable ({missing})" if missing else ""
        return f"bpf: needs root (CAP_BPF) to load eBPF programs{extra}"
    if item.get_closest_marker("netns") is not None:
        return "netns: needs root to create network namespaces"
    return None


def _is_privileged(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(m) is not None for m in PRIVILEGED_MARKERS)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip privileged tests without root and move them to the end (stable order)."""
    root = is_root()
    for item in items:
        reason = _skip_reason(item, root)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
    items.sort(key=_is_privileged)  # sort is stable: False (plain) first, then privileged


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Under root, a bpf test fails loudly when the eBPF extension was not built."""
    if item.get_closest_marker("bpf") is None or not is_root():
        return
    missing = bpf_extension_error()
    if missing:
        pytest.fail(
            f"bpf test under root but {BPF_EXTENSION} is not importable ({missing}); "
            "build it with `pip install -e .` (scripts/setup.sh) on a machine with clang and "
            "libbpf-dev",
            pytrace=False,
        )


def pytest_sessionstart(session: pytest.Session) -> None:
    """As root, delete the namespaces that earlier test processes, killed mid-test, left
    behind (``nfa-<pid>-<n>`` of a process that is gone; see ``reap_stale``)."""
    if is_root():
        reaped = reap_stale()
        if reaped:
            print(f"reaped {len(reaped)} namespace(s) left by killed test runs: "
                  f"{' '.join(reaped)}", file=sys.stderr)


def pytest_report_header(config: pytest.Config) -> str:
    """Say up front whether privileged tests will run."""
    if is_root():
        return "privileged tests (netns, bpf): run (root)"
    return "privileged tests (netns, bpf): skipped (not root)"


@pytest.fixture
def readable_dir_factory() -> Iterator[Callable[[], Path]]:
    """Name: readable_dir_factory. Scope: function. Makes root-owned 0755 directories under
    /tmp that other users (the agent's ``[agent] user``) can enter, as an operator's
    /etc/netflow-agent is; pytest's ``tmp_path`` is root's 0700. Removed afterwards."""
    made: list[Path] = []

    def make() -> Path:
        path = Path(tempfile.mkdtemp(prefix="nfa-readable-", dir="/tmp"))
        path.chmod(0o755)
        made.append(path)
        return path

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def readable_dir(readable_dir_factory: Callable[[], Path]) -> Path:
    """Name: readable_dir. Scope: function. One directory of :func:`readable_dir_factory`."""
    return readable_dir_factory()


@pytest.fixture(autouse=True)
def _no_leftover_repeat_filter() -> Iterator[None]:
    """Name: _no_leftover_repeat_filter. Scope: function, autouse.

    A test that runs ``agent.cli.main`` in-process installs the CLI's repeat filter on the root
    logging handlers, which pytest's own handlers are during a test; it would then swallow
    repeated warnings that later tests read through ``caplog``. Remove it after every test.
    """
    yield
    from netflow_agent.logutil import RepeatFilter

    for handler in logging.getLogger().handlers:
        for f in [f for f in handler.filters if isinstance(f, RepeatFilter)]:
            handler.removeFilter(f)
