"""The ``agent`` command line: plugins, samples, version, run on the quickstart config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from netflow_agent import __version__
from netflow_agent.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert __version__ in capsys.readouterr().out


def test_plugins_lists_builtins_with_version_and_origin(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for name, table in [("ingest_pcap", "ingest.pcap"), ("export_log", "export.log"),
                        ("core_stages", "cache.memory")]:
        line = next(line for line in out.splitlines() if line.startswith(name))
        assert __version__ in line and "builtin" in line and table in line


def test_config_sample_of_one_component(capsys):
    assert main(["config", "sample", "pcap"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[[ingest.pcap]]") and "## " in out
    assert main(["config", "sample", "ingest.pcap"]) == 0


def test_config_sample_unknown_component(capsys):
    assert main(["config", "sample", "nope"]) == 2
    assert "unknown component 'nope'; known:" in capsys.readouterr().err


def test_full_sample_validates(tmp_path, capsys):
    assert main(["config", "sample"]) == 0
    sample = capsys.readouterr().out
    assert "[agent]" in sample and "[cache]" in sample and "[[ingest.pcap]]" in sample


def test_quickstart_prints_the_sample_capture_flows():
    proc = subprocess.run([sys.executable, "-m", "netflow_agent.cli", "-c",
                           "examples/quickstart.toml"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines and all("pkts=" in line for line in lines)
    assert any("->" in line and "[" in line for line in lines)  # an IPv6 flow is printed


def test_a_finished_replay_logs_its_totals():
    """The last log line of a finite run sums what was exported (replays end before anyone
    can ask ``agent stats``)."""
    proc = subprocess.run([sys.executable, "-m", "netflow_agent.cli", "-c",
                           "examples/quickstart.toml"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    flows = [dict(f.split("=") for f in line.split() if "=" in f)
             for line in proc.stdout.splitlines()]
    packets = sum(int(f["pkts"]) for f in flows)
    octets = sum(int(f["bytes"]) for f in flows)
    last = proc.stderr.strip().splitlines()[-1]
    assert f"stopped; {len(flows)} flows exported; traffic {packets} packets, {octets} bytes; " \
           "dropped 0 packets, 0 bytes" in last and "sampler discarded 0 packets" in last, last


def test_a_hash_sampled_replay_balances_in_its_totals(tmp_path):
    """With ``hash:N`` the last line counts the packets discarded on entry, so every packet
    of the capture is in it: exported + dropped + sampler discarded (the compare harness
    balances a sampled run from this line)."""
    from tests.e2e.test_bench_compare import compare_harness

    def run(sampler: str) -> str:
        conf = (ROOT / "examples/quickstart.toml").read_text().replace(
            "[cache]\n", f"[cache]\nsampler = \"{sampler}\"\n" if sampler else "[cache]\n", 1)
        (tmp_path / "c.toml").write_text(conf.replace(
            "examples/sample.pcap", str(ROOT / "examples/sample.pcap")))
        proc = subprocess.run([sys.executable, "-m", "netflow_agent.cli", "-c",
                               str(tmp_path / "c.toml")],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stderr.strip().splitlines()[-1]

    summary = compare_harness().SUMMARY
    whole = summary.search(run(""))
    sampled = summary.search(run("hash:4"))
    assert whole and sampled and whole[3] == "0"
    assert int(sampled[3]) > 0 and int(sampled[1]) < int(whole[1])
    assert int(sampled[1]) + int(sampled[2]) + int(sampled[3]) \
        == int(whole[1]) + int(whole[2])


def test_agent_sample_has_every_agent_key_with_its_doc_and_valid_values(capsys):
    """Uncommented, the sample's [agent] table converts without an issue and sets every key
    of AgentSection (a key added to the dataclass cannot be missing from the sample)."""
    import dataclasses
    import re
    import tomllib

    from netflow_agent.config.convert import convert
    from netflow_agent.config.model import AgentSection

    assert main(["config", "sample"]) == 0
    agent_part = capsys.readouterr().out.split("\n\n")[0]
    fields = dataclasses.fields(AgentSection)
    for f in fields:
        doc_start = " ".join(f.metadata["doc"].split()[:3])
        assert re.search(rf"^## .*\n(## .*\n)*(# )?{f.name} = ", agent_part, re.M), f.name
        assert doc_start in agent_part.replace("\n## ", " "), f.name
    data = tomllib.loads(re.sub(r"^# ", "", agent_part, flags=re.M))["agent"]
    assert set(data) == {f.name for f in fields}
    section, issues = convert(AgentSection, data, "agent")
    assert section is not None and issues == [], issues
    assert section.control_socket_mode == 0o600 and section.user == "netflow"


EXIT_SCRIPT = """
import atexit, logging, sys, threading, time
from netflow_agent.cli import exit_now
logging.basicConfig(stream=sys.stderr, level="INFO")
atexit.register(lambda: print("exit handler ran"))
if sys.argv[1] == "thread":  # a plugin's non-daemon thread still running: wait for it
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread done"))).start()
print("buffered line", end="")
logging.getLogger("t").info("last log line")
exit_now(3)
"""


def test_the_fast_exit_keeps_exit_code_output_exit_handlers_and_threads():
    """`agent` ends without the interpreter's teardown (os._exit), but what the ordinary exit
    guarantees still holds: its exit code, buffered stdout and the log flushed, exit
    handlers run, and a non-daemon thread still running is waited for."""
    for mode in ("plain", "thread"):
        out = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, mode], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 3
        assert "buffered line" in out.stdout and "exit handler ran" in out.stdout
        assert "last log line" in out.stderr
        assert ("thread done" in out.stdout) == (mode == "thread")


def test_a_failure_closing_the_local_interfaces_never_skips_the_flush(
        caplog: pytest.LogCaptureFixture) -> None:
    """ops.stopping() raising (a bug, RuntimeError from a thread) used to skip
    pipeline.shutdown() in the agent's finally: the cached flows were neither exported nor
    saved. The failure is logged and the pipeline still stops."""
    from netflow_agent import cli as agent_cli

    calls: list[str] = []

    class Ops:
        def stopping(self) -> None:
            calls.append("stopping")
            raise RuntimeError("cannot join thread")

    class Pipe:
        def shutdown(self) -> None:
            calls.append("shutdown")

    agent_cli.stop(Ops(), Pipe())  # type: ignore[arg-type]
    assert calls == ["stopping", "shutdown"]
    assert "closing the control socket and metrics failed" in caplog.text
