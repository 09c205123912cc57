"""Entry points of the installed distributions, read without :mod:`importlib.metadata`.

Plugin discovery needs one entry-point group at start. ``importlib.metadata`` imports the
``email`` package, ``zipfile``, ``csv``, ``importlib.resources`` and more (about 3 MB of RSS
that every agent would keep for its whole run: docs/performance-history.md, "Agent memory at
100k concurrent flows") and parses every distribution's ``METADATA`` to find the groups. This
module reads what the specification defines (``*.dist-info/entry_points.txt``, an INI file;
``*.egg-info`` the same) from the directories on ``sys.path`` with the same rules as
``importlib.metadata.entry_points``: path entries in order, the first distribution of a
(normalized) name wins, ``""`` is the current directory. A path entry that is a file (a zip of
packages) or an ``.egg`` directory falls back to ``importlib.metadata`` for the whole answer.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

#: ``module[:attr.attr] [extras]`` (the entry point value syntax)
_VALUE = re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$")
_SUFFIXES = (".dist-info", ".egg-info")


@dataclass(frozen=True, slots=True)
class EntryPoint:
    """One entry point: ``name = value`` in ``group`` of distribution ``dist`` ``version``."""

    name: str
    value: str
    group: str
    dist: str
    version: str

    def load(self) -> Any:
        """Import the module the value names and return its attribute (or the module)."""
        match = _VALUE.match(self.value)
        if match is None:
            raise ValueError(f"entry point {self.name}: not module[:attr]: {self.value!r}")
        obj: Any = importlib.import_module(match["module"])
        for attr in filter(None, (match["attr"] or "").split(".")):
            obj = getattr(obj, attr)
        return obj


def normalize(name: str) -> str:
    """A distribution name as packaging compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def entry_points(group: str, path: list[str] | None = None) -> list[EntryPoint]:
    """Every entry point of ``group``, distributions in ``sys.path`` order (first of a name
    wins), entry points in file order."""
    entries = sys.path if path is None else path
    if any(os.path.isfile(p) or p.lower().endswith(".egg") for p in entries if p):
        return _from_importlib(group)  # zips and eggs (EGG-INFO): importlib's finders
    seen: set[str] = set()
    found: list[EntryPoint] = []
    for info in _dist_dirs(entries):
        name, version = _name_version(info)
        if not name or normalize(name) in seen:
            continue
        seen.add(normalize(name))
        found += _read_group(os.path.join(info, "entry_points.txt"), group, name, version)
    return found


def _dist_dirs(entries: list[str]) -> Iterator[str]:
    for entry in entries:
        root = entry or "."
        try:
            names = sorted(os.listdir(root))
        except OSError:  # missing or unreadable path entry: importlib skips it too
            continue
        for name in names:
            if name.lower().endswith(_SUFFIXES) and os.path.isdir(os.path.join(root, name)):
                yield os.path.join(root, name)


def _name_version(info: str) -> tuple[str, str]:
    """``Name`` and ``Version`` from the distribution's metadata headers (the first block
    of ``METADATA`` / ``PKG-INFO``); the directory name when there is none."""
    fields: dict[str, str] = {}
    for meta in ("METADATA", "PKG-INFO"):
        try:
            with open(os.path.join(info, meta), encoding="utf-8", errors="replace") as f:
                for line in f:
                    if not line.strip():
                        break
                    key, sep, value = line.partition(":")
                    if sep and key in ("Name", "Version"):
                        fields.setdefault(key, value.strip())
        except OSError:
            continue
        break
    stem = os.path.basename(info).rsplit(".", 1)[0]
    return fields.get("Name") or stem.split("-")[0], fields.get("Version", "")


def _read_group(path: str, group: str, dist: str, version: str) -> list[EntryPoint]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return []
    found, section = [], None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == group and "=" in line:
            name, _, value = line.partition("=")
            found.append(EntryPoint(name.strip(), value.strip(), group, dist, version))
    return found


def _from_importlib(group: str) -> list[EntryPoint]:
    from importlib import metadata  # noqa: PLC0415 - only for zipped path entries

    return [EntryPoint(ep.name, ep.value, group, (ep.dist.metadata["Name"] or "") if ep.dist
                       else "", (ep.dist.version or "") if ep.dist else "")
            for ep in metadata.entry_points(group=group)]
