"""Build hook for the optional eBPF ingest extension (everything else is in pyproject.toml).

Packages: the repository folders ``agent/`` and ``plugins/`` install as ``netflow_agent`` and
``netflow_agent.plugins`` (:func:`installed_packages`), one distinctive import namespace.

``netflow_agent.plugins.ingest_ebpf._loader`` is a CPython extension over libbpf. Building it
first runs ``make -C plugins/ingest_ebpf/bpf`` (clang compiles ``flow.bpf.c``, bpftool generates the
skeleton that embeds the object), then compiles ``_loader.c`` against ``-lbpf``. The extension
is ``optional``: without clang, bpftool or libbpf-dev the install still succeeds and
``agent --dry-run`` reports ``ingest.ebpf`` as unavailable with the reason.
The BPF object is embedded in the extension through the bpftool skeleton, so no ``.bpf.o``
has to be found at run time, for regular and editable installs alike. Build outputs go to the
build directory, never into the source tree (except the ``.so`` of an editable install, which
.gitignore covers).

``netflow_agent._flowindex`` (``agent/_flowindex.c``, the flow cache's key -> slot hash index) is
plain C over the Python API and is required: the cache has no Python fallback, so a C compiler
and the Python headers are needed to install (gcc and python3-dev in scripts/setup.sh).
``netflow_agent._udpsend`` (``agent/_udpsend.c``, a burst of export datagrams in one
``sendmmsg(2)`` call, and the paced send loop that sleeps on a token bucket between bursts,
both with the GIL released) is required in the same way: the UDP destinations
send through it. ``netflow_agent._wirepack`` (``agent/_wirepack.c``, export records packed
from flow rows in one pass, ``agent/wire.py``'s ``pack_template``) is required too.

``netflow_agent.plugins.ingest_nflog._nflog`` (the NFLOG decoder's per-packet loop) is a plain
optional extension without a build step of its own; without a compiler ``ingest.nflog`` uses its
Python decoder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CompileError

HERE = Path(__file__).resolve().parent
EBPF_DIR = Path("plugins") / "ingest_ebpf"
BPF_SRC = EBPF_DIR / "bpf"
EBPF_EXT = "netflow_agent.plugins.ingest_ebpf._loader"


PACKAGE_DIRS = {"netflow_agent": "agent", "netflow_agent.plugins": "plugins"}


def installed_packages() -> list[str]:
    """Every package below agent/ and plugins/, under its installed name."""
    names = []
    for prefix, folder in PACKAGE_DIRS.items():
        names.append(prefix)
        names += [f"{prefix}.{sub}" for sub in find_packages(folder)]
    return names


class BuildExtWithBpf(build_ext):
    """``build_ext`` that builds the BPF object and skeleton before the loader extension."""

    def build_extension(self, ext: Extension) -> None:
        if ext.name != EBPF_EXT:
            super().build_extension(ext)
            return
        output = Path(self.build_temp).resolve() / "ingest_ebpf_bpf"
        self._make_bpf(output)
        ext.include_dirs = [*ext.include_dirs, str(output)]
        super().build_extension(ext)  # the skeleton embeds flow.bpf.o: nothing else to ship

    def _make_bpf(self, output: Path) -> None:
        """Run the BPF Makefile; a missing tool becomes a CompileError (optional extension)."""
        for tool in ("make", os.environ.get("CLANG", "clang"), "bpftool"):
            if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
                raise CompileError(f"eBPF ingest not built: `{tool}` not found")
        env = dict(os.environ)
        env["PATH"] = env.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
        cmd = ["make", "-C", str(HERE / BPF_SRC), f"OUTPUT={output}", "V=1"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise CompileError(f"eBPF ingest not built: {' '.join(cmd)} failed:\n{proc.stderr}")


setup(
    packages=installed_packages(),
    package_dir=PACKAGE_DIRS,
    ext_modules=[
        Extension(  # the flow cache's key index; plain C over the Python API, required
            "netflow_agent._flowindex",
            sources=["agent/_flowindex.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
        ),
        Extension(  # export records packed from flow rows (agent/wire.py); plain C, required
            "netflow_agent._wirepack",
            sources=["agent/_wirepack.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
        ),
        Extension(  # UDP bursts in one sendmmsg(2) and the paced send loop; plain C, required
            "netflow_agent._udpsend",
            sources=["agent/_udpsend.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra"],
        ),
        Extension(
            EBPF_EXT,
            sources=[str(EBPF_DIR / "_loader.c")],
            depends=[
                str(BPF_SRC / name) for name in ("flow.bpf.c", "flow.h", "maps.h", "Makefile")
            ],
            include_dirs=[str(EBPF_DIR)],
            libraries=["bpf"],
            optional=True,
        ),
        Extension(  # NFLOG per-packet loop; plain C over the Python API, optional
            "netflow_agent.plugins.ingest_nflog._nflog",
            sources=["plugins/ingest_nflog/_nflog.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        ),
    ],
    cmdclass={"build_ext": BuildExtWithBpf},
)
