"""Component types registered with their factory's name: imported only when asked for."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest

from netflow_agent.registry import ComponentRegistry


@dataclass(frozen=True)
class _Config:
    pass


def test_a_factory_given_by_name_is_imported_when_asked_for(monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    registry = ComponentRegistry()
    registry.add("export", "probe", "colorsys:rgb_to_hsv", _Config)
    assert "colorsys" not in sys.modules  # registering imports nothing
    ctype = registry.get("export", "probe")
    assert ctype is not None
    assert ctype.factory(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)  # the real function, imported now
    assert "colorsys" in sys.modules


def test_a_factory_object_is_kept_as_it_is() -> None:
    registry = ComponentRegistry()
    registry.add("export", "probe", dict, _Config)
    ctype = registry.get("export", "probe")
    assert ctype is not None and ctype.factory is dict


@pytest.mark.parametrize("name", ["colorsys", "colorsys:", ""])
def test_a_factory_name_without_an_attribute_is_refused_at_registration(name: str) -> None:
    with pytest.raises(ValueError, match="module:attribute"):
        ComponentRegistry().add("export", "probe", name, _Config)
