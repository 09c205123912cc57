"""``--check-env`` and the start check where the agent will listen (issue 18 item 16).

A metrics port held by another process is an error of ``--dry-run --check-env``; the start
runs the same checks before any component starts, so an NFLOG ingest with managed nft rules
never binds its group or installs its table. A control socket that cannot be served (a live
socket of another agent, not a socket, a path too long) is a warning, an error under
``--strict``: the agent runs on without it, as it always did. A reload, while the agent
itself serves both, is not a conflict.
"""

from __future__ import annotations

import socket
from pathlib import Path

from tests.ops.helpers import cli
from tests.support.agentproc import Agent
from tests.support.netns import Netns


def _listening() -> socket.socket:
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    held.listen(1)
    return held


def _check_env(conf: Path, *flags: str) -> tuple[int, str]:
    proc = cli("--dry-run", "--check-env", *flags, "-c", str(conf))
    return proc.returncode, proc.stdout + proc.stderr


SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample.pcap"
REPLAY = f'[[ingest.pcap]]\npath = "{SAMPLE}"\n[[export.log]]\npath = "-"\n'


def _conf(tmp_path: Path, agent: str, body: str = REPLAY) -> Path:
    conf = tmp_path / "agent.toml"
    conf.write_text(f"[agent]\n{agent}\n{body}")
    return conf


def test_check_env_reports_a_metrics_port_in_use(tmp_path):
    with _listening() as held:
        port = held.getsockname()[1]
        conf = _conf(tmp_path, f'metrics_listen = "127.0.0.1:{port}"\n'
                               f'control_socket = "{tmp_path / "a.sock"}"')
        code, out = _check_env(conf)
    assert code == 78 and f"cannot listen on 127.0.0.1:{port}" in out, out
    assert _check_env(conf)[0] == 0  # released: fine again


def _warned(conf: Path, text: str) -> None:
    """A warning (exit 0) naming ``text``; an error under ``--strict``."""
    code, out = _check_env(conf)
    assert code == 0 and "warning" in out and text in out, out
    code, out = _check_env(conf, "--strict")
    assert code == 78 and text in out, out


def test_check_env_reports_control_socket_problems(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("not a socket")
    code, out = _check_env(_conf(tmp_path, f'control_socket = "{plain}"'))
    assert code == 78 and "is a regular file, not a socket" in out, out  # an error: item 11
    assert "1 error(s), 0 warning(s)" in out, out  # said once
    assert plain.read_text() == "not a socket"
    live = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(live))
        other.listen(1)
        _warned(_conf(tmp_path, f'control_socket = "{live}"'),
                "another agent is listening there")
    code, out = _check_env(_conf(tmp_path, f'control_socket = "{live}"'), "--strict")
    assert code == 0, out  # a stale socket: the start replaces it
    _warned(_conf(tmp_path, f'control_socket = "/tmp/{"x" * 120}.sock"'),
            "longer than the 107 bytes")


def test_start_refuses_a_taken_metrics_port_before_installing_anything(tmp_path):
    with Netns() as ns, _listening() as held:
        port = held.getsockname()[1]
        conf = _conf(tmp_path, f'metrics_listen = "127.0.0.1:{port}"\n'
                               f'control_socket = "{tmp_path / "a.sock"}"',
                     f'[[ingest.nflog]]\ngroup = 21\nnetns = "{ns.name}"\nmanage_rules = true\n'
                     '[[export.log]]\npath = "-"\n')
        proc = cli("--log-level", "info", "-c", str(conf))
        tables = ns.run(["nft", "list", "tables"]).stdout
    assert proc.returncode == 78, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert "reading NFLOG group" not in proc.stderr and "nft" not in proc.stderr.lower()
    assert "netflow_agent" not in tables


def test_reload_is_not_a_conflict_with_the_agents_own_listeners(tmp_path):
    with _listening() as probe:
        port = probe.getsockname()[1]  # a free port, released below
    sock = tmp_path / "a.sock"
    conf = _conf(tmp_path, f'metrics_listen = "127.0.0.1:{port}"\ncontrol_socket = "{sock}"',
                 f'[[ingest.pcap]]\npath = "{_long_capture(tmp_path)}"\nspeed = "recorded"\n'
                 '[[export.log]]\npath = "/dev/null"\n')
    agent = Agent(conf, sock).start()
    try:
        conf.write_text(conf.read_text() + "[cache]\ninactive_timeout = 7\n")  # a change
        proc = cli("reload", "--socket", str(sock))
        assert proc.returncode == 0 and "reloaded" in proc.stdout, proc.stdout + proc.stderr
        assert "cannot listen" not in agent.log() and "another agent" not in agent.log()
    finally:
        agent.stop()


def _long_capture(tmp_path: Path) -> Path:
    from tests.ops.helpers import steady_capture

    steady_capture(tmp_path / "steady.pcap", seconds=30.0, flows=1)
    return tmp_path / "steady.pcap"
