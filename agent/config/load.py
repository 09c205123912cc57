"""Read TOML configuration from a file or a conf.d-style directory.

A directory means every ``*.toml`` in it, merged in name order: tables merge key by key (a
later file wins for scalar keys) and arrays of tables (``[[export.netflow]]``) are appended.
Each resulting table remembers the file it came from, so every issue can name its file.
Syntax errors are reported with file, line and column, as ``tomllib`` gives them.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netflow_agent.errors import ConfigIssue

_LINE_COL = re.compile(r"\(at line (\d+), column (\d+)\)")


@dataclass
class RawConfig:
    """Merged TOML data plus where each top-level table and table-array entry came from.

    :ivar origins: dotted path (``cache``, ``export.netflow[1]``) -> file name.
    """

    data: dict[str, Any] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def origin(self, path: str) -> str:
        """The file that defined ``path`` or its closest enclosing table."""
        while path:
            if path in self.origins:
                return self.origins[path]
            path = path.rpartition(".")[0] if "." in path else ""
        return self.files[0] if len(self.files) == 1 else ""


def config_files(path: str | Path) -> list[Path]:
    """The files ``-c PATH`` means: the file itself, or a directory's ``*.toml`` by name."""
    p = Path(path)
    if p.is_dir():
        return sorted(q for q in p.glob("*.toml") if q.is_file())
    return [p]


def load(path: str | Path) -> tuple[RawConfig, list[ConfigIssue]]:
    """Read and merge the configuration at ``path``; collect every file's problems."""
    raw = RawConfig()
    issues: list[ConfigIssue] = []
    files = config_files(path)
    if not files:
        issues.append(ConfigIssue("", "no *.toml files in this directory", file=str(path)))
    for f in files:
        raw.files.append(str(f))
        data = _read_one(f, issues)
        if data is not None:
            _merge(raw, data, str(f))
    return raw, issues


def _read_one(path: Path, issues: list[ConfigIssue]) -> dict[str, Any] | None:
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        issues.append(ConfigIssue("", "file not found", file=str(path)))
        return None
    except (OSError, UnicodeDecodeError) as exc:
        issues.append(ConfigIssue("", f"cannot read: {exc}", file=str(path)))
        return None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = _LINE_COL.search(msg)
        where = f"{path}:{m.group(1)}:{m.group(2)}" if m else str(path)
        text = _LINE_COL.sub("", msg).strip()
        issues.append(ConfigIssue("", f"TOML syntax error: {text}", file=where))
        return None


def _merge(raw: RawConfig, data: dict[str, Any], origin: str) -> None:
    for key, value in data.items():
        if isinstance(value, dict) and key in ("ingest", "export"):
            stage = raw.data.setdefault(key, {})
            if not isinstance(stage, dict):
                raw.data[key] = value
                continue
            for name, entries in value.items():
                _merge_instances(raw, stage, f"{key}.{name}", name, entries, origin)
        elif isinstance(value, dict) and isinstance(raw.data.get(key), dict):
            raw.data[key].update(value)
            raw.origins.setdefault(key, origin)
        else:
            raw.data[key] = value
            raw.origins[key] = origin


def _merge_instances(
    raw: RawConfig, stage: dict[str, Any], path: str, name: str, entries: Any, origin: str
) -> None:
    if not isinstance(entries, list):
        stage[name] = entries  # a single [ingest.x] table: convert reports it
        raw.origins[path] = origin
        return
    existing = stage.setdefault(name, [])
    for entry in entries:
        raw.origins[f"{path}[{len(existing)}]"] = origin
        existing.append(entry)
