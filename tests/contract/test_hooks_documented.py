"""Every hook is documented in docs/hooks.md and has a test_hook_<name> test [datasette]."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from netflow_agent import hookspecs

ROOT = Path(__file__).resolve().parents[2]
HOOKS = sorted(n for n, f in inspect.getmembers(hookspecs, inspect.isfunction)
               if n.startswith("agent_"))


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook):
    text = (ROOT / "docs" / "hooks.md").read_text()
    assert re.search(rf"^### {hook}\(", text, re.M), f"docs/hooks.md has no section for {hook}"
    assert inspect.getdoc(getattr(hookspecs, hook)), f"{hook} has no docstring"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook):
    tests = "".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    assert f"def test_hook_{hook}(" in tests, f"no test_hook_{hook} test"
