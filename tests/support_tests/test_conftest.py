"""The privileged-marker policy of tests/conftest.py: skip reasons, ordering, require_tool."""

from __future__ import annotations

import importlib

import pytest

import tests.support as support

conftest = importlib.import_module("tests.conftest")


class FakeItem:
    """Just enough of a pytest.Item for the marker policy."""

    def __init__(self, name: str, *markers: str):
        self.name = name
        self.markers = set(markers)
        self.added: list[pytest.MarkDecorator] = []

    def get_closest_marker(self, name: str) -> object | None:
        return name if name in self.markers else None

    def add_marker(self, marker: pytest.MarkDecorator) -> None:
        self.added.append(marker)


def test_not_root_skips_privileged_with_a_reason() -> None:
    assert "root" in conftest._skip_reason(FakeItem("a", "netns"), root=False)
    assert "CAP_BPF" in conftest._skip_reason(FakeItem("b", "bpf"), root=False)
    assert conftest._skip_reason(FakeItem("c"), root=False) is None


def test_root_never_skips() -> None:
    for markers in (("netns",), ("bpf",), ("netns", "bpf")):
        assert conftest._skip_reason(FakeItem("x", *markers), root=True) is None


def test_privileged_sorted_last_in_stable_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "is_root", lambda: True)
    items = [FakeItem("n1", "netns"), FakeItem("p1"), FakeItem("b1", "bpf"), FakeItem("p2")]
    conftest.pytest_collection_modifyitems(None, items)  # type: ignore[arg-type]
    assert [i.name for i in items] == ["p1", "p2", "n1", "b1"]
    assert all(not i.added for i in items)


def test_not_root_marks_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(conftest, "is_root", lambda: False)
    items = [FakeItem("n1", "netns"), FakeItem("p1")]
    conftest.pytest_collection_modifyitems(None, items)  # type: ignore[arg-type]
    assert [i.name for i in items] == ["p1", "n1"]
    assert items[1].added and items[1].added[0].name == "skip"
    assert not items[0].added


def test_require_tool_found() -> None:
    assert support.require_tool("sh").endswith("/sh")


def test_require_tool_missing_fails_when_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(support, "strict_environment", lambda: True)
    with pytest.raises(pytest.fail.Exception, match="no-such-tool-xyz"):
        support.require_tool("no-such-tool-xyz")


def test_require_tool_missing_skips_when_not_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(support, "strict_environment", lambda: False)
    with pytest.raises(pytest.skip.Exception, match="no-such-tool-xyz"):
        support.require_tool("no-such-tool-xyz")


@pytest.mark.parametrize(("value", "expected"), [("", False), ("0", False), ("true", True)])
def test_in_ci(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("CI", value)
    assert support.in_ci() is expected
