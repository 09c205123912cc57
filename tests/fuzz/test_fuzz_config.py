"""Fuzz the configuration loader: ``validate`` gives ``ConfigIssue``s, ``--dry-run`` 0 or 78.

Inputs: arbitrary text, TOML-looking text built from the registered components' own table
and key names, and structured dictionaries of those tables with random values written as
TOML by the ``toml`` package.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import pytest
import toml
from hypothesis import assume, given
from hypothesis import strategies as st

from netflow_agent.cli import main
from netflow_agent.discovery import build_registry, make_manager
from tests.fuzz.oracles import check_config_text
from tests.fuzz.strategies import (
    config_dict,
    config_keys,
    fuzz_settings,
    near_valid_config,
    toml_text,
)

PM, _ = make_manager([])
REGISTRY = build_registry(PM)
KEYS = config_keys(REGISTRY)


def _dumps(data: dict[str, Any]) -> str:
    try:
        return toml.dumps(data)
    except Exception:  # the writer's own limits (e.g. mixed-type arrays) are not our subject
        assume(False)
        raise


@fuzz_settings()
@given(st.text(max_size=300))
def test_arbitrary_text(text: str) -> None:
    check_config_text(text, REGISTRY, PM.hook)


@fuzz_settings(scale=2)
@given(toml_text(KEYS))
def test_toml_like_text(text: str) -> None:
    check_config_text(text, REGISTRY, PM.hook)


@fuzz_settings(scale=2)
@given(config_dict(KEYS))
def test_structured_configs(data: dict[str, Any]) -> None:
    check_config_text(_dumps(data), REGISTRY, PM.hook)


@fuzz_settings(scale=2)
@given(near_valid_config(KEYS))
def test_near_valid_configs(data: dict[str, Any]) -> None:
    check_config_text(_dumps(data), REGISTRY, PM.hook)


@fuzz_settings(scale=0.3)
@given(st.one_of(near_valid_config(KEYS).map(_dumps), config_dict(KEYS).map(_dumps),
                 toml_text(KEYS)), st.booleans())
def test_dry_run_exit_codes(tmp_path_factory: pytest.TempPathFactory, text: str,
                            check_env: bool) -> None:
    path = Path(tmp_path_factory.mktemp("cfg")) / "agent.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["--dry-run", "-c", str(path)] + ["--check-env"] * check_env)
    assert code in (0, 78), err.getvalue()
    if code == 78:
        assert "configuration is invalid" in err.getvalue()
