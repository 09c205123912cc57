"""Replay progress (issue 19 item 3): one line updated in place on a terminal (a pty here),
quiet when stderr is a file, forced on or off by ``--progress``/``--no-progress``."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import time
from pathlib import Path

import pytest

from netflow_agent.progress import DELAY_S, Progress
from tests.ops.helpers import AGENT, steady_capture

REPLAY_S = 4  # longer than DELAY_S: the line shows


def _config(tmp_path: Path) -> Path:
    steady_capture(tmp_path / "long.pcap", seconds=REPLAY_S, flows=2, pps_per_flow=50)
    config = tmp_path / "agent.toml"
    config.write_text(f"""
[agent]
control_socket = ""
[[ingest.pcap]]
path = "{tmp_path / 'long.pcap'}"
speed = "recorded"
[[export.log]]
path = "{tmp_path / 'flows.jsonl'}"
""")
    return config


def run_on_pty(args: list[str], timeout: float = 60) -> str:
    """Run the agent with stderr on a pseudo-terminal; everything it wrote there."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([*AGENT, *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the agent exited and closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(10) == 0, out.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out.decode(errors="replace")


def run_to_file(args: list[str], tmp_path: Path) -> str:
    err = tmp_path / "stderr.txt"
    with err.open("w") as f:
        proc = subprocess.run([*AGENT, *args], stdout=subprocess.DEVNULL, stderr=f,
                              timeout=60)
    assert proc.returncode == 0, err.read_text()
    return err.read_bytes().decode()  # keep the carriage returns


def progress_updates(text: str) -> list[str]:
    return [part.split("\x1b[K")[0] for part in text.split("\r") if part.startswith("replay ")]


def test_progress_on_a_terminal_is_one_line_updated_in_place(tmp_path: Path) -> None:
    text = run_on_pty(["-c", str(_config(tmp_path))])
    updates = progress_updates(text)
    assert len(updates) >= 2, text
    assert all(u.startswith("replay long.pcap: ") and " pkt/s, ETA " in u for u in updates)
    shares = [float(u.split(":")[1].split("%")[0]) for u in updates]
    assert shares == sorted(shares) and shares[-1] == 100.0
    assert "\n" not in "".join(updates)  # in place: carriage returns, never new lines
    # log lines start on a line of their own: the progress line is erased first
    stopped = text.index("INFO agent: stopped;")
    line_start = text.rfind("\n", 0, stopped) + 1
    assert not text[line_start:stopped].strip("\r\x1b[K").split(" INFO")[0].startswith("replay")


def test_no_progress_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    text = run_to_file(["-c", str(_config(tmp_path))], tmp_path)
    assert "stopped;" in text and "replay long.pcap" not in text


def test_flags_force_it_on_and_off(tmp_path: Path) -> None:
    config = _config(tmp_path)
    forced = run_to_file(["--progress", "-c", str(config)], tmp_path)
    assert progress_updates(forced), forced
    quiet = run_on_pty(["--no-progress", "-c", str(config)])
    assert "replay long.pcap" not in quiet and "stopped;" in quiet


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_line_share_rate_and_eta() -> None:
    out, clock = io.StringIO(), Clock()
    p = Progress(out, clock)
    p.update("/x/big.pcap", 0, 10_000_000, 0)
    clock.now += DELAY_S / 2
    p.update("/x/big.pcap", 1_000_000, 10_000_000, 500)
    assert out.getvalue() == ""  # short replays print nothing
    clock.now = 104.0
    p.update("/x/big.pcap", 2_500_000, 10_000_000, 2000)
    assert out.getvalue() == ("\rreplay big.pcap:  25.0% of 10.0 MB, 2000 packets, 500 pkt/s, "
                              "ETA 0:12\x1b[K")
    p.clear()
    assert out.getvalue().endswith("\r\x1b[K")
    clock.now = 116.0
    p.update("/x/big.pcap", 10_000_000, 10_000_000, 8000, finished=True)
    assert out.getvalue().endswith("replay big.pcap: 100.0% of 10.0 MB, 8000 packets, 500 pkt/s, "
                                   "ETA 0:00\x1b[K\n")


@pytest.mark.parametrize("flag,tty,want", [(None, True, True), (None, False, False),
                                           (True, False, True), (False, True, False)])
def test_when_it_shows(flag: bool | None, tty: bool, want: bool) -> None:
    from netflow_agent.progress import wanted

    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return tty

    assert wanted(Stream(), flag) is want
