"""How a component declares its configuration table: a frozen dataclass plus :func:`option`.

Example (``plugins/export_netflow/config.py``)::

    @dataclass(frozen=True, slots=True, kw_only=True)
    class Config:
        destination: list[str] = option(doc="Collectors, host:port; several = mirrored.")
        protocol: Literal[5, 9] = option(5, doc="NetFlow version.")
        sndbuf: int = option(0, doc="Socket send buffer in bytes; 0 = system default.", min=0)

        def check(self) -> list[ConfigIssue]:      # optional, pure, no I/O
            ...                                     # paths relative to the table: "destination[1]"

        def resources(self) -> list[Resource]:     # optional: things only one instance may hold
            ...

A field without a default is required. Supported annotations: ``bool``, ``int``, ``float``,
``str``, ``Literal[...]``, ``list[T]``, ``dict[str, T]``, ``X | None`` and unions of these.
``min``/``max`` bound numbers (and list lengths with ``min_items``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

_MISSING = dataclasses.MISSING


def option(
    default: Any = _MISSING,
    *,
    doc: str,
    min: float | None = None,  # noqa: A002 - reads naturally at call sites
    max: float | None = None,  # noqa: A002
    min_items: int | None = None,
    default_factory: Any = _MISSING,
) -> Any:
    """Declare one config key.

    :param default: the default value; omit for a required key. Use ``default_factory`` for
        lists and dicts.
    :param doc: one sentence of help, shown by ``agent config sample`` and the docs.
    :param min: smallest allowed number (inclusive).
    :param max: largest allowed number (inclusive).
    :param min_items: smallest allowed list length.
    """
    meta = {"doc": doc, "min": min, "max": max, "min_items": min_items}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)
