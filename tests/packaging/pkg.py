"""The Debian package from the tests' side: build it, install and purge it, read its unit.

What it owns:

* :func:`build_deb`: ``scripts/build-deb`` into a directory, returning the ``.deb``;
* :func:`install` / :func:`purge` / :func:`installed`: ``apt-get install ./x.deb``,
  ``apt-get purge`` (waiting for the dpkg lock other apt users on the machine may hold);
* :func:`leftovers`: what a purge left behind of the package's files and directories;
* :func:`unit_setting` / :func:`unit_command` / :func:`sandboxed`: the installed unit's
  settings, and an ``Exec*=`` command wrapped the way systemd would run it where systemd is
  not PID 1: ``setpriv`` applies ``CapabilityBoundingSet=`` and ``NoNewPrivileges=``,
  ``sandbox_exec.py`` ``MemoryDenyWriteExecute=``, ``UMask=`` and ``SystemCallFilter=``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "netflow-agent"
UNIT = Path("/lib/systemd/system/netflow-agent.service")
#: created outside the package's file list, by postinst, tmpfiles.d or the agent
RUNTIME_PATHS = ("/etc/netflow-agent", "/var/lib/netflow-agent", "/run/netflow-agent",
                 "/opt/netflow-agent")
_APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300"]
#: flows of examples/sample.pcap (README: 10 IPv4/IPv6 flows)
SAMPLE_FLOWS = 10
SANDBOX_EXEC = Path(__file__).with_name("sandbox_exec.py")
UNISTD = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")


def run(cmd: list[str], timeout: float = 300,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, text output captured, never raising on its status."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                          env=env)


def flow_lines(text: str) -> list[str]:
    """The flow lines of ``[[export.log]] format = "text"`` output."""
    return re.findall(r"^(?:TCP|UDP|ICMP|ICMPv6) .*$", text, re.M)


#: dpkg-deb's compressor for the test build (dpkg-deb(1) ENVIRONMENT): the package's files
#: are the same, but xz at its default level (the release build's) takes 30-50 s of the
#: suite's budget for 77 MB of venv; gzip -1 takes 2 s.
TEST_COMPRESSION = {"DPKG_DEB_COMPRESSOR_TYPE": "gzip", "DPKG_DEB_COMPRESSOR_LEVEL": "1"}


def build_deb(out_dir: Path) -> Path:
    """``scripts/build-deb OUT_DIR`` (with :data:`TEST_COMPRESSION`); the one ``.deb`` it
    wrote (the build log on failure)."""
    proc = run([str(REPO / "scripts" / "build-deb"), str(out_dir)], timeout=540,
               env={**os.environ, **TEST_COMPRESSION})
    assert proc.returncode == 0, f"build-deb failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-4000:]}"
    debs = sorted(out_dir.glob(f"{PACKAGE}_*.deb"))
    assert len(debs) == 1, debs
    return debs[0]


def installed() -> bool:
    """Whether dpkg knows the package in any state other than not-installed."""
    proc = run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", PACKAGE])
    return proc.returncode == 0 and proc.stdout.strip() not in ("", "un")


def install(deb: Path) -> subprocess.CompletedProcess[str]:
    """``apt-get install ./PACKAGE.deb`` (dependencies from the configured apt sources)."""
    return run([*_APT, "install", str(deb.resolve())])


def purge() -> subprocess.CompletedProcess[str]:
    """``apt-get purge`` the package."""
    return run([*_APT, "purge", PACKAGE])


def package_files() -> list[str]:
    """``dpkg -L``: every path the installed package owns (directories included)."""
    return run(["dpkg", "-L", PACKAGE]).stdout.split("\n")


def leftovers(owned: list[str]) -> list[str]:
    """Paths of ``owned`` (files, links) and :data:`RUNTIME_PATHS` that still exist.

    Directories (``/usr/bin``, ``/etc``, the ``/lib`` link) are shared with other packages;
    those of the package itself are in :data:`RUNTIME_PATHS`.
    """
    left = [p for p in owned if p and os.path.lexists(p) and not os.path.isdir(p)]
    left += [p for p in RUNTIME_PATHS if Path(p).exists()]
    return left


def unit_setting(name: str, unit: Path = UNIT) -> list[str]:
    """Every value of ``Name=`` in the unit's [Service] section, in order."""
    values, section = [], ""
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line.startswith(f"{name}="):
            values.append(line.split("=", 1)[1])
    return values


def unit_command(name: str, unit: Path = UNIT) -> list[str]:
    """The argv of ``ExecStart=``/``ExecStartPre=``/``ExecReload=`` (exactly one line)."""
    values = unit_setting(name, unit)
    assert len(values) == 1, f"{name}= lines in {unit}: {values}"
    return shlex.split(values[0].lstrip("-@+!:"))


def sandboxed(argv: list[str], unit: Path = UNIT) -> list[str]:
    """``argv`` as the unit would run it, as far as this machine (no systemd as PID 1) can.

    ``CapabilityBoundingSet=`` and ``NoNewPrivileges=`` through ``setpriv``;
    ``MemoryDenyWriteExecute=``, ``UMask=``, ``SystemCallFilter=`` (with
    ``SystemCallErrorNumber=`` and ``SystemCallArchitectures=native``) through
    ``sandbox_exec.py``. The filesystem protections, ``RestrictNamespaces=`` and
    ``RestrictAddressFamilies=`` are not reproduced.
    """
    caps = " ".join(unit_setting("CapabilityBoundingSet", unit)).split()
    bounding = ",".join(["-all", *(f"+{c.lower().removeprefix('cap_')}" for c in caps)])
    wrapper = ["setpriv", f"--bounding-set={bounding}"]
    if unit_setting("NoNewPrivileges", unit) == ["yes"]:
        wrapper.append("--no-new-privs")
    wrapper += ["/usr/bin/python3", str(SANDBOX_EXEC),
                "--umask", (unit_setting("UMask", unit) or ["0022"])[-1]]
    if unit_setting("MemoryDenyWriteExecute", unit) == ["yes"]:
        wrapper.append("--mdwe")
    allowed = syscall_allow_list(unit_setting("SystemCallFilter", unit))
    if allowed:
        errno = {"EPERM": 1, "EACCES": 13, "ENOSYS": 38}
        names = unit_setting("SystemCallErrorNumber", unit) or ["EPERM"]
        wrapper += ["--allow", ",".join(map(str, allowed)), "--errno", str(errno[names[-1]])]
    return [*wrapper, "--", *argv]


def syscall_allow_list(lines: list[str]) -> list[int]:
    """x86-64 numbers of the calls ``SystemCallFilter=`` lines allow (an allow list first).

    Groups are expanded with ``systemd-analyze syscall-filter``; a ``~`` line removes its
    calls, a later positive line adds. Calls this architecture lacks are dropped.
    """
    if not lines or lines[0].startswith("~"):
        return []
    allowed: set[str] = set()
    for line in lines:
        deny = line.startswith("~")
        names = set().union(*(_expand(e) for e in line.lstrip("~").split()))
        allowed = allowed - names if deny else allowed | names
    numbers = dict(re.findall(r"^#define __NR_(\w+)\s+(\d+)$", UNISTD.read_text(), re.M))
    return sorted(int(numbers[n]) for n in allowed if n in numbers)


def _expand(entry: str) -> set[str]:
    """A system call name, or the calls of an ``@group`` (recursively)."""
    if not entry.startswith("@"):
        return {entry}
    out = run(["systemd-analyze", "syscall-filter", entry]).stdout.splitlines()[1:]
    names = {t.strip() for t in out if t.strip() and not t.strip().startswith("#")}
    return set().union(*(_expand(n) for n in names)) if names else set()
