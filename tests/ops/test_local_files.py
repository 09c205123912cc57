"""Local files around a root daemon (issue 18, items 11-13): the control socket path replaces
only a stale socket, configuration files others may change are refused or reported, and output
files are created 0640 and checked for the user the agent drops to."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from netflow_agent.control import ControlServer
from tests.ops.helpers import MS, T0, RunningAgent, cli, steady_capture
from tests.support.pcapgen import FlowSpec, PcapBuilder

NOBODY = 65534
MINIMAL = """
[agent]
control_socket = "{sock}"
[[ingest.pcap]]
path = "{capture}"
[[export.log]]
path = "{out}"
"""

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the checks apply when run as root")


def capture(path: Path) -> Path:
    b = PcapBuilder()
    b.add(FlowSpec("udp", "10.8.0.1", "10.8.0.2", 1000, 53, packets=10, payload=20,
                   start_ns=T0, gap_ns=MS))
    b.write(path)
    return path


def write_config(path: Path, sock: str = "", out: str = "-", extra: str = "",
                 pcap: Path | None = None) -> Path:
    path.write_text(MINIMAL.format(sock=sock, capture=pcap or "/dev/null", out=out) + extra)
    return path


def dry_run(config: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return cli("--dry-run", *flags, "-c", str(config))


def start(config: Path, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    """Run the agent on ``config`` to completion (a finite replay)."""
    return cli("-c", str(config), timeout=60, umask=umask)


@pytest.fixture
def shared_dir(readable_dir_factory: Callable[[], Path]) -> Path:
    """A directory other users can reach (pytest's tmp_path is root's 0700)."""
    return readable_dir_factory()


@pytest.fixture
def conf_dir(readable_dir_factory: Callable[[], Path]) -> Path:
    """Root's directory, readable by all: where an operator keeps a config that the dropped
    user must still read at reload."""
    return readable_dir_factory()


# --- item 11: the control socket path --------------------------------------------------------


def _occupy(path: Path, kind: str) -> None:
    if kind == "file":
        path.write_text("precious\n")
    elif kind == "directory":
        path.mkdir()
        (path / "inside").write_text("precious\n")
    else:
        (path.parent / "target").write_text("precious\n")
        path.symlink_to(path.parent / "target")


@pytest.mark.parametrize("kind", ["file", "directory", "symlink"])
def test_control_socket_on_an_existing_non_socket_is_refused_untouched(tmp_path: Path,
                                                                       kind: str) -> None:
    """Was: the regular file deleted at start, and ``--strict`` dry-run said OK."""
    sock = tmp_path / "agent.sock"
    _occupy(sock, kind)
    config = write_config(tmp_path / "a.toml", sock=str(sock),
                          pcap=capture(tmp_path / "c.pcap"))
    check = dry_run(config, "--check-env", "--strict")
    assert check.returncode == 78, check.stderr
    assert f"agent.control_socket: {sock} exists and is a" in check.stderr
    run = start(config)
    assert run.returncode == 78, run.stderr
    assert os.path.lexists(sock) and not sock.is_socket()
    target = {"file": sock, "directory": sock / "inside", "symlink": tmp_path / "target"}[kind]
    assert target.read_text() == "precious\n"


def test_control_server_replaces_only_a_stale_socket(tmp_path: Path) -> None:
    """The bind path itself (a file appearing after the check): refused, file kept; a socket
    nobody listens on is still replaced."""
    path = tmp_path / "agent.sock"
    path.write_text("precious\n")
    server = ControlServer(str(path), pipeline=None, snapshot=dict, formatter=str)
    with pytest.raises(OSError, match="not a socket"):
        server.start()
    assert path.read_text() == "precious\n"
    path.unlink()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays: a stale socket
    server.start()
    try:
        assert path.is_socket()
    finally:
        server.close()


# --- item 12: who may change the configuration ------------------------------------------------


@root_only
def test_world_writable_config_is_refused_as_root(tmp_path: Path) -> None:
    """Was: accepted even with ``--strict``; now an error at dry-run and at start."""
    config = write_config(tmp_path / "a.toml", pcap=capture(tmp_path / "c.pcap"))
    config.chmod(0o666)
    check = dry_run(config)
    assert check.returncode == 78 and "writable by everyone (mode 0666)" in check.stderr
    run = start(config)
    assert run.returncode == 78 and "writable by everyone" in run.stderr
    assert "flows exported" not in run.stderr


@root_only
def test_world_writable_config_is_refused_at_reload_after_the_drop(shared_dir: Path) -> None:
    """The agent runs as ``nobody`` but still acts for root (kept capabilities): a reload of a
    configuration made world-writable meanwhile is refused; the agent keeps running."""
    sock, pcap = shared_dir / "agent.sock", shared_dir / "c.pcap"
    steady_capture(pcap, seconds=30, flows=1, pps_per_flow=2)
    config = write_config(shared_dir / "a.toml", sock=str(sock), pcap=pcap,
                          out=str(shared_dir / "out.jsonl"))
    config.write_text(config.read_text().replace("[agent]\n", '[agent]\nuser = "nobody"\n')
                      .replace(f'path = "{pcap}"', f'path = "{pcap}"\nspeed = "recorded"'))
    agent = RunningAgent(config, sock)
    try:
        agent.wait_for(lambda s: s["agent"]["uid"] == NOBODY, what="running as nobody")
        config.chmod(0o666)
        reload = cli("reload", "--socket", str(sock))
        assert reload.returncode == 1 and "invalid" in reload.stderr, reload
        assert "writable by everyone" in agent.log()
        assert agent.stats()["agent"]["reload_failures"] == 1
    finally:
        assert agent.stop() == 0, agent.log()


@root_only
@pytest.mark.parametrize("setup,message", [
    ("dir-0777", "is writable by everyone without the sticky bit"),
    ("group-nogroup", "is writable by group 65534"),
    ("owner-nobody", "is writable by uid 65534"),
    ("confd-0777", "configuration directory is writable by everyone"),
])
def test_config_others_may_change_is_a_warning_and_refused_with_strict(
        tmp_path: Path, setup: str, message: str) -> None:
    confd = tmp_path / "conf.d"
    confd.mkdir()
    config = write_config(confd / "a.toml")
    target: Path = config
    if setup == "dir-0777":
        confd.chmod(0o777)
    elif setup == "group-nogroup":
        os.chown(config, 0, NOBODY)
        config.chmod(0o664)
    elif setup == "owner-nobody":
        os.chown(config, NOBODY, 0)
    else:
        confd.chmod(0o777)
        target = confd
    check = dry_run(target)
    assert check.returncode == 0 and message in check.stderr, check.stderr
    assert "warning:" in check.stderr
    strict = dry_run(target, "--strict")
    assert strict.returncode == 78 and message in strict.stderr, strict.stderr


def test_config_in_a_sticky_world_writable_directory_is_fine(shared_dir: Path) -> None:
    shared_dir.chmod(0o1777)  # like /tmp: others cannot replace root's file
    config = write_config(shared_dir / "a.toml")
    check = dry_run(config, "--strict")
    assert check.returncode == 0 and "configuration OK (0 warning(s))" in check.stderr, \
        check.stderr


# --- item 13: output files -------------------------------------------------------------------


def test_output_files_are_created_0640_whatever_the_umask(tmp_path: Path) -> None:
    """Was: 0644 (0666 under umask 0): flow data readable by every user."""
    log_out, ipfix_out = tmp_path / "out.jsonl", tmp_path / "flows.ipfix"
    kept = tmp_path / "kept.jsonl"
    kept.write_text("")
    kept.chmod(0o600)  # an operator's choice is kept
    config = write_config(tmp_path / "a.toml", out=str(log_out),
                          pcap=capture(tmp_path / "c.pcap"),
                          extra=f'[[export.ipfix]]\npath = "{ipfix_out}"\n'
                                f'[[export.log]]\npath = "{kept}"\n')
    run = start(config, umask=0)
    assert run.returncode == 0, run.stderr
    assert log_out.stat().st_size > 0 and ipfix_out.stat().st_size > 0
    assert {p.name: p.stat().st_mode & 0o777 for p in (log_out, ipfix_out, kept)} == \
        {"out.jsonl": 0o640, "flows.ipfix": 0o640, "kept.jsonl": 0o600}


@root_only
def test_check_env_refuses_an_ipfix_file_the_user_cannot_write(tmp_path: Path, conf_dir: Path,
                                                                shared_dir: Path) -> None:
    """Was: dry-run OK, then at run time every write failed while the agent exited 0 saying
    "10 flows exported"."""
    out = shared_dir / "flows.ipfix"
    config = write_config(conf_dir / "a.toml", pcap=capture(tmp_path / "c.pcap"),
                          extra=f'[[export.ipfix]]\npath = "{out}"\n')
    config.write_text(config.read_text().replace("[agent]\n", '[agent]\nuser = "nobody"\n'))
    check = dry_run(config, "--check-env")
    assert check.returncode == 78, check.stderr
    assert f"export.ipfix[0].path: user 'nobody' cannot create files in {shared_dir}" \
        in check.stderr
    run = start(config)
    assert run.returncode == 78 and "flows exported" not in run.stderr, run.stderr
    assert not out.exists()
    os.chown(shared_dir, NOBODY, NOBODY)  # now the user's directory: accepted, and written
    check = dry_run(config, "--check-env", "--strict")
    assert check.returncode == 0, check.stderr
    run = start(config)
    assert run.returncode == 0, run.stderr
    assert out.stat().st_size > 0 and out.stat().st_uid == NOBODY


@root_only
def test_check_env_warns_about_an_export_log_file_the_user_cannot_reopen(
        conf_dir: Path, shared_dir: Path) -> None:
    out = shared_dir / "out.jsonl"
    out.write_text("")
    out.chmod(0o644)  # root's, readable by all
    config = write_config(conf_dir / "a.toml", out=str(out))
    config.write_text(config.read_text().replace("[agent]\n", '[agent]\nuser = "nobody"\n'))
    check = dry_run(config, "--check-env")
    assert check.returncode == 0, check.stderr
    assert f"export.log[0].path: warning: user 'nobody' cannot write {out}" in check.stderr
    assert f"{out} is readable by every user (mode 0644)" in check.stderr
    assert dry_run(config, "--check-env", "--strict").returncode == 78
