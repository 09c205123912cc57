"""The page cache of the shared libraries the agent loads: dropped before they are mapped.

This module owns one call, :func:`drop`, which :mod:`netflow_agent` makes before NumPy is
imported. It asks the kernel (``posix_fadvise(POSIX_FADV_DONTNEED)``) to drop the cached
pages of NumPy's shared objects (``numpy/**/*.so`` and the ``numpy.libs`` it vendors:
OpenBLAS, gfortran, quadmath), ~1 ms, so that loading them reads back only the pages the process
touches.

Why: a file written shortly before (``pip install``, a package upgrade) sits in the page
cache in large folios, up to megabytes each (ext4 and others since Linux 6.16), and a page
fault in a mapping of it maps the whole folio around the page, whatever the mapping's
``madvise`` advice. NumPy's libraries are 39 MB; their initialisation touches a little of
each, so in a freshly written install ``import numpy`` maps 12.6 MB of file pages where the
same files read back from disk map 6.2 MB (the folios readahead makes are small). The
agent's RSS then depends on how long ago its libraries were installed
(docs/performance.md, "Memory").

What it does not do: pages some process has mapped stay cached (the kernel drops only
unmapped, clean pages), so a second process using the same NumPy keeps them in whatever
folios they are; nothing is dropped once NumPy is loaded in this process; files that
cannot be opened are skipped. The cost is reading the touched pages back from disk once
(~6 MB), at start.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

#: packages whose shared objects (and ``<name>.libs`` beside them) are dropped
PACKAGES = ("numpy",)


def shared_objects(package: str) -> Iterator[Path]:
    """The shared objects of an installed ``package`` (not imported): ``*.so*`` in its
    directory and its subpackages' (one level down, where NumPy's extension modules are; a
    recursive walk over its tests and data costs 7 ms) and in the ``<package>.libs``
    directory auditwheel puts beside it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return
    if spec is None or not spec.submodule_search_locations:
        return
    for location in spec.submodule_search_locations:
        root = Path(location)
        for top in (root, root.with_name(root.name + ".libs")):
            for pattern in ("*.so*", "*/*.so*"):
                yield from (p for p in top.glob(pattern) if p.is_file())


def drop(packages: tuple[str, ...] = PACKAGES) -> int:
    """Drop the page cache of ``packages``' shared objects that this process has not loaded
    yet; returns how many files were advised."""
    advised = 0
    for package in packages:
        if package in sys.modules:
            continue
        for path in shared_objects(package):
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                advised += 1
            except OSError:
                pass
            finally:
                os.close(fd)
    return advised
