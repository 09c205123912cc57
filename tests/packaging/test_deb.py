"""The Debian package on this machine: build, install, run from the installed files, purge.

One test walks what an operator does (issue 17 item 1): ``scripts/build-deb``, then ``apt-get
install ./netflow-agent_*.deb``; ``netflow-agent --dry-run -c /etc/netflow-agent/``; the
shipped capture replayed from /usr/share/netflow-agent/examples; the unit checked with
``systemd-analyze verify`` and ``security``; the unit's ExecStartPre, ExecStart and
ExecReload run by hand (systemd is not PID 1 here) under its capability bounding set,
no_new_privs, W^X memory, umask and system call filter (``pkg.sandboxed``), in a network
namespace of this test, with NFLOG and eBPF ingests feeding a NetFlow v9 exporter; then
``apt-get purge`` must leave none of its files.
Marked ``netns`` (root; it creates a namespace and installs a package).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from netflow_agent.privileges import capability_mask, mask_names
from tests.packaging import pkg
from tests.support import require_tool
from tests.support.collectors import UdpSink
from tests.support.netns import Netns, end_process

pytestmark = pytest.mark.netns

CONF_DIR = Path("/etc/netflow-agent")
SOCKET = "/run/netflow-agent/agent.sock"
SECURITY_LIMIT = 3.0


def test_deb_install_run_purge(built_deb: Path, clean_machine: None, tmp_path: Path) -> None:
    check_contents(built_deb)
    proc = pkg.install(built_deb)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    owned = pkg.package_files()
    check_installed_layout()

    dry = pkg.run(["netflow-agent", "--dry-run", "-c", f"{CONF_DIR}/"])
    assert dry.returncode == 0, dry.stderr
    replay = pkg.run(["netflow-agent", "-c", "/usr/share/netflow-agent/examples/replay.toml"])
    assert replay.returncode == 0, replay.stderr
    assert len(pkg.flow_lines(replay.stdout)) == pkg.SAMPLE_FLOWS, replay.stdout

    check_unit()
    with Netns() as ns, UdpSink(netns=ns) as sink:
        run_unit_commands_by_hand(ns, sink)

    proc = pkg.purge()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert pkg.leftovers(owned) == []
    overrides = pkg.run(["dpkg-statoverride", "--list"]).stdout
    assert str(CONF_DIR) not in overrides
    # Debian keeps system users at purge (see docs/operations.md): the user stays.
    assert pkg.run(["getent", "passwd", "netflow-agent"]).returncode == 0


def check_contents(deb: Path) -> None:
    """Depends on the libraries the extensions link; the files an operator looks for."""
    depends = pkg.run(["dpkg-deb", "-f", str(deb), "Depends"]).stdout
    for dep in ("libbpf1", "libc6", "python3.11"):
        assert dep in depends, depends
    listing = pkg.run(["dpkg-deb", "-c", str(deb)]).stdout
    paths = {line.split()[5].lstrip(".") for line in listing.splitlines()}
    for path in ("/usr/bin/netflow-agent", "/lib/systemd/system/netflow-agent.service",
                 "/usr/lib/sysusers.d/netflow-agent.conf",
                 "/usr/lib/tmpfiles.d/netflow-agent.conf",
                 "/etc/netflow-agent/netflow-agent.toml",
                 "/usr/share/man/man8/netflow-agent.8.gz",
                 "/usr/share/netflow-agent/examples/sample.pcap"):
        assert path in paths, f"{path} not in the package"
    assert "/usr/bin/agent" not in paths  # too generic a name for /usr/bin: documented
    assert not [p for p in paths if p.endswith(".pyc")]  # compiled by postinst
    conffiles = pkg.run(["dpkg-deb", "-I", str(deb), "conffiles"]).stdout
    assert conffiles.split() == ["/etc/netflow-agent/netflow-agent.toml"]
    # removal stops a running service (not reproducible here: no systemd as PID 1)
    prerm = pkg.run(["dpkg-deb", "-I", str(deb), "prerm"]).stdout
    assert "deb-systemd-invoke stop 'netflow-agent.service'" in prerm, prerm


def check_installed_layout() -> None:
    """The user, its directories and the configuration directory's group."""
    user = pkg.run(["getent", "passwd", "netflow-agent"]).stdout.split(":")
    assert user[0] == "netflow-agent" and user[6].strip() == "/usr/sbin/nologin", user
    uid = int(user[2])
    for path in ("/run/netflow-agent", "/var/lib/netflow-agent"):
        st = os.stat(path)
        assert (st.st_uid, oct(st.st_mode & 0o777)) == (uid, "0o750"), path
    st = os.stat(CONF_DIR)
    assert (st.st_uid, st.st_gid, oct(st.st_mode & 0o777)) == (0, int(user[3]), "0o750")
    man = pkg.run(["man", "-w", "netflow-agent"])
    assert man.stdout.strip() == "/usr/share/man/man8/netflow-agent.8.gz", man
    # The extensions load with the installed libbpf (as root: nothing UNAVAILABLE).
    plugins = pkg.run(["netflow-agent", "plugins"]).stdout
    assert "[ingest.ebpf]" in plugins and "UNAVAILABLE" not in plugins, plugins


def check_unit() -> None:
    """``systemd-analyze verify`` is clean; ``security`` rates the unit at most 3.0."""
    analyze = require_tool("systemd-analyze")
    verify = pkg.run([analyze, "verify", str(pkg.UNIT)])
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    security = pkg.run([analyze, "security", "--offline=yes", str(pkg.UNIT)])
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert level, security.stdout + security.stderr
    assert float(level.group(1)) <= SECURITY_LIMIT, security.stdout


def run_unit_commands_by_hand(ns: Netns, sink: UdpSink) -> None:
    """ExecStartPre, ExecStart (in ``ns``, sandboxed as the unit says), ExecReload, SIGTERM."""
    (CONF_DIR / "netflow-agent.toml").write_text(
        '[agent]\nuser = "netflow-agent"\n\n'
        '[[ingest.nflog]]\ngroup = 5\nmanage_rules = true\nchains = ["output"]\n\n'
        '[[ingest.ebpf]]\ninterfaces = ["lo"]\n\n'
        f'[[export.netflow]]\nprotocol = 9\ndestination = ["127.0.0.1:{sink.port}"]\n')
    pre = ns.run(pkg.sandboxed(pkg.unit_command("ExecStartPre")), check=False)
    assert pre.returncode == 0, pre.stderr
    agent = ns.popen(pkg.sandboxed(pkg.unit_command("ExecStart")))
    try:
        wait_for_socket(agent)
        check_process(agent.pid)
        ns.run(["ping", "-c", "5", "-i", "0.2", "-q", "127.0.0.1"])
        wait_for_packets(("ingest.nflog[0]", "ingest.ebpf[0]"), agent)

        reload_cmd = pkg.sandboxed(pkg.unit_command("ExecReload"))
        ok = pkg.run(reload_cmd)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        broken = CONF_DIR / "99-broken.toml"
        broken.write_text("[cache]\nmaxflows = -1\n")
        try:
            refused = pkg.run(reload_cmd)
        finally:
            broken.unlink()
        assert refused.returncode != 0, refused.stdout  # not applied: systemctl reload fails

        agent.send_signal(15)
        _, err = agent.communicate(timeout=60)
        assert agent.returncode == 0, err
    finally:
        end_process(agent)
    assert sink.wait(1, timeout=10), "no NetFlow v9 datagram reached the collector"


def wait_for_socket(agent: subprocess.Popen, timeout: float = 30) -> None:
    """Until the control socket answers (the agent started and dropped root)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            pytest.fail(f"the agent exited {agent.returncode}: {agent.stderr.read()}")
        if pkg.run(["netflow-agent", "stats", "--socket", SOCKET]).returncode == 0:
            return
        time.sleep(0.2)
    pytest.fail("the control socket did not answer")


def check_process(pid: int, timeout: float = 20) -> None:
    """Switches to netflow-agent; its bounding set is the unit's, no_new_privs is set."""
    uid = pkg.run(["id", "-u", "netflow-agent"]).stdout.strip()
    dropped = re.compile(rf"^Uid:\s+{uid}\s+{uid}\s+{uid}\s+{uid}$", re.M)
    deadline = time.monotonic() + timeout  # the socket answers just before the switch
    while not dropped.search(status := Path(f"/proc/{pid}/status").read_text()):
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), status
    bounding = int(re.search(r"^CapBnd:\s+([0-9a-f]+)$", status, re.M).group(1), 16)
    caps = " ".join(pkg.unit_setting("CapabilityBoundingSet")).split()
    assert mask_names(bounding) == mask_names(capability_mask(caps))


def wait_for_packets(components: tuple[str, ...], agent: subprocess.Popen,
                     timeout: float = 20) -> None:
    """Until every named ingest has counted packets (``netflow-agent stats --json``)."""
    deadline = time.monotonic() + timeout
    counts: dict[str, object] = {}
    while time.monotonic() < deadline and agent.poll() is None:
        reply = pkg.run(["netflow-agent", "stats", "--json", "--socket", SOCKET])
        if reply.returncode == 0:
            stats = json.loads(reply.stdout)["components"]
            counts = {c: stats.get(c, {}) for c in components}
            if all(_packets(v) > 0 for v in counts.values()):
                return
        time.sleep(0.3)
    pytest.fail(f"ingests did not count packets: {counts}")


def _packets(component_stats: object) -> int:
    """Packets an ingest counted, whatever its counter is called."""
    if not isinstance(component_stats, dict):
        return 0
    return sum(int(v) for k, v in component_stats.items()
               if "packets" in k and isinstance(v, int))
