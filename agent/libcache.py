"""The page cache of the shared libraries the agent loads: dropped before they are mapped.

This module owns one call, :func:`drop`, which the daemon's run path makes
(:mod:`netflow_agent.launch`, before anything imports NumPy: the console scripts and
``python -m netflow_agent.cli -c ...``, which the benches and the tests' agent processes
use; not the other subcommands, not ``import netflow_agent``). It asks the kernel
(``posix_fadvise(POSIX_FADV_DONTNEED)``) to drop the cached pages of NumPy's shared objects
that the agent loads, so that loading them maps only the pages the process touches, at 4 KiB
granularity.

Why: a file written shortly before (``pip install``, a package upgrade) sits in the page
cache in large folios, up to megabytes each (ext4 and others since Linux 6.16), and a page
fault in a mapping of it maps the whole folio around the page, whatever the mapping's
``madvise`` advice. NumPy's libraries are 39 MB; their initialisation touches a little of
each, so in a freshly written install ``import numpy`` maps 12.6 MB of file pages where the
same files read back from disk map 6.2 MB. That is the FILE part of VmHWM (mapped pages of
clean, shared, reclaimable page cache), not memory the agent needs; the anon part is the same.

Which files: only those an agent maps. ``/proc/self/maps`` of an agent run (NumPy 2.3,
``agent -c examples/quickstart.toml``; ``import numpy`` alone maps the same set) holds
``numpy/_core/_multiarray_umath``, ``numpy/linalg/_umath_linalg`` and the three
``numpy.libs`` (OpenBLAS, gfortran, quadmath), and nothing else of NumPy's 22 shared objects
(not ``random/*``, ``fft/*``, ``lapack_lite``, nor the test modules ``*_tests*`` and
``_simd``): :data:`PACKAGES` lists these as patterns (``*/`` also matches NumPy 1.x's
``core/``), and dropping nothing else leaves the page cache other programs use alone.

When it acts: only on files whose inode changed after the system booted (``ctime`` after
``btime`` in ``/proc/stat``): a file written before the boot was read back from disk in
small folios, so in a long-installed venv :func:`drop` opens nothing. Each file that passes
is ``fdatasync``-ed first: pip does not sync, and DONTNEED skips dirty pages (within ~30 s
of an install every page is dirty). Nothing happens on tmpfs (pages cannot be dropped) or on
NFS/FUSE as far as their fadvise goes; pages some other process maps stay where they are (a
second process using the same NumPy keeps them in the install's folios), and a failed drop
of mapped pages costs the kernel an ``lru_add_drain_all()`` per file (up to ~7 ms in all).

The cost: the pages the agent touches are read back from disk once at start (~12 MB with
readahead), and they are then charged to the agent's memory cgroup (systemd's
``MemoryCurrent``) where the installer's cgroup held them before.

It runs as root before the privilege drop, in a venv that may be writable by others: files
are opened ``O_NOFOLLOW | O_NONBLOCK`` and must be regular files (``fstat``) so that a
symlink or FIFO put in their place neither redirects it nor hangs the start, and
:func:`drop` never raises.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import stat
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

log = logging.getLogger("agent.libcache")

#: package -> the shared objects the agent maps, as globs under its directory; every
#: ``*.so*`` of the ``<package>.libs`` auditwheel puts beside it is mapped with them
PACKAGES: Mapping[str, tuple[str, ...]] = {
    "numpy": ("*/_multiarray_umath.*so", "linalg/_umath_linalg.*so"),
}

#: open flags: no symlink followed, no FIFO open blocking, not inherited by children
OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def boot_time(stat_path: str = "/proc/stat") -> float | None:
    """The system's boot time (``btime``, seconds since the epoch), or None if unknown."""
    try:
        with open(stat_path, encoding="ascii") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def shared_objects(package: str, patterns: tuple[str, ...]) -> Iterator[Path]:
    """The shared objects of an installed ``package`` (not imported) that match ``patterns``
    under its directory, and every ``*.so*`` of the ``<package>.libs`` directory beside it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return
    if spec is None or not spec.submodule_search_locations:
        return
    for location in spec.submodule_search_locations:
        root = Path(location)
        for pattern in patterns:
            yield from root.glob(pattern)
        yield from root.with_name(root.name + ".libs").glob("*.so*")


def _drop_file(path: Path, since: float) -> bool:
    """Sync and drop the page cache of ``path`` if it is a regular file changed after
    ``since``; whether it was advised."""
    try:
        fd = os.open(path, OPEN_FLAGS)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_ctime <= since:
            return False
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def drop(packages: Mapping[str, tuple[str, ...]] = PACKAGES, since: float | None = None) -> int:
    """Drop the page cache of ``packages``' shared objects that this process has not loaded
    yet and that changed after ``since`` (default: the boot); returns how many files were
    advised. Never raises: a failure (a stale NFS handle, an unreadable ``/proc``) drops
    less, and is logged at debug level."""
    advised = 0
    try:
        since = boot_time() if since is None else since
        if since is None:
            return 0
        for package, patterns in packages.items():
            if package in sys.modules:
                continue
            for path in shared_objects(package, patterns):
                advised += _drop_file(path, since)
    except Exception as exc:  # noqa: BLE001 - a start-up nicety; the agent runs without it
        log.debug("page cache drop stopped: %s", exc)
    return advised
