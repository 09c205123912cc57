"""One atheris (libFuzzer) target process: ``python bench/fuzz/target.py NAME [libFuzzer args]``.

NAME is one of :data:`TARGETS`. Every input goes through the same oracle the hypothesis tests
use (``tests/fuzz/oracles.py``); the parser modules are imported under atheris'
instrumentation so libFuzzer's coverage guidance sees their branches. Run by ``run.py``.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import atheris  # noqa: E402

with atheris.instrument_imports():
    import netflow_agent.config.check
    import netflow_agent.config.convert
    import netflow_agent.packet
    import netflow_agent.plugins.ingest_conntrack.ctnetlink
    import netflow_agent.plugins.ingest_nflog.decoders
    import netflow_agent.plugins.ingest_nflog.netlink
    import netflow_agent.plugins.ingest_pcap.reader  # noqa: F401
    from tests.fuzz import oracles

from netflow_agent.config.load import RawConfig  # noqa: E402
from netflow_agent.discovery import build_registry, make_manager  # noqa: E402
from netflow_agent.errors import ConfigIssue  # noqa: E402


def _config_target() -> object:
    pm, _ = make_manager([])
    registry = build_registry(pm)

    def one(data: bytes) -> None:
        """TOML text -> the same steps as ``validate`` after the file read, in memory."""
        text = atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data))
        try:
            parsed = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            return
        config, issues = netflow_agent.config.check.build(RawConfig(data=parsed, files=["f"]), registry)
        if config is not None and not any(i.severity == "error" for i in issues):
            for result in pm.hook.agent_check_config(config=config, check_env=False):
                issues += result or []
        assert all(isinstance(i, ConfigIssue) for i in issues)

    return one


TARGETS = {
    "packet": lambda: oracles.check_packet,
    "nflog": lambda: oracles.check_nflog,
    "nflog_c": lambda: oracles.check_nflog_c,
    "conntrack": lambda: oracles.check_conntrack,
    "pcap": lambda: oracles.check_pcap,
    "config": _config_target,
}


def main() -> None:
    name = sys.argv.pop(1)
    check = TARGETS[name]()
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
