"""The agent drops its libraries' page cache before mapping them (agent/libcache.py), and a
control client loads no NumPy (whose mapped pages would stay cached in large folios)."""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import mmap
import os
import subprocess
import sys
from pathlib import Path

import pytest

from netflow_agent import libcache

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p)

SIZE = 1 << 20


def cached_pages(path: Path) -> int:
    """How many pages of ``path`` are in the page cache (``mincore(2)``), read without
    faulting any in."""
    size = path.stat().st_size
    with path.open("rb") as f:
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
    assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
    try:
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = ctypes.create_string_buffer(pages)
        assert _libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
        return sum(b & 1 for b in vec.raw)
    finally:
        _libc.munmap(addr, size)


def written(path: Path) -> Path:
    """A file of :data:`SIZE` bytes just written (so it sits in the page cache) and on disk
    (as an installed library is: the kernel drops clean pages only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.write(os.urandom(SIZE))
        f.flush()
        os.fsync(f.fileno())
    return path


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable, not imported package ``fakenp`` with shared objects in its tree and in
    ``fakenp.libs`` beside it."""
    root = tmp_path / "fakenp"
    (root / "__init__.py").parent.mkdir()
    (root / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    return root


def test_drop_leaves_none_of_a_packages_shared_objects_cached(package: Path) -> None:
    libs = [written(package / "_core" / "_umath.cpython-311-x86_64-linux-gnu.so"),
            written(package.with_name("fakenp.libs") / "libblas-1234.so.5.0")]
    other = written(package / "data.bin")  # not a shared object: left alone
    if cached_pages(libs[0]) == 0:
        pytest.skip("this filesystem does not keep written pages cached")
    assert libcache.drop(("fakenp",)) == 2
    assert [cached_pages(p) for p in libs] == [0, 0]
    assert cached_pages(other) == SIZE // mmap.PAGESIZE


def test_drop_leaves_a_package_this_process_loaded_alone(
        package: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lib = written(package / "_core" / "_umath.so")
    if cached_pages(lib) == 0:
        pytest.skip("this filesystem does not keep written pages cached")
    monkeypatch.setitem(sys.modules, "fakenp", object())
    assert libcache.drop(("fakenp",)) == 0
    assert cached_pages(lib) == SIZE // mmap.PAGESIZE


def test_drop_of_a_package_that_is_not_installed_does_nothing() -> None:
    assert libcache.drop(("no_such_package_here",)) == 0


def test_a_control_client_loads_no_numpy() -> None:
    probe = ("import json, sys\nfrom netflow_agent.control import request\n"
             "print(json.dumps('numpy' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60)
    assert json.loads(out.stdout) is False
