"""The agent's error types: collected config issues, unavailable components, encode errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning", "note"]


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem found while validating a configuration.

    :param path: dotted key path, e.g. ``export.netflow[0].destination``.
    :param message: what is wrong and, where possible, how to fix it.
    :param severity: ``"error"`` makes ``--dry-run`` exit 78; ``"warning"`` only prints
        (unless ``--strict``); ``"note"`` explains how a valid setting is applied and never
        fails a check, not even with ``--strict``.
    :param file: the config file the key came from, when known.
    """

    path: str
    message: str
    severity: Severity = "error"
    file: str = ""

    def format(self) -> str:
        """``FILE: path: message``; warnings and notes are prefixed with their severity."""
        where = f"{self.file}: " if self.file else ""
        tag = f"{self.severity}: " if self.severity != "error" else ""
        path = f"{self.path}: " if self.path else ""
        return f"{where}{path}{tag}{self.message}"


class ConfigError(Exception):
    """Raised when a configuration has errors; carries every issue found."""

    def __init__(self, issues: list[ConfigIssue]):
        self.issues = issues
        super().__init__("\n".join(i.format() for i in issues))


class ComponentUnavailable(Exception):
    """A component cannot run on this machine (missing extension, kernel feature, tool)."""


class EncodeError(ValueError):
    """A record cannot be encoded by an exporter (e.g. IPv6 in NetFlow v5); counted, skipped."""
