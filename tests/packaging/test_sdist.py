"""The source distribution carries what building, packaging and testing need (issue 17 #5).

``python -m build --sdist`` (no build isolation: the test venv has setuptools) from the
repository; the archive must hold the packaging (Debian, systemd, Ansible), the docs, the
examples, the tests and the C/eBPF sources of the extensions, and no build output.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

from tests.packaging.pkg import REPO
from tests.support import source_tree_build

REQUIRED = (
    "packaging/debian/control", "packaging/debian/rules", "packaging/systemd/netflow-agent.service",
    "packaging/systemd/netflow-agent.sysusers", "packaging/man/netflow-agent.8",
    "packaging/ansible/playbook.yml", "packaging/ansible/roles/netflow_agent/tasks/main.yml",
    "scripts/build-deb", "scripts/setup.sh", "docs/operations.md", "README.md",
    "examples/sample.pcap", "examples/quickstart.toml", "examples/plugin-example/pyproject.toml",
    "tests/conftest.py", "tests/packaging/test_sdist.py", "plugins/ingest_ebpf/bpf/flow.bpf.c",
    "plugins/ingest_nflog/_nflog.c", "setup.py", "pyproject.toml",
)


def test_sdist_carries_packaging_docs_examples_tests(tmp_path: Path) -> None:
    with source_tree_build():
        proc = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation",
                               "--outdir", str(tmp_path), str(REPO)],
                              capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (sdist,) = tmp_path.glob("netflow_agent-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    missing = [path for path in REQUIRED if path not in names]
    assert not missing, f"not in {sdist.name}: {missing}"
    built = [n for n in names if n.endswith((".so", ".pyc", ".o", ".skel.h", ".deb"))
             or n.startswith((".venv/", "dist/", "build/")) or "/__pycache__/" in n]
    assert not built, built
