"""Commented TOML samples generated from a configuration dataclass (``agent config sample``).

Every field becomes ``## <doc>`` lines and a commented ``# key = value`` line, so a sample
cannot miss a key the code accepts. Values are TOML literals (strings, numbers, booleans,
arrays of them); ``examples`` replaces a default with something more telling (an empty
``user`` shows ``"netflow"``) and the doc line then names the default.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
import tomllib
from typing import Any

WIDTH = 95


def toml_value(value: Any) -> str:
    """A TOML literal for a str, int, float, bool or list of them (JSON spells them alike,
    apart from booleans, which TOML spells the same too)."""
    return json.dumps(value, ensure_ascii=False)


def section_sample(header: str, config_class: type, examples: dict[str, str] | None = None,
                   active: tuple[str, ...] = (), note: dict[str, str] | None = None) -> str:
    """``[header]`` then every field of ``config_class``.

    :param examples: key -> TOML text shown instead of the default.
    :param active: keys written uncommented (with their default).
    :param note: key -> a sentence added to its doc.
    """
    examples, note = examples or {}, note or {}
    lines = [f"[{header}]"]
    for f in dataclasses.fields(config_class):
        default = _default(f)
        doc = " ".join(filter(None, [f.metadata.get("doc", ""), note.get(f.name)]))
        shown = examples.get(f.name)
        if shown is not None and tomllib.loads(f"v = {shown}")["v"] != default:
            doc = f"{doc} Default: {toml_value(default)}."
        lines += textwrap.wrap(doc, WIDTH - 3, initial_indent="## ", subsequent_indent="## ")
        value = shown if shown is not None else toml_value(default)
        lines.append(f"{'' if f.name in active else '# '}{f.name} = {value}")
    return "\n".join(lines) + "\n"


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None
