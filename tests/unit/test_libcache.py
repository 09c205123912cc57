"""The agent's run path drops its libraries' freshly written page cache before mapping them
(agent/libcache.py): only the files it maps, only those written since the boot, synced first,
never through a symlink or FIFO, never raising; importing the package drops nothing; a
control client loads no NumPy (whose mapped pages would stay cached in large folios)."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import importlib.util
import json
import mmap
import os
import subprocess
import sys
import time
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


#: what the tests drop: the agent's pattern for NumPy's module, under a package of their own
PATTERNS = {"fakenp": ("*/_multiarray_umath.*so",)}


def fadvise_drops(path: Path) -> bool:
    """Whether ``POSIX_FADV_DONTNEED`` drops the synced pages of ``path`` on this filesystem
    (not on tmpfs, whose pages have no disk to go back to)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return cached_pages(path) == 0


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An importable, not imported package ``fakenp`` (its shared objects go in its tree and
    in ``fakenp.libs`` beside it), on a filesystem where fadvise drops written pages."""
    control = written(tmp_path / "control.bin")
    if cached_pages(control) == 0 or not fadvise_drops(control):
        pytest.skip("fadvise(DONTNEED) has no effect on this filesystem (tmpfs?)")
    root = tmp_path / "fakenp"
    root.mkdir()
    (root / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    return root


def test_drop_leaves_none_of_the_loaded_shared_objects_cached(package: Path) -> None:
    libs = [written(package / "_core" / "_multiarray_umath.cpython-311-x86_64-linux-gnu.so"),
            written(package.with_name("fakenp.libs") / "libblas-1234.so.5.0")]
    # the agent never maps these: left cached for whoever uses them
    others = [written(package / "_core" / "_umath_tests.cpython-311-x86_64-linux-gnu.so"),
              written(package / "random" / "mtrand.cpython-311-x86_64-linux-gnu.so"),
              written(package / "data.bin")]
    assert libcache.drop(PATTERNS) == 2
    assert [cached_pages(p) for p in libs] == [0, 0]
    assert [cached_pages(p) for p in others] == [SIZE // mmap.PAGESIZE] * 3


def test_drop_syncs_pages_pip_left_dirty(package: Path) -> None:
    lib = package / "_core" / "_multiarray_umath.so"
    lib.parent.mkdir()
    lib.write_bytes(os.urandom(SIZE))  # as pip writes: no fsync, the pages stay dirty
    assert cached_pages(lib) == SIZE // mmap.PAGESIZE
    assert libcache.drop(PATTERNS) == 1
    assert cached_pages(lib) == 0


def test_drop_leaves_files_written_before_the_boot_alone(
        package: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lib = written(package / "_core" / "_multiarray_umath.so")
    monkeypatch.setattr(libcache, "boot_time", lambda: time.time() + 3600)
    assert libcache.drop(PATTERNS) == 0
    assert cached_pages(lib) == SIZE // mmap.PAGESIZE
    monkeypatch.setattr(libcache, "boot_time", lambda: None)  # no /proc/stat: nothing done
    assert libcache.drop(PATTERNS) == 0
    assert cached_pages(lib) == SIZE // mmap.PAGESIZE


def test_boot_time_is_proc_stats_btime(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  1 2 3\nintr 5\nbtime 1796588603\nprocesses 9\n")
    assert libcache.boot_time(str(stat)) == 1796588603.0
    assert libcache.boot_time(str(tmp_path / "missing")) is None
    assert 0 < libcache.boot_time() < time.time()  # type: ignore[operator]


def test_drop_leaves_a_package_this_process_loaded_alone(
        package: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lib = written(package / "_core" / "_multiarray_umath.so")
    monkeypatch.setitem(sys.modules, "fakenp", object())
    assert libcache.drop(PATTERNS) == 0
    assert cached_pages(lib) == SIZE // mmap.PAGESIZE


def test_drop_follows_no_symlink_and_opens_no_fifo(package: Path, tmp_path: Path) -> None:
    target = written(tmp_path / "elsewhere.bin")
    (package / "_core").mkdir()
    (package / "_core" / "_multiarray_umath.so").symlink_to(target)
    libs = package.with_name("fakenp.libs")
    libs.mkdir()
    os.mkfifo(libs / "libblas.so")  # an open without O_NONBLOCK would wait for a writer
    assert libcache.drop(PATTERNS) == 0
    assert cached_pages(target) == SIZE // mmap.PAGESIZE


@pytest.mark.parametrize("where", ["glob", "find_spec", "fdatasync"])
def test_drop_never_raises(package: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """A stale NFS handle or an I/O error anywhere drops less, never stops the start."""
    written(package / "_core" / "_multiarray_umath.so")

    def stale(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ESTALE, "Stale file handle")

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a failure no one foresaw")

    target = {"glob": (Path, "glob", stale), "find_spec": (importlib.util, "find_spec", broken),
              "fdatasync": (libcache.os, "fdatasync", stale)}[where]
    monkeypatch.setattr(*target)
    assert libcache.drop(PATTERNS) == 0


def test_drop_of_a_package_that_is_not_installed_does_nothing() -> None:
    assert libcache.drop({"no_such_package_here": ("*.so",)}) == 0


def test_importing_the_package_drops_nothing() -> None:
    """``import netflow_agent`` (every CLI call, every pytest process through the plugin)
    leaves the page cache alone: only the daemon's run path drops it."""
    probe = ("import json, sys\nimport netflow_agent, netflow_agent.testing\n"
             "print(json.dumps('netflow_agent.libcache' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60)
    assert json.loads(out.stdout) is False


def test_a_control_client_loads_no_numpy() -> None:
    probe = ("import json, sys\nfrom netflow_agent.control import request\n"
             "print(json.dumps('numpy' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60)
    assert json.loads(out.stdout) is False
